//! The `User` record, its validation rules (DESIGN.md "The record") and the partial update.
//!
//! Bodies are validated from a parsed JSON object rather than through serde's derive so that a
//! client learns about *every* offending field at once, unknown fields included.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::FieldError;

/// Longest id, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest email address, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Largest group number (2^31 − 1).
pub const MAX_GROUP: u64 = i32::MAX as u64;

/// A user record, as stored and as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({"id": "13AE742", "name": "John Doe", "email": "john.doe@gmail.com", "group": 3}))
)]
pub struct User {
    /// 1–128 bytes of printable Unicode, no `/`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub id: String,
    /// 1–256 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub name: String,
    /// A syntactically valid address (`local@domain.tld`, ASCII).
    #[cfg_attr(feature = "openapi", schema(format = "email", max_length = 254))]
    pub email: String,
    /// 0 ≤ group ≤ 2^31 − 1.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2147483647))]
    pub group: u32,
}

/// The fields a partial update changes; `None` leaves the field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPatch {
    /// New name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// New group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
}

impl UserPatch {
    /// The record after this patch: only the fields given change.
    pub fn apply(&self, user: &User) -> User {
        User {
            id: user.id.clone(),
            name: self.name.clone().unwrap_or_else(|| user.name.clone()),
            email: self.email.clone().unwrap_or_else(|| user.email.clone()),
            group: self.group.unwrap_or(user.group),
        }
    }

    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none() && self.group.is_none()
    }
}

/// Checks an id: non-empty, at most 128 bytes, printable Unicode, no `/`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("must be at most {MAX_ID_BYTES} bytes of UTF-8"));
    }
    if id.contains('/') {
        return Err("must not contain '/'".into());
    }
    if id.chars().any(char::is_control) {
        return Err("must be printable (no control characters)".into());
    }
    Ok(())
}

/// Checks a name: non-empty, at most 256 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Checks an email address: an RFC 5322 dot-atom local part, `@`, and a DNS domain of at least
/// two labels. Quoted local parts and internationalised addresses are not accepted.
pub fn validate_email(email: &str) -> Result<(), String> {
    const BAD: &str = "must be an address like name@example.com";
    if email.len() > MAX_EMAIL_BYTES {
        return Err(format!("must be at most {MAX_EMAIL_BYTES} bytes"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(BAD.into());
    };
    let atom_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atom_char));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if local_ok && labels.len() >= 2 && labels.iter().all(|l| label_ok(l)) {
        Ok(())
    } else {
        Err(BAD.into())
    }
}

fn take_string(
    map: &Map<String, Value>,
    field: &str,
    check: fn(&str) -> Result<(), String>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match map.get(field)? {
        Value::String(s) => match check(s) {
            Ok(()) => Some(s.clone()),
            Err(msg) => {
                errors.push(FieldError::new(field, msg));
                None
            }
        },
        _ => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn take_group(map: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<u32> {
    let value = map.get("group")?;
    match value.as_u64() {
        Some(g) if g <= MAX_GROUP => Some(g as u32),
        _ => {
            errors.push(FieldError::new(
                "group",
                "must be an integer from 0 to 2147483647",
            ));
            None
        }
    }
}

fn reject_unknown(map: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for key in map.keys() {
        if !matches!(key.as_str(), "id" | "name" | "email" | "group") {
            errors.push(FieldError::new(key.clone(), "unknown field"));
        }
    }
}

fn require<T>(
    value: Option<T>,
    field: &str,
    map: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    if value.is_none() && !map.contains_key(field) {
        errors.push(FieldError::new(field, "is required"));
    }
    value
}

/// Parses a create body. `id` may be absent, in which case `new_id` supplies one.
pub fn parse_create(
    body: &Value,
    new_id: impl FnOnce() -> String,
) -> Result<User, Vec<FieldError>> {
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors = Vec::new();
    reject_unknown(map, &mut errors);
    let id = take_string(map, "id", validate_id, &mut errors);
    let name = require(
        take_string(map, "name", validate_name, &mut errors),
        "name",
        map,
        &mut errors,
    );
    let email = require(
        take_string(map, "email", validate_email, &mut errors),
        "email",
        map,
        &mut errors,
    );
    let group = require(take_group(map, &mut errors), "group", map, &mut errors);
    match (name, email, group) {
        (Some(name), Some(email), Some(group)) if errors.is_empty() => {
            let id = id.unwrap_or_else(new_id);
            Ok(User {
                id,
                name,
                email,
                group,
            })
        }
        _ => Err(errors),
    }
}

/// Parses a partial-update body. With `path_id` (PUT/PATCH `/api/user/{id}`) the body may
/// repeat the id but not change it; without it (PUT `/api/user`) the body must carry the id.
/// Returns the record id and the patch.
pub fn parse_patch(
    body: &Value,
    path_id: Option<&str>,
) -> Result<(String, UserPatch), Vec<FieldError>> {
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors = Vec::new();
    reject_unknown(map, &mut errors);
    let body_id = take_string(map, "id", validate_id, &mut errors);
    let id = match (path_id, body_id) {
        (Some(path), Some(body)) if path != body => {
            errors.push(FieldError::new("id", "must match the id in the path"));
            None
        }
        (Some(path), _) => Some(path.to_owned()),
        (None, Some(body)) => Some(body),
        (None, None) => {
            if !map.contains_key("id") {
                errors.push(FieldError::new("id", "is required"));
            }
            None
        }
    };
    let patch = UserPatch {
        name: take_string(map, "name", validate_name, &mut errors),
        email: take_string(map, "email", validate_email, &mut errors),
        group: take_group(map, &mut errors),
    };
    match id {
        Some(id) if errors.is_empty() => Ok((id, patch)),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn ids() {
        for ok in [
            "a",
            "a.b",
            "a*b",
            "a>b",
            "$SRV.PING",
            "with space",
            "üñí€",
            &"x".repeat(128),
        ] {
            assert_eq!(validate_id(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "a/b",
            "tab\there",
            "nl\n",
            &"x".repeat(129),
            &"€".repeat(43),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("John Doe").is_ok());
        assert!(validate_name(&"n".repeat(256)).is_ok());
        assert!(validate_name(&"é".repeat(256)).is_ok());
        assert!(validate_name(&"n".repeat(257)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{0}b").is_err());
    }

    #[test]
    fn emails() {
        for ok in [
            "john.doe@gmail.com",
            "a+tag@x.io",
            "o'neil@sub.example.org",
            "x@a-b.co",
        ] {
            assert_eq!(validate_email(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "plain",
            "@x.com",
            "a@",
            "a@b",
            "a b@x.com",
            "a@-x.com",
            "a..b@x.com",
            ".a@x.com",
            "a@x..com",
            "a@x_y.com",
            "üser@x.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?}");
        }
        assert!(validate_email(&format!("{}@x.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn create_accepts_a_full_record() {
        let body =
            json!({"id": "13AE742", "name": "John Doe", "email": "john.doe@gmail.com", "group": 3});
        let user = parse_create(&body, || unreachable!()).unwrap();
        assert_eq!(user.id, "13AE742");
        assert_eq!(user.group, 3);
    }

    #[test]
    fn create_generates_a_missing_id() {
        let body = json!({"name": "Jo", "email": "jo@x.com", "group": 0});
        assert_eq!(parse_create(&body, || "new".into()).unwrap().id, "new");
    }

    #[test]
    fn create_names_every_offending_field() {
        let body = json!({"id": "a/b", "name": "", "email": "nope", "group": -1, "age": 3});
        let mut got = fields(parse_create(&body, || "x".into()).unwrap_err());
        got.sort();
        assert_eq!(got, ["age", "email", "group", "id", "name"]);
    }

    #[test]
    fn create_requires_name_email_group() {
        let got = fields(parse_create(&json!({}), || "x".into()).unwrap_err());
        assert_eq!(got, ["name", "email", "group"]);
    }

    #[test]
    fn group_bounds_and_types() {
        let mk = |g: Value| json!({"name": "a", "email": "a@b.cd", "group": g});
        assert!(parse_create(&mk(json!(2147483647)), || "x".into()).is_ok());
        for bad in [
            json!(2147483648u64),
            json!(-1),
            json!(1.5),
            json!("3"),
            json!(null),
        ] {
            assert!(
                parse_create(&mk(bad.clone()), || "x".into()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_object_bodies_are_rejected() {
        assert!(parse_create(&json!([1]), || "x".into()).is_err());
        assert!(parse_patch(&json!("s"), None).is_err());
    }

    #[test]
    fn patch_needs_an_id_from_body_or_path() {
        assert_eq!(
            fields(parse_patch(&json!({"name": "x"}), None).unwrap_err()),
            ["id"]
        );
        let (id, patch) = parse_patch(&json!({"id": "a", "group": 7}), None).unwrap();
        assert_eq!((id.as_str(), patch.group), ("a", Some(7)));
        let (id, _) = parse_patch(&json!({"name": "x"}), Some("p")).unwrap();
        assert_eq!(id, "p");
        assert_eq!(
            fields(parse_patch(&json!({"id": "q"}), Some("p")).unwrap_err()),
            ["id"]
        );
    }

    #[test]
    fn patch_merges_only_given_fields() {
        let user = User {
            id: "a".into(),
            name: "Ann".into(),
            email: "a@x.io".into(),
            group: 1,
        };
        let patch = UserPatch {
            email: Some("b@y.io".into()),
            ..Default::default()
        };
        let merged = patch.apply(&user);
        assert_eq!(
            merged,
            User {
                email: "b@y.io".into(),
                ..user.clone()
            }
        );
        assert_eq!(UserPatch::default().apply(&user), user);
        assert!(UserPatch::default().is_empty());
    }
}
