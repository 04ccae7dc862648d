//! What a write does to a record, decided against the writer's current state. Pure logic shared
//! by the dbnode and the gateway's in-memory test store:
//! the caller supplies the state and commits the resulting entry to the log.

use crate::{ProtocolError, User, VersionedUser, WriteKind};

/// The record after `write`, or `None` for a delete; or why the write is refused.
pub fn decide(
    current: Option<&VersionedUser>,
    write: &WriteKind,
) -> Result<Option<User>, ProtocolError> {
    let check = |if_match: &Option<Vec<u64>>, version: u64| match if_match {
        Some(expected) if !expected.contains(&version) => {
            Err(ProtocolError::PreconditionFailed { current: version })
        }
        _ => Ok(()),
    };
    match (write, current) {
        (WriteKind::Create { .. }, Some(_)) => Err(ProtocolError::AlreadyExists),
        (WriteKind::Create { user }, None) => Ok(Some(user.clone())),
        (WriteKind::Update { .. } | WriteKind::Delete { .. }, None) => Err(ProtocolError::NotFound),
        (
            WriteKind::Update {
                patch, if_match, ..
            },
            Some(cur),
        ) => {
            check(if_match, cur.version)?;
            Ok(Some(patch.apply(&cur.user)))
        }
        (WriteKind::Delete { if_match, .. }, Some(cur)) => {
            check(if_match, cur.version)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserPatch;

    fn ann(version: u64) -> VersionedUser {
        let user = User {
            id: "a".into(),
            name: "Ann".into(),
            email: "a@x.io".into(),
            group: 1,
        };
        VersionedUser { user, version }
    }

    #[test]
    fn create_only_when_absent() {
        let create = WriteKind::Create { user: ann(0).user };
        assert_eq!(decide(None, &create), Ok(Some(ann(0).user)));
        assert_eq!(
            decide(Some(&ann(3)), &create),
            Err(ProtocolError::AlreadyExists)
        );
    }

    #[test]
    fn update_merges_and_checks_if_match() {
        let patch = UserPatch {
            group: Some(9),
            ..Default::default()
        };
        let update = |if_match| WriteKind::Update {
            id: "a".into(),
            patch: patch.clone(),
            if_match,
        };
        assert_eq!(decide(None, &update(None)), Err(ProtocolError::NotFound));
        assert_eq!(
            decide(Some(&ann(3)), &update(None)).unwrap().unwrap().group,
            9
        );
        assert!(decide(Some(&ann(3)), &update(Some(vec![3]))).is_ok());
        assert!(decide(Some(&ann(3)), &update(Some(vec![2, 3]))).is_ok());
        assert!(decide(Some(&ann(3)), &update(Some(vec![]))).is_err());
        assert_eq!(
            decide(Some(&ann(3)), &update(Some(vec![2]))),
            Err(ProtocolError::PreconditionFailed { current: 3 })
        );
    }

    #[test]
    fn delete_needs_the_record_and_a_matching_version() {
        let delete = |if_match| WriteKind::Delete {
            id: "a".into(),
            if_match,
        };
        assert_eq!(decide(None, &delete(None)), Err(ProtocolError::NotFound));
        assert_eq!(decide(Some(&ann(3)), &delete(None)), Ok(None));
        assert!(decide(Some(&ann(3)), &delete(Some(vec![4]))).is_err());
    }
}
