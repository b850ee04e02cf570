//! A world's logs as learning data: the time split by day, shared by the trainer (train
//! and validation days) and the evaluator (test days), and the entity views of one logged
//! impression, which feed the shared feature assembly exactly as a request would.
//!
//! Both `train` and `eval` read the logs through here, so that the evaluator's test days
//! are by construction the days the trainer held out. This module knows the log schema
//! and the entity views; it knows nothing of candle, tract, bundles or HTTP.

use std::ops::Range;
use std::path::Path;

use serde::Serialize;

use crate::entities::{CandidateKind, CandidateView, RequestView};
use crate::logs::{self, Impression, LogError, Snapshot};

/// Fractions of the days used for training and validation; the rest is the test split.
/// Days, not rows, so that no test impression precedes a training one: the paper's
/// evaluation is forward in time.
pub const TRAIN_FRACTION: f64 = 0.7;
pub const VALIDATION_FRACTION: f64 = 0.15;
/// A time split needs a day for each of its three parts.
pub const MIN_DAYS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("empty world: no impressions in either log")]
    Empty,
    #[error("the logs span {days} days; at least {MIN_DAYS} are needed for a time split")]
    TooFewDays { days: u32 },
}

/// Day ranges of the time split.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Splits {
    pub days: u32,
    pub train: Range<u32>,
    pub validation: Range<u32>,
    pub test: Range<u32>,
}

impl Splits {
    /// The split of logs whose largest `day` is `last_day` (`None`: no impression at all).
    pub fn after_last_day(last_day: Option<u32>) -> Result<Splits, DatasetError> {
        let days = last_day.ok_or(DatasetError::Empty)? + 1;
        if days < MIN_DAYS {
            return Err(DatasetError::TooFewDays { days });
        }
        Ok(split_days(days))
    }
}

/// The split of `days` days: the first 70% train, the next 15% validation, the rest test;
/// train and validation get at least one day each.
pub fn split_days(days: u32) -> Splits {
    let train_end = ((f64::from(days) * TRAIN_FRACTION).floor() as u32).max(1);
    let validation_end = ((f64::from(days) * (TRAIN_FRACTION + VALIDATION_FRACTION)).floor()
        as u32)
        .max(train_end + 1)
        .min(days);
    Splits {
        days,
        train: 0..train_end,
        validation: train_end..validation_end,
        test: validation_end..days,
    }
}

/// The number of days the logs span: one past the largest `day` in either file.
pub fn count_days(data: &Path) -> Result<u32, DatasetError> {
    let mut last_day = None;
    for kind in CandidateKind::ALL {
        let path = logs::impressions_path(data, kind);
        for group in logs::open_impressions(&path)? {
            for row in &group? {
                last_day = Some(last_day.map_or(row.day, |d: u32| d.max(row.day)));
            }
        }
    }
    Ok(Splits::after_last_day(last_day)?.days)
}

/// The first `limit` impressions of `kind` on `days`, in time order (the file is
/// streamed, and read no further than needed).
pub fn read_days(
    data: &Path,
    kind: CandidateKind,
    days: &Range<u32>,
    limit: usize,
) -> Result<Vec<Impression>, DatasetError> {
    let mut rows = Vec::new();
    for group in logs::open_impressions(&logs::impressions_path(data, kind))? {
        rows.extend(
            group?
                .into_iter()
                .filter(|row| days.contains(&row.day))
                .take(limit - rows.len()),
        );
        if rows.len() == limit {
            break;
        }
    }
    Ok(rows)
}

/// The entity views of one impression, from the snapshot and the impression itself.
pub fn views<'a>(
    snapshot: &'a Snapshot,
    row: &'a Impression,
) -> (RequestView<'a>, CandidateView<'a>) {
    (
        RequestView {
            user: snapshot.users.get(&row.user_id),
            context: &row.context,
        },
        CandidateView {
            kind: row.kind,
            show_id: Some(&row.show_id),
            show: snapshot.shows.get(&row.show_id),
            episode_id: row.episode_id.as_deref(),
            episode: row
                .episode_id
                .as_ref()
                .and_then(|id| snapshot.episodes.get(id)),
            creative: &row.creative,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten days split 7 / 1 / 2, twenty 14 / 3 / 3; fewer than three days are refused.
    #[test]
    fn days_split_seventy_fifteen_fifteen() {
        let ten = split_days(10);
        assert_eq!((ten.train, ten.validation, ten.test), (0..7, 7..8, 8..10));
        let twenty = Splits::after_last_day(Some(19)).unwrap();
        assert_eq!(
            (twenty.train, twenty.validation, twenty.test),
            (0..14, 14..17, 17..20)
        );
        assert!(matches!(
            Splits::after_last_day(Some(1)),
            Err(DatasetError::TooFewDays { days: 2 })
        ));
        assert!(matches!(
            Splits::after_last_day(None),
            Err(DatasetError::Empty)
        ));
    }
}
