//! New objectives end to end on the small preset: `simulate --objective-labels` writes
//! them without changing the world, `podscore finetune` adds one to a trained bundle in
//! every mode, and the fine-tuned bundle passes its golden check in tract and serves the
//! new response field over HTTP with the scores its network gives.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde_json::{Value, json};
use tempfile::TempDir;

use podscore::bundle::{Bundle, Heads, Manifest, ResponseField, WEIGHTS_FILE};
use podscore::dataset;
use podscore::entities::CandidateKind;
use podscore::features::Assembler;
use podscore::logs::{self, ObjectiveImpression};
use podscore::runtime::RuntimeConfig;
use podscore::service::models::Model;
use podscore::train::finetune::{self, FinetuneArgs};
use podscore::train::network::Network;
use podscore::train::{self, TrainArgs};
use podscore::world::{self, Preset, WorldConfig};

#[path = "common/host.rs"]
mod host;
use host::HostServer;

/// Labelled impressions per objective in the test worlds: enough for a few thousand
/// labels to train on and a test week.
const POOL: usize = 4_000;
const TEST: usize = 2_000;
/// tract and candle agree within this on every probability (see tests/train.rs).
const TOLERANCE: f64 = 1e-5;

#[derive(Parser)]
struct TrainCommand {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Parser)]
struct FinetuneCommand {
    #[command(flatten)]
    args: FinetuneArgs,
}

/// The small world with [`POOL`] labelled and [`TEST`] test impressions per objective.
fn simulate_with_objectives(dir: &Path) {
    world::simulate(
        &WorldConfig {
            objective_labels: POOL,
            objective_test_labels: TEST,
            ..WorldConfig::preset(Preset::Small)
        },
        dir,
    )
    .expect("simulate the small world with objectives");
}

/// A small world with both objectives and a quickly trained joint bundle on it.
struct Fixture {
    temp: TempDir,
    world: PathBuf,
    base: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let world = temp.path().join("world");
        simulate_with_objectives(&world);
        let base = temp.path().join("base/podcast-mtl/1");
        let args = TrainCommand::try_parse_from(
            [
                "train",
                "--data",
                world.to_str().unwrap(),
                "--out",
                base.to_str().unwrap(),
            ]
            .into_iter()
            .chain([
                "--batch-size",
                "512",
                "--max-epochs",
                "2",
                "--steps-per-epoch",
                "30",
                "--encoder",
                "64,32",
                "--tower",
                "16",
                "--min-count",
                "2",
                "--validation-rows",
                "5000",
                "--shuffle-buffer",
                "4096",
                "--seed",
                "5",
                "--quiet",
            ]),
        )
        .unwrap()
        .args;
        train::run(&args).expect("train the base bundle");
        Fixture { temp, world, base }
    }

    /// `podscore finetune` with `flags` after the required ones, into `out`.
    fn finetune(&self, objective: &str, out: &Path, flags: &[&str]) -> Manifest {
        let args = FinetuneCommand::try_parse_from(
            [
                "finetune",
                "--from",
                self.base.to_str().unwrap(),
                "--data",
                self.world.to_str().unwrap(),
                "--objective",
                objective,
                "--out",
                out.to_str().unwrap(),
                "--quiet",
            ]
            .iter()
            .chain(flags),
        )
        .unwrap()
        .args;
        finetune::run(&args).expect("finetune");
        Bundle::read(out).unwrap().manifest
    }

    fn test_rows(&self, objective: &str) -> Vec<ObjectiveImpression> {
        let info = logs::read_objectives_info(&self.world).unwrap();
        let days = info.get(objective).unwrap().test_days.clone();
        logs::read_objective(&logs::objective_path(&self.world, objective))
            .unwrap()
            .into_iter()
            .filter(|row| days.contains(&row.impression.day))
            .collect()
    }
}

/// The network a bundle's weights file holds, with its assembler.
fn network_of(dir: &Path) -> (Network, Assembler, Manifest) {
    let bundle = Bundle::read(dir).unwrap();
    let manifest = bundle.manifest;
    let heads: Vec<String> = manifest
        .heads_by_column()
        .unwrap()
        .iter()
        .map(|head| head.name.clone())
        .collect();
    let weights = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let network = Network::from_safetensors(
        &manifest.architecture,
        &manifest.features,
        &bundle.vocabularies,
        &heads,
        &weights,
    )
    .unwrap();
    let assembler = Assembler::new(&manifest.features, &bundle.vocabularies).unwrap();
    (network, assembler, manifest)
}

/// Logits `[rows, heads]` of `network` for `rows`, as served (inference mode).
fn logits(
    network: &mut Network,
    assembler: &Assembler,
    snapshot: &logs::Snapshot,
    rows: &[ObjectiveImpression],
) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|row| {
            let (request, candidate) = dataset::views(snapshot, &row.impression);
            let output = network
                .forward(
                    &assembler.request(&[request]).unwrap(),
                    &assembler.candidates(&[candidate]).unwrap(),
                    false,
                )
                .unwrap();
            output.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

/// A `/score` request for one logged ad impression (features from the store), with a
/// promotion beside it, which the objective's head does not serve.
fn request_for(row: &ObjectiveImpression) -> Value {
    let impression = &row.impression;
    let timestamp = chrono::DateTime::from_timestamp(impression.timestamp, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "request_id": format!("r-{}", impression.impression_id),
        "user": {"id": impression.user_id},
        "context": {"timestamp": timestamp, "surface": impression.context.surface,
                    "session_length_s": impression.context.session_length_s},
        "candidates": [
            {"id": "ad", "kind": "ad", "show_id": impression.show_id, "episode_id": impression.episode_id,
             "creative": impression.creative},
            {"id": "promotion", "kind": "promotion", "show_id": "s1",
             "creative": {"campaign_id": "p1", "slot": "home_shelf", "layout": "card"}}
        ]
    })
}

/// The issue's check: a bundle fine-tuned (new-head) on the small preset passes its golden
/// check in tract, and `podscore serve` answers the new field over HTTP for ads (null for
/// promotions) with the fine-tuned network's scores; the four fixed fields are the base
/// network's, to the bit in candle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuned_bundle_serves_its_new_field_over_http_as_its_network_scores_it() {
    let fixture = Fixture::new();
    let models = fixture.temp.path().join("models");
    let out = models.join("podcast-video-follow/1");
    let manifest = fixture.finetune("video_follow", &out, &["--labels", "2000"]);
    let objective = ResponseField::parse("video_follow").unwrap();
    let head = manifest.heads.last().unwrap();
    assert_eq!(
        (
            head.name.as_str(),
            &head.field,
            head.kinds.as_slice(),
            head.index
        ),
        ("video_follow", &objective, &[CandidateKind::Ad][..], 5)
    );
    assert_eq!(manifest.heads.len(), 6);
    assert!(manifest.golden.iter().all(|case| {
        case.expected
            .iter()
            .all(|scores| scores.get(&objective).is_some())
    }));
    Model::open(&out, &RuntimeConfig::default())
        .expect("the fine-tuned bundle loads in tract and passes its golden check");

    let snapshot = logs::read_snapshot(&fixture.world).unwrap();
    let rows: Vec<ObjectiveImpression> = fixture
        .test_rows("video_follow")
        .into_iter()
        .take(12)
        .collect();
    let (mut tuned, assembler, _) = network_of(&out);
    let tuned_logits = logits(&mut tuned, &assembler, &snapshot, &rows);
    let (mut base, base_assembler, _) = network_of(&fixture.base);
    let base_logits = logits(&mut base, &base_assembler, &snapshot, &rows);
    for (tuned, base) in tuned_logits.iter().zip(&base_logits) {
        assert_eq!(
            &tuned[..5],
            &base[..],
            "new-head leaves the base heads as they were"
        );
    }

    let server = HostServer::start(
        fixture.temp.path(),
        &[
            "--models",
            models.to_str().unwrap(),
            "--features",
            logs::snapshot_dir(&fixture.world).to_str().unwrap(),
        ],
    );
    let heads = Heads::resolve(&manifest).unwrap();
    let client = reqwest::Client::new();
    for (row, logits) in rows.iter().zip(&tuned_logits) {
        let response = client
            .post(format!("http://{}/score", server.address))
            .json(&request_for(row))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["model"],
            json!({"name": "podcast-video-follow", "version": 1})
        );
        let ad = &body["candidates"][0];
        for field in heads.fields() {
            let expected = heads
                .probability(CandidateKind::Ad, field, logits)
                .unwrap()
                .unwrap();
            let served = ad[field.name()]
                .as_f64()
                .unwrap_or_else(|| panic!("{field}: {ad}"));
            assert!(
                (served - expected).abs() <= TOLERANCE,
                "{field}: served {served}, network {expected}"
            );
        }
        let promotion = &body["candidates"][1];
        assert!(
            promotion.as_object().unwrap().contains_key("video_follow")
                && promotion["video_follow"].is_null(),
            "{promotion}"
        );
        assert!(promotion["stream"].as_f64().is_some(), "{promotion}");
    }
}

/// `full`, `zero-shot` and `scratch` each write a bundle that passes its golden check:
/// zero-shot copies the closest head (its logits are that head's), scratch has the one
/// head, and full records the base heads' validation AP before and after.
#[test]
fn every_mode_writes_a_servable_bundle() {
    let fixture = Fixture::new();
    let models = fixture.temp.path().join("models");
    let snapshot = logs::read_snapshot(&fixture.world).unwrap();
    let rows: Vec<ObjectiveImpression> = fixture
        .test_rows("episode_complete")
        .into_iter()
        .take(8)
        .collect();

    let zero_shot = models.join("zero-shot/1");
    let manifest = fixture.finetune(
        "episode_complete",
        &zero_shot,
        &["--mode", "zero-shot", "--labels", "1500"],
    );
    let source = manifest.metrics["finetune"]["zero_shot_head"]
        .as_str()
        .unwrap()
        .to_string();
    let source_head = manifest
        .heads
        .iter()
        .find(|head| head.name == source)
        .unwrap();
    assert!(source_head.kinds.contains(&CandidateKind::Ad), "{source}");
    let (mut network, assembler, _) = network_of(&zero_shot);
    for row in logits(&mut network, &assembler, &snapshot, &rows) {
        assert_eq!(
            row[5], row[source_head.index],
            "zero-shot copies `{source}`"
        );
    }

    let scratch = models.join("scratch/1");
    let manifest = fixture.finetune(
        "episode_complete",
        &scratch,
        &["--mode", "scratch", "--labels", "1500", "--max-epochs", "3"],
    );
    assert_eq!(manifest.heads.len(), 1);
    assert_eq!(manifest.heads[0].field.name(), "episode_complete");

    let full = models.join("full/1");
    let manifest = fixture.finetune(
        "episode_complete",
        &full,
        &["--mode", "full", "--labels", "1500", "--max-epochs", "3"],
    );
    let drift = &manifest.metrics["finetune"]["base_heads"];
    for head in ["promo_stream", "ad_stream"] {
        for when in ["validation_ap_before", "validation_ap_after"] {
            let ap = drift[when][head]
                .as_f64()
                .unwrap_or_else(|| panic!("{drift}"));
            assert!(ap > 0.0 && ap < 1.0, "{when} {head}: {ap}");
        }
    }
    for dir in [&zero_shot, &scratch, &full] {
        Model::open(dir, &RuntimeConfig::default())
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        assert!(
            dir.join(WEIGHTS_FILE).is_file(),
            "{} keeps its weights",
            dir.display()
        );
    }
}

/// Runs the built binary; returns (success, stderr).
fn podscore(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(args)
        .env("CANDLE_NUM_THREADS", "1")
        .output()
        .expect("podscore runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bad input to `podscore finetune` fails with one line naming the cause and writes
/// nothing: a bundle without its training state, an unknown objective, more labels than
/// the pool holds, a world without objectives, bad settings.
#[test]
fn finetune_refuses_bad_input_with_one_line() {
    let fixture = Fixture::new();
    let stateless = fixture.temp.path().join("stateless/podcast-mtl/1");
    std::fs::create_dir_all(stateless.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .args([
            "-r",
            fixture.base.to_str().unwrap(),
            stateless.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(stateless.join(WEIGHTS_FILE)).unwrap();
    let bare_world = fixture.temp.path().join("bare");
    world::simulate(&WorldConfig::preset(Preset::Small), &bare_world).unwrap();

    let out = fixture.temp.path().join("out/x/1");
    let (base, world, bare, stateless_dir, out_dir) = (
        fixture.base.to_str().unwrap(),
        fixture.world.to_str().unwrap(),
        bare_world.to_str().unwrap(),
        stateless.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    // (bundle, world, objective, more flags, the cause the one line names)
    let cases: [(&str, &str, &str, &[&str], &str); 6] = [
        (
            stateless_dir,
            world,
            "video_follow",
            &[],
            "no weights.safetensors",
        ),
        (
            base,
            world,
            "listen_7d",
            &[],
            "no objective `listen_7d`; it has video_follow, episode_complete",
        ),
        (
            base,
            world,
            "video_follow",
            &["--labels", "5000"],
            "--labels 5000: objective `video_follow` has 4000 labelled impressions",
        ),
        (
            base,
            bare,
            "video_follow",
            &[],
            "no objectives; simulate the world with --objective-labels N",
        ),
        (
            base,
            world,
            "video_follow",
            &["--labels", "5", "--validation-share", "1.5"],
            "--labels must be at least 20, got 5; --validation-share must be in (0, 1), got 1.5",
        ),
        (
            base,
            world,
            "video_follow",
            &["--head", "follow"],
            "--head applies to --mode zero-shot only",
        ),
    ];
    for (from, data, objective, flags, cause) in cases {
        let mut args = vec![
            "finetune",
            "--out",
            out_dir,
            "--quiet",
            "--from",
            from,
            "--data",
            data,
            "--objective",
            objective,
        ];
        args.extend(flags);
        let (success, stderr) = podscore(&args);
        assert!(!success, "{args:?} succeeded");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(cause),
            "{args:?}: {stderr}"
        );
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// `podscore curves` measures the learning curves on bundles already trained and writes
/// its report (every arm at every label count, a verdict, a plot); a folder without the
/// `promo-only` base fails with one line naming it and writes no report.
#[test]
fn curves_command_measures_on_trained_bundles_and_refuses_a_missing_base() {
    let fixture = Fixture::new();
    let models = fixture.temp.path().join("models");
    // The fixture's joint bundle stands in for both bases: what is checked here is the
    // command, not the comparison (tests/eval.rs runs it on a reproduction's bundles).
    for label in ["mtl", "promo-only"] {
        std::fs::create_dir_all(models.join(label)).unwrap();
        let status = Command::new("cp")
            .args([
                "-r",
                fixture.base.to_str().unwrap(),
                models.join(label).join("1").to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = fixture.temp.path().join("curves");
    let (world, models_dir, out_dir) = (
        fixture.world.to_str().unwrap(),
        models.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let grid = [
        "--curve-labels",
        "300,1000",
        "--curve-seeds",
        "1",
        "--curve-objectives",
        "video_follow",
        "--quiet",
    ];
    let mut args = vec![
        "curves", "--data", world, "--models", models_dir, "--out", out_dir,
    ];
    args.extend(grid);
    let (success, stderr) = podscore(&args);
    assert!(success, "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("learning_curves.json")).unwrap())
            .unwrap();
    let objective = &report["objectives"][0];
    assert_eq!(objective["objective"], "video_follow");
    let cells = objective["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 5 * 2, "arms x label counts");
    for cell in cells {
        let ap = cell["ap"].as_f64().unwrap_or_else(|| panic!("{cell}"));
        assert!(ap > 0.0 && ap <= 1.0, "{cell}");
    }
    let markdown = std::fs::read_to_string(out.join("learning_curves.md")).unwrap();
    assert!(markdown.contains("**Verdict:**"), "{markdown}");
    let plot = std::fs::read(out.join("learning_curves_video_follow.png")).unwrap();
    assert!(plot.starts_with(b"\x89PNG"));

    std::fs::remove_dir_all(models.join("promo-only")).unwrap();
    let elsewhere = fixture.temp.path().join("curves-2");
    let mut args = vec![
        "curves",
        "--data",
        world,
        "--models",
        models_dir,
        "--out",
        elsewhere.to_str().unwrap(),
    ];
    args.extend(grid);
    let (success, stderr) = podscore(&args);
    assert!(!success);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("promo-only"),
        "{stderr}"
    );
    assert!(!elsewhere.exists(), "a failed run writes nothing");
}

/// Objectives do not change the world: the logs, the snapshot and world.json are the same
/// bytes with and without them. Each objective file holds its pool and test rows on their
/// days, only the impressions it applies to, and labels at the rate of their true
/// probabilities.
#[test]
fn objectives_leave_the_world_unchanged_and_label_later_days() {
    let temp = tempfile::tempdir().unwrap();
    let (plain, with) = (temp.path().join("plain"), temp.path().join("with"));
    world::simulate(&WorldConfig::preset(Preset::Small), &plain).unwrap();
    simulate_with_objectives(&with);
    for file in [
        "world.json",
        "logs/promotion_impressions.parquet",
        "logs/ad_impressions.parquet",
        "snapshot/users.parquet",
        "snapshot/shows.parquet",
        "snapshot/episodes.parquet",
    ] {
        assert_eq!(
            std::fs::read(plain.join(file)).unwrap(),
            std::fs::read(with.join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(!plain.join(logs::OBJECTIVES_DIR).exists());

    let info = logs::read_objectives_info(&with).unwrap();
    assert_eq!(info.names(), ["video_follow", "episode_complete"]);
    let mut ids = std::collections::BTreeSet::new();
    for objective in &info.objectives {
        assert_eq!(
            (objective.pool_days.clone(), objective.test_days.clone()),
            (14..21, 21..28)
        );
        assert_eq!(
            (objective.pool_rows, objective.test_rows),
            (POOL as u64, TEST as u64)
        );
        let rows = logs::read_objective(&logs::objective_path(&with, &objective.name)).unwrap();
        assert_eq!(rows.len(), POOL + TEST);
        let pool = rows
            .iter()
            .filter(|row| objective.pool_days.contains(&row.impression.day))
            .count();
        assert_eq!(pool, POOL);
        for row in &rows {
            assert!(ids.insert(row.impression.impression_id), "ids are unique");
            assert!(row.impression.impression_id > 60_000, "after the logs' ids");
            assert_eq!(row.impression.kind, CandidateKind::Ad);
            match objective.name.as_str() {
                "video_follow" => {
                    assert_eq!(row.impression.creative.format.as_deref(), Some("video"))
                }
                _ => assert!(row.impression.episode_id.is_some()),
            }
            assert!(row.p_label > 0.0 && row.p_label < 1.0);
        }
        let (observed, expected) = (objective.observed_rate, objective.expected_rate);
        assert!(
            expected > 0.01 && expected < 0.1,
            "{}: expected rate {expected}",
            objective.name
        );
        // Binomial spread of 6,000 draws at a few percent is about 0.25 points.
        assert!(
            (observed - expected).abs() < 0.01,
            "{}: observed {observed}, expected {expected}",
            objective.name
        );
    }
}
