//! The on-disk contract of a world: impression logs and the feature snapshot as Parquet,
//! and the `world.json` that describes them. `simulate` writes these files; the trainer,
//! the evaluator and the server read them through this module and nothing else.
//!
//! Layout of a world directory:
//! ```text
//! DIR/world.json                           settings and summary (WorldInfo)
//! DIR/logs/promotion_impressions.parquet   one row per promotion impression, by time
//! DIR/logs/ad_impressions.parquet          one row per ad impression, by time
//! DIR/snapshot/users.parquet               UserRecord rows, each with its event_timestamp
//! DIR/snapshot/shows.parquet               ShowRecord rows, each with its event_timestamp
//! DIR/snapshot/episodes.parquet            EpisodeRecord rows, each with its event_timestamp
//! DIR/objectives/objectives.json           new objectives, when simulated (ObjectivesInfo)
//! DIR/objectives/<name>.parquet            their labelled impressions, by time
//! ```
//!
//! This module knows Parquet, Arrow and the column names. It knows nothing of tensors,
//! vocabularies, HTTP or how the world was simulated. Reading never panics: every
//! mismatch between a file and the contract becomes a [`LogError`] that names the file and,
//! where there is one, the column.

mod columns;
mod impressions;
mod objectives;
mod snapshot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::entities::CandidateKind;

pub use impressions::{
    HOST_GENRE_COLUMN, Impression, ImpressionReader, ImpressionWriter, impression_schema,
    open_impressions, read_impressions, write_impressions,
};
pub use objectives::{
    OBJECTIVES_DIR, OBJECTIVES_FORMAT_VERSION, OBJECTIVES_INFO_FILE, ObjectiveImpression,
    ObjectiveInfo, ObjectivesInfo, objective_path, objective_schema, objectives_info_path,
    read_objective, read_objectives_info, write_objective, write_objectives_info,
};
pub use snapshot::{
    EVENT_TIMESTAMP_COLUMN, Snapshot, episode_schema, read_as_of, read_episodes, read_shows,
    read_snapshot, read_users, show_schema, user_schema, write_episodes, write_shows,
    write_snapshot, write_users,
};

/// Folder of the impression logs inside a world directory.
pub const LOGS_DIR: &str = "logs";
/// Folder of the feature snapshot inside a world directory.
pub const SNAPSHOT_DIR: &str = "snapshot";
pub const USERS_FILE: &str = "users.parquet";
pub const SHOWS_FILE: &str = "shows.parquet";
pub const EPISODES_FILE: &str = "episodes.parquet";
pub const WORLD_INFO_FILE: &str = "world.json";
/// Dimension of the show content embedding the simulator writes. Readers accept any
/// length; this is what `simulate` produces and what the README documents.
pub const CONTENT_EMBEDDING_DIM: usize = 16;
/// Rows per Parquet row group. 64k rows of impressions is a few MB decoded: small enough
/// that a reader streaming row group by row group stays in bounded memory, large enough
/// that per-group overhead (metadata, dictionary pages) stays negligible.
pub const ROWS_PER_ROW_GROUP: usize = 65_536;

/// Everything that can go wrong reading or writing a world. Each message names the file,
/// and the column where one is involved, so that a user can find the fault without a
/// debugger.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("missing file {}", path.display())]
    MissingFile { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt parquet {}: {source}", path.display())]
    CorruptParquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{}: writing parquet: {source}", path.display())]
    WriteParquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("{}: missing column `{column}`", path.display())]
    MissingColumn { path: PathBuf, column: String },
    #[error("{}: column `{column}` has type {found}, expected {expected}", path.display())]
    ColumnType {
        path: PathBuf,
        column: String,
        found: String,
        expected: &'static str,
    },
    #[error("{}: column `{column}` is null at row {row} but is required", path.display())]
    NullValue {
        path: PathBuf,
        column: String,
        row: u64,
    },
    #[error("{}: column `{column}` at row {row}: {problem}", path.display())]
    InvalidValue {
        path: PathBuf,
        column: String,
        row: u64,
        problem: String,
    },
    #[error("{}: id `{id}` appears more than once in column `id`", path.display())]
    DuplicateId { path: PathBuf, id: String },
    #[error("empty world: {} has no rows", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl LogError {
    /// Opening a file: a missing file gets its own message, anything else is I/O.
    pub(crate) fn open(path: &Path, source: std::io::Error) -> LogError {
        if source.kind() == std::io::ErrorKind::NotFound {
            LogError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            LogError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// `DIR/logs/promotion_impressions.parquet` or `DIR/logs/ad_impressions.parquet`.
pub fn impressions_path(dir: &Path, kind: CandidateKind) -> PathBuf {
    dir.join(LOGS_DIR)
        .join(format!("{}_impressions.parquet", kind.as_str()))
}

/// `DIR/world.json`.
pub fn world_info_path(dir: &Path) -> PathBuf {
    dir.join(WORLD_INFO_FILE)
}

/// The snapshot folder of `dir`: `dir/snapshot` when `dir` is a world directory, `dir`
/// itself when it already is a snapshot folder (it holds `users.parquet`).
pub fn snapshot_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(SNAPSHOT_DIR);
    if nested.join(USERS_FILE).exists() || !dir.join(USERS_FILE).exists() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Parquet writer settings for every file of a world. Fixed, so that the same rows always
/// give the same bytes: the files of a seed are byte-identical from run to run.
pub(crate) fn writer_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    // Ids and timestamps of an impression file increase row by row: delta encoding
    // stores them in a byte or two where a dictionary would not help at all.
    for column in ["impression_id", "timestamp"] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

/// The parsed `world.json`: how a world was simulated and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldInfo {
    /// Version of this layout; bumped when a column or file changes meaning.
    pub format_version: u32,
    /// `podscore <version>` that wrote the world.
    pub generator: String,
    pub settings: WorldSettings,
    pub summary: WorldSummary,
}

/// The layout version this build reads and writes.
pub const WORLD_FORMAT_VERSION: u32 = 1;

/// The settings a world was simulated with: enough to simulate it again, byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSettings {
    pub seed: u64,
    /// `small`, `default`, or the preset the overrides started from.
    pub preset: String,
    pub users: u64,
    pub shows: u64,
    pub days: u32,
    pub impressions: u64,
    pub ad_share: f64,
    pub new_show_share: f64,
    /// Unix seconds of day 0, 00:00 UTC.
    pub start_timestamp: i64,
    /// The same instant as RFC 3339, for people.
    pub start: String,
    /// The world's pre-registered knobs (`podscore simulate --help`). Each is written only
    /// when it differs from the simulator's default, so that a default world's
    /// `world.json` stays what it was before the knobs existed; absent means the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_affinity_correlation: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_structure: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_embedding_noise: Option<f64>,
}

/// What the simulation produced: row counts, tiers and natural base rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSummary {
    /// Rows per file, keyed by the path relative to the world directory.
    pub rows: BTreeMap<String, u64>,
    /// Shows created during the window (no tier in the snapshot): the cold-start set.
    pub brand_new_shows: u64,
    /// First day on which a brand-new show may go live.
    pub brand_new_from_day: u32,
    /// One entry per popularity tier 0..=7 (brand-new shows count in tier 7).
    pub tiers: Vec<TierSummary>,
    /// Keyed by candidate kind: `ad`, `promotion`.
    pub channels: BTreeMap<String, ChannelSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierSummary {
    pub tier: u8,
    /// Established shows in this tier (brand-new shows are counted separately).
    pub shows: u64,
    /// Smallest and largest `streams_30d` of the tier's established shows (0 when empty).
    pub min_streams_30d: f64,
    pub max_streams_30d: f64,
    /// Share of all established shows' `streams_30d` that this tier holds.
    pub streams_share: f64,
    pub promotion_impressions: u64,
    pub ad_impressions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSummary {
    pub impressions: u64,
    /// This channel's share of all impressions.
    pub share: f64,
    /// Observed label rates (mean of the sampled outcomes).
    pub observed: LabelRates,
    /// Mean of the true probabilities (`p_*` columns): the natural base rates.
    pub expected: LabelRates,
    pub campaigns: u64,
    pub mean_cost: f64,
    /// Impressions whose show was brand-new.
    pub brand_new_impressions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelRates {
    pub stream: f64,
    pub click: f64,
    pub like: f64,
    pub follow: f64,
}

/// Reads `world.json`. `dir` is the world directory or the `world.json` file itself.
pub fn read_world_info(dir: &Path) -> Result<WorldInfo, LogError> {
    let path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        world_info_path(dir)
    };
    let text = std::fs::read_to_string(&path).map_err(|source| LogError::open(&path, source))?;
    serde_json::from_str(&text).map_err(|source| LogError::Json { path, source })
}

/// Writes `world.json` into the world directory `dir`, pretty-printed with a trailing
/// newline; the field order is fixed, so equal infos give equal bytes.
pub fn write_world_info(dir: &Path, info: &WorldInfo) -> Result<(), LogError> {
    let path = world_info_path(dir);
    let mut text = serde_json::to_string_pretty(info).map_err(|source| LogError::Json {
        path: path.clone(),
        source,
    })?;
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| LogError::Io { path, source })
}

/// Opens a Parquet file for reading: its footer decoded (a decoder panic becomes
/// `CorruptParquet`) and every column chunk's byte range checked against the file.
pub(crate) fn open_parquet(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<std::fs::File>, LogError>
{
    let file = std::fs::File::open(path).map_err(|source| LogError::open(path, source))?;
    let file_length = file
        .metadata()
        .map_err(|source| LogError::open(path, source))?
        .len();
    let builder = guard_decoding(path, || {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).map_err(
            |source| LogError::CorruptParquet {
                path: path.to_path_buf(),
                source,
            },
        )
    })?;
    check_column_chunks(builder.metadata(), path, file_length)?;
    Ok(builder)
}

/// Checks every column chunk's byte range against the file before any page is read: the
/// parquet crate asserts (panics) on a negative offset or size in a damaged footer, and
/// nothing may panic on input.
pub(crate) fn check_column_chunks(
    metadata: &parquet::file::metadata::ParquetMetaData,
    path: &Path,
    file_length: u64,
) -> Result<(), LogError> {
    for (group_index, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let length = column.compressed_size();
            let in_file = u64::try_from(start)
                .ok()
                .zip(u64::try_from(length).ok())
                .and_then(|(start, length)| start.checked_add(length))
                .is_some_and(|end| end <= file_length);
            if !in_file {
                return Err(LogError::CorruptParquet {
                    path: path.to_path_buf(),
                    source: parquet::errors::ParquetError::General(format!(
                        "row group {group_index}, column `{}`: byte range {start}+{length} lies outside the {file_length}-byte file",
                        column.column_path()
                    )),
                });
            }
        }
    }
    Ok(())
}

/// Runs Parquet decoding so that a panic inside the parquet or arrow crates on a damaged
/// file becomes a `CorruptParquet` error naming the file. Their decoders assert on some
/// malformed pages (found by `tests/world.rs`'s damaged-file property test), and nothing
/// may panic on input. What the closure touches is discarded on a panic, so observing
/// it half-updated is impossible.
pub(crate) fn guard_decoding<T>(
    path: &Path,
    decode: impl FnOnce() -> Result<T, LogError>,
) -> Result<T, LogError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder panicked".to_string());
        Err(LogError::CorruptParquet {
            path: path.to_path_buf(),
            source: parquet::errors::ParquetError::General(format!("damaged data: {message}")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Impression files sit under `logs/`, one per candidate kind.
    #[test]
    fn impression_paths_follow_the_layout() {
        assert_eq!(
            impressions_path(Path::new("w"), CandidateKind::Ad),
            Path::new("w/logs/ad_impressions.parquet")
        );
        assert_eq!(
            impressions_path(Path::new("w"), CandidateKind::Promotion),
            Path::new("w/logs/promotion_impressions.parquet")
        );
    }

    /// The snapshot folder is found from the world folder or given directly.
    #[test]
    fn snapshot_dir_accepts_world_or_snapshot_folder() {
        let temp = tempfile::tempdir().expect("temp dir");
        let temp = temp.path();
        let snapshot = temp.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snapshot).expect("folders");
        std::fs::write(snapshot.join(USERS_FILE), b"").expect("file");
        assert_eq!(snapshot_dir(temp), snapshot);
        assert_eq!(snapshot_dir(&snapshot), snapshot);
        // Neither holds users.parquet: the world layout is assumed, so the error names it.
        assert_eq!(
            snapshot_dir(Path::new("nowhere")),
            Path::new("nowhere/snapshot")
        );
    }
}
