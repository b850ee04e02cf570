//! The feature snapshot: users, shows and episodes, one Parquet file each, one row per
//! entity, with exactly the fields of the entity records plus `event_timestamp`, the
//! instant the values hold as of (the same in every row of a snapshot). Feature platforms
//! need that column: Feast's sources select rows by it when they materialize.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Float64Builder, ListBuilder, StringBuilder, UInt8Builder,
};
use arrow_array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::{ArrowWriter, ProjectionMask};

use super::columns::{
    FloatColumn, FloatListColumn, IntegerColumn, Place, StringColumn, StringListColumn,
};
use super::{
    CONTENT_EMBEDDING_DIM, EPISODES_FILE, LogError, ROWS_PER_ROW_GROUP, SHOWS_FILE, USERS_FILE,
    snapshot_dir, writer_properties,
};
use crate::entities::{EpisodeRecord, ShowRecord, UserRecord};

/// All entities of a snapshot, keyed by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub users: HashMap<String, UserRecord>,
    pub shows: HashMap<String, ShowRecord>,
    pub episodes: HashMap<String, EpisodeRecord>,
    /// Unix seconds the values hold as of, from the files' `event_timestamp` column (the
    /// latest one); `None` for snapshots written before the column existed. Written as
    /// the epoch when unset.
    pub as_of: Option<i64>,
}

/// The column every snapshot file ends with: when its values were observed. Named as
/// Feast's examples name it, so that a Feast source over the files needs no mapping.
pub const EVENT_TIMESTAMP_COLUMN: &str = "event_timestamp";

/// Microseconds, not seconds: Parquet has no seconds unit, and a seconds column is written
/// as a bare INT64 that pandas (and so Feast) reads as an integer, not a time.
fn event_timestamp_field() -> Field {
    Field::new(
        EVENT_TIMESTAMP_COLUMN,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn event_timestamp_array(rows: usize, as_of: i64) -> ArrayRef {
    let micros = as_of.saturating_mul(1_000_000);
    Arc::new(TimestampMicrosecondArray::from(vec![micros; rows]).with_timezone("UTC"))
}

fn string_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn embedding_type() -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", DataType::Float32, true)),
        CONTENT_EMBEDDING_DIM as i32,
    )
}

pub fn user_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("country", DataType::Utf8, true),
                Field::new("platform", DataType::Utf8, true),
                Field::new("age_bucket", DataType::Utf8, true),
                Field::new("history", string_list_type(), true),
                Field::new("follows", string_list_type(), true),
                Field::new("search_topics", string_list_type(), true),
                event_timestamp_field(),
            ]))
        })
        .clone()
}

pub fn show_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("genres", string_list_type(), true),
                Field::new("topics", string_list_type(), true),
                Field::new("embedding", embedding_type(), true),
                Field::new("streams_30d", DataType::Float64, true),
                Field::new("tier", DataType::UInt8, true),
                event_timestamp_field(),
            ]))
        })
        .clone()
}

pub fn episode_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("show_id", DataType::Utf8, true),
                Field::new("topics", string_list_type(), true),
                Field::new("duration_s", DataType::Float64, true),
                event_timestamp_field(),
            ]))
        })
        .clone()
}

fn string_list_array<'a>(lists: impl Iterator<Item = Option<&'a Vec<String>>>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for list in lists {
        match list {
            Some(list) => {
                for value in list {
                    builder.values().append_value(value);
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

fn string_array<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for value in values {
        builder.append_option(value);
    }
    Arc::new(builder.finish())
}

fn float_array(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    let mut builder = Float64Builder::new();
    for value in values {
        builder.append_option(value);
    }
    Arc::new(builder.finish())
}

/// Writes one batch as a whole file with the world's fixed writer settings.
fn write_file(path: &Path, batch: &RecordBatch) -> Result<(), LogError> {
    let file = File::create(path).map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parquet_error = |source| LogError::WriteParquet {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = ArrowWriter::try_new(
        BufWriter::new(file),
        batch.schema(),
        Some(writer_properties()),
    )
    .map_err(parquet_error)?;
    writer.write(batch).map_err(parquet_error)?;
    let mut buffered = writer.into_inner().map_err(parquet_error)?;
    buffered.flush().map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn batch_error(path: &Path) -> impl Fn(arrow_schema::ArrowError) -> LogError + '_ {
    move |source| LogError::Arrow {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `users` in the order given, as of `as_of` (Unix seconds).
pub fn write_users(path: &Path, users: &[UserRecord], as_of: i64) -> Result<(), LogError> {
    let columns: Vec<ArrayRef> = vec![
        string_array(users.iter().map(|user| user.id.as_deref())),
        string_array(users.iter().map(|user| user.country.as_deref())),
        string_array(users.iter().map(|user| user.platform.as_deref())),
        string_array(users.iter().map(|user| user.age_bucket.as_deref())),
        string_list_array(users.iter().map(|user| user.history.as_ref())),
        string_list_array(users.iter().map(|user| user.follows.as_ref())),
        string_list_array(users.iter().map(|user| user.search_topics.as_ref())),
        event_timestamp_array(users.len(), as_of),
    ];
    let batch = RecordBatch::try_new(user_schema(), columns).map_err(batch_error(path))?;
    write_file(path, &batch)
}

/// Writes `shows` in the order given, as of `as_of` (Unix seconds). Every embedding must
/// have [`CONTENT_EMBEDDING_DIM`] values: the column is a fixed-size list.
pub fn write_shows(path: &Path, shows: &[ShowRecord], as_of: i64) -> Result<(), LogError> {
    let mut embeddings =
        FixedSizeListBuilder::new(Float32Builder::new(), CONTENT_EMBEDDING_DIM as i32);
    for (row, show) in shows.iter().enumerate() {
        match &show.embedding {
            Some(vector) if vector.len() == CONTENT_EMBEDDING_DIM => {
                embeddings.values().append_slice(vector);
                embeddings.append(true);
            }
            Some(vector) => {
                return Err(LogError::InvalidValue {
                    path: path.to_path_buf(),
                    column: "embedding".to_string(),
                    row: row as u64,
                    problem: format!(
                        "show `{}` has {} values, expected {CONTENT_EMBEDDING_DIM}",
                        show.id.as_deref().unwrap_or_default(),
                        vector.len()
                    ),
                });
            }
            None => {
                embeddings.values().append_nulls(CONTENT_EMBEDDING_DIM);
                embeddings.append(false);
            }
        }
    }
    let mut tiers = UInt8Builder::new();
    for show in shows {
        tiers.append_option(show.tier);
    }
    let columns: Vec<ArrayRef> = vec![
        string_array(shows.iter().map(|show| show.id.as_deref())),
        string_list_array(shows.iter().map(|show| show.genres.as_ref())),
        string_list_array(shows.iter().map(|show| show.topics.as_ref())),
        Arc::new(embeddings.finish()),
        float_array(shows.iter().map(|show| show.streams_30d)),
        Arc::new(tiers.finish()),
        event_timestamp_array(shows.len(), as_of),
    ];
    let batch = RecordBatch::try_new(show_schema(), columns).map_err(batch_error(path))?;
    write_file(path, &batch)
}

/// Writes `episodes` in the order given, as of `as_of` (Unix seconds).
pub fn write_episodes(path: &Path, episodes: &[EpisodeRecord], as_of: i64) -> Result<(), LogError> {
    let columns: Vec<ArrayRef> = vec![
        string_array(episodes.iter().map(|episode| episode.id.as_deref())),
        string_array(episodes.iter().map(|episode| episode.show_id.as_deref())),
        string_list_array(episodes.iter().map(|episode| episode.topics.as_ref())),
        float_array(episodes.iter().map(|episode| episode.duration_s)),
        event_timestamp_array(episodes.len(), as_of),
    ];
    let batch = RecordBatch::try_new(episode_schema(), columns).map_err(batch_error(path))?;
    write_file(path, &batch)
}

/// Ids in natural order (shorter first, then by text: `u2` before `u10`), so that a
/// snapshot written from hash maps still gives the same bytes every time.
fn sorted_by_id<T: Clone>(entities: &HashMap<String, T>) -> Vec<T> {
    let mut ids: Vec<&String> = entities.keys().collect();
    ids.sort_by(|left, right| left.len().cmp(&right.len()).then_with(|| left.cmp(right)));
    ids.into_iter().map(|id| entities[id].clone()).collect()
}

/// Writes `users.parquet`, `shows.parquet` and `episodes.parquet` into `dir` (the
/// snapshot folder itself, created if missing), rows in natural id order.
pub fn write_snapshot(dir: &Path, snapshot: &Snapshot) -> Result<(), LogError> {
    std::fs::create_dir_all(dir).map_err(|source| LogError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let as_of = snapshot.as_of.unwrap_or(0);
    write_users(&dir.join(USERS_FILE), &sorted_by_id(&snapshot.users), as_of)?;
    write_shows(&dir.join(SHOWS_FILE), &sorted_by_id(&snapshot.shows), as_of)?;
    write_episodes(
        &dir.join(EPISODES_FILE),
        &sorted_by_id(&snapshot.episodes),
        as_of,
    )
}

/// Reads a whole snapshot file, decoding each batch with `decode` (which checks the
/// columns it needs). An empty batch of the file's schema is decoded first, so that a
/// wrong column fails even when the file has no rows.
fn read_file<T>(
    path: &Path,
    decode: impl Fn(&RecordBatch, &Place) -> Result<Vec<T>, LogError>,
) -> Result<Vec<T>, LogError> {
    let builder = super::open_parquet(path)?;
    let corrupt = |source| LogError::CorruptParquet {
        path: path.to_path_buf(),
        source,
    };
    decode(
        &RecordBatch::new_empty(builder.schema().clone()),
        &Place { path, first_row: 0 },
    )?;
    let reader = builder
        .with_batch_size(ROWS_PER_ROW_GROUP)
        .build()
        .map_err(corrupt)?;
    let mut rows = Vec::new();
    let mut reader = reader;
    while let Some(batch) = super::guard_decoding(path, || Ok(reader.next()))? {
        let batch = batch.map_err(batch_error(path))?;
        let place = Place {
            path,
            first_row: rows.len() as u64,
        };
        rows.extend(decode(&batch, &place)?);
    }
    Ok(rows)
}

pub fn read_users(path: &Path) -> Result<Vec<UserRecord>, LogError> {
    read_file(path, |batch, place| {
        let id = StringColumn::new(batch, place, "id")?;
        let country = StringColumn::new(batch, place, "country")?;
        let platform = StringColumn::new(batch, place, "platform")?;
        let age_bucket = StringColumn::new(batch, place, "age_bucket")?;
        let history = StringListColumn::new(batch, place, "history")?;
        let follows = StringListColumn::new(batch, place, "follows")?;
        let search_topics = StringListColumn::new(batch, place, "search_topics")?;
        (0..batch.num_rows())
            .map(|row| {
                Ok(UserRecord {
                    id: Some(id.required(place, row)?.to_string()),
                    country: country.optional_string(row),
                    platform: platform.optional_string(row),
                    age_bucket: age_bucket.optional_string(row),
                    history: history.optional(place, row)?,
                    follows: follows.optional(place, row)?,
                    search_topics: search_topics.optional(place, row)?,
                })
            })
            .collect()
    })
}

pub fn read_shows(path: &Path) -> Result<Vec<ShowRecord>, LogError> {
    read_file(path, |batch, place| {
        let id = StringColumn::new(batch, place, "id")?;
        let genres = StringListColumn::new(batch, place, "genres")?;
        let topics = StringListColumn::new(batch, place, "topics")?;
        let embedding = FloatListColumn::new(batch, place, "embedding")?;
        let streams_30d = FloatColumn::new(batch, place, "streams_30d")?;
        let tier = IntegerColumn::new(batch, place, "tier", "UInt8")?;
        (0..batch.num_rows())
            .map(|row| {
                let tier: Option<u8> = tier.optional(place, row)?;
                if let Some(tier) = tier.filter(|tier| *tier > 7) {
                    return Err(place.invalid("tier", row, format!("tier {tier} is not in 0..=7")));
                }
                Ok(ShowRecord {
                    id: Some(id.required(place, row)?.to_string()),
                    genres: genres.optional(place, row)?,
                    topics: topics.optional(place, row)?,
                    embedding: embedding.optional(place, row)?,
                    streams_30d: streams_30d.get(row),
                    tier,
                })
            })
            .collect()
    })
}

pub fn read_episodes(path: &Path) -> Result<Vec<EpisodeRecord>, LogError> {
    read_file(path, |batch, place| {
        let id = StringColumn::new(batch, place, "id")?;
        let show_id = StringColumn::new(batch, place, "show_id")?;
        let topics = StringListColumn::new(batch, place, "topics")?;
        let duration_s = FloatColumn::new(batch, place, "duration_s")?;
        (0..batch.num_rows())
            .map(|row| {
                Ok(EpisodeRecord {
                    id: Some(id.required(place, row)?.to_string()),
                    show_id: show_id.optional_string(row),
                    topics: topics.optional(place, row)?,
                    duration_s: duration_s.get(row),
                })
            })
            .collect()
    })
}

/// Keys records by id; a repeated id is an error rather than a silent overwrite, because
/// which of the two rows wins would otherwise depend on file order.
fn by_id<T>(
    path: &Path,
    records: Vec<T>,
    id: impl Fn(&T) -> Option<&str>,
) -> Result<HashMap<String, T>, LogError> {
    let mut keyed = HashMap::with_capacity(records.len());
    for record in records {
        // The readers fill every id: the column is required.
        let key = id(&record).unwrap_or_default().to_string();
        if keyed.contains_key(&key) {
            return Err(LogError::DuplicateId {
                path: path.to_path_buf(),
                id: key,
            });
        }
        keyed.insert(key, record);
    }
    Ok(keyed)
}

/// The latest `event_timestamp` of a snapshot file, `None` when the file has no such
/// column (written before it existed) or no rows. Reads that one column only.
pub fn read_as_of(path: &Path) -> Result<Option<i64>, LogError> {
    let builder = super::open_parquet(path)?;
    let Ok(index) = builder.schema().index_of(EVENT_TIMESTAMP_COLUMN) else {
        return Ok(None);
    };
    let projection = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let mut reader = builder
        .with_projection(projection)
        .with_batch_size(ROWS_PER_ROW_GROUP)
        .build()
        .map_err(|source| LogError::CorruptParquet {
            path: path.to_path_buf(),
            source,
        })?;
    let mut latest: Option<i64> = None;
    let mut first_row = 0;
    while let Some(batch) = super::guard_decoding(path, || Ok(reader.next()))? {
        let batch = batch.map_err(batch_error(path))?;
        let place = Place { path, first_row };
        first_row += batch.num_rows() as u64;
        let column = IntegerColumn::new(&batch, &place, EVENT_TIMESTAMP_COLUMN, "Timestamp")?;
        for row in 0..batch.num_rows() {
            if let Some(seconds) = column.optional::<i64>(&place, row)? {
                latest = Some(latest.map_or(seconds, |known| known.max(seconds)));
            }
        }
    }
    Ok(latest)
}

/// Reads the three snapshot files. `dir` is a world directory or its `snapshot/` folder.
pub fn read_snapshot(dir: &Path) -> Result<Snapshot, LogError> {
    let dir = snapshot_dir(dir);
    let users_path = dir.join(USERS_FILE);
    let shows_path = dir.join(SHOWS_FILE);
    let episodes_path = dir.join(EPISODES_FILE);
    let as_of = [&users_path, &shows_path, &episodes_path]
        .into_iter()
        .map(|path| read_as_of(path))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .max();
    Ok(Snapshot {
        as_of,
        users: by_id(&users_path, read_users(&users_path)?, |user| {
            user.id.as_deref()
        })?,
        shows: by_id(&shows_path, read_shows(&shows_path)?, |show| {
            show.id.as_deref()
        })?,
        episodes: by_id(&episodes_path, read_episodes(&episodes_path)?, |episode| {
            episode.id.as_deref()
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids come out in natural order whatever the hash map's order: `u2` before `u10`.
    #[test]
    fn ids_sort_naturally() {
        let users: HashMap<String, UserRecord> = ["u10", "u2", "u1", "u100", "u20"]
            .into_iter()
            .map(|id| {
                let user = UserRecord {
                    id: Some(id.to_string()),
                    ..UserRecord::default()
                };
                (id.to_string(), user)
            })
            .collect();
        let ids: Vec<String> = sorted_by_id(&users)
            .into_iter()
            .filter_map(|user| user.id)
            .collect();
        assert_eq!(ids, ["u1", "u2", "u10", "u20", "u100"]);
    }
}
