//! The synthetic world and its files: determinism, the shape of the world (tiers, ad
//! share, base rates), round trips through the Parquet contract, and the errors users
//! get for bad files and bad output folders.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{LargeListBuilder, LargeStringBuilder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::reader::{FileReader, SerializedFileReader};
use podscore::entities::{CandidateKind, ContextRecord, CreativeRecord};
use podscore::logs::{self, Impression, ROWS_PER_ROW_GROUP};
use podscore::world::{self, Preset, WorldConfig};
use proptest::prelude::*;

/// The same ranges the README ("Ranges the tests hold it to") states for the small and
/// default presets.
const PROMOTION_STREAM_RATE: (f64, f64) = (0.04, 0.08);
const AD_STREAM_RATE: (f64, f64) = (0.01, 0.03);
const CLICK_RATE: (f64, f64) = (0.02, 0.05);
const LIKE_RATE: (f64, f64) = (0.005, 0.015);
const FOLLOW_RATE: (f64, f64) = (0.005, 0.02);
const AD_SHARE: (f64, f64) = (0.19, 0.21);
const AD_COST: (f64, f64) = (0.01, 0.05);

fn small_world(dir: &Path, seed: u64) -> logs::WorldInfo {
    let config = WorldConfig {
        seed,
        ..WorldConfig::preset(Preset::Small)
    };
    world::simulate(&config, dir).expect("small world simulates")
}

/// Every file of a world, by path relative to the world, with its bytes.
fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("readable folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("inside").to_path_buf();
                files.insert(relative, std::fs::read(&path).expect("readable file"));
            }
        }
    }
    files
}

fn rate(count: usize, total: usize) -> f64 {
    count as f64 / total.max(1) as f64
}

fn assert_in(name: &str, value: f64, (low, high): (f64, f64)) {
    assert!(
        (low..=high).contains(&value),
        "{name} = {value:.4}, expected {low}..={high}"
    );
}

fn sample_impression(id: u64) -> Impression {
    let timestamp = 1_788_220_800 + id as i64 * 17;
    Impression {
        impression_id: id,
        timestamp,
        day: (id / 5000) as u32,
        user_id: format!("u{id}"),
        kind: if id.is_multiple_of(3) {
            CandidateKind::Ad
        } else {
            CandidateKind::Promotion
        },
        show_id: format!("s{}", id % 97),
        episode_id: id.is_multiple_of(2).then(|| format!("e{id}")),
        show_tier: (id % 8) as u8,
        creative: CreativeRecord {
            creative_id: id.is_multiple_of(3).then(|| format!("cr{}", id % 11)),
            campaign_id: Some(format!("p{}", id % 13)),
            format: id.is_multiple_of(3).then(|| "video".to_string()),
            slot: (!id.is_multiple_of(5)).then(|| "midroll".to_string()),
            layout: None,
        },
        context: ContextRecord {
            timestamp: Some(timestamp),
            surface: (!id.is_multiple_of(7)).then(|| "home".to_string()),
            session_length_s: (!id.is_multiple_of(4)).then_some(id as f64 * 0.5),
            host_genre: id.is_multiple_of(3).then(|| "comedy".to_string()),
        },
        cost: 0.0123,
        stream: id.is_multiple_of(2),
        click: id.is_multiple_of(5),
        like: id.is_multiple_of(7),
        follow: id.is_multiple_of(11),
        p_stream: 0.061,
        p_click: 0.031,
        p_like: 1e-3,
        p_follow: 0.5,
    }
}

/// Writes `columns` as a Parquet file, for files the contract's writers would refuse.
fn write_raw(path: &Path, columns: Vec<(&str, ArrayRef, bool)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, array, _)| array).collect(),
    )
    .expect("valid batch");
    let mut writer =
        ArrowWriter::try_new(File::create(path).expect("create"), schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

/// The same seed gives byte-identical files; a different seed gives different ones.
#[test]
fn same_seed_gives_byte_identical_files() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (first, second, other) = (
        temp.path().join("a"),
        temp.path().join("b"),
        temp.path().join("c"),
    );
    small_world(&first, 7);
    small_world(&second, 7);
    small_world(&other, 8);
    let (first, second, other) = (files_of(&first), files_of(&second), files_of(&other));
    assert_eq!(
        first
            .keys()
            .map(|path| path.to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        [
            "logs/ad_impressions.parquet",
            "logs/promotion_impressions.parquet",
            "snapshot/episodes.parquet",
            "snapshot/shows.parquet",
            "snapshot/users.parquet",
            "world.json",
        ]
    );
    for (path, bytes) in &first {
        assert!(
            bytes == &second[path],
            "{} differs between runs of one seed",
            path.display()
        );
        assert!(
            bytes != &other[path],
            "{} is the same for two seeds",
            path.display()
        );
    }
}

/// Tiers fall off like a long tail: tier 0 is the smallest and holds the most streams,
/// most shows sit in tiers 3-7, and brand-new shows have no tier.
#[test]
fn tiers_are_heavy_tailed() {
    let temp = tempfile::tempdir().expect("temp dir");
    let info = small_world(temp.path(), 42);
    let snapshot = logs::read_snapshot(temp.path()).expect("snapshot reads");
    let mut shows_per_tier = [0usize; 8];
    let mut streams_per_tier = [0f64; 8];
    let mut all_streams = Vec::new();
    let mut brand_new = 0;
    for show in snapshot.shows.values() {
        match (show.tier, show.streams_30d) {
            (Some(tier), Some(streams)) => {
                shows_per_tier[usize::from(tier)] += 1;
                streams_per_tier[usize::from(tier)] += streams;
                all_streams.push(streams);
            }
            (None, None) => brand_new += 1,
            other => panic!("show {:?} has tier and streams {other:?}", show.id),
        }
    }
    assert!(shows_per_tier[0] >= 1, "{shows_per_tier:?}");
    for tier in 1..8 {
        assert!(
            shows_per_tier[0] < shows_per_tier[tier],
            "{shows_per_tier:?}"
        );
        assert!(
            streams_per_tier[0] > streams_per_tier[tier],
            "{streams_per_tier:?}"
        );
    }
    let high: usize = shows_per_tier[..3].iter().sum();
    let low: usize = shows_per_tier[3..].iter().sum();
    assert!(low > 4 * high, "tiers 3-7 {low} vs 0-2 {high}");
    // A long tail: the top 2% of shows hold more streams than the bottom half.
    all_streams.sort_by(|left, right| right.total_cmp(left));
    let top: f64 = all_streams[..all_streams.len().div_ceil(50)].iter().sum();
    let bottom: f64 = all_streams[all_streams.len() / 2..].iter().sum();
    assert!(top > bottom, "top 2% {top} vs bottom half {bottom}");
    assert_eq!(brand_new as u64, info.summary.brand_new_shows);
    assert!(
        (10..=30).contains(&brand_new),
        "{brand_new} brand-new of 300"
    );
}

/// Promotions go mostly to popular shows, ads mostly to the long tail, and brand-new
/// shows appear only in ads and only from the day they went live.
#[test]
fn promotions_favour_popular_shows_and_ads_reach_the_cold_start() {
    let temp = tempfile::tempdir().expect("temp dir");
    let info = small_world(temp.path(), 42);
    let snapshot = logs::read_snapshot(temp.path()).expect("snapshot");
    let promotions = logs::read_impressions(&logs::impressions_path(
        temp.path(),
        CandidateKind::Promotion,
    ))
    .expect("promotions");
    let ads = logs::read_impressions(&logs::impressions_path(temp.path(), CandidateKind::Ad))
        .expect("ads");
    let high_tier = |rows: &[Impression]| {
        rate(
            rows.iter().filter(|row| row.show_tier <= 2).count(),
            rows.len(),
        )
    };
    assert!(
        high_tier(&promotions) > 0.3,
        "promotions on tiers 0-2: {}",
        high_tier(&promotions)
    );
    assert!(
        high_tier(&ads) < 0.1,
        "ads on tiers 0-2: {}",
        high_tier(&ads)
    );
    let is_brand_new = |row: &Impression| snapshot.shows[&row.show_id].tier.is_none();
    assert!(promotions.iter().all(|row| !is_brand_new(row)));
    let brand_new_ads: Vec<&Impression> = ads.iter().filter(|row| is_brand_new(row)).collect();
    assert!(
        rate(brand_new_ads.len(), ads.len()) > 0.03,
        "{} brand-new ads",
        brand_new_ads.len()
    );
    assert!(
        brand_new_ads
            .iter()
            .all(|row| row.day >= info.summary.brand_new_from_day && row.show_tier == 7)
    );
    // Every referenced entity exists in the snapshot.
    for row in promotions.iter().chain(&ads) {
        assert!(snapshot.users.contains_key(&row.user_id), "{}", row.user_id);
        if let Some(episode) = &row.episode_id {
            assert_eq!(
                snapshot.episodes[episode].show_id.as_ref(),
                Some(&row.show_id)
            );
        }
    }
}

/// The ad share, base rates and ad costs land in the ranges the README states, and
/// clicks come mostly with streams.
#[test]
fn ad_share_and_base_rates_match_the_readme() {
    let temp = tempfile::tempdir().expect("temp dir");
    let info = small_world(temp.path(), 42);
    let promotions = logs::read_impressions(&logs::impressions_path(
        temp.path(),
        CandidateKind::Promotion,
    ))
    .expect("promotions");
    let ads = logs::read_impressions(&logs::impressions_path(temp.path(), CandidateKind::Ad))
        .expect("ads");
    assert_in(
        "ad share",
        rate(ads.len(), ads.len() + promotions.len()),
        AD_SHARE,
    );
    for (name, rows) in [("promotion", &promotions), ("ad", &ads)] {
        let count = |label: fn(&Impression) -> bool| rows.iter().filter(|row| label(row)).count();
        let stream_range = if name == "ad" {
            AD_STREAM_RATE
        } else {
            PROMOTION_STREAM_RATE
        };
        assert_in(
            &format!("{name} stream"),
            rate(count(|row| row.stream), rows.len()),
            stream_range,
        );
        assert_in(
            &format!("{name} click"),
            rate(count(|row| row.click), rows.len()),
            CLICK_RATE,
        );
        assert_in(
            &format!("{name} like"),
            rate(count(|row| row.like), rows.len()),
            LIKE_RATE,
        );
        assert_in(
            &format!("{name} follow"),
            rate(count(|row| row.follow), rows.len()),
            FOLLOW_RATE,
        );
        // The logged true probabilities agree with the drawn labels.
        let mean_p_stream = rows.iter().map(|row| row.p_stream).sum::<f64>() / rows.len() as f64;
        let observed = rate(count(|row| row.stream), rows.len());
        assert!(
            (mean_p_stream - observed).abs() < 0.15 * observed,
            "{name}: {mean_p_stream} vs {observed}"
        );
        let click_given_stream = rate(
            count(|row| row.click && row.stream),
            count(|row| row.stream),
        );
        assert!(
            click_given_stream > 3.0 * rate(count(|row| row.click), rows.len()),
            "{name}: P(click | stream) = {click_given_stream}"
        );
        let summary = &info.summary.channels[name];
        assert_eq!(summary.impressions, rows.len() as u64);
        assert!((summary.observed.stream - observed).abs() < 1e-8);
    }
    assert!(promotions.iter().all(|row| row.cost == 0.0
        && row.creative.creative_id.is_none()
        && row.creative.format.is_none()));
    for row in &ads {
        assert_in("ad cost", row.cost, AD_COST);
        assert!(
            row.creative
                .creative_id
                .as_deref()
                .is_some_and(|id| id.starts_with("cr"))
        );
        assert!(matches!(
            row.creative.format.as_deref(),
            Some("audio" | "video")
        ));
        assert!(matches!(
            row.creative.slot.as_deref(),
            Some("preroll" | "midroll" | "postroll")
        ));
    }
    for row in &promotions {
        assert!(
            row.creative
                .campaign_id
                .as_deref()
                .is_some_and(|id| id.starts_with('p'))
        );
        assert!(matches!(
            row.creative.slot.as_deref(),
            Some("home_shelf" | "search" | "now_playing")
        ));
        assert!(matches!(
            row.creative.layout.as_deref(),
            Some("card" | "banner" | "hero")
        ));
    }
}

/// Rows are in time order with days counted from the start, ids are unique across both
/// files, and world.json counts what the files hold.
#[test]
fn logs_are_time_ordered_and_counted() {
    let temp = tempfile::tempdir().expect("temp dir");
    small_world(temp.path(), 3);
    let info = logs::read_world_info(temp.path()).expect("world.json");
    let start = info.settings.start_timestamp;
    assert_eq!(info.settings.start, "2026-09-01T00:00:00Z");
    let mut ids = HashSet::new();
    for kind in CandidateKind::ALL {
        let path = logs::impressions_path(temp.path(), kind);
        let rows = logs::read_impressions(&path).expect("impressions");
        assert!(
            rows.windows(2)
                .all(|pair| pair[0].timestamp <= pair[1].timestamp)
        );
        assert!(
            rows.windows(2)
                .all(|pair| pair[0].impression_id < pair[1].impression_id)
        );
        for row in &rows {
            assert_eq!(row.kind, kind);
            assert_eq!(i64::from(row.day), (row.timestamp - start) / 86_400);
            assert!(row.day < info.settings.days);
            assert_eq!(row.context.timestamp, Some(row.timestamp));
            assert!(
                ids.insert(row.impression_id),
                "duplicate id {}",
                row.impression_id
            );
        }
        let relative = format!("logs/{}_impressions.parquet", kind.as_str());
        assert_eq!(info.summary.rows[&relative], rows.len() as u64);
    }
    assert_eq!(ids.len() as u64, info.settings.impressions);
}

/// Impressions survive a write and a read unchanged, including absent optional fields;
/// files are cut into row groups of 64k rows and stream back batch by batch.
#[test]
fn impressions_round_trip_in_row_groups() {
    let temp = tempfile::tempdir().expect("temp dir");
    let path = temp.path().join("impressions.parquet");
    let rows: Vec<Impression> = (1..=150_000).map(sample_impression).collect();
    logs::write_impressions(&path, &rows).expect("write");
    assert_eq!(logs::read_impressions(&path).expect("read"), rows);

    let reader = SerializedFileReader::new(File::open(&path).expect("open")).expect("parquet");
    let groups: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|group| group.num_rows())
        .collect();
    assert_eq!(groups, [65_536, 65_536, 18_928]);

    let stream = logs::open_impressions(&path).expect("open");
    assert_eq!(stream.rows_total(), 150_000);
    let batches: Vec<Vec<Impression>> = stream.map(|batch| batch.expect("batch")).collect();
    assert!(
        batches
            .iter()
            .all(|batch| batch.len() <= ROWS_PER_ROW_GROUP)
    );
    assert_eq!(batches.concat(), rows);
}

/// A simulated world reads and re-writes to the very same bytes: logs and snapshot.
#[test]
fn simulated_world_round_trips_byte_for_byte() {
    let temp = tempfile::tempdir().expect("temp dir");
    let world = temp.path().join("world");
    small_world(&world, 5);
    let copy = temp.path().join("copy");
    let snapshot = logs::read_snapshot(&world).expect("snapshot");
    logs::write_snapshot(&copy.join("snapshot"), &snapshot).expect("write snapshot");
    assert_eq!(
        logs::read_snapshot(&copy.join("snapshot")).expect("read back"),
        snapshot
    );
    for file in ["users.parquet", "shows.parquet", "episodes.parquet"] {
        let original = std::fs::read(world.join("snapshot").join(file)).expect("original");
        assert!(
            original == std::fs::read(copy.join("snapshot").join(file)).expect("copy"),
            "{file} differs"
        );
    }
    let ads =
        logs::read_impressions(&logs::impressions_path(&world, CandidateKind::Ad)).expect("ads");
    let copied = temp.path().join("ads.parquet");
    logs::write_impressions(&copied, &ads).expect("write ads");
    assert!(
        std::fs::read(logs::impressions_path(&world, CandidateKind::Ad)).expect("original")
            == std::fs::read(&copied).expect("copy"),
        "ad impressions differ after a round trip"
    );
    let embedding_lengths: HashSet<usize> = snapshot
        .shows
        .values()
        .filter_map(|show| show.embedding.as_ref().map(Vec::len))
        .collect();
    assert_eq!(
        embedding_lengths,
        HashSet::from([logs::CONTENT_EMBEDDING_DIM])
    );
}

/// A missing file is reported as missing, with its path.
#[test]
fn missing_files_are_named() {
    let temp = tempfile::tempdir().expect("temp dir");
    let error = logs::read_impressions(&logs::impressions_path(temp.path(), CandidateKind::Ad))
        .expect_err("missing");
    let message = error.to_string();
    assert!(
        message.starts_with("missing file ") && message.ends_with("logs/ad_impressions.parquet"),
        "{message}"
    );
    let message = logs::read_snapshot(temp.path())
        .expect_err("missing")
        .to_string();
    assert!(
        message.starts_with("missing file ") && message.ends_with("snapshot/users.parquet"),
        "{message}"
    );
    let message = logs::read_world_info(temp.path())
        .expect_err("missing")
        .to_string();
    assert!(message.ends_with("world.json"), "{message}");
}

/// Garbage bytes are a corrupt Parquet file, named, not a panic.
#[test]
fn corrupt_files_are_named() {
    let temp = tempfile::tempdir().expect("temp dir");
    let path = temp.path().join("ad_impressions.parquet");
    std::fs::write(&path, b"this is not parquet at all, just some bytes").expect("write");
    let message = logs::read_impressions(&path)
        .expect_err("corrupt")
        .to_string();
    assert!(
        message.starts_with("corrupt parquet ") && message.contains("ad_impressions.parquet"),
        "{message}"
    );
    let snapshot = temp.path().join("snapshot");
    std::fs::create_dir(&snapshot).expect("folder");
    std::fs::write(snapshot.join("users.parquet"), b"PAR1 garbage PAR1").expect("write");
    let message = logs::read_snapshot(temp.path())
        .expect_err("corrupt")
        .to_string();
    assert!(
        message.starts_with("corrupt parquet ") && message.contains("users.parquet"),
        "{message}"
    );
}

/// A column of the wrong type names the file, the column, the type found and the type
/// expected.
#[test]
fn wrong_column_types_are_named() {
    let temp = tempfile::tempdir().expect("temp dir");
    let snapshot = temp.path().join("snapshot");
    logs::write_snapshot(&snapshot, &logs::Snapshot::default()).expect("empty snapshot");
    let mut history = ListBuilder::new(StringBuilder::new());
    history.append(true);
    let history: ArrayRef = Arc::new(history.finish());
    write_raw(
        &snapshot.join("users.parquet"),
        vec![
            ("id", Arc::new(StringArray::from(vec!["u1"])), false),
            ("country", Arc::new(Int64Array::from(vec![46])), true),
            (
                "platform",
                Arc::new(StringArray::from(vec![Some("ios")])),
                true,
            ),
            (
                "age_bucket",
                Arc::new(StringArray::from(vec![Some("18-24")])),
                true,
            ),
            ("history", history.clone(), true),
            ("follows", history.clone(), true),
            ("search_topics", history, true),
        ],
    );
    let message = logs::read_snapshot(temp.path())
        .expect_err("wrong type")
        .to_string();
    assert!(
        message.ends_with("users.parquet: column `country` has type Int64, expected Utf8"),
        "{message}"
    );

    let impressions = temp.path().join("promotion_impressions.parquet");
    write_raw(
        &impressions,
        vec![("impression_id", Arc::new(Int64Array::from(vec![1])), false)],
    );
    let message = logs::read_impressions(&impressions)
        .expect_err("missing column")
        .to_string();
    assert!(
        message.ends_with("promotion_impressions.parquet: missing column `timestamp`"),
        "{message}"
    );
}

/// Large strings and large lists, as other tools write them, read like plain ones.
#[test]
fn large_string_layouts_are_accepted() {
    let temp = tempfile::tempdir().expect("temp dir");
    let snapshot = temp.path().join("snapshot");
    logs::write_snapshot(&snapshot, &logs::Snapshot::default()).expect("empty snapshot");
    let mut history = LargeListBuilder::new(LargeStringBuilder::new());
    history.values().append_value("s3");
    history.values().append_value("s1");
    history.append(true);
    let history: ArrayRef = Arc::new(history.finish());
    let large = |value: Option<&str>| -> ArrayRef {
        Arc::new(arrow_array::LargeStringArray::from(vec![value]))
    };
    write_raw(
        &snapshot.join("users.parquet"),
        vec![
            ("id", large(Some("u1")), false),
            ("country", large(Some("SE")), true),
            ("platform", large(None), true),
            ("age_bucket", large(Some("25-34")), true),
            ("history", history.clone(), true),
            ("follows", history.clone(), true),
            ("search_topics", history, true),
        ],
    );
    let users = logs::read_snapshot(temp.path())
        .expect("large layouts read")
        .users;
    let user = &users["u1"];
    assert_eq!(user.country.as_deref(), Some("SE"));
    assert_eq!(user.platform, None);
    assert_eq!(user.history, Some(vec!["s3".to_string(), "s1".to_string()]));
}

/// A null in a required column and an unknown candidate kind name the column and row.
#[test]
fn bad_values_name_column_and_row() {
    let temp = tempfile::tempdir().expect("temp dir");
    let path = temp.path().join("ad_impressions.parquet");
    let rows: Vec<Impression> = (1..=3).map(sample_impression).collect();
    logs::write_impressions(&path, &rows).expect("write");
    // Rewrite the file with `kind` replaced and `user_id` nullable with a null.
    let file = File::open(&path).expect("open");
    let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("builder")
        .build()
        .expect("reader")
        .next()
        .expect("one batch")
        .expect("batch");
    let replace = |name: &str, array: ArrayRef| -> Vec<(&str, ArrayRef, bool)> {
        batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                let name_matches = field.name() == name;
                let column = if name_matches {
                    array.clone()
                } else {
                    column.clone()
                };
                (leak(field.name()), column, true)
            })
            .collect()
    };
    write_raw(
        &path,
        replace(
            "user_id",
            Arc::new(StringArray::from(vec![Some("u1"), None, Some("u3")])),
        ),
    );
    let message = logs::read_impressions(&path).expect_err("null").to_string();
    assert!(
        message
            .ends_with("ad_impressions.parquet: column `user_id` is null at row 1 but is required"),
        "{message}"
    );
    write_raw(
        &path,
        replace(
            "kind",
            Arc::new(StringArray::from(vec!["ad", "ad", "banana"])),
        ),
    );
    let message = logs::read_impressions(&path).expect_err("kind").to_string();
    assert!(
        message.contains("column `kind` at row 2: \"banana\" is not a candidate kind"),
        "{message}"
    );
}

fn leak(name: &str) -> &'static str {
    Box::leak(name.to_string().into_boxed_str())
}

/// An impression file without rows is an empty world, not an empty training set.
#[test]
fn empty_impression_files_are_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let path = temp.path().join("ad_impressions.parquet");
    logs::write_impressions(&path, &[]).expect("write empty");
    let message = logs::read_impressions(&path)
        .expect_err("empty")
        .to_string();
    assert!(
        message.starts_with("empty world: ")
            && message.ends_with("ad_impressions.parquet has no rows"),
        "{message}"
    );
}

/// `podscore simulate` into a non-empty folder fails with one `error:` line and leaves
/// the folder as it was, with no half-written world beside it.
#[test]
fn simulate_refuses_a_non_empty_folder() {
    let temp = tempfile::tempdir().expect("temp dir");
    let out = temp.path().join("world");
    std::fs::create_dir(&out).expect("folder");
    std::fs::write(out.join("keep.txt"), "mine").expect("file");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(["simulate", "--preset", "small", "--out"])
        .arg(&out)
        .output()
        .expect("podscore runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("is not empty"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&out).expect("folder").count(), 1);
    assert_eq!(
        std::fs::read_dir(temp.path()).expect("parent").count(),
        1,
        "something was left beside it"
    );
}

/// `podscore simulate` writes a complete world into an empty folder, settings from flags
/// and environment alike, and reports bad settings all at once.
#[test]
fn simulate_command_writes_a_world_and_checks_settings() {
    let temp = tempfile::tempdir().expect("temp dir");
    let out = temp.path().join("world");
    std::fs::create_dir(&out).expect("empty folder is allowed");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args([
            "simulate",
            "--preset",
            "small",
            "--impressions",
            "5000",
            "--out",
        ])
        .arg(&out)
        .env("PODSCORE_SIMULATE_SEED", "11")
        .output()
        .expect("podscore runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let info = logs::read_world_info(&out).expect("world.json");
    assert_eq!(
        (
            info.settings.seed,
            info.settings.impressions,
            info.settings.preset.as_str()
        ),
        (11, 5000, "small")
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(["simulate", "--users", "0", "--ad-share", "2", "--out"])
        .arg(temp.path().join("never"))
        .output()
        .expect("podscore runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--users") && stderr.contains("--ad-share"),
        "{stderr}"
    );
    assert!(!temp.path().join("never").exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Damaged impression files (bytes overwritten anywhere) give errors, never panics.
    #[test]
    fn damaged_files_never_panic(position in 0usize..100_000, bytes in prop::collection::vec(any::<u8>(), 1..16)) {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join("ad_impressions.parquet");
        let rows: Vec<Impression> = (1..=200).map(sample_impression).collect();
        logs::write_impressions(&path, &rows).expect("write");
        let mut content = std::fs::read(&path).expect("read");
        let start = position % content.len();
        for (offset, byte) in bytes.iter().enumerate() {
            if let Some(slot) = content.get_mut(start + offset) {
                *slot = *byte;
            }
        }
        std::fs::write(&path, &content).expect("write damaged");
        let _ = logs::read_impressions(&path);
    }
}

/// `world.json` reads back as what `simulate` returned, from the folder or the file.
#[test]
fn world_info_round_trips() {
    let temp = tempfile::tempdir().expect("temp dir");
    let info = small_world(temp.path(), 9);
    assert_eq!(logs::read_world_info(temp.path()).expect("read"), info);
    assert_eq!(
        logs::read_world_info(&temp.path().join("world.json")).expect("read file"),
        info
    );
}

/// A small world with every knob away from its default: ads with a taste of their own,
/// ad-only structure, and a noisy content encoder.
fn knob_world(dir: &Path, seed: u64) -> logs::WorldInfo {
    let config = WorldConfig {
        seed,
        ad_affinity_correlation: 0.5,
        ad_structure: 1.0,
        content_embedding_noise: 1.0,
        ..WorldConfig::preset(Preset::Small)
    };
    world::simulate(&config, dir).expect("knob world simulates")
}

/// A digest of everything a world's files say (decoded values field by field, floats by
/// their bits), independent of how the Parquet writer lays the bytes out and of fields
/// the record types may gain.
fn content_digest(dir: &Path) -> String {
    let mut hasher = Fnv1a(0xcbf2_9ce4_8422_2325);
    let mut text = |value: Option<&str>| {
        hasher.update(value.unwrap_or("\u{0}"));
        hasher.update([0xff]);
    };
    let mut numbers: Vec<u64> = Vec::new();
    for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
        for row in logs::read_impressions(&logs::impressions_path(dir, kind)).expect("rows") {
            for value in [
                Some(row.user_id.as_str()),
                Some(row.kind.as_str()),
                Some(row.show_id.as_str()),
                row.episode_id.as_deref(),
                row.creative.creative_id.as_deref(),
                row.creative.campaign_id.as_deref(),
                row.creative.format.as_deref(),
                row.creative.slot.as_deref(),
                row.creative.layout.as_deref(),
                row.context.surface.as_deref(),
            ] {
                text(value);
            }
            numbers.extend([
                row.impression_id,
                row.timestamp as u64,
                u64::from(row.day),
                u64::from(row.show_tier),
                row.context.session_length_s.map_or(u64::MAX, f64::to_bits),
                row.cost.to_bits(),
                u64::from(row.stream)
                    | u64::from(row.click) << 1
                    | u64::from(row.like) << 2
                    | u64::from(row.follow) << 3,
                row.p_stream.to_bits(),
                row.p_click.to_bits(),
                row.p_like.to_bits(),
                row.p_follow.to_bits(),
            ]);
        }
    }
    let snapshot = logs::read_snapshot(dir).expect("snapshot");
    let list = |values: &Option<Vec<String>>| values.as_ref().map(|v| v.join(","));
    for user in sorted(snapshot.users.keys().collect())
        .into_iter()
        .map(|id| &snapshot.users[id])
    {
        for value in [
            user.id.clone(),
            user.country.clone(),
            user.platform.clone(),
            user.age_bucket.clone(),
            list(&user.history),
            list(&user.follows),
            list(&user.search_topics),
        ] {
            text(value.as_deref());
        }
    }
    for show in sorted(snapshot.shows.keys().collect())
        .into_iter()
        .map(|id| &snapshot.shows[id])
    {
        for value in [show.id.clone(), list(&show.genres), list(&show.topics)] {
            text(value.as_deref());
        }
        numbers.extend(
            show.embedding
                .iter()
                .flatten()
                .map(|v| u64::from(v.to_bits())),
        );
        numbers.push(show.streams_30d.map_or(u64::MAX, f64::to_bits));
        numbers.push(show.tier.map_or(u64::MAX, u64::from));
    }
    for episode in sorted(snapshot.episodes.keys().collect())
        .into_iter()
        .map(|id| &snapshot.episodes[id])
    {
        for value in [
            episode.id.clone(),
            episode.show_id.clone(),
            list(&episode.topics),
        ] {
            text(value.as_deref());
        }
        numbers.push(episode.duration_s.map_or(u64::MAX, f64::to_bits));
    }
    for number in numbers {
        hasher.update(number.to_le_bytes());
    }
    format!("{:016x}", hasher.0)
}

fn sorted(mut ids: Vec<&String>) -> Vec<&String> {
    ids.sort();
    ids
}

/// FNV-1a, 64 bits: a digest whose value no toolchain or crate upgrade changes (std's
/// hasher promises no stable output), for a test that compares against a recorded value.
struct Fnv1a(u64);

impl Fnv1a {
    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        for byte in bytes.as_ref() {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// With the default knobs the world is the one simulated before the knobs existed: this
/// digest of the small world of seed 7 was taken from the simulator before them (and
/// the default world's files were compared byte for byte with that build's).
#[test]
fn default_knobs_keep_the_world() {
    let temp = tempfile::tempdir().expect("temp dir");
    small_world(temp.path(), 7);
    assert_eq!(content_digest(temp.path()), DEFAULT_WORLD_DIGEST);
    let text = std::fs::read_to_string(temp.path().join("world.json")).expect("world.json");
    for knob in [
        "ad_affinity_correlation",
        "ad_structure",
        "content_embedding_noise",
    ] {
        assert!(!text.contains(knob), "{knob} written for a default world");
    }
}

/// The digest of `default_knobs_keep_the_world`.
const DEFAULT_WORLD_DIGEST: &str = "334e1e432fd62a26";

/// Knobs away from their defaults are recorded in `world.json` and read back, so that
/// the world can be rebuilt; they change the world.
#[test]
fn knobs_are_recorded_and_change_the_world() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (plain, knobs) = (temp.path().join("plain"), temp.path().join("knobs"));
    small_world(&plain, 7);
    let info = knob_world(&knobs, 7);
    assert_eq!(info.settings.ad_affinity_correlation, Some(0.5));
    assert_eq!(info.settings.ad_structure, Some(1.0));
    assert_eq!(info.settings.content_embedding_noise, Some(1.0));
    let config = WorldConfig::from_settings(&info.settings).expect("settings rebuild");
    assert_eq!(
        (
            config.ad_affinity_correlation,
            config.ad_structure,
            config.content_embedding_noise
        ),
        (0.5, 1.0, 1.0)
    );
    assert_eq!(logs::read_world_info(&knobs).expect("read"), info);
    assert_ne!(content_digest(&plain), content_digest(&knobs));
    // Promotions do not depend on the ad knobs: same draws, same outcomes.
    let promotions = |dir: &Path| {
        logs::read_impressions(&logs::impressions_path(dir, CandidateKind::Promotion))
            .expect("promotions")
    };
    assert_eq!(promotions(&plain), promotions(&knobs));
    // With ad structure the ads log their host genre (a genre of the catalog), so that
    // features can see it; the default world's files have no such column.
    let ads = |dir: &Path| {
        logs::read_impressions(&logs::impressions_path(dir, CandidateKind::Ad)).expect("ads")
    };
    let genres: HashSet<String> = logs::read_snapshot(&knobs)
        .expect("snapshot")
        .shows
        .values()
        .flat_map(|show| show.genres.clone().unwrap_or_default())
        .collect();
    assert!(ads(&knobs).iter().all(|row| {
        row.context
            .host_genre
            .as_ref()
            .is_some_and(|genre| genres.contains(genre))
    }));
    assert!(
        ads(&plain)
            .iter()
            .all(|row| row.context.host_genre.is_none())
    );
    assert!(
        promotions(&knobs)
            .iter()
            .all(|row| row.context.host_genre.is_none())
    );
}

/// The oracle rebuilds the world from `world.json`: it recomputes every logged true
/// probability exactly, and draws competing ads for the same user, moment and slot,
/// priced and scored by the same outcome model.
#[test]
fn oracle_recomputes_the_logs_and_draws_competing_ads() {
    let temp = tempfile::tempdir().expect("temp dir");
    knob_world(temp.path(), 5);
    let oracle = world::Oracle::load(temp.path()).expect("oracle");
    for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
        let rows =
            logs::read_impressions(&logs::impressions_path(temp.path(), kind)).expect("rows");
        for row in rows.iter().step_by(7) {
            let p = oracle.probabilities(row).expect("known impression");
            assert_eq!(
                p.map(f64::to_bits),
                [row.p_stream, row.p_click, row.p_like, row.p_follow].map(f64::to_bits),
                "impression {}",
                row.impression_id
            );
        }
    }
    let ads = logs::read_impressions(&logs::impressions_path(temp.path(), CandidateKind::Ad))
        .expect("ads");
    let opportunity = &ads[ads.len() / 2];
    let candidates = oracle.ad_candidates(opportunity, 4, 0).expect("candidates");
    assert_eq!(candidates.len(), 4);
    assert_eq!(&candidates[0], opportunity);
    let campaigns: HashSet<_> = candidates
        .iter()
        .map(|c| c.creative.campaign_id.clone())
        .collect();
    assert_eq!(campaigns.len(), 4, "distinct campaigns");
    for candidate in &candidates[1..] {
        assert_eq!(candidate.user_id, opportunity.user_id);
        assert_eq!(candidate.timestamp, opportunity.timestamp);
        assert_eq!(candidate.creative.slot, opportunity.creative.slot);
        assert_eq!(candidate.context, opportunity.context);
        assert!(candidate.cost > 0.0 && candidate.p_stream > 0.0 && candidate.p_stream < 1.0);
        // Each counterfactual is itself an impression the oracle can score again.
        assert_eq!(
            oracle.probabilities(candidate).expect("scorable")[0].to_bits(),
            candidate.p_stream.to_bits()
        );
    }
    assert_eq!(
        oracle.ad_candidates(opportunity, 4, 0).expect("again"),
        candidates
    );
    assert_ne!(
        oracle.ad_candidates(opportunity, 4, 1).expect("other draw"),
        candidates
    );
    // A promotion has no competing ads; an unknown user is named.
    let promotion = logs::read_impressions(&logs::impressions_path(
        temp.path(),
        CandidateKind::Promotion,
    ))
    .expect("promotions")
    .remove(0);
    assert!(oracle.ad_candidates(&promotion, 4, 0).is_err());
    let stranger = Impression {
        user_id: "u999999".into(),
        ..opportunity.clone()
    };
    let message = oracle
        .probabilities(&stranger)
        .expect_err("unknown")
        .to_string();
    assert!(message.contains("u999999"), "{message}");
}

/// The ad-only structure is there in the true probabilities: video ads stream better on
/// a big screen, midrolls in long sessions; without the knob neither holds.
#[test]
fn ad_structure_shows_in_the_true_probabilities() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (plain, knobs) = (temp.path().join("plain"), temp.path().join("knobs"));
    small_world(&plain, 3);
    knob_world(&knobs, 3);
    let ratios = |dir: &Path| {
        let snapshot = logs::read_snapshot(dir).expect("snapshot");
        let ads =
            logs::read_impressions(&logs::impressions_path(dir, CandidateKind::Ad)).expect("ads");
        let mean = |keep: &dyn Fn(&Impression) -> bool| {
            let kept: Vec<f64> = ads.iter().filter(|r| keep(r)).map(|r| r.p_stream).collect();
            kept.iter().sum::<f64>() / kept.len().max(1) as f64
        };
        let platform = |row: &Impression| {
            snapshot.users[&row.user_id]
                .platform
                .clone()
                .unwrap_or_default()
        };
        let video = |row: &Impression| row.creative.format.as_deref() == Some("video");
        let big = |row: &Impression| matches!(platform(row).as_str(), "web" | "desktop");
        let phone = |row: &Impression| matches!(platform(row).as_str(), "android" | "ios");
        let screen = mean(&|r| video(r) && big(r)) / mean(&|r| video(r) && phone(r));
        let midroll = |row: &Impression| row.creative.slot.as_deref() == Some("midroll");
        let long = |row: &Impression| row.context.session_length_s.unwrap_or(0.0) > 1800.0;
        let short = |row: &Impression| row.context.session_length_s.unwrap_or(0.0) < 450.0;
        let session = mean(&|r| midroll(r) && long(r)) / mean(&|r| midroll(r) && short(r));
        (screen, session)
    };
    let (plain_screen, plain_session) = ratios(&plain);
    let (screen, session) = ratios(&knobs);
    assert!(
        screen > 1.4 && screen > plain_screen * 1.3,
        "screen {plain_screen} -> {screen}"
    );
    assert!(
        session > 1.3 && session > plain_session * 1.2,
        "session {plain_session} -> {session}"
    );
}

/// Content-embedding noise hides the show latent: at the default, shows of one genre
/// have far closer embeddings than shows of different genres; with loud noise hardly.
#[test]
fn content_embedding_noise_hides_the_latent() {
    let temp = tempfile::tempdir().expect("temp dir");
    let contrast = |noise: f64, dir: &Path| {
        let config = WorldConfig {
            seed: 4,
            content_embedding_noise: noise,
            impressions: 2_000,
            ..WorldConfig::preset(Preset::Small)
        };
        world::simulate(&config, dir).expect("world");
        let snapshot = logs::read_snapshot(dir).expect("snapshot");
        let shows: Vec<(String, Vec<f32>)> = snapshot
            .shows
            .values()
            .map(|show| {
                (
                    show.genres.as_ref().expect("genres")[0].clone(),
                    show.embedding.clone().expect("embedding"),
                )
            })
            .collect();
        let (mut same, mut other) = ((0.0, 0usize), (0.0, 0usize));
        for (i, (genre, a)) in shows.iter().enumerate() {
            for (other_genre, b) in &shows[i + 1..] {
                let distance: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
                let bucket = if genre == other_genre {
                    &mut same
                } else {
                    &mut other
                };
                bucket.0 += f64::from(distance);
                bucket.1 += 1;
            }
        }
        (other.0 / other.1 as f64) / (same.0 / same.1 as f64)
    };
    let sharp = contrast(0.3, &temp.path().join("sharp"));
    let blurred = contrast(3.0, &temp.path().join("blurred"));
    assert!(sharp > 1.5, "default contrast {sharp}");
    assert!(
        blurred < 1.0 + (sharp - 1.0) / 3.0,
        "noisy contrast {blurred} vs {sharp}"
    );
}
