//! The `User` record and the request bodies that make and change it (docs/design.md "The record"),
//! as one typed model: serde reads them, [`garde`] checks the record rules, and (with the
//! `openapi` feature) the same types are the OpenAPI schemas, built from the same constants.
//!
//! [`parse`] turns a JSON body into one of these types: a body of the wrong shape (wrong JSON
//! type, unknown field, `null` for a required field) is refused at the first such field, with
//! its path; a body of the right shape is then checked by every rule and *every* offending
//! field is named.

use garde::Validate;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::FieldError;

/// Longest id, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest email address, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest local part of an email address, in bytes (RFC 5321).
pub const MAX_LOCAL_PART_BYTES: usize = 64;
/// Largest group number (2^31 − 1).
pub const MAX_GROUP: u32 = i32::MAX as u32;

/// An id in the OpenAPI document (ECMA-262): no C0/C1 control character, no `/`.
pub const ID_PATTERN: &str = r"^[^/\u0000-\u001F\u007F-\u009F]+$";
/// A name in the OpenAPI document: no control character, something besides white space.
pub const NAME_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";
/// An email address in the OpenAPI document: a dot-atom local part, `@`, and a DNS name of at
/// least two labels (letters, digits, inner hyphens, 1–63 characters each).
pub const EMAIL_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

/// A user record, as stored and as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({"id": "13AE742", "name": "John Doe", "email": "john.doe@gmail.com", "group": 3}))
)]
pub struct User {
    /// 1–128 bytes of UTF-8, no control character, no `/`.
    #[garde(custom(id_rule))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::id))]
    pub id: String,
    /// 1–256 characters, no control character, not only white space.
    #[garde(custom(name_rule))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// `local@domain.tld`, ASCII, at most 254 bytes.
    #[garde(custom(email_rule))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::email))]
    pub email: String,
    /// 0 ≤ group ≤ 2^31 − 1.
    #[serde(deserialize_with = "group")]
    #[garde(range(max = MAX_GROUP))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::group))]
    pub group: u32,
}

/// The body of a create: a user whose `id` may be omitted (the gateway generates a UUID v4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewUser {
    /// 1–128 bytes of UTF-8, no control character, no `/`; generated when absent.
    #[serde(default, deserialize_with = "not_null")]
    #[garde(inner(custom(id_rule)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::id))]
    pub id: Option<String>,
    /// 1–256 characters, no control character, not only white space.
    #[garde(custom(name_rule))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: String,
    /// `local@domain.tld`, ASCII, at most 254 bytes.
    #[garde(custom(email_rule))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::email))]
    pub email: String,
    /// 0 ≤ group ≤ 2^31 − 1.
    #[serde(deserialize_with = "group")]
    #[garde(range(max = MAX_GROUP))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::group))]
    pub group: u32,
}

impl NewUser {
    /// The record to create, with `new_id` when the body had no id.
    pub fn into_user(self, new_id: impl FnOnce() -> String) -> User {
        User {
            id: self.id.unwrap_or_else(new_id),
            name: self.name,
            email: self.email,
            group: self.group,
        }
    }
}

/// A partial update (JSON merge patch, RFC 7396) of the user a path names: only the fields
/// given change. Every field of a user is required, so `null` (which would remove a field) is
/// refused. The body may repeat the path's id (a client that sends back the record it read);
/// the gateway refuses another one. The document leaves `id` out: it cannot say "equal to the
/// path's".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserPatch {
    /// The path's id, repeated.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(custom(id_rule)))]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub id: Option<String>,
    /// New name.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(custom(name_rule)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: Option<String>,
    /// New email.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(custom(email_rule)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::email))]
    pub email: Option<String>,
    /// New group.
    #[serde(
        default,
        deserialize_with = "some_group",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(range(max = MAX_GROUP)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::group))]
    pub group: Option<u32>,
}

impl UserPatch {
    /// The record after this patch: only the fields given change (never the id).
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

/// The body of `PUT /api/user`: a partial update that names its user by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserUpdate {
    /// The user to change.
    #[garde(custom(id_rule))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::id))]
    pub id: String,
    /// New name.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(custom(name_rule)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::name))]
    pub name: Option<String>,
    /// New email.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(custom(email_rule)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::email))]
    pub email: Option<String>,
    /// New group.
    #[serde(
        default,
        deserialize_with = "some_group",
        skip_serializing_if = "Option::is_none"
    )]
    #[garde(inner(range(max = MAX_GROUP)))]
    #[cfg_attr(feature = "openapi", schema(schema_with = schema::group))]
    pub group: Option<u32>,
}

impl UserUpdate {
    /// The user it names and the change.
    pub fn into_parts(self) -> (String, UserPatch) {
        let patch = UserPatch {
            id: None,
            name: self.name,
            email: self.email,
            group: self.group,
        };
        (self.id, patch)
    }
}

/// An optional field that, when present, must not be `null`: `null` in a merge patch removes
/// a field, and no field of a user can be removed.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "must not be null: every field of a user is required",
        )),
    }
}

/// A group: a JSON integer, which JSON Schema lets a client write as `3` or `3.0`.
fn group<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    integral(f64::deserialize(deserializer)?)
}

fn some_group<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    not_null::<D, f64>(deserializer)?.map(integral).transpose()
}

fn integral<E: serde::de::Error>(n: f64) -> Result<u32, E> {
    // Every u32 is exact in an f64; the range rule then bounds it to MAX_GROUP.
    if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(E::custom(format!(
            "must be an integer from 0 to {MAX_GROUP}"
        )))
    }
}

/// Reads a request body of type `T` and checks it by the record rules.
pub fn parse<T: DeserializeOwned + Validate<Context = ()>>(
    body: &[u8],
) -> Result<T, Vec<FieldError>> {
    // serde would also read a struct from a JSON array, by position.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." || field == "?" {
            String::new()
        } else {
            field
        };
        vec![FieldError::new(field, e.into_inner().to_string())]
    })?;
    check(&value)?;
    Ok(value)
}

/// Checks `value` by the record rules, naming every offending field.
pub fn check<T: Validate<Context = ()>>(value: &T) -> Result<(), Vec<FieldError>> {
    value.validate().map_err(|report| {
        report
            .iter()
            .map(|(path, error)| FieldError::new(path.to_string(), error.message()))
            .collect()
    })
}

fn no_control(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// An id: 1–128 bytes, no control character, no `/` (it appears in URL paths).
pub fn id_rule(id: &str, _: &()) -> garde::Result {
    if id.is_empty() {
        Err(garde::Error::new("must not be empty"))
    } else if id.len() > MAX_ID_BYTES {
        Err(garde::Error::new(format!(
            "must be at most {MAX_ID_BYTES} bytes of UTF-8"
        )))
    } else if id.contains('/') {
        Err(garde::Error::new("must not contain '/'"))
    } else if !no_control(id) {
        Err(garde::Error::new(
            "must be printable (no control characters)",
        ))
    } else {
        Ok(())
    }
}

fn name_rule(name: &str, _: &()) -> garde::Result {
    if name.trim().is_empty() {
        Err(garde::Error::new("must not be empty or only white space"))
    } else if name.chars().count() > MAX_NAME_CHARS {
        Err(garde::Error::new(format!(
            "must be at most {MAX_NAME_CHARS} characters"
        )))
    } else if !no_control(name) {
        Err(garde::Error::new("must not contain control characters"))
    } else {
        Ok(())
    }
}

/// An RFC 5322 dot-atom local part, `@`, and a DNS domain of at least two labels. Quoted local
/// parts and internationalised addresses are not accepted.
fn email_rule(email: &str, _: &()) -> garde::Result {
    if email.len() > MAX_EMAIL_BYTES {
        return Err(garde::Error::new(format!(
            "must be at most {MAX_EMAIL_BYTES} bytes"
        )));
    }
    let bad = || garde::Error::new("must be an address like name@example.com");
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    let atom_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let local_ok = !local.is_empty()
        && local.len() <= MAX_LOCAL_PART_BYTES
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
        Err(bad())
    }
}

/// The OpenAPI schemas of the fields, from the constants the rules above use.
#[cfg(feature = "openapi")]
pub mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, SchemaType, Type};
    use utoipa::openapi::KnownFormat;

    use super::*;

    fn string(description: &str, pattern: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(description))
            .pattern(Some(pattern))
    }

    /// A record id (body field, path segment or cursor).
    pub fn id() -> ObjectBuilder {
        string(
            "1-128 bytes of UTF-8 (at most 128 characters, fewer when they are not ASCII), no control character, no '/'",
            ID_PATTERN,
        )
        .min_length(Some(1))
        .max_length(Some(MAX_ID_BYTES))
    }

    /// A record id, or `null`.
    pub fn id_or_null() -> ObjectBuilder {
        id().schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
    }

    /// A name.
    pub fn name() -> ObjectBuilder {
        string(
            "1-256 characters, no control character, not only white space",
            NAME_PATTERN,
        )
        .min_length(Some(1))
        .max_length(Some(MAX_NAME_CHARS))
    }

    /// An email address.
    pub fn email() -> ObjectBuilder {
        string(
            "An ASCII address: a dot-atom local part of at most 64 bytes, '@', a DNS name of at least two labels",
            EMAIL_PATTERN,
        )
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .max_length(Some(MAX_EMAIL_BYTES))
    }

    /// A group number.
    pub fn group() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(0))
            .maximum(Some(MAX_GROUP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        let mut fields: Vec<String> = errors.into_iter().map(|e| e.field).collect();
        fields.sort();
        fields
    }

    fn id_ok(id: &str) -> bool {
        id_rule(id, &()).is_ok()
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
            assert!(id_ok(ok), "{ok:?}");
        }
        for bad in [
            "",
            "a/b",
            "tab\there",
            "nl\n",
            "c1\u{85}",
            &"x".repeat(129),
            &"€".repeat(43),
        ] {
            assert!(!id_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        let ok = |n: &str| name_rule(n, &()).is_ok();
        assert!(ok("John Doe"));
        assert!(ok(&"n".repeat(256)));
        assert!(ok(&"é".repeat(256)));
        assert!(!ok(&"n".repeat(257)));
        assert!(!ok(""));
        assert!(!ok("   "));
        assert!(!ok("a\u{0}b"));
    }

    #[test]
    fn emails() {
        let ok = |e: &str| email_rule(e, &()).is_ok();
        for good in [
            "john.doe@gmail.com",
            "a+tag@x.io",
            "o'neil@sub.example.org",
            "x@a-b.co",
        ] {
            assert!(ok(good), "{good:?}");
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
            assert!(!ok(bad), "{bad:?}");
        }
        assert!(!ok(&format!("{}@x.com", "a".repeat(65))));
    }

    #[test]
    fn create_accepts_a_full_record() {
        let body =
            br#"{"id": "13AE742", "name": "John Doe", "email": "john.doe@gmail.com", "group": 3}"#;
        let user = parse::<NewUser>(body).unwrap().into_user(|| unreachable!());
        assert_eq!(user.id, "13AE742");
        assert_eq!(user.group, 3);
    }

    #[test]
    fn create_generates_a_missing_id() {
        let body = br#"{"name": "Jo", "email": "jo@x.com", "group": 0}"#;
        let user = parse::<NewUser>(body).unwrap().into_user(|| "new".into());
        assert_eq!(user.id, "new");
    }

    #[test]
    fn rule_violations_name_every_offending_field() {
        let body = br#"{"id": "a/b", "name": "", "email": "nope", "group": 2147483648}"#;
        // 2^31 fits a u32: the range rule, not the type, refuses it.
        assert_eq!(
            fields(parse::<NewUser>(body).unwrap_err()),
            ["email", "group", "id", "name"]
        );
    }

    #[test]
    fn shape_errors_name_the_field() {
        let err = |body: &[u8]| parse::<NewUser>(body).unwrap_err();
        let unknown = err(br#"{"name": "a", "email": "a@b.cd", "group": 1, "age": 3}"#);
        assert_eq!(unknown[0].field, "age");
        assert!(
            unknown[0].message.contains("unknown field `age`"),
            "{unknown:?}"
        );
        let missing = err(br#"{"name": "a", "email": "a@b.cd"}"#);
        assert!(
            missing[0].message.contains("missing field `group`"),
            "{missing:?}"
        );
        for bad in ["-1", "1.5", "\"3\"", "null", "4294967296", "1e300"] {
            let body = format!(r#"{{"name": "a", "email": "a@b.cd", "group": {bad}}}"#);
            assert_eq!(fields(err(body.as_bytes())), ["group"], "{bad}");
        }
        let integral = br#"{"name": "a", "email": "a@b.cd", "group": 3.0}"#;
        assert_eq!(parse::<NewUser>(integral).unwrap().group, 3);
        assert_eq!(fields(err(b"[1]")), [""]);
        assert_eq!(fields(err(b"{")), [""]);
    }

    #[test]
    fn null_in_a_merge_patch_is_refused() {
        for field in ["id", "name", "email", "group"] {
            let body = format!(r#"{{"{field}": null}}"#);
            let errors = parse::<UserPatch>(body.as_bytes()).unwrap_err();
            assert_eq!(errors[0].field, field);
            assert!(errors[0].message.contains("must not be null"), "{errors:?}");
        }
        let patch = parse::<UserPatch>(br#"{"id": "a", "group": 7}"#).unwrap();
        assert_eq!((patch.id.as_deref(), patch.group), (Some("a"), Some(7)));
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
        assert_eq!(
            patch.apply(&user),
            User {
                email: "b@y.io".into(),
                ..user.clone()
            }
        );
        assert_eq!(UserPatch::default().apply(&user), user);
        assert!(UserPatch::default().is_empty());
    }
}
