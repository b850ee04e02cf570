//! The feature store: users, shows and episodes by id, fetched in one batch per request.
//!
//! [`FeatureStore`] is async and batched so that a networked backend fits behind it:
//! - [`SnapshotStore`] (`snapshot.rs`), the embedded default, a Parquet snapshot held in
//!   memory;
//! - [`RedisStore`] (`redis.rs`), Redis or Redis Cluster in Feast's online-store layout
//!   (`feast.rs` the bytes, `mapping.rs` which feature fills which record field), behind a
//!   circuit breaker (`breaker.rs`); `load.rs` is `podscore features load`, which writes a
//!   snapshot into Redis in that layout.
//!
//! [`lookup_or_cold_start`] is where a slow or failing backend is cut off: the request then
//! goes on without stored features (the cold-start path, a degraded answer) instead of
//! failing.
//!
//! This module knows nothing of HTTP, tensors or the model.

mod breaker;
pub mod feast;
pub mod load;
pub mod mapping;
mod redis;
mod snapshot;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::entities::{EpisodeRecord, ShowRecord, UserRecord};

pub use breaker::{BreakerConfig, DEFAULT_COOL_DOWN, DEFAULT_FAILURES_TO_OPEN};
pub use load::{LoadReport, load_snapshot};
pub use mapping::{Mapping, MappingError};
pub use redis::{
    Connection, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, RedisArgs, RedisConfig,
    RedisStore, RedisTarget,
};
pub use snapshot::SnapshotStore;

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

/// Shared records by id, hashed with aHash: built and probed for every request.
pub type RecordMap<T> = HashMap<String, Arc<T>, ahash::RandomState>;

/// What the store knew of a request's keys. A key it did not know is simply absent.
/// Records are shared, not copied: a snapshot lookup clones `Arc`s only.
#[derive(Debug, Clone, Default)]
pub struct StoreRecords {
    pub user: Option<Arc<UserRecord>>,
    pub shows: RecordMap<ShowRecord>,
    pub episodes: RecordMap<EpisodeRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("feature store unavailable: {0}")]
    Unavailable(String),
    /// The breaker is open: the backend failed repeatedly and is not called until a probe
    /// finds it back.
    #[error("feature store unavailable: circuit open after repeated failures")]
    CircuitOpen,
    /// The backend answered, but a stored value does not fit its record field.
    #[error("feature store holds a bad value: {0}")]
    Corrupt(#[from] mapping::DecodeError),
    #[error("feature store configuration: {0}")]
    Config(String),
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

    /// Whether this store can serve at all (`/readyz`). A networked backend answers true
    /// even while its server is down: lookups then fall back to the cold-start path.
    fn ready(&self) -> bool;
}

/// Why a lookup fell back to the cold-start path (and the answer is degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The store did not answer within the store deadline.
    Timeout,
    /// The store answered with an error, or a value that does not fit.
    Error,
    /// The store was not called: its circuit breaker is open.
    CircuitOpen,
}

impl Fallback {
    pub const ALL: [Fallback; 3] = [Fallback::Timeout, Fallback::Error, Fallback::CircuitOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::Error => "error",
            Fallback::CircuitOpen => "circuit_open",
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
        Ok(Err(StoreError::CircuitOpen)) => {
            // Logged once when the breaker opens, not on every request it turns away.
            tracing::debug!(
                backend = store.backend(),
                "feature store circuit open; cold-start path"
            );
            (StoreRecords::default(), Some(Fallback::CircuitOpen))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
