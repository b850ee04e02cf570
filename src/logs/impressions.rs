//! Impression logs: one Parquet file per candidate kind, one row per impression, rows in
//! time order, in row groups of [`ROWS_PER_ROW_GROUP`] rows so that readers can stream.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, UInt8Array, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use super::columns::{BooleanColumn, FloatColumn, IntegerColumn, Place, StringColumn};
use super::{LogError, ROWS_PER_ROW_GROUP, writer_properties};
use crate::entities::{CandidateKind, ContextRecord, CreativeRecord};

/// One logged impression: who saw what, where and when, what they did, and the true
/// probabilities the simulator drew the outcomes from (for evaluation only; a real log
/// would not have them).
#[derive(Debug, Clone, PartialEq)]
pub struct Impression {
    /// Unique across both impression files of a world, increasing with time.
    pub impression_id: u64,
    /// Unix seconds, UTC.
    pub timestamp: i64,
    /// 0-based day index since the world's start.
    pub day: u32,
    pub user_id: String,
    pub kind: CandidateKind,
    pub show_id: String,
    pub episode_id: Option<String>,
    /// Tier of the show at impression time (brand-new shows count as tier 7).
    pub show_tier: u8,
    pub creative: CreativeRecord,
    /// `context.timestamp` is not stored separately: readers set it to `timestamp`, and
    /// writers ignore it.
    pub context: ContextRecord,
    /// What the impression cost the advertiser (0 for promotions).
    pub cost: f64,
    pub stream: bool,
    pub click: bool,
    pub like: bool,
    pub follow: bool,
    pub p_stream: f64,
    pub p_click: f64,
    pub p_like: f64,
    pub p_follow: f64,
}

/// The optional last column: the ad's host genre (`ContextRecord::host_genre`), written
/// only by writers created for it, so that files without it stay as they always were.
pub const HOST_GENRE_COLUMN: &str = "host_genre";

/// The Arrow schema of both impression files (column order is the file's column order),
/// without or with the host genre column.
pub fn impression_schema(host_genre: bool) -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    static WITH_HOST: OnceLock<SchemaRef> = OnceLock::new();
    let base = SCHEMA
        .get_or_init(|| {
            let required = |name: &str, data_type: DataType| Field::new(name, data_type, false);
            let optional = |name: &str, data_type: DataType| Field::new(name, data_type, true);
            Arc::new(Schema::new(vec![
                required("impression_id", DataType::UInt64),
                required("timestamp", DataType::Int64),
                required("day", DataType::UInt32),
                required("user_id", DataType::Utf8),
                required("kind", DataType::Utf8),
                required("show_id", DataType::Utf8),
                optional("episode_id", DataType::Utf8),
                required("show_tier", DataType::UInt8),
                optional("creative_id", DataType::Utf8),
                optional("campaign_id", DataType::Utf8),
                optional("format", DataType::Utf8),
                optional("slot", DataType::Utf8),
                optional("layout", DataType::Utf8),
                optional("surface", DataType::Utf8),
                optional("session_length_s", DataType::Float64),
                required("cost", DataType::Float64),
                required("stream", DataType::Boolean),
                required("click", DataType::Boolean),
                required("like", DataType::Boolean),
                required("follow", DataType::Boolean),
                required("p_stream", DataType::Float64),
                required("p_click", DataType::Float64),
                required("p_like", DataType::Float64),
                required("p_follow", DataType::Float64),
            ]))
        })
        .clone();
    if !host_genre {
        return base;
    }
    WITH_HOST
        .get_or_init(|| {
            let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(HOST_GENRE_COLUMN, DataType::Utf8, true));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

pub(super) fn impressions_to_batch(
    rows: &[Impression],
    host_genre: bool,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    fn strings<'a>(
        rows: &'a [Impression],
        value: impl Fn(&'a Impression) -> Option<&'a str>,
    ) -> ArrayRef {
        let mut builder = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
        for row in rows {
            builder.append_option(value(row));
        }
        Arc::new(builder.finish())
    }
    fn floats(rows: &[Impression], value: impl Fn(&Impression) -> Option<f64>) -> ArrayRef {
        let mut builder = Float64Builder::with_capacity(rows.len());
        for row in rows {
            builder.append_option(value(row));
        }
        Arc::new(builder.finish())
    }
    fn booleans(rows: &[Impression], value: impl Fn(&Impression) -> bool) -> ArrayRef {
        let mut builder = BooleanBuilder::with_capacity(rows.len());
        for row in rows {
            builder.append_value(value(row));
        }
        Arc::new(builder.finish())
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|row| row.impression_id),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|row| row.timestamp),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|row| row.day),
        )),
        strings(rows, |row| Some(&row.user_id)),
        strings(rows, |row| Some(row.kind.as_str())),
        strings(rows, |row| Some(&row.show_id)),
        strings(rows, |row| row.episode_id.as_deref()),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|row| row.show_tier),
        )),
        strings(rows, |row| row.creative.creative_id.as_deref()),
        strings(rows, |row| row.creative.campaign_id.as_deref()),
        strings(rows, |row| row.creative.format.as_deref()),
        strings(rows, |row| row.creative.slot.as_deref()),
        strings(rows, |row| row.creative.layout.as_deref()),
        strings(rows, |row| row.context.surface.as_deref()),
        floats(rows, |row| row.context.session_length_s),
        floats(rows, |row| Some(row.cost)),
        booleans(rows, |row| row.stream),
        booleans(rows, |row| row.click),
        booleans(rows, |row| row.like),
        booleans(rows, |row| row.follow),
        floats(rows, |row| Some(row.p_stream)),
        floats(rows, |row| Some(row.p_click)),
        floats(rows, |row| Some(row.p_like)),
        floats(rows, |row| Some(row.p_follow)),
    ];
    if host_genre {
        columns.push(strings(rows, |row| row.context.host_genre.as_deref()));
    }
    RecordBatch::try_new(impression_schema(host_genre), columns)
}

/// Decodes one record batch; `first_row` is the batch's first row within the file, so
/// that errors point at the right row.
pub(super) fn impressions_from_batch(
    batch: &RecordBatch,
    path: &Path,
    first_row: u64,
) -> Result<Vec<Impression>, LogError> {
    let place = Place { path, first_row };
    let impression_id = IntegerColumn::new(batch, &place, "impression_id", "UInt64")?;
    let timestamp = IntegerColumn::new(batch, &place, "timestamp", "Int64")?;
    let day = IntegerColumn::new(batch, &place, "day", "UInt32")?;
    let user_id = StringColumn::new(batch, &place, "user_id")?;
    let kind = StringColumn::new(batch, &place, "kind")?;
    let show_id = StringColumn::new(batch, &place, "show_id")?;
    let episode_id = StringColumn::new(batch, &place, "episode_id")?;
    let show_tier = IntegerColumn::new(batch, &place, "show_tier", "UInt8")?;
    let creative_id = StringColumn::new(batch, &place, "creative_id")?;
    let campaign_id = StringColumn::new(batch, &place, "campaign_id")?;
    let format = StringColumn::new(batch, &place, "format")?;
    let slot = StringColumn::new(batch, &place, "slot")?;
    let layout = StringColumn::new(batch, &place, "layout")?;
    let surface = StringColumn::new(batch, &place, "surface")?;
    let session_length_s = FloatColumn::new(batch, &place, "session_length_s")?;
    let cost = FloatColumn::new(batch, &place, "cost")?;
    let stream = BooleanColumn::new(batch, &place, "stream")?;
    let click = BooleanColumn::new(batch, &place, "click")?;
    let like = BooleanColumn::new(batch, &place, "like")?;
    let follow = BooleanColumn::new(batch, &place, "follow")?;
    let p_stream = FloatColumn::new(batch, &place, "p_stream")?;
    let p_click = FloatColumn::new(batch, &place, "p_click")?;
    let p_like = FloatColumn::new(batch, &place, "p_like")?;
    let p_follow = FloatColumn::new(batch, &place, "p_follow")?;
    let host_genre = match batch.schema().column_with_name(HOST_GENRE_COLUMN) {
        Some(_) => Some(StringColumn::new(batch, &place, HOST_GENRE_COLUMN)?),
        None => None,
    };

    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let kind_text = kind.required(&place, row)?;
        let kind = CandidateKind::parse(kind_text).ok_or_else(|| {
            place.invalid(
                "kind",
                row,
                format!("{kind_text:?} is not a candidate kind (`ad` or `promotion`)"),
            )
        })?;
        let show_tier: u8 = show_tier.required(&place, row)?;
        if show_tier > 7 {
            return Err(place.invalid(
                "show_tier",
                row,
                format!("tier {show_tier} is not in 0..=7"),
            ));
        }
        let timestamp: i64 = timestamp.required(&place, row)?;
        rows.push(Impression {
            impression_id: impression_id.required(&place, row)?,
            timestamp,
            day: day.required(&place, row)?,
            user_id: user_id.required(&place, row)?.to_string(),
            kind,
            show_id: show_id.required(&place, row)?.to_string(),
            episode_id: episode_id.optional_string(row),
            show_tier,
            creative: CreativeRecord {
                creative_id: creative_id.optional_string(row),
                campaign_id: campaign_id.optional_string(row),
                format: format.optional_string(row),
                slot: slot.optional_string(row),
                layout: layout.optional_string(row),
            },
            context: ContextRecord {
                timestamp: Some(timestamp),
                surface: surface.optional_string(row),
                session_length_s: session_length_s.get(row),
                host_genre: host_genre
                    .as_ref()
                    .and_then(|column| column.optional_string(row)),
            },
            cost: cost.required(&place, row)?,
            stream: stream.required(&place, row)?,
            click: click.required(&place, row)?,
            like: like.required(&place, row)?,
            follow: follow.required(&place, row)?,
            p_stream: p_stream.required(&place, row)?,
            p_click: p_click.required(&place, row)?,
            p_like: p_like.required(&place, row)?,
            p_follow: p_follow.required(&place, row)?,
        });
    }
    Ok(rows)
}

/// Streams an impression file in batches of at most [`ROWS_PER_ROW_GROUP`] rows, so that
/// memory stays bounded whatever the file's size. Stops after the first error.
pub struct ImpressionReader {
    path: PathBuf,
    batches: ParquetRecordBatchReader,
    rows_total: u64,
    rows_read: u64,
    failed: bool,
}

impl ImpressionReader {
    /// Rows in the whole file (from its footer; nothing is decoded to know it).
    pub fn rows_total(&self) -> u64 {
        self.rows_total
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for ImpressionReader {
    type Item = Result<Vec<Impression>, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let batches = &mut self.batches;
        let next = super::guard_decoding(&self.path, || Ok(batches.next()));
        let outcome = match next {
            Ok(None) => return None,
            Ok(Some(Ok(batch))) => {
                let decoded = impressions_from_batch(&batch, &self.path, self.rows_read);
                self.rows_read += batch.num_rows() as u64;
                decoded
            }
            Ok(Some(Err(source))) => Err(LogError::Arrow {
                path: self.path.clone(),
                source,
            }),
            Err(error) => Err(error),
        };
        self.failed = outcome.is_err();
        Some(outcome)
    }
}

/// Opens an impression file for streaming. Checks the schema up front (so a wrong column
/// type fails here, not half-way through), and refuses a file with no rows: a world
/// without impressions of a kind cannot be trained or evaluated.
pub fn open_impressions(path: &Path) -> Result<ImpressionReader, LogError> {
    let builder = super::open_parquet(path)?;
    let corrupt = |source| LogError::CorruptParquet {
        path: path.to_path_buf(),
        source,
    };
    // Decoding an empty batch of the file's schema runs every column check.
    impressions_from_batch(&RecordBatch::new_empty(builder.schema().clone()), path, 0)?;
    let rows_total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    if rows_total == 0 {
        return Err(LogError::Empty {
            path: path.to_path_buf(),
        });
    }
    let batches = builder
        .with_batch_size(ROWS_PER_ROW_GROUP)
        .build()
        .map_err(corrupt)?;
    Ok(ImpressionReader {
        path: path.to_path_buf(),
        batches,
        rows_total,
        rows_read: 0,
        failed: false,
    })
}

/// Reads a whole impression file into memory.
pub fn read_impressions(path: &Path) -> Result<Vec<Impression>, LogError> {
    let mut reader = open_impressions(path)?;
    let mut rows = Vec::with_capacity(usize::try_from(reader.rows_total()).unwrap_or(0));
    for batch in &mut reader {
        rows.extend(batch?);
    }
    Ok(rows)
}

/// Writes impressions to one file incrementally: callers hand over chunks of any size and
/// the writer cuts row groups of [`ROWS_PER_ROW_GROUP`] rows. Nothing is readable until
/// [`ImpressionWriter::finish`] has written the footer.
pub struct ImpressionWriter {
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows_written: u64,
    host_genre: bool,
}

impl ImpressionWriter {
    /// Creates (or truncates) `path`; its folder must exist. The file has no host genre
    /// column.
    pub fn create(path: &Path) -> Result<ImpressionWriter, LogError> {
        ImpressionWriter::create_with(path, false)
    }

    /// Creates (or truncates) `path`, with the host genre column when `host_genre`.
    pub fn create_with(path: &Path, host_genre: bool) -> Result<ImpressionWriter, LogError> {
        let file = File::create(path).map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = ArrowWriter::try_new(
            BufWriter::new(file),
            impression_schema(host_genre),
            Some(writer_properties()),
        )
        .map_err(|source| LogError::WriteParquet {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ImpressionWriter {
            path: path.to_path_buf(),
            writer,
            rows_written: 0,
            host_genre,
        })
    }

    pub fn write(&mut self, rows: &[Impression]) -> Result<(), LogError> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch =
            impressions_to_batch(rows, self.host_genre).map_err(|source| LogError::Arrow {
                path: self.path.clone(),
                source,
            })?;
        self.writer
            .write(&batch)
            .map_err(|source| LogError::WriteParquet {
                path: self.path.clone(),
                source,
            })?;
        self.rows_written += rows.len() as u64;
        Ok(())
    }

    /// Writes the footer and flushes; returns the number of rows written.
    pub fn finish(self) -> Result<u64, LogError> {
        let path = self.path;
        let mut buffered = self
            .writer
            .into_inner()
            .map_err(|source| LogError::WriteParquet {
                path: path.clone(),
                source,
            })?;
        buffered
            .flush()
            .map_err(|source| LogError::Io { path, source })?;
        Ok(self.rows_written)
    }
}

/// Writes `rows` as one impression file (an empty slice gives a valid file with no rows),
/// with the host genre column when some row has a host genre.
pub fn write_impressions(path: &Path, rows: &[Impression]) -> Result<(), LogError> {
    let host_genre = rows.iter().any(|row| row.context.host_genre.is_some());
    let mut writer = ImpressionWriter::create_with(path, host_genre)?;
    for chunk in rows.chunks(ROWS_PER_ROW_GROUP) {
        writer.write(chunk)?;
    }
    writer.finish()?;
    Ok(())
}
