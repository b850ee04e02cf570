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
