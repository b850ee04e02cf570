//! `/score` request bodies for the benchmarks: a known user of the demo snapshot and
//! `candidates` candidates over its episodes, half ads and half promotions, each naming
//! its show (and the ads their episode), so that look-ups and assembly do real work.

use std::path::Path;

use serde_json::json;

/// A `/score` body with `candidates` candidates drawn evenly from the snapshot in
/// `store_dir` (episodes repeat when the snapshot has fewer than `candidates`).
pub fn score_request(store_dir: &Path, candidates: usize) -> String {
    let snapshot = podscore::logs::read_snapshot(store_dir).expect("demo snapshot");
    let mut users: Vec<&String> = snapshot.users.keys().collect();
    users.sort();
    let mut episodes: Vec<_> = snapshot
        .episodes
        .values()
        .filter(|e| e.show_id.is_some())
        .collect();
    episodes.sort_by(|a, b| a.id.cmp(&b.id));
    let step = (episodes.len() / candidates).max(1);
    let candidates: Vec<_> = (0..candidates)
        .map(|index| {
            let episode = episodes[(index * step) % episodes.len()];
            let show_id = episode.show_id.clone().unwrap_or_default();
            if index % 2 == 0 {
                json!({"id": format!("c{index}"), "kind": "ad", "show_id": show_id, "episode_id": episode.id,
                       "creative": {"creative_id": "cr3", "campaign_id": "cp1", "format": "audio", "slot": "midroll"}})
            } else {
                json!({"id": format!("c{index}"), "kind": "promotion", "show_id": show_id,
                       "creative": {"campaign_id": "p7", "slot": "home_shelf", "layout": "card"}})
            }
        })
        .collect();
    json!({"request_id": "bench", "user": {"id": users[users.len() / 2]},
           "context": {"timestamp": "2026-11-28T10:15:00Z", "surface": "home", "session_length_s": 420},
           "candidates": candidates})
    .to_string()
}
