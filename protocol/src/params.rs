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
}
