//! The embedded store: a snapshot directory of Parquet files held in memory, read once at
//! start. Lookups are map reads that clone `Arc`s; there is nothing to time out.
//!
//! This module knows the snapshot through `logs` only; it knows nothing of HTTP, tensors
//! or Redis.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{FeatureStore, LookupFuture, LookupKeys, RecordMap, StoreError, StoreRecords};
use crate::entities::{EpisodeRecord, ShowRecord, UserRecord};
use crate::logs::{self, Snapshot};

/// The embedded store: a snapshot held in memory, read once at start.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    users: RecordMap<UserRecord>,
    shows: RecordMap<ShowRecord>,
    episodes: RecordMap<EpisodeRecord>,
}

impl SnapshotStore {
    /// Reads a snapshot directory (`users`, `shows`, `episodes` Parquet files), or a
    /// world directory holding one.
    pub fn open(dir: &Path) -> Result<SnapshotStore, StoreError> {
        let snapshot = logs::read_snapshot(dir).map_err(|error| StoreError::Snapshot {
            path: dir.display().to_string(),
            message: error.to_string(),
        })?;
        Ok(SnapshotStore::from_snapshot(snapshot))
    }

    pub fn from_snapshot(snapshot: Snapshot) -> SnapshotStore {
        fn shared<T>(map: HashMap<String, T>) -> RecordMap<T> {
            map.into_iter()
                .map(|(id, record)| (id, Arc::new(record)))
                .collect()
        }
        SnapshotStore {
            users: shared(snapshot.users),
            shows: shared(snapshot.shows),
            episodes: shared(snapshot.episodes),
        }
    }

    /// A store that knows nothing: every lookup misses. Golden checks run against it,
    /// since golden requests carry all their features inline.
    pub fn empty() -> SnapshotStore {
        SnapshotStore::default()
    }

    /// Entity counts, for the start-up log.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.users.len(), self.shows.len(), self.episodes.len())
    }

    fn lookup_now(&self, keys: &LookupKeys) -> StoreRecords {
        fn found<T>(map: &RecordMap<T>, ids: &[String]) -> RecordMap<T> {
            ids.iter()
                .filter_map(|id| map.get(id).map(|record| (id.clone(), Arc::clone(record))))
                .collect()
        }
        StoreRecords {
            user: keys
                .user
                .as_ref()
                .and_then(|id| self.users.get(id))
                .cloned(),
            shows: found(&self.shows, &keys.shows),
            episodes: found(&self.episodes, &keys.episodes),
        }
    }
}

impl FeatureStore for SnapshotStore {
    fn backend(&self) -> &'static str {
        "snapshot"
    }

    fn lookup<'a>(&'a self, keys: &'a LookupKeys) -> LookupFuture<'a> {
        // In memory: no await point, the future is ready at once.
        let records = self.lookup_now(keys);
        Box::pin(std::future::ready(Ok(records)))
    }

    fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.users.insert(
            "u1".into(),
            UserRecord {
                id: Some("u1".into()),
                ..Default::default()
            },
        );
        snapshot.shows.insert(
            "s1".into(),
            ShowRecord {
                id: Some("s1".into()),
                ..Default::default()
            },
        );
        snapshot
    }

    /// A snapshot lookup returns known ids and leaves unknown ones out.
    #[tokio::test]
    async fn snapshot_lookup_returns_known_ids_only() {
        let store = SnapshotStore::from_snapshot(snapshot());
        let mut keys = LookupKeys {
            user: Some("u1".into()),
            ..Default::default()
        };
        keys.add_show("s1");
        keys.add_show("s2");
        keys.add_show("s1");
        assert_eq!(keys.shows, ["s1", "s2"]);
        let records = store.lookup(&keys).await.unwrap();
        assert_eq!(records.user.unwrap().id.as_deref(), Some("u1"));
        assert!(records.shows.contains_key("s1"));
        assert!(!records.shows.contains_key("s2"));
    }
}
