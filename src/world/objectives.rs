//! New ad objectives: outcomes that did not exist during the world's window, measured on
//! the days after it for a limited number of impressions, as a team that launches a new
//! objective would (the paper's cold start for new ad objectives).
//!
//! Two objectives, one close to the existing heads and one further away:
//! - `video_follow`: the user follows the show after a video ad. Its logit is the ad's
//!   true follow logit (whatever the outcome model says) moved by a video offset and a
//!   stronger creative effect, so the joint model's follow head already ranks it well.
//! - `episode_complete`: the user listens to the end of the advertised episode. It has
//!   drivers of its own that the existing labels barely use (episode length, session
//!   length, the user's search topics against the episode's, episode quality, the slot),
//!   and taste counts for less.
//!
//! Impressions are drawn exactly as the logs' ads (campaign, targeting, creative, slot,
//! context) but on later days: a labelled pool (the first [`POOL_DAYS`] days after the
//! window) and a test set (the [`TEST_DAYS`] after those). Each objective keeps the
//! impressions it applies to (video ads; ads naming an episode) until it has its count.
//! Random numbers come from streams of their own, so that the logs, the snapshot and
//! `world.json` are byte-identical with or without objectives.
//!
//! Like the rest of `world`, this knows nothing of features or models.

use std::ops::Range;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::catalog::{Catalog, affinity};
use super::outcomes::{Format, Slot, sigmoid};
use super::traffic::{self, IMPRESSIONS_PER_CHUNK, NONE, Row, Tables, World};
use super::{Stream, WorldConfig, WorldError, stream_rng};
use crate::entities::CandidateKind;
use crate::logs::{
    self, OBJECTIVES_DIR, OBJECTIVES_FORMAT_VERSION, ObjectiveImpression, ObjectiveInfo,
    ObjectivesInfo,
};

/// Days of the labelled pool, right after the window: a week of a new objective.
pub const POOL_DAYS: u32 = 7;
/// Days of the test set, after the pool: the next week.
pub const TEST_DAYS: u32 = 7;
/// Chunks drawn at once while an objective still lacks rows: enough to keep every core
/// busy, few enough not to overshoot a small count by much.
const CHUNKS_PER_ROUND: u64 = 8;
/// Bound on the draws per kept row: a world where an objective applies to almost no
/// impression (say, no video creative at all) fails instead of looping.
const MAX_DRAWS_PER_ROW: usize = 1_000;

/// `video_follow`: a video ad takes more attention than audio, and a follow is the one
/// action it asks for; a good creative matters more than for the logged follow.
const VIDEO_FOLLOW_OFFSET: f64 = 1.0;
const VIDEO_FOLLOW_CREATIVE_WEIGHT: f64 = 1.5;

/// `episode_complete`: base logit (about 4% of ads naming an episode complete it).
const COMPLETE_BASE: f64 = -3.55;
/// Taste counts less than for a stream: the listener already pressed play.
const COMPLETE_AFFINITY_WEIGHT: f64 = 0.45;
const COMPLETE_LISTENED_BEFORE: f64 = 0.6;
/// Per unit of log(duration / 40 min): a long episode is rarely finished.
const COMPLETE_DURATION_WEIGHT: f64 = -1.4;
const COMPLETE_MEDIAN_DURATION_S: f64 = 2_400.0;
/// Per unit of log(session length / 15 min): a long session leaves time to finish.
const COMPLETE_SESSION_WEIGHT: f64 = 0.6;
/// One of the user's search topics is one of the episode's (not just the show's).
const COMPLETE_EPISODE_TOPIC: f64 = 1.0;
const COMPLETE_EPISODE_QUALITY_WEIGHT: f64 = 2.5;
/// Evening listeners finish (peak at 21:00 UTC, as the other labels' hour effect).
const COMPLETE_EVENING: f64 = 0.3;

/// One new objective: its name (the file stem and the response field a fine-tuned head
/// fills), what it means, which impressions it applies to and how likely it is.
#[derive(Clone, Copy)]
pub struct Objective {
    pub name: &'static str,
    pub description: &'static str,
    applies: fn(&Row) -> bool,
    logit: fn(&Catalog, &Row) -> f64,
}

/// Every objective `simulate --objective-labels` writes.
pub const OBJECTIVES: [Objective; 2] = [
    Objective {
        name: "video_follow",
        description: "the user follows the show after a video ad (close to the follow head)",
        applies: |row| row.is_ad && row.format == Some(Format::Video),
        logit: video_follow_logit,
    },
    Objective {
        name: "episode_complete",
        description: "the user listens to the end of the advertised episode (its own drivers: \
                      episode and session length, episode topics, episode quality, slot)",
        applies: |row| row.is_ad && row.episode != NONE,
        logit: episode_complete_logit,
    },
];

fn logit_of(probability: f64) -> f64 {
    let p = probability.clamp(1e-12, 1.0 - 1e-12);
    (p / (1.0 - p)).ln()
}

fn video_follow_logit(catalog: &Catalog, row: &Row) -> f64 {
    let creative_quality = catalog
        .creatives
        .get(row.creative as usize)
        .map_or(0.0, |creative| creative.quality);
    logit_of(row.probabilities.follow)
        + VIDEO_FOLLOW_OFFSET
        + (VIDEO_FOLLOW_CREATIVE_WEIGHT - 1.0) * creative_quality
}

fn episode_complete_logit(catalog: &Catalog, row: &Row) -> f64 {
    let user = &catalog.users[row.user as usize];
    let show = &catalog.shows[row.show as usize];
    let Some(episode) = catalog.episodes.get(row.episode as usize) else {
        return f64::NEG_INFINITY;
    };
    let flag = |value: bool| if value { 1.0 } else { 0.0 };
    let hour = (row.timestamp.rem_euclid(86_400) / 3_600) as f64;
    let evening = (std::f64::consts::TAU * (hour - 21.0) / 24.0).cos();
    let slot = match row.slot {
        Slot::Preroll => 0.2,
        Slot::Postroll => -0.5,
        _ => 0.0,
    };
    COMPLETE_BASE
        + COMPLETE_AFFINITY_WEIGHT * affinity(&user.taste, &show.latent)
        + COMPLETE_LISTENED_BEFORE * flag(user.history_sorted.binary_search(&row.show).is_ok())
        + COMPLETE_DURATION_WEIGHT * (episode.duration_s / COMPLETE_MEDIAN_DURATION_S).ln()
        + COMPLETE_SESSION_WEIGHT * (f64::from(row.session_length_s.max(1)) / 900.0).ln()
        + COMPLETE_EPISODE_TOPIC
            * flag(
                user.search_topics
                    .iter()
                    .any(|topic| episode.topics.contains(topic)),
            )
        + COMPLETE_EPISODE_QUALITY_WEIGHT * episode.quality
        + COMPLETE_EVENING * evening
        + slot
}

/// The day ranges of the pool and the test set of a world of `days` days.
pub fn objective_days(days: u32) -> (Range<u32>, Range<u32>) {
    let pool = days..days + POOL_DAYS;
    let test = pool.end..pool.end + TEST_DAYS;
    (pool, test)
}

/// Draws `count` rows of `objective` on `days`; `part` tells the pool's streams from the
/// test's. Chunks are drawn in rounds, each chunk from its own stream, and kept in chunk
/// order, so that the rows are the same however many threads draw them.
fn draw_rows(
    config: &WorldConfig,
    catalog: &Catalog,
    tables: &Tables,
    objective: (usize, &Objective),
    part: u64,
    days: Range<u32>,
    count: usize,
) -> Result<Vec<(Row, bool, f64)>, WorldError> {
    let (index, objective) = objective;
    let world = World {
        config,
        catalog,
        tables,
    };
    let mut rows = Vec::with_capacity(count);
    let mut next_chunk = 0u64;
    while rows.len() < count {
        if next_chunk as usize * IMPRESSIONS_PER_CHUNK > count.max(1) * MAX_DRAWS_PER_ROW {
            return Err(WorldError::Internal(format!(
                "objective {} applies to almost no impression",
                objective.name
            )));
        }
        let chunks: Vec<Vec<(Row, bool, f64)>> = (next_chunk..next_chunk + CHUNKS_PER_ROUND)
            .into_par_iter()
            .map(|chunk| {
                let key = ((index as u64) << 32) | (part << 24) | chunk;
                let mut rng: ChaCha8Rng = stream_rng(config.seed, Stream::Objectives, key);
                (0..IMPRESSIONS_PER_CHUNK)
                    .filter_map(|_| {
                        let day = rng.random_range(days.clone());
                        let row = traffic::impression_on_day(&world, true, day, &mut rng);
                        let uniform: f64 = rng.random();
                        (objective.applies)(&row).then(|| {
                            let p_label = sigmoid((objective.logit)(catalog, &row));
                            (row, uniform < p_label, p_label)
                        })
                    })
                    .collect()
            })
            .collect();
        next_chunk += CHUNKS_PER_ROUND;
        rows.extend(chunks.into_iter().flatten());
    }
    rows.truncate(count);
    rows.sort_by_key(|(row, _, _)| row.timestamp);
    Ok(rows)
}

/// Writes `DIR/objectives/` (one file per objective and `objectives.json`) for a world
/// whose logs hold impression ids `1..first_impression_id`.
pub(crate) fn write(
    config: &WorldConfig,
    catalog: &Catalog,
    dir: &Path,
    first_impression_id: u64,
) -> Result<ObjectivesInfo, WorldError> {
    let folder = dir.join(OBJECTIVES_DIR);
    std::fs::create_dir_all(&folder).map_err(|source| WorldError::Io {
        path: folder.clone(),
        source,
    })?;
    let tables = Tables::new(config, catalog)?;
    let (pool_days, test_days) = objective_days(config.days);
    let mut next_id = first_impression_id;
    let mut objectives = Vec::with_capacity(OBJECTIVES.len());
    for (index, objective) in OBJECTIVES.iter().enumerate() {
        let pool = draw_rows(
            config,
            catalog,
            &tables,
            (index, objective),
            0,
            pool_days.clone(),
            config.objective_labels,
        )?;
        let test = draw_rows(
            config,
            catalog,
            &tables,
            (index, objective),
            1,
            test_days.clone(),
            config.objective_test_labels,
        )?;
        let rows: Vec<ObjectiveImpression> = pool
            .iter()
            .chain(&test)
            .map(|(row, label, p_label)| {
                let impression = row.to_impression(next_id);
                next_id += 1;
                ObjectiveImpression {
                    impression,
                    label: *label,
                    p_label: *p_label,
                }
            })
            .collect();
        logs::write_objective(&logs::objective_path(dir, objective.name), &rows)?;
        let total = rows.len().max(1) as f64;
        let rounded = |value: f64| (value * 1e8).round() / 1e8;
        objectives.push(ObjectiveInfo {
            name: objective.name.to_string(),
            description: objective.description.to_string(),
            kinds: vec![CandidateKind::Ad],
            pool_days: pool_days.clone(),
            test_days: test_days.clone(),
            pool_rows: pool.len() as u64,
            test_rows: test.len() as u64,
            observed_rate: rounded(rows.iter().filter(|row| row.label).count() as f64 / total),
            expected_rate: rounded(rows.iter().map(|row| row.p_label).sum::<f64>() / total),
        });
    }
    let info = ObjectivesInfo {
        format_version: OBJECTIVES_FORMAT_VERSION,
        objectives,
    };
    logs::write_objectives_info(dir, &info)?;
    Ok(info)
}
