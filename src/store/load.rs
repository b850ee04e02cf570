//! `podscore features load`: writes a feature snapshot into Redis in Feast's online-store
//! layout, the hashes `feast materialize` would write from the same files, for deployments
//! without Feast. One `HSET` per entity with every mapped feature and each view's
//! timestamp; commands are pipelined per hash slot (a cluster pipeline must stay in one
//! slot) with several pipelines in flight. Loading twice leaves the same hashes: `HSET`
//! overwrites, and a missing value is written as Feast writes it (an empty `Value`).
//!
//! This module knows the snapshot, the layout and Redis; it knows nothing of HTTP or the
//! model.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{self, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use redis::cluster_routing::Slot;

use super::mapping::{EntityLayout, Layout, Mapping, Record};
use super::redis::{Connection, RedisTarget};
use crate::logs::{self, Snapshot};

/// Commands per pipeline on a single server: about a megabyte of `HSET`s at the demo
/// snapshot's record sizes, enough to keep the socket busy without one huge reply.
pub const DEFAULT_PIPELINE_COMMANDS: usize = 1_000;
/// Pipelines in flight at once: on a single server a few hide the round trip; on a
/// cluster (one small pipeline per slot) more keep every node busy.
const SINGLE_PIPELINES_IN_FLIGHT: usize = 4;
const CLUSTER_PIPELINES_IN_FLIGHT: usize = 64;
/// A bulk load may wait far longer for a reply than a lookup: a pipeline of a thousand
/// `HSET`s takes milliseconds on a busy server.
const LOAD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const LOAD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `podscore features ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct FeaturesArgs {
    #[command(subcommand)]
    pub command: FeaturesCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum FeaturesCommand {
    /// Write a feature snapshot into Redis in Feast's online-store layout.
    Load(LoadArgs),
}

/// `podscore features load`: every flag can also come from the environment variable named.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Redis URL, e.g. `redis://127.0.0.1:6379`; with `--cluster`, one or more seed node
    /// URLs, comma-separated.
    #[arg(long, env = "PODSCORE_REDIS")]
    pub redis: String,
    /// The URL names a Redis Cluster.
    #[arg(long, env = "PODSCORE_REDIS_CLUSTER")]
    pub cluster: bool,
    /// Snapshot folder (users, shows, episodes Parquet files), or a world folder holding one.
    #[arg(long = "from", env = "PODSCORE_LOAD_FROM")]
    pub from: PathBuf,
    /// Feast mapping file (JSON); default: the layout of `deploy/feast/`.
    #[arg(long = "feast-mapping", env = "PODSCORE_FEAST_MAPPING")]
    pub mapping: Option<PathBuf>,
    /// `HSET` commands per pipeline.
    #[arg(long, env = "PODSCORE_LOAD_PIPELINE", default_value_t = DEFAULT_PIPELINE_COMMANDS)]
    pub pipeline: usize,
}

/// What a load wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub users: usize,
    pub shows: usize,
    pub episodes: usize,
    pub pipelines: usize,
    /// The event time written to every `_ts:{view}` field, Unix seconds.
    pub as_of: i64,
}

/// `podscore features`.
pub fn run(args: &FeaturesArgs) -> anyhow::Result<()> {
    match &args.command {
        FeaturesCommand::Load(load) => run_load(load),
    }
}

fn run_load(args: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.pipeline > 0, "--pipeline must be at least 1");
    let mapping = match &args.mapping {
        Some(path) => Mapping::read(path)?,
        None => Mapping::default(),
    };
    let layout = mapping.layout()?;
    let snapshot = logs::read_snapshot(&args.from)
        .with_context(|| format!("reading the snapshot in {}", args.from.display()))?;
    let target = RedisTarget::new(&args.redis, args.cluster);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let report = runtime.block_on(async {
        let connection = Connection::open(&target, LOAD_CONNECT_TIMEOUT, LOAD_RESPONSE_TIMEOUT)
            .map_err(|error| anyhow::anyhow!("redis {}: {error}", args.redis))?;
        let total = snapshot.users.len() + snapshot.shows.len() + snapshot.episodes.len();
        let bar = progress_bar(total as u64);
        let report = load_snapshot(&connection, &layout, &snapshot, args.pipeline, &|count| {
            bar.inc(count)
        })
        .await
        // redis-rs's errors print their I/O cause and then return it as their source:
        // one message, not the same cause twice.
        .map_err(|error| anyhow::anyhow!("writing to redis {}: {error}", args.redis));
        bar.finish_and_clear();
        report
    })?;
    println!(
        "loaded {} users, {} shows, {} episodes into {} in {} pipelines ({:.1} s), as of {}",
        report.users,
        report.shows,
        report.episodes,
        args.redis,
        report.pipelines,
        started.elapsed().as_secs_f64(),
        chrono::DateTime::from_timestamp(report.as_of, 0)
            .map_or_else(|| report.as_of.to_string(), |time| time.to_rfc3339()),
    );
    Ok(())
}

fn progress_bar(length: u64) -> ProgressBar {
    let style =
        ProgressStyle::with_template("loading features [{bar:40}] {human_pos}/{human_len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    ProgressBar::new(length).with_style(style)
}

/// One `HSET key field value ...`, ready to pipeline.
struct Write {
    key: Vec<u8>,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

fn writes<R: Record>(
    layout: &EntityLayout<R>,
    records: &HashMap<String, R>,
    as_of: i64,
) -> impl Iterator<Item = Write> {
    records.iter().map(move |(id, record)| Write {
        key: layout.key(id),
        fields: layout.encode(record, as_of),
    })
}

/// Writes every entity of `snapshot` through `connection`, `per_pipeline` commands at most
/// per pipeline and, on a cluster, one slot per pipeline; `progress` hears of every entity
/// written. The `_ts` fields hold the snapshot's `as_of`, or now when it has none.
pub async fn load_snapshot(
    connection: &Connection,
    layout: &Layout,
    snapshot: &Snapshot,
    per_pipeline: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> redis::RedisResult<LoadReport> {
    let as_of = snapshot
        .as_of
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let all = writes(&layout.user, &snapshot.users, as_of)
        .chain(writes(&layout.show, &snapshot.shows, as_of))
        .chain(writes(&layout.episode, &snapshot.episodes, as_of));
    let per_pipeline = per_pipeline.max(1);
    let (batches, in_flight): (Vec<Vec<Write>>, usize) = match connection {
        Connection::Single(_) => {
            let mut batches: Vec<Vec<Write>> = Vec::new();
            for write in all {
                match batches.last_mut() {
                    Some(batch) if batch.len() < per_pipeline => batch.push(write),
                    _ => batches.push(vec![write]),
                }
            }
            (batches, SINGLE_PIPELINES_IN_FLIGHT)
        }
        Connection::Cluster(_) => {
            let mut by_slot: HashMap<Slot, Vec<Write>> = HashMap::new();
            for write in all {
                by_slot
                    .entry(Slot::for_key(&write.key))
                    .or_default()
                    .push(write);
            }
            let mut batches = Vec::new();
            for (_, mut writes) in by_slot {
                while writes.len() > per_pipeline {
                    let rest = writes.split_off(per_pipeline);
                    batches.push(std::mem::replace(&mut writes, rest));
                }
                batches.push(writes);
            }
            (batches, CLUSTER_PIPELINES_IN_FLIGHT)
        }
    };
    let pipelines = batches.len();
    stream::iter(batches.into_iter().map(Ok::<_, redis::RedisError>))
        .try_for_each_concurrent(in_flight, |batch| {
            let mut connection = connection.clone();
            async move {
                let mut pipeline = redis::pipe();
                for write in &batch {
                    pipeline
                        .cmd("HSET")
                        .arg(&write.key)
                        .arg(&write.fields)
                        .ignore();
                }
                pipeline.query_async::<()>(&mut connection).await?;
                progress(batch.len() as u64);
                Ok(())
            }
        })
        .await?;
    Ok(LoadReport {
        users: snapshot.users.len(),
        shows: snapshot.shows.len(),
        episodes: snapshot.episodes.len(),
        pipelines,
        as_of,
    })
}
