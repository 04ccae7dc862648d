//! LIST: the merge of per-partition pages.
//!
//! Each partition answers the first `limit` records after the cursor in bytewise id order;
//! the global first `limit` are among them, so a page costs O(limit) per partition. The
//! cursor is the last id returned, so a walk never skips or repeats a record that exists for
//! the whole walk, whatever is inserted or deleted meanwhile. Any valid id is a valid cursor (a
//! position in id order), so a cursor needs no encoding and cannot be forged into anything
//! else.

use protocol::User;
use serde::Serialize;

/// One partition's answer to a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPage {
    /// Records in id order.
    pub items: Vec<User>,
    /// The partition has records after the last item.
    pub more: bool,
}

/// A page of `GET /api/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// Users in bytewise id order.
    pub items: Vec<User>,
    /// Pass as `cursor` for the next page (it is the id this page ended at); `null` on the
    /// last page.
    #[schema(schema_with = protocol::user::schema::id_or_null)]
    pub next_cursor: Option<String>,
}

/// Merges per-partition pages into the first `limit` records overall. A partition page that
/// ends early (its byte budget) with more to come bounds the merged page: nothing past its
/// last id is returned, so the next cursor skips none of its records.
pub fn merge(pages: Vec<PartitionPage>, limit: usize) -> Page {
    let more = pages.iter().any(|p| p.more);
    let cut = pages
        .iter()
        .filter(|p| p.more)
        .filter_map(|p| p.items.last().map(|u| u.id.clone()))
        .min();
    let mut items: Vec<User> = pages.into_iter().flat_map(|p| p.items).collect();
    items.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    if let Some(cut) = cut {
        items.retain(|u| u.id <= cut);
    }
    let more = more || items.len() > limit;
    items.truncate(limit);
    let next_cursor = match items.last() {
        Some(last) if more => Some(last.id.clone()),
        _ => None,
    };
    Page { items, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(ids: &[&str]) -> Vec<User> {
        ids.iter()
            .map(|id| User {
                id: id.to_string(),
                name: "n".into(),
                email: "e@x.io".into(),
                group: 0,
            })
            .collect()
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.items.iter().map(|u| u.id.as_str()).collect()
    }

    #[test]
    fn merge_interleaves_sorted_pages_and_cuts_at_limit() {
        let pages = vec![
            PartitionPage {
                items: users(&["a", "d", "g"]),
                more: true,
            },
            PartitionPage {
                items: users(&["b", "e"]),
                more: false,
            },
            PartitionPage {
                items: users(&["c", "f", "h"]),
                more: false,
            },
        ];
        let page = merge(pages, 3);
        assert_eq!(ids(&page), ["a", "b", "c"]);
        assert_eq!(page.next_cursor, Some("c".into()));
    }

    #[test]
    fn merge_orders_bytewise() {
        let pages = vec![
            PartitionPage {
                items: users(&["Z", "ä"]),
                more: false,
            },
            PartitionPage {
                items: users(&["a"]),
                more: false,
            },
        ];
        assert_eq!(ids(&merge(pages, 10)), ["Z", "a", "ä"]);
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let pages = vec![
            PartitionPage {
                items: users(&["a"]),
                more: false,
            },
            PartitionPage {
                items: users(&["b"]),
                more: false,
            },
        ];
        assert_eq!(merge(pages.clone(), 2).next_cursor, None);
        assert_eq!(merge(pages, 5).next_cursor, None);
        assert_eq!(
            merge(vec![], 5),
            Page {
                items: vec![],
                next_cursor: None
            }
        );
    }

    #[test]
    fn a_short_page_with_more_bounds_the_merge() {
        // Partition 0 stopped at its byte budget after "b"; "c".."e" of the others must wait
        // for the next page, or partition 0's records between "b" and "e" would be skipped.
        let pages = vec![
            PartitionPage {
                items: users(&["a", "b"]),
                more: true,
            },
            PartitionPage {
                items: users(&["c", "d", "e"]),
                more: false,
            },
        ];
        let page = merge(pages, 10);
        assert_eq!(ids(&page), ["a", "b"]);
        assert_eq!(page.next_cursor, Some("b".into()));
    }

    #[test]
    fn a_partition_with_more_forces_a_cursor() {
        let pages = vec![PartitionPage {
            items: users(&["a", "b"]),
            more: true,
        }];
        assert_eq!(merge(pages, 2).next_cursor, Some("b".into()));
    }
}
