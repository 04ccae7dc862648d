//! The query parameters of LIST and COUNT, typed and checked like the bodies in [`crate::user`].

use garde::Validate;
use serde::{Deserialize, Serialize};

use crate::user::{id_rule, MAX_GROUP};

/// Default LIST page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest LIST page size.
pub const MAX_LIMIT: u32 = 1000;

/// `GET /api/users?limit=&cursor=&group=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ListParams {
    /// Page size, 1–1000 (default 50).
    #[garde(inner(range(min = 1, max = MAX_LIMIT)))]
    #[cfg_attr(feature = "openapi", param(schema_with = schema::limit))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the id that page ended at (pass it back as is).
    #[garde(inner(custom(id_rule)))]
    #[cfg_attr(feature = "openapi", param(schema_with = crate::user::schema::id))]
    pub cursor: Option<String>,
    /// Only users of this group.
    #[garde(inner(range(max = MAX_GROUP)))]
    #[cfg_attr(feature = "openapi", param(schema_with = crate::user::schema::group))]
    pub group: Option<u32>,
}

impl ListParams {
    /// The page size asked for.
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }
}

/// `GET /api/users/count?group=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct CountParams {
    /// Only users of this group.
    #[garde(inner(range(max = MAX_GROUP)))]
    #[cfg_attr(feature = "openapi", param(schema_with = crate::user::schema::group))]
    pub group: Option<u32>,
}

/// `since=` in the OpenAPI document: `beginning` (the default), `now`, or an event's `id`
/// ([`Position`]).
pub const SINCE_PATTERN: &str = r"^(beginning|now|[0-9a-f]{8}(\.[0-9]{1,20}){1,64})$";

/// `GET /api/users/changes?group=&since=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Validate)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ChangeParams {
    /// Only changes of users in this group (or that leave it), and deletes.
    #[garde(inner(range(max = MAX_GROUP)))]
    #[cfg_attr(feature = "openapi", param(schema_with = crate::user::schema::group))]
    pub group: Option<u32>,
    /// `beginning` (default: every record's latest change), `now` (only changes from now on),
    /// or an event's `id` to continue after it. A `Last-Event-ID` header takes precedence.
    #[garde(inner(custom(since_rule)))]
    #[cfg_attr(feature = "openapi", param(schema_with = schema::since))]
    pub since: Option<String>,
}

fn since_rule(since: &str, _: &()) -> garde::Result {
    since
        .parse::<Since>()
        .map(drop)
        .map_err(|_| garde::Error::new("must be `beginning`, `now` or an event id of this feed"))
}

/// Where a change feed starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Every record's latest change, then new ones.
    Beginning,
    /// Only changes committed from now on.
    Now,
    /// Right after the event whose `id` this is.
    After(Position),
}

/// A change feed's position, the `id` of its events: per partition, the last log sequence the
/// feed has passed, and a fingerprint of the logs' identities (their creation times), so that
/// a position in logs that were since recreated is not mistaken for one in the new logs.
/// Written `{fingerprint:08x}.{seq of P0}.{seq of P1}…`; clients treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Fingerprint of the logs' identities.
    pub logs: u32,
    /// Per partition, the last sequence passed.
    pub seqs: Vec<u64>,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.logs)?;
        self.seqs.iter().try_for_each(|seq| write!(f, ".{seq}"))
    }
}

/// Not a position of a change feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a change feed position")]
pub struct BadPosition;

impl std::str::FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, BadPosition> {
        let mut parts = s.split('.');
        let logs = parts.next().filter(|fp| fp.len() == 8).ok_or(BadPosition)?;
        let logs = u32::from_str_radix(logs, 16).map_err(|_| BadPosition)?;
        let seqs = parts
            .map(|seq| match seq.bytes().all(|b| b.is_ascii_digit()) {
                true => seq.parse().map_err(|_| BadPosition),
                false => Err(BadPosition),
            })
            .collect::<Result<Vec<u64>, _>>()?;
        if seqs.is_empty() || seqs.len() > 64 {
            return Err(BadPosition);
        }
        Ok(Self { logs, seqs })
    }
}

impl std::str::FromStr for Since {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, BadPosition> {
        match s {
            "beginning" => Ok(Self::Beginning),
            "now" => Ok(Self::Now),
            position => position.parse().map(Self::After),
        }
    }
}

#[cfg(feature = "openapi")]
mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};

    pub fn limit() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(1))
            .maximum(Some(super::MAX_LIMIT))
            .default(Some(super::DEFAULT_LIMIT.into()))
    }

    pub fn since() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some(super::SINCE_PATTERN))
            .default(Some("beginning".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::check;

    #[test]
    fn limits_cursors_and_groups_are_checked() {
        let list = |limit, cursor: &str, group| ListParams {
            limit,
            cursor: Some(cursor.to_owned()),
            group,
        };
        assert!(check(&list(Some(1000), "a", Some(MAX_GROUP))).is_ok());
        assert_eq!(ListParams::default().limit(), DEFAULT_LIMIT);
        let bad = check(&list(Some(0), "", Some(MAX_GROUP + 1))).unwrap_err();
        let mut fields: Vec<_> = bad.into_iter().map(|e| e.field).collect();
        fields.sort();
        assert_eq!(fields, ["cursor", "group", "limit"]);
        assert!(check(&list(Some(1001), "a", None)).is_err());
    }

    #[test]
    fn positions_round_trip_and_nothing_else_parses() {
        let at = Position {
            logs: 0x00ab_cdef,
            seqs: vec![12, 0, u64::MAX],
        };
        assert_eq!(at.to_string(), "00abcdef.12.0.18446744073709551615");
        assert_eq!(at.to_string().parse(), Ok(at.clone()));
        assert_eq!("now".parse(), Ok(Since::Now));
        assert_eq!("beginning".parse(), Ok(Since::Beginning));
        for bad in [
            "",
            "later",
            "00abcdef",
            "abcdef.1",
            "00abcdeg.1",
            "00abcdef.1.",
            "00abcdef.+1",
            "00abcdef.18446744073709551616",
            "00abcdef.1 ",
        ] {
            assert_eq!(bad.parse::<Since>(), Err(BadPosition), "{bad:?}");
        }
        let params = |since: &str| ChangeParams {
            group: None,
            since: Some(since.to_owned()),
        };
        assert!(check(&params("now")).is_ok());
        assert_eq!(check(&params("x")).unwrap_err()[0].field, "since");
    }
}
