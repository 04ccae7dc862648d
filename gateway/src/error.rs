//! [`ApiError`]: every error the REST API returns, mapped to its status code in one `match`
//! and rendered as `application/problem+json` (RFC 9457).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::{FieldError, ProtocolError};
use serde::Serialize;
use tracing::error;

use crate::store::TransportError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// For validation errors: every offending field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A dbnode refused the request.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// No dbnode answered.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The body is not valid JSON, or a header or parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not `application/json`.
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    /// The body is larger than 64 KiB.
    #[error("the body is larger than 64 KiB")]
    PayloadTooLarge,
    /// No such route.
    #[error("no such resource")]
    NoRoute,
    /// The route exists but not for this method.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// The `Idempotency-Key` was used before for a different request.
    #[error("Idempotency-Key {0:?} was already used for a different request")]
    KeyReused(String),
    /// The first request with this `Idempotency-Key` is still in progress.
    #[error("a request with Idempotency-Key {0:?} is still in progress; retry later")]
    KeyInUse(String),
    /// The request took longer than `MAX_REQUEST_MS` in all.
    #[error("the request took too long (MAX_REQUEST_MS)")]
    RequestTimeout,
    /// The gateway serves `MAX_CONCURRENT_REQUESTS` already.
    #[error("too many requests in progress; retry shortly")]
    Overloaded,
    /// `MAX_CHANGE_FEEDS` change feeds are open already.
    #[error(
        "{0} change feeds are open, the most this gateway serves (MAX_CHANGE_FEEDS); retry later"
    )]
    TooManyFeeds(usize),
    /// No API key, or one the gateway does not know (`API_KEYS_FILE`).
    #[error("{}", if *key_given { "this API key is not valid" } else { "an API key is required: Authorization: Bearer <key>" })]
    Unauthenticated {
        /// A key was sent (and is unknown).
        key_given: bool,
    },
    /// The API key lacks the scope the call needs.
    #[error("this API key does not have the {0:?} scope")]
    Forbidden(&'static str),
    /// The store of idempotency keys cannot be reached.
    #[error("idempotency keys unavailable: {0}")]
    KeysUnavailable(String),
    /// The store of idempotency keys is full (`IDEMPOTENCY_KEY_MAX_BYTES`): nothing was done.
    #[error(
        "the Idempotency-Key store is full (IDEMPOTENCY_KEY_MAX_BYTES) until older keys expire; \
         nothing was done: send the request again later, or without an Idempotency-Key"
    )]
    KeysFull,
}

impl ApiError {
    /// A 400 for a body that failed validation.
    pub fn invalid(fields: Vec<FieldError>) -> Self {
        ApiError::Protocol(ProtocolError::Invalid { fields })
    }

    fn status(&self) -> StatusCode {
        use ProtocolError as P;
        match self {
            ApiError::Protocol(P::NotFound) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Protocol(P::AlreadyExists) | ApiError::KeyInUse(_) => StatusCode::CONFLICT,
            ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Protocol(P::PreconditionFailed { .. }) => StatusCode::PRECONDITION_FAILED,
            ApiError::Protocol(P::Invalid { .. }) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Protocol(P::Behind { .. } | P::Unavailable(_))
            | ApiError::KeysUnavailable(_)
            | ApiError::Overloaded
            | ApiError::TooManyFeeds(_)
            | ApiError::Transport(TransportError::NoResponders | TransportError::Other(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Transport(TransportError::TimedOut) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Protocol(P::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::KeysFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    fn slug(&self, status: StatusCode) -> &'static str {
        match self {
            ApiError::KeyReused(_) => return "idempotency-key-reused",
            ApiError::KeyInUse(_) => return "idempotency-key-in-use",
            ApiError::KeysFull => return "idempotency-keys-full",
            _ => {}
        }
        match status.as_u16() {
            400 => "invalid-request",
            401 => "unauthenticated",
            403 => "forbidden",
            404 => "not-found",
            405 => "method-not-allowed",
            408 => "request-timeout",
            409 => "already-exists",
            412 => "precondition-failed",
            413 => "payload-too-large",
            415 => "unsupported-media-type",
            503 => "unavailable",
            504 => "timeout",
            _ => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            error!(error = %self, "internal error");
            "internal error; see the gateway and dbnode logs".to_owned()
        } else {
            self.to_string()
        };
        let kind = format!("https://ringstore.dev/problems/{}", self.slug(status));
        let in_use = matches!(self, ApiError::KeyInUse(_));
        // RFC 6750 3: the scheme, and `invalid_token` when a key was sent.
        let challenge = match self {
            ApiError::Unauthenticated { key_given: false } => Some("Bearer realm=\"ringstore\""),
            ApiError::Unauthenticated { key_given: true } => {
                Some("Bearer realm=\"ringstore\", error=\"invalid_token\"")
            }
            _ => None,
        };
        let errors = match self {
            ApiError::Protocol(ProtocolError::Invalid { fields }) => fields,
            _ => Vec::new(),
        };
        let problem = Problem {
            kind,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).expect("problems serialise");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || in_use {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
