//! Request extractors that fail with our problem+json errors instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use protocol::FieldError;
use serde_json::Value;

use crate::error::ApiError;
use crate::idempotency::KeyedRequest;

/// The largest accepted body.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON body: `application/json` (or `+json`), at most 64 KiB, well-formed.
pub struct JsonBody(pub Value);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
    }
}

/// The `If-Match` header as a version: `"7"`, `W/"7"` or `7`; `*` or absent is `None`.
/// A value that is no version can never match, so it is `Some(0)` (versions start at 1).
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value.to_str().unwrap_or("").trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        let tag = text.trim_start_matches("W/").trim_matches('"');
        Ok(IfMatch(Some(tag.parse().unwrap_or(0))))
    }
}

/// The request id of a write: derived from `Idempotency-Key` when given (so a retry returns
/// the first outcome), else fresh.
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    /// The id [`crate::idempotency::idempotent`] derived from the request's `Idempotency-Key`,
    /// else a new UUID.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(match parts.extensions.get::<KeyedRequest>() {
            Some(KeyedRequest(id)) => RequestId(id.clone()),
            None => RequestId(uuid::Uuid::new_v4().to_string()),
        })
    }
}

/// A record id from the path, percent-decoded and validated.
pub struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        protocol::user::validate_id(&id)
            .map_err(|msg| ApiError::invalid(vec![protocol::FieldError::new("id", msg)]))?;
        Ok(IdPath(id))
    }
}

/// Percent-encodes an id for use as one URL path segment (everything but RFC 3986
/// unreserved characters).
pub fn encode_segment(id: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

type Params = std::collections::HashMap<String, String>;

async fn query_params(parts: &mut Parts) -> Result<Params, ApiError> {
    let axum::extract::Query(params) =
        axum::extract::Query::<Params>::from_request_parts(parts, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(params)
}

fn group_param(params: &Params, errors: &mut Vec<FieldError>) -> Option<u32> {
    match params.get("group")?.parse::<u64>() {
        Ok(n) if n <= protocol::user::MAX_GROUP => Some(n as u32),
        _ => {
            errors.push(FieldError::new(
                "group",
                "must be an integer from 0 to 2147483647",
            ));
            None
        }
    }
}

/// The query of `GET /api/users`, validated.
pub struct ListQuery {
    /// Page size, 1..=1000, default 50.
    pub limit: u32,
    /// The id the previous page ended at, decoded from `cursor`.
    pub after: Option<String>,
    /// Only this group.
    pub group: Option<u32>,
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        use crate::list::{decode_cursor, DEFAULT_LIMIT, MAX_LIMIT};
        let params = query_params(parts).await?;
        let mut errors = Vec::new();
        let limit = match params.get("limit").map(|l| l.parse::<u32>()) {
            None => DEFAULT_LIMIT,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                errors.push(FieldError::new(
                    "limit",
                    "must be an integer from 1 to 1000",
                ));
                DEFAULT_LIMIT
            }
        };
        let cursor = params.get("cursor").filter(|c| !c.is_empty());
        let after = cursor.and_then(|c| decode_cursor(c));
        if cursor.is_some() && after.is_none() {
            errors.push(FieldError::new(
                "cursor",
                "is not a cursor this API returned",
            ));
        }
        let group = group_param(&params, &mut errors);
        if errors.is_empty() {
            Ok(ListQuery {
                limit,
                after,
                group,
            })
        } else {
            Err(ApiError::invalid(errors))
        }
    }
}

/// The query of `GET /api/users/count`, validated.
pub struct CountQuery {
    /// Only this group.
    pub group: Option<u32>,
}

impl<S: Send + Sync> FromRequestParts<S> for CountQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = query_params(parts).await?;
        let mut errors = Vec::new();
        let group = group_param(&params, &mut errors);
        if errors.is_empty() {
            Ok(CountQuery { group })
        } else {
            Err(ApiError::invalid(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("a.b-c_d~"), "a.b-c_d~");
        assert_eq!(encode_segment("a b/ü"), "a%20b%2F%C3%BC");
    }
}
