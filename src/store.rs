//! The feature store: users, shows and episodes by id, fetched in one batch per request.
//!
//! [`FeatureStore`] is async and batched so that a networked backend (Redis: one key per
//! entity, one `MGET` per request) fits behind it; [`SnapshotStore`] is the embedded
//! default, a Parquet snapshot held in memory. [`lookup_or_cold_start`] is where a slow
//! or failing backend is cut off: the request then goes on without stored features (the
//! cold-start path) instead of failing.
//!
//! This module knows nothing of HTTP, tensors or the model.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::entities::{EpisodeRecord, ShowRecord, UserRecord};
use crate::logs::{self, Snapshot};

/// The ids one request needs, each at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupKeys {
    pub user: Option<String>,
    pub shows: Vec<String>,
    pub episodes: Vec<String>,
}

impl LookupKeys {
    /// Adds a show id unless already present; requests repeat shows across candidates.
    pub fn add_show(&mut self, id: &str) {
        if !self.shows.iter().any(|known| known == id) {
            self.shows.push(id.to_string());
        }
    }

    pub fn add_episode(&mut self, id: &str) {
        if !self.episodes.iter().any(|known| known == id) {
            self.episodes.push(id.to_string());
        }
    }
}

/// What the store knew of a request's keys. A key it did not know is simply absent.
/// Records are shared, not copied: a snapshot lookup clones `Arc`s only.
#[derive(Debug, Clone, Default)]
pub struct StoreRecords {
    pub user: Option<Arc<UserRecord>>,
    pub shows: HashMap<String, Arc<ShowRecord>>,
    pub episodes: HashMap<String, Arc<EpisodeRecord>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("feature store unavailable: {0}")]
    Unavailable(String),
    #[error("reading feature snapshot {path}: {message}")]
    Snapshot { path: String, message: String },
}

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StoreRecords, StoreError>> + Send + 'a>>;

/// A source of entity records. One call per request fetches everything it needs, so a
/// networked backend pays one round trip, not one per candidate.
pub trait FeatureStore: Send + Sync + std::fmt::Debug {
    /// A short, fixed name for logs and `/readyz` (`snapshot`, `redis`).
    fn backend(&self) -> &'static str;

    /// Fetches the user, shows and episodes of `keys` in one batch.
    fn lookup<'a>(&'a self, keys: &'a LookupKeys) -> LookupFuture<'a>;

    /// Whether lookups are expected to succeed now (`/readyz`).
    fn ready(&self) -> bool;
}

/// Why a lookup fell back to the cold-start path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    Timeout,
    Error,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::Error => "error",
        }
    }
}

/// Looks `keys` up within `timeout`; on timeout or error, goes on with no stored records,
/// so that every candidate takes the cold-start path rather than the request failing.
/// The caller counts the fallback.
pub async fn lookup_or_cold_start(
    store: &dyn FeatureStore,
    keys: &LookupKeys,
    timeout: Duration,
) -> (StoreRecords, Option<Fallback>) {
    match tokio::time::timeout(timeout, store.lookup(keys)).await {
        Ok(Ok(records)) => (records, None),
        Ok(Err(error)) => {
            tracing::warn!(backend = store.backend(), %error, "feature lookup failed; cold-start path");
            (StoreRecords::default(), Some(Fallback::Error))
        }
        Err(_) => {
            tracing::warn!(
                backend = store.backend(),
                ?timeout,
                "feature lookup timed out; cold-start path"
            );
            (StoreRecords::default(), Some(Fallback::Timeout))
        }
    }
}

/// The embedded store: a snapshot held in memory, read once at start.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    users: HashMap<String, Arc<UserRecord>>,
    shows: HashMap<String, Arc<ShowRecord>>,
    episodes: HashMap<String, Arc<EpisodeRecord>>,
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
        fn shared<T>(map: HashMap<String, T>) -> HashMap<String, Arc<T>> {
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
        fn found<T>(map: &HashMap<String, Arc<T>>, ids: &[String]) -> HashMap<String, Arc<T>> {
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

    #[derive(Debug)]
    struct Failing;

    impl FeatureStore for Failing {
        fn backend(&self) -> &'static str {
            "failing"
        }
        fn lookup<'a>(&'a self, _keys: &'a LookupKeys) -> LookupFuture<'a> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }
        fn ready(&self) -> bool {
            false
        }
    }

    #[derive(Debug)]
    struct Hanging;

    impl FeatureStore for Hanging {
        fn backend(&self) -> &'static str {
            "hanging"
        }
        fn lookup<'a>(&'a self, _keys: &'a LookupKeys) -> LookupFuture<'a> {
            Box::pin(std::future::pending())
        }
        fn ready(&self) -> bool {
            true
        }
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

    /// A failing or hanging backend yields empty records and says why, never an error.
    #[tokio::test]
    async fn failing_and_hanging_backends_fall_back_to_cold_start() {
        let keys = LookupKeys {
            user: Some("u1".into()),
            ..Default::default()
        };
        let (records, fallback) =
            lookup_or_cold_start(&Failing, &keys, Duration::from_secs(1)).await;
        assert!(records.user.is_none());
        assert_eq!(fallback, Some(Fallback::Error));
        let (records, fallback) =
            lookup_or_cold_start(&Hanging, &keys, Duration::from_millis(5)).await;
        assert!(records.user.is_none());
        assert_eq!(fallback, Some(Fallback::Timeout));
    }
}
