//! Errors that cross NATS as data.

use serde::{Deserialize, Serialize};

/// One invalid field of a request body, named so that a client can fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// The JSON field name (`id`, `name`, `email`, `group`, or an unknown field's name).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error with the given field name and message.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a dbnode answers when it cannot perform a request. Carried in replies as
/// `{"Err": {"kind": …, "detail": …}}` so that "the node said no" is never confused with "no
/// node answered".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum ProtocolError {
    /// No record with this id.
    #[error("no user with this id")]
    NotFound,
    /// A create for an id that already exists.
    #[error("a user with this id already exists")]
    AlreadyExists,
    /// `If-Match` named a version other than the record's current one.
    #[error("the record's version is {current}, not the expected one")]
    PreconditionFailed {
        /// The record's current version (0 when it does not exist).
        current: u64,
    },
    /// The request failed validation.
    #[error("invalid request")]
    Invalid {
        /// Every offending field.
        fields: Vec<FieldError>,
    },
    /// A replica read asked for a sequence this copy has not applied yet.
    #[error("this copy has applied {applied}, behind the requested sequence")]
    Behind {
        /// The sequence this copy has applied.
        applied: u64,
    },
    /// The node cannot serve the request right now (catching up, log unreachable, lost the
    /// sequence race too often). Safe to retry with the same request id.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or a storage failure on the node.
    #[error("internal error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_crosses_the_wire() {
        let all = [
            ProtocolError::NotFound,
            ProtocolError::AlreadyExists,
            ProtocolError::PreconditionFailed { current: 7 },
            ProtocolError::Invalid {
                fields: vec![FieldError::new("email", "bad")],
            },
            ProtocolError::Behind { applied: 3 },
            ProtocolError::Unavailable("catching up".into()),
            ProtocolError::Internal("disk".into()),
        ];
        for error in all {
            let json = serde_json::to_string(&error).expect("serialises");
            assert_eq!(
                serde_json::from_str::<ProtocolError>(&json).unwrap(),
                error,
                "{json}"
            );
        }
        let json = serde_json::to_value(ProtocolError::Unavailable("x".into())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "unavailable", "detail": "x"})
        );
    }
}
