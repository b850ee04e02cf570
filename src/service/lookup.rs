//! The feature look-up stage: the store keys a validated request needs, fetched in one
//! batch within the store's share of the deadline. A slow or failing store is not an
//! error: the request goes on without stored records (the cold-start path), and the
//! fallback is counted.
//!
//! This module knows the store's trait and its timeout hook; it knows nothing of HTTP or
//! of a particular backend.

use ahash::AHashSet;
use std::time::{Duration, Instant};

use crate::store::{self, FeatureStore, LookupKeys, StoreRecords};

use super::metrics::Metrics;
use super::validate::ValidatedRequest;

/// A validated request with what the store knew of it: what assembly needs.
#[derive(Debug, Clone)]
pub struct Features {
    pub request: ValidatedRequest,
    pub records: StoreRecords,
    /// The store failed or timed out: `records` is empty, and the answer says so.
    pub degraded: bool,
    /// Time spent looking up.
    pub took: Duration,
}

/// The store keys `request` needs, each once, in first-seen order. Sets of the ids seen
/// keep this linear in the candidates: a thousand distinct shows cost a thousand hash
/// look-ups, not half a million comparisons on the async worker.
pub fn keys(request: &ValidatedRequest) -> LookupKeys {
    let mut keys = LookupKeys {
        user: request.user_id.clone(),
        ..LookupKeys::default()
    };
    let mut shows = AHashSet::with_capacity(request.candidates.len());
    let mut episodes = AHashSet::with_capacity(request.candidates.len());
    for candidate in &request.candidates {
        if let Some(show_id) = &candidate.show_id
            && shows.insert(show_id.as_str())
        {
            keys.shows.push(show_id.clone());
        }
        if let Some(episode_id) = &candidate.episode_id
            && episodes.insert(episode_id.as_str())
        {
            keys.episodes.push(episode_id.clone());
        }
    }
    keys
}

/// Looks up `request`'s entities within `timeout`, counting hits, misses and fallbacks.
pub async fn look_up(
    store: &dyn FeatureStore,
    request: ValidatedRequest,
    timeout: Duration,
    metrics: &Metrics,
) -> Features {
    let started = Instant::now();
    let keys = keys(&request);
    let (records, fallback) = store::lookup_or_cold_start(store, &keys, timeout).await;
    metrics.observe_lookups(&keys, &records, fallback);
    Features {
        request,
        records,
        degraded: fallback.is_some(),
        took: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::UserRecord;
    use crate::service::request::{CandidateInput, ScoreRequest};
    use crate::service::validate::{Limits, validate};

    fn candidate(kind: &str) -> CandidateInput {
        CandidateInput {
            id: "c".into(),
            kind: kind.into(),
            ..CandidateInput::default()
        }
    }

    /// Lookup keys list each show and episode once, in first-seen order.
    #[test]
    fn lookup_keys_are_deduplicated() {
        let mut first = candidate("ad");
        first.show_id = Some("s2".into());
        let mut second = candidate("promotion");
        second.show_id = Some("s1".into());
        second.episode_id = Some("e1".into());
        let mut third = candidate("promotion");
        third.show_id = Some("s2".into());
        third.episode_id = Some("e1".into());
        let raw = ScoreRequest {
            user: Some(UserRecord {
                id: Some("u1".into()),
                ..UserRecord::default()
            }),
            candidates: vec![first, second, third],
            ..ScoreRequest::default()
        };
        let keys = keys(&validate(raw, &Limits::default()).unwrap());
        assert_eq!(keys.user.as_deref(), Some("u1"));
        assert_eq!(keys.shows, ["s2", "s1"]);
        assert_eq!(keys.episodes, ["e1"]);
    }

    /// Ten thousand distinct shows are keyed in linear time: within a generous 200 ms,
    /// where a pairwise scan makes fifty million string comparisons.
    #[test]
    fn many_distinct_shows_are_keyed_in_linear_time() {
        let candidates = (0..10_000)
            .map(|index| {
                let mut candidate = candidate("ad");
                candidate.show_id = Some(format!("show-{index}"));
                candidate.episode_id = Some(format!("episode-{}", index % 7));
                candidate
            })
            .collect();
        let limits = Limits {
            max_candidates: 10_000,
            ..Limits::default()
        };
        let request = validate(
            ScoreRequest {
                candidates,
                ..ScoreRequest::default()
            },
            &limits,
        )
        .unwrap();
        let started = Instant::now();
        let keys = keys(&request);
        assert!(started.elapsed() < Duration::from_millis(200));
        assert_eq!(keys.shows.len(), 10_000);
        assert_eq!(keys.shows[9_999], "show-9999");
        assert_eq!(keys.episodes.len(), 7);
    }
}
