//! The Redis backend of [`FeatureStore`], in Feast's online-store layout
//! ([`super::feast`], [`super::mapping`]). A lookup sends one `HMGET` per entity (the
//! user, every distinct show and episode) all at once over one multiplexed connection, so
//! it costs one round trip. Single node and Redis Cluster share everything above the
//! connection ([`Connection::query_each`]): one server takes the commands as one
//! pipeline; on a cluster, where Feast's keys carry no hash tags and a pipeline may not
//! cross slots, they go as single-key commands in flight together, each to its node.
//!
//! Failure is a fallback, never an outage: the connection re-dials by itself, a
//! [`Breaker`] stops calls to a Redis that is down and probes it back, and [`FeatureStore::ready`]
//! stays true (readiness is about this process, not about Redis).
//!
//! This module knows Redis and the layout; it knows nothing of HTTP, tensors or the model.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::breaker::{Breaker, BreakerConfig};
use super::mapping::{EntityLayout, Layout, Mapping, MappingError, Record};
use super::{FeatureStore, LookupFuture, LookupKeys, StoreError, StoreRecords};

/// How long one connection attempt may take. Connecting over loopback or a LAN takes well
/// under a millisecond; a quarter second bounds an attempt against an address that drops
/// packets, and attempts run in the background of the breaker's probes.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the connection waits for one reply before it gives up on it. Lookups are cut
/// off far sooner by the request's store deadline; this is the backstop that frees the
/// connection's bookkeeping for replies that never come.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Retries of one cluster command: enough to follow a `MOVED` or `ASK` redirection after
/// a resharding, and no more, since the breaker (not the client) decides when to try a
/// failing cluster again.
const CLUSTER_RETRIES: u32 = 2;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://host:port/db`.
    Single(String),
    /// A Redis Cluster, by one or more seed nodes; the client learns the rest.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `urls` is one URL, or for a cluster a comma-separated list of seed nodes.
    pub fn new(urls: &str, cluster: bool) -> RedisTarget {
        if cluster {
            RedisTarget::Cluster(
                urls.split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        } else {
            RedisTarget::Single(urls.trim().to_string())
        }
    }

    fn describe(&self) -> String {
        match self {
            RedisTarget::Single(url) => url.clone(),
            RedisTarget::Cluster(urls) => format!("cluster {}", urls.join(",")),
        }
    }
}

/// The flags that point `serve` and `score` at Redis instead of the snapshot.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RedisArgs {
    /// Read features from Redis, in Feast's online-store layout, instead of the snapshot:
    /// a URL such as `redis://127.0.0.1:6379`, or with `--redis-cluster` one or more seed
    /// node URLs, comma-separated.
    #[arg(long, env = "PODSCORE_REDIS", conflicts_with_all = ["features", "no_features"])]
    pub redis: Option<String>,
    /// The Redis URL names a Redis Cluster.
    #[arg(long, env = "PODSCORE_REDIS_CLUSTER", requires = "redis")]
    pub redis_cluster: bool,
    /// Feast mapping file (JSON: project, join keys, which feature fills which record
    /// field); default: the layout of `deploy/feast/`.
    #[arg(long, env = "PODSCORE_FEAST_MAPPING", requires = "redis")]
    pub feast_mapping: Option<PathBuf>,
}

impl RedisArgs {
    /// The store configuration the flags describe; `None` without `--redis`.
    pub fn config(&self) -> Result<Option<RedisConfig>, MappingError> {
        let Some(urls) = &self.redis else {
            return Ok(None);
        };
        let mut config = RedisConfig::new(RedisTarget::new(urls, self.redis_cluster));
        if let Some(path) = &self.feast_mapping {
            config.mapping = Mapping::read(path)?;
        }
        Ok(Some(config))
    }
}

/// Everything the Redis store is built from.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    pub mapping: Mapping,
    pub breaker: BreakerConfig,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// `target` with the default mapping (the layout of `deploy/feast/`) and timeouts.
    pub fn new(target: RedisTarget) -> RedisConfig {
        RedisConfig {
            target,
            mapping: Mapping::default(),
            breaker: BreakerConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

/// A multiplexed connection to one server or to a cluster: cheap to clone, every clone
/// shares the sockets, and both kinds re-dial after a failure.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Connection::Single(_) => "Connection::Single",
            Connection::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl Connection {
    /// A connection to `target` that dials on first use, so that a process can start while
    /// Redis is down. Needs a tokio runtime. Fails only on a malformed URL.
    pub fn open(
        target: &RedisTarget,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Connection> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout))
                    // One attempt per re-dial: the breaker paces attempts, not the client.
                    .set_number_of_retries(0);
                Ok(Connection::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisTarget::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "a cluster needs at least one seed URL",
                    )));
                }
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .retries(CLUSTER_RETRIES)
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(response_timeout);
                Ok(Connection::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }
}

impl Connection {
    /// Sends every command and returns the replies in order, in one round trip: to one
    /// server as one pipeline (one write, one read of all replies); to a cluster as
    /// single commands in flight together over the multiplexed connections, since
    /// Feast's keys carry no hash tags and a cluster pipeline may not cross slots.
    pub async fn query_each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> RedisResult<Vec<T>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Connection::Single(connection) => {
                let mut pipeline = redis::pipe();
                for command in commands {
                    pipeline.add_command(command);
                }
                pipeline.query_async(&mut connection.clone()).await
            }
            Connection::Cluster(connection) => {
                try_join_all(commands.into_iter().map(|command| {
                    let mut connection = connection.clone();
                    async move { command.query_async(&mut connection).await }
                }))
                .await
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The Redis feature store. Cheap to share behind an `Arc`; lookups run concurrently.
pub struct RedisStore {
    connection: Connection,
    layout: Layout,
    breaker: Breaker,
    target: RedisTarget,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisStore")
            .field("target", &self.target.describe())
            .field("breaker_open", &self.breaker.is_open())
            .finish()
    }
}

/// The fields of one `HMGET` reply, `None` where the hash has no such field.
type HashValues = Vec<Option<Vec<u8>>>;

impl RedisStore {
    /// The store `config` describes, without waiting for Redis (see [`Connection::open`]).
    /// Fails on a bad mapping or a malformed URL. Needs a tokio runtime.
    pub fn open(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let layout = config
            .mapping
            .layout()
            .map_err(|error| StoreError::Config(error.to_string()))?;
        let connection = Connection::open(
            &config.target,
            config.connect_timeout,
            config.response_timeout,
        )
        .map_err(|error| {
            StoreError::Config(format!("redis {}: {error}", config.target.describe()))
        })?;
        Ok(RedisStore {
            connection,
            layout,
            breaker: Breaker::new(config.breaker),
            target: config.target.clone(),
        })
    }

    /// Where the store reads, for logs.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// One `PING`: whether Redis answers now (start-up logs, tests).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|error| StoreError::Unavailable(error.to_string()))
    }

    /// Every `HMGET` of `keys` in one round trip (see [`Connection::query_each`]): the
    /// user's values (when there is a user), then one per show and one per episode.
    async fn read_all(
        &self,
        keys: &LookupKeys,
    ) -> RedisResult<(Option<HashValues>, Vec<HashValues>, Vec<HashValues>)> {
        fn hmget<R: Record>(layout: &EntityLayout<R>, id: &str) -> Cmd {
            let mut command = redis::cmd("HMGET");
            command.arg(layout.key(id)).arg(layout.hash_fields());
            command
        }
        let commands: Vec<Cmd> = keys
            .user
            .iter()
            .map(|id| hmget(&self.layout.user, id))
            .chain(keys.shows.iter().map(|id| hmget(&self.layout.show, id)))
            .chain(
                keys.episodes
                    .iter()
                    .map(|id| hmget(&self.layout.episode, id)),
            )
            .collect();
        let expected = commands.len();
        let mut replies: Vec<HashValues> = self.connection.query_each(commands).await?;
        if replies.len() != expected {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a reply count that differs from the commands sent",
            )));
        }
        let episodes = replies.split_off(replies.len() - keys.episodes.len());
        let shows = replies.split_off(replies.len() - keys.shows.len());
        Ok((replies.pop(), shows, episodes))
    }

    async fn lookup_now(&self, keys: &LookupKeys) -> Result<StoreRecords, StoreError> {
        let Some(attempt) = self.breaker.admit() else {
            return Err(StoreError::CircuitOpen);
        };
        let (user, shows, episodes) = match self.read_all(keys).await {
            Ok(replies) => {
                attempt.succeeded();
                replies
            }
            Err(error) => {
                if is_outage(&error) {
                    attempt.failed();
                } else {
                    // Redis answered, refusing this read (a key of another type, say):
                    // this request goes cold, but the server is up.
                    attempt.succeeded();
                }
                return Err(StoreError::Unavailable(error.to_string()));
            }
        };
        // Redis answered: from here a failure is in the data, and no reason to stop
        // calling it.
        let mut records = StoreRecords::default();
        if let (Some(id), Some(values)) = (&keys.user, user) {
            records.user = self.layout.user.decode(id, values)?.map(Into::into);
        }
        for (id, values) in keys.shows.iter().zip(shows) {
            if let Some(show) = self.layout.show.decode(id, values)? {
                records.shows.insert(id.clone(), show.into());
            }
        }
        for (id, values) in keys.episodes.iter().zip(episodes) {
            if let Some(episode) = self.layout.episode.decode(id, values)? {
                records.episodes.insert(id.clone(), episode.into());
            }
        }
        Ok(records)
    }
}

/// Whether `error` says Redis (or the way to it) is unwell, so that the breaker should
/// count it, rather than that Redis answered and refused one command.
fn is_outage(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
        )
}

impl FeatureStore for RedisStore {
    fn backend(&self) -> &'static str {
        match self.target {
            RedisTarget::Single(_) => "redis",
            RedisTarget::Cluster(_) => "redis_cluster",
        }
    }

    fn lookup<'a>(&'a self, keys: &'a LookupKeys) -> LookupFuture<'a> {
        Box::pin(self.lookup_now(keys))
    }

    /// Always: a Redis that is down means cold-start scoring, which this process can still
    /// serve, and pulling every replica out of rotation at once would be an outage.
    fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster target takes a comma-separated list of seeds; a single one keeps its URL.
    #[test]
    fn targets_parse_seed_lists() {
        assert_eq!(
            RedisTarget::new("redis://a:1, redis://b:2,", true),
            RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            RedisTarget::new("redis://a:1", false),
            RedisTarget::Single("redis://a:1".into())
        );
    }

    /// A malformed URL or an empty seed list is a configuration error at start, not a
    /// lookup failure later.
    #[tokio::test]
    async fn malformed_targets_fail_at_open() {
        for target in [
            RedisTarget::new("http://nowhere", false),
            RedisTarget::new(" , ", true),
        ] {
            let error = RedisStore::open(&RedisConfig::new(target)).unwrap_err();
            assert!(matches!(error, StoreError::Config(_)), "{error}");
        }
    }

    /// With nothing listening, lookups fail (never hang, never panic), the breaker opens
    /// after its run of failures, and then lookups are refused without a network call.
    #[tokio::test]
    async fn a_dead_server_opens_the_breaker() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let store = RedisStore::open(&RedisConfig::new(RedisTarget::new(
            &format!("redis://127.0.0.1:{port}"),
            false,
        )))
        .unwrap();
        let keys = LookupKeys {
            user: Some("u1".into()),
            ..LookupKeys::default()
        };
        for _ in 0..super::super::breaker::DEFAULT_FAILURES_TO_OPEN {
            let error = store.lookup(&keys).await.unwrap_err();
            assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
        }
        assert!(matches!(
            store.lookup(&keys).await,
            Err(StoreError::CircuitOpen)
        ));
        assert!(store.ready());
    }
}
