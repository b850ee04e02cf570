//! Labels of new objectives: outcomes nobody logged during a world's window (a follow
//! after a video ad, a completed listen of the advertised episode), gathered on the days
//! after it for a few impressions each, as a team that starts measuring a new objective
//! would. One file per objective, `DIR/objectives/<name>.parquet`: the impression columns
//! of the logs plus `label` and `p_label` (the true probability the label was drawn from,
//! for evaluation only), rows in time order; `DIR/objectives/objectives.json` says what
//! each objective is and which of its days are the labelled pool and which the test.

use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use super::columns::{BooleanColumn, FloatColumn, Place};
use super::impressions::{impressions_from_batch, impressions_to_batch};
use super::{Impression, LogError, ROWS_PER_ROW_GROUP, impression_schema, writer_properties};
use crate::entities::CandidateKind;

/// Folder of the objective files inside a world directory.
pub const OBJECTIVES_DIR: &str = "objectives";
pub const OBJECTIVES_INFO_FILE: &str = "objectives.json";
pub const OBJECTIVES_FORMAT_VERSION: u32 = 1;

/// One labelled impression of a new objective.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveImpression {
    pub impression: Impression,
    /// Whether the objective's outcome happened.
    pub label: bool,
    /// The true probability `label` was drawn from (the world's; never a feature).
    pub p_label: f64,
}

/// What one objective is and where its rows lie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveInfo {
    /// File stem and the response field a fine-tuned head fills (`video_follow`).
    pub name: String,
    pub description: String,
    /// Candidate kinds the objective is measured on.
    pub kinds: Vec<CandidateKind>,
    /// Days of the labelled pool a team trains from (after the world's window).
    pub pool_days: Range<u32>,
    /// Later days, held out for evaluation.
    pub test_days: Range<u32>,
    pub pool_rows: u64,
    pub test_rows: u64,
    /// Share of positive labels in the file, and the mean of `p_label`.
    pub observed_rate: f64,
    pub expected_rate: f64,
}

/// `DIR/objectives/objectives.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectivesInfo {
    pub format_version: u32,
    pub objectives: Vec<ObjectiveInfo>,
}

impl ObjectivesInfo {
    pub fn get(&self, name: &str) -> Option<&ObjectiveInfo> {
        self.objectives
            .iter()
            .find(|objective| objective.name == name)
    }

    /// The objectives' names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.objectives
            .iter()
            .map(|objective| objective.name.as_str())
            .collect()
    }
}

/// `DIR/objectives/<name>.parquet`.
pub fn objective_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(OBJECTIVES_DIR).join(format!("{name}.parquet"))
}

/// `DIR/objectives/objectives.json`.
pub fn objectives_info_path(dir: &Path) -> PathBuf {
    dir.join(OBJECTIVES_DIR).join(OBJECTIVES_INFO_FILE)
}

/// Reads `DIR/objectives/objectives.json`; a world simulated without objectives has none.
pub fn read_objectives_info(dir: &Path) -> Result<ObjectivesInfo, LogError> {
    let path = objectives_info_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|source| LogError::open(&path, source))?;
    serde_json::from_str(&text).map_err(|source| LogError::Json { path, source })
}

pub fn write_objectives_info(dir: &Path, info: &ObjectivesInfo) -> Result<(), LogError> {
    let path = objectives_info_path(dir);
    let text = serde_json::to_string_pretty(info).map_err(|source| LogError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text + "\n").map_err(|source| LogError::Io { path, source })
}

/// The schema of an objective file: the impression columns (with the host genre column
/// when `host_genre`, as in the world's impression logs), then `label` and `p_label`.
pub fn objective_schema(host_genre: bool) -> SchemaRef {
    let mut fields: Vec<Field> = impression_schema(host_genre)
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    fields.push(Field::new("label", DataType::Boolean, false));
    fields.push(Field::new("p_label", DataType::Float64, false));
    Arc::new(Schema::new(fields))
}

fn objective_batch(
    rows: &[ObjectiveImpression],
    host_genre: bool,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let impressions: Vec<Impression> = rows.iter().map(|row| row.impression.clone()).collect();
    let mut columns = impressions_to_batch(&impressions, host_genre)?
        .columns()
        .to_vec();
    let mut labels = BooleanBuilder::with_capacity(rows.len());
    let mut probabilities = Float64Builder::with_capacity(rows.len());
    for row in rows {
        labels.append_value(row.label);
        probabilities.append_value(row.p_label);
    }
    columns.push(Arc::new(labels.finish()) as ArrayRef);
    columns.push(Arc::new(probabilities.finish()) as ArrayRef);
    RecordBatch::try_new(objective_schema(host_genre), columns)
}

/// Writes one objective file, in row groups of [`ROWS_PER_ROW_GROUP`] rows, with the host
/// genre column when some row has a host genre (a world with ad structure).
pub fn write_objective(path: &Path, rows: &[ObjectiveImpression]) -> Result<(), LogError> {
    let host_genre = rows
        .iter()
        .any(|row| row.impression.context.host_genre.is_some());
    let arrow = |source| LogError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let parquet = |source| LogError::WriteParquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut writer = ArrowWriter::try_new(
        BufWriter::new(file),
        objective_schema(host_genre),
        Some(writer_properties()),
    )
    .map_err(parquet)?;
    for chunk in rows.chunks(ROWS_PER_ROW_GROUP) {
        writer
            .write(&objective_batch(chunk, host_genre).map_err(arrow)?)
            .map_err(parquet)?;
    }
    writer.close().map_err(parquet)?;
    Ok(())
}

/// Reads a whole objective file (a few hundred thousand rows at most). A file with no
/// rows is refused, as an impression log is.
pub fn read_objective(path: &Path) -> Result<Vec<ObjectiveImpression>, LogError> {
    let builder = super::open_parquet(path)?;
    let corrupt = |source| LogError::CorruptParquet {
        path: path.to_path_buf(),
        source,
    };
    if builder.metadata().file_metadata().num_rows() == 0 {
        return Err(LogError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut batches = builder
        .with_batch_size(ROWS_PER_ROW_GROUP)
        .build()
        .map_err(corrupt)?;
    let mut rows = Vec::new();
    let mut first_row = 0u64;
    while let Some(batch) = super::guard_decoding(path, || Ok(batches.next()))? {
        let batch = batch.map_err(|source| LogError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let impressions = impressions_from_batch(&batch, path, first_row)?;
        let place = Place { path, first_row };
        let label = BooleanColumn::new(&batch, &place, "label")?;
        let p_label = FloatColumn::new(&batch, &place, "p_label")?;
        for (row, impression) in impressions.into_iter().enumerate() {
            let p_label = p_label.required(&place, row)?;
            if !(0.0..=1.0).contains(&p_label) {
                return Err(place.invalid(
                    "p_label",
                    row,
                    format!("{p_label} is not a probability"),
                ));
            }
            rows.push(ObjectiveImpression {
                impression,
                label: label.required(&place, row)?,
                p_label,
            });
        }
        first_row += batch.num_rows() as u64;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::{ContextRecord, CreativeRecord};

    fn row(id: u64, label: bool, p_label: f64) -> ObjectiveImpression {
        ObjectiveImpression {
            impression: Impression {
                impression_id: id,
                timestamp: 1_000 + id as i64,
                day: 30,
                user_id: "u1".into(),
                kind: CandidateKind::Ad,
                show_id: "s2".into(),
                episode_id: Some("e3".into()),
                show_tier: 4,
                creative: CreativeRecord {
                    creative_id: Some("cr1".into()),
                    campaign_id: Some("cp1".into()),
                    format: Some("video".into()),
                    slot: Some("preroll".into()),
                    layout: None,
                },
                context: ContextRecord {
                    timestamp: Some(1_000 + id as i64),
                    surface: Some("home".into()),
                    session_length_s: Some(600.0),
                    host_genre: None,
                },
                cost: 0.02,
                stream: false,
                click: false,
                like: false,
                follow: label,
                p_stream: 0.01,
                p_click: 0.02,
                p_like: 0.01,
                p_follow: 0.01,
            },
            label,
            p_label,
        }
    }

    /// An objective file reads back exactly as written, impression columns included.
    #[test]
    fn objective_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("video_follow.parquet");
        let rows = vec![row(1, true, 0.25), row(2, false, 0.0125)];
        write_objective(&path, &rows).unwrap();
        assert_eq!(read_objective(&path).unwrap(), rows);
    }

    /// In a world with ad structure the objective rows keep the ad's host genre, as the
    /// impression logs do; without, the file has no host genre column.
    #[test]
    fn objective_files_keep_the_host_genre() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("video_follow.parquet");
        let mut rows = vec![row(1, true, 0.25), row(2, false, 0.0125)];
        rows[0].impression.context.host_genre = Some("comedy".into());
        write_objective(&path, &rows).unwrap();
        assert_eq!(read_objective(&path).unwrap(), rows);
        let columns = |path: &Path| -> Vec<String> {
            let builder = crate::logs::open_parquet(path).unwrap();
            builder
                .schema()
                .fields()
                .iter()
                .map(|field| field.name().clone())
                .collect()
        };
        assert!(columns(&path).contains(&crate::logs::HOST_GENRE_COLUMN.to_string()));
        write_objective(&path, &[row(1, true, 0.25)]).unwrap();
        assert!(!columns(&path).contains(&crate::logs::HOST_GENRE_COLUMN.to_string()));
    }

    /// A label probability outside [0, 1] names the column and the row; an empty file is
    /// refused.
    #[test]
    fn bad_objective_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.parquet");
        write_objective(&path, &[row(1, true, 0.5), row(2, false, 1.5)]).unwrap();
        let error = read_objective(&path).unwrap_err().to_string();
        assert!(
            error.contains("p_label") && error.contains("row 1"),
            "{error}"
        );
        write_objective(&path, &[]).unwrap();
        assert!(matches!(read_objective(&path), Err(LogError::Empty { .. })));
    }
}
