//! REST authentication (docs/design.md "Authentication"): API keys with scopes, stored hashed.
//!
//! With `API_KEYS_FILE` set, every `/api/**` call needs `Authorization: Bearer <key>`:
//! reads need the `read` scope, writes `write`, and `/api/cluster` and `/metrics` `admin`.
//! A missing or unknown key is 401 with `WWW-Authenticate: Bearer`; a key without the scope,
//! 403. `/health`, `/ready` and `/openapi.json` stay open.
//!
//! The file holds one key per line, `<name> sha256:<hex of SHA-256 of the key> <scopes>`, e.g.
//!
//! ```text
//! # name      hash                                                                     scopes
//! ci          sha256:8d9b0a7f3c0e5d6a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899  read,write,admin
//! ```
//!
//! Keys are random 256-bit tokens (`scripts/api-key` makes one), so a plain SHA-256 protects
//! them as well as a slow password hash would, at no cost per request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use headers::authorization::Bearer;
use headers::{Authorization, HeaderMapExt};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `GET` (and `HEAD`) of `/api/user*` and `/api/users*`.
    Read,
    /// `POST`, `PUT`, `PATCH`, `DELETE` of `/api/**`.
    Write,
    /// `/api/cluster` and `/metrics`.
    Admin,
}

impl Scope {
    /// Its name in the keys file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        [Scope::Read, Scope::Write, Scope::Admin]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// The scope a request needs; `None` for the open routes.
    pub fn needed(method: &Method, path: &str) -> Option<Scope> {
        if path == "/metrics" || path == "/api/cluster" || path.starts_with("/api/cluster/") {
            return Some(Scope::Admin);
        }
        if path != "/api" && !path.starts_with("/api/") {
            return None;
        }
        Some(match *method {
            Method::GET | Method::HEAD => Scope::Read,
            _ => Scope::Write,
        })
    }
}

/// Who made a request: the name of its key. Idempotency keys are scoped by it, so that no
/// caller can replay another's response. Absent without authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

#[derive(Debug)]
struct Holder {
    caller: Caller,
    scopes: Vec<Scope>,
}

/// The keys a gateway accepts, by hash.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Holder>,
}

/// `sha256:<hex>` of `key`, as the keys file stores it.
pub fn hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl ApiKeys {
    /// Reads a keys file.
    pub fn load(path: &Path) -> anyhow::Result<ApiKeys> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("API_KEYS_FILE {}: {e}", path.display()))?;
        ApiKeys::parse(&text).map_err(|e| anyhow::anyhow!("API_KEYS_FILE {}: {e}", path.display()))
    }

    /// Parses the keys file format (module docs); refuses a file with no key, so that a
    /// mistake cannot lock every client out silently.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}", number + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, hashed, scopes] = fields[..] else {
                return Err(bad("expected `<name> sha256:<hex> <scope>,<scope>`"));
            };
            let digest = hashed
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| bad("the hash must be sha256: and 64 hex digits"))?;
            let scopes = scopes
                .split(',')
                .map(|s| Scope::parse(s.trim()).ok_or_else(|| bad("scopes are read, write, admin")))
                .collect::<Result<Vec<_>, _>>()?;
            let holder = Holder {
                caller: Caller(Arc::from(name)),
                scopes,
            };
            if keys.by_hash.insert(digest, holder).is_some() {
                return Err(bad("the same key is listed twice"));
            }
        }
        if keys.by_hash.is_empty() {
            return Err("no keys".into());
        }
        Ok(keys)
    }

    fn find(&self, key: &str) -> Option<&Holder> {
        self.by_hash
            .get(&<[u8; 32]>::from(Sha256::digest(key.as_bytes())))
    }
}

/// Middleware (only with `API_KEYS_FILE`): checks the bearer key of every request that needs
/// a scope and records its [`Caller`].
pub async fn authenticate(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(needed) = Scope::needed(request.method(), request.uri().path()) {
        let Some(bearer) = request.headers().typed_get::<Authorization<Bearer>>() else {
            return ApiError::Unauthenticated { key_given: false }.into_response();
        };
        let caller = match keys.find(bearer.token()) {
            None => return ApiError::Unauthenticated { key_given: true }.into_response(),
            Some(holder) if !holder.scopes.contains(&needed) => {
                return ApiError::Forbidden(needed.as_str()).into_response()
            }
            Some(holder) => holder.caller.clone(),
        };
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_their_scope() {
        let needed = |m: Method, p: &str| Scope::needed(&m, p);
        assert_eq!(needed(Method::GET, "/api/user/a"), Some(Scope::Read));
        assert_eq!(needed(Method::GET, "/api/users/count"), Some(Scope::Read));
        assert_eq!(needed(Method::DELETE, "/api/user/a"), Some(Scope::Write));
        assert_eq!(needed(Method::POST, "/api/user"), Some(Scope::Write));
        assert_eq!(needed(Method::GET, "/api/cluster"), Some(Scope::Admin));
        assert_eq!(needed(Method::GET, "/metrics"), Some(Scope::Admin));
        for open in ["/health", "/ready", "/openapi.json", "/apiary", "/"] {
            assert_eq!(needed(Method::GET, open), None, "{open}");
        }
    }

    #[test]
    fn keys_files_are_checked() {
        let line = |name: &str, key: &str, scopes: &str| format!("{name} {} {scopes}\n", hash(key));
        let text = format!(
            "# comment\n\n{}{}",
            line("ci", "k1", "read,write,admin"),
            line("reader", "k2", "read")
        );
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(&*keys.find("k1").unwrap().caller.0, "ci");
        assert_eq!(keys.find("k2").unwrap().scopes, [Scope::Read]);
        assert!(keys.find("k3").is_none());
        for bad in [
            String::new(),
            "ci k1 read\n".into(),
            "ci sha256:abcd read\n".into(),
            line("ci", "k1", "read,root"),
            line("ci", "k1", "read") + &line("again", "k1", "write"),
        ] {
            assert!(ApiKeys::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
