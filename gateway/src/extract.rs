//! Request extractors that fail with our problem+json errors instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use headers::{ContentType, HeaderMapExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use protocol::FieldError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest accepted body.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON request body of type `T` (`application/json` or any `+json` type, at most 64 KiB),
/// read and checked by [`protocol::user::parse`].
pub struct JsonBody<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .typed_get::<ContentType>()
        .map(mime::Mime::from)
        .is_some_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        })
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + garde::Validate<Context = ()>,
{
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
        protocol::user::parse(&bytes)
            .map(JsonBody)
            .map_err(ApiError::invalid)
    }
}

/// `Last-Event-ID`: the resume token of the last change-feed event a client received (sent by
/// an `EventSource` when it reconnects). Malformed: 400 naming the header.
pub struct LastEventId(pub Option<protocol::Position>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("last-event-id") else {
            return Ok(LastEventId(None));
        };
        value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(|position| LastEventId(Some(position)))
            .ok_or_else(|| {
                ApiError::invalid(vec![FieldError::new(
                    "Last-Event-ID",
                    "must be the id of an event of this feed",
                )])
            })
    }
}

/// `If-Match` (RFC 9110 13.1.1): `*` or absent is `None`; else the versions any of which the
/// record must have. Comparison is strong: a weak tag (`W/"7"`) or a tag that is no version
/// can never match (an empty list, so 412). A bare number (`7`) is read as `"7"`, for clients
/// of earlier versions. Any other value that is not an entity-tag list is 400.
pub struct IfMatch(pub Option<Vec<u64>>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(header::IF_MATCH).iter().peekable();
        if values.peek().is_none() {
            return Ok(IfMatch(None));
        }
        let mut versions = Vec::new();
        for value in values {
            let text = value.to_str().unwrap_or("\0").trim();
            if text == "*" {
                return Ok(IfMatch(None));
            }
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                // A bare version, as ringstore accepted before it parsed entity-tags.
                versions.extend(text.parse::<u64>().ok());
                continue;
            }
            let tags = entity_tags(text).ok_or_else(|| {
                ApiError::invalid(vec![FieldError::new(
                    "If-Match",
                    "must be * or entity-tags (each a quoted string, W/ if weak) separated by commas",
                )])
            })?;
            versions.extend(tags.into_iter().filter(|t| !t.weak).filter_map(|t| {
                // Our tags are versions in decimal, as `ETag` sends them.
                (t.opaque.bytes().all(|b| b.is_ascii_digit()) && !t.opaque.starts_with('0'))
                    .then(|| t.opaque.parse::<u64>().ok())
                    .flatten()
            }));
        }
        Ok(IfMatch(Some(versions)))
    }
}

/// One entity-tag of an `If-Match` list.
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// Parses `1#entity-tag` (RFC 9110 5.6.1 and 8.8.3): tags separated by commas with optional
/// spaces; `None` if `text` is not such a list ([`crate::openapi`] documents the same
/// grammar as a pattern). The `headers` crate parses this header leniently and does not let
/// us enumerate the tags, which the dbnode (it alone knows the current version) needs.
fn entity_tags(text: &str) -> Option<Vec<EntityTag<'_>>> {
    let ows = [' ', '\t'];
    let mut tags = Vec::new();
    let mut rest = text.trim_start_matches(ows);
    loop {
        let (weak, quoted) = match rest.strip_prefix("W/") {
            Some(quoted) => (true, quoted),
            None => (false, rest),
        };
        let quoted = quoted.strip_prefix('"')?;
        let end = quoted.find('"')?;
        let opaque = &quoted[..end];
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
        {
            return None;
        }
        tags.push(EntityTag { weak, opaque });
        rest = quoted[end + 1..].trim_start_matches(ows);
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix(',')?.trim_start_matches(ows);
    }
}

/// The request id of a write: derived from `Idempotency-Key` when given (so a retry returns
/// the first outcome), else fresh.
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    /// The id [`crate::idempotency::idempotent`] derived from the request's `Idempotency-Key`,
    /// else a new UUID v7: time-ordered, so that the copies' request-outcome keys
    /// (`q{request_id}`) land next to the last ones inserted in RocksDB's memtable instead of
    /// at a random place in it (dbnode CPU per write about 5 % lower than with random v4 ids;
    /// BENCHMARKS.md, round 2 session 11).
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(match parts.extensions.get::<KeyedRequest>() {
            Some(KeyedRequest(id)) => RequestId(id.clone()),
            None => RequestId(uuid::Uuid::now_v7().to_string()),
        })
    }
}

/// The request id (and so the log-level identity) of a request made with an idempotency key,
/// set by [`crate::idempotency::idempotent`] for the handlers.
#[derive(Debug, Clone)]
pub struct KeyedRequest(pub String);

impl RequestId {
    /// A UUID v4 derived from this request id: the id a create without one gets, the same on
    /// every retry of the request.
    pub fn generated_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = Sha256::digest(self.0.as_bytes());
        let mut random = [0u8; 16];
        random.copy_from_slice(&bytes[..16]);
        uuid::Builder::from_random_bytes(random)
            .into_uuid()
            .to_string()
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
        protocol::user::id_rule(&id, &())
            .map_err(|e| ApiError::invalid(vec![FieldError::new("id", e.message())]))?;
        Ok(IdPath(id))
    }
}

/// Percent-encodes an id for use as one URL path segment (everything but RFC 3986
/// unreserved characters).
pub fn encode_segment(id: &str) -> String {
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(id, RESERVED).to_string()
}

/// A query string read as `T` and checked by the record rules; the field a value does not
/// parse for is named.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned + garde::Validate<Context = ()>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        let value: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            ApiError::invalid(vec![FieldError::new(field, e.into_inner().to_string())])
        })?;
        protocol::user::check(&value).map_err(ApiError::invalid)?;
        Ok(Query(value))
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

    #[test]
    fn entity_tag_lists() {
        let tags = |t: &str| {
            entity_tags(t).map(|tags| {
                tags.into_iter()
                    .map(|t| format!("{}{}", if t.weak { "W/" } else { "" }, t.opaque))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(tags(r#""7""#), Some(vec!["7".to_owned()]));
        assert_eq!(
            tags(r#""5", W/"6" ,"x,y""#),
            Some(vec!["5".to_owned(), "W/6".to_owned(), "x,y".to_owned()])
        );
        for bad in [
            "7",
            "W/7",
            r#""7"#,
            r#""a"b""#,
            "",
            r#""5",,"6""#,
            "null",
            r#""5","#,
        ] {
            assert!(tags(bad).is_none(), "{bad:?}");
        }
    }
}
