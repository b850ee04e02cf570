//! The offline evaluation end to end: `reproduce --preset small` simulates, trains every
//! variant and writes a report whose structure and ranges these tests check; `eval`
//! refuses bad input with one line naming the bundle and what is missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use podscore::bundle::{Manifest, ResponseField};
use podscore::entities::CandidateKind;
use podscore::eval::curves::CurveGrid;
use podscore::eval::{self, EXPERIMENTS, EvalArgs, Preset, ReplayArgs, ReproduceArgs, Switch};
use serde_json::Value;

/// Training seeds per Table 1 variant in the shared reproduction.
const TEST_SEEDS: usize = 2;

/// One small reproduction shared by every test of this file (it takes minutes).
fn reproduction() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // Each test process gets its own directory. Those of earlier runs are removed
        // once they are an hour old, so that a run in another checkout sharing this
        // target directory keeps its own.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3_600);
                if stale
                    && entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with("eval-reproduce-small-")
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let out = root.join(format!("eval-reproduce-small-{}", std::process::id()));
        // A reused process id may have left one behind; it is ours now.
        let _ = std::fs::remove_dir_all(&out);
        // The learning curves are off in the small preset; a reduced grid of them (one
        // objective, two label counts, two seeds) runs here so that the experiment and
        // its report section are checked end to end.
        let args = ReproduceArgs {
            learning_curves: Some(Switch::On),
            curves: CurveGrid {
                curve_labels: Some(vec![400, 1_500]),
                curve_seeds: Some(2),
                curve_objectives: Some(vec!["video_follow".into()]),
            },
            // Two seeds per Table 1 variant (the command's default is 3): enough for
            // seed groups and intervals over seeds, in half the time of the third.
            seeds: Some(TEST_SEEDS),
            quiet: true,
            ..ReproduceArgs::new(out.clone(), Preset::Small)
        };
        if let Err(error) = eval::reproduce(&args) {
            panic!("reproduce --preset small failed: {error:#}");
        }
        out
    })
}

fn report_json() -> Value {
    let path = reproduction().join("report").join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// The bundle of an experiment's first training seed.
fn bundle_dir(label: &str) -> PathBuf {
    reproduction().join("models").join(label).join("1")
}

/// The bundles of every training seed of an experiment, in version order.
fn seed_dirs(label: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(reproduction().join("models").join(label))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

fn eval_args(bundles: Vec<PathBuf>, out: &Path) -> EvalArgs {
    EvalArgs {
        data: reproduction().join("world"),
        bundles,
        out: out.to_path_buf(),
        baseline: None,
        replay: ReplayArgs::default(),
        quiet: true,
    }
}

fn in_unit_range(value: &Value, what: &str) {
    let x = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(
        x.is_finite() && (0.0..=1.0).contains(&x),
        "{what} = {x} is outside [0, 1]"
    );
}

/// The small reproduction writes report.md, report.json and valid PNGs, with every
/// section present and every experiment in each of them.
#[test]
fn reproduce_small_writes_a_complete_report() {
    let report = report_json();
    for key in [
        "generator",
        "data",
        "world",
        "baseline",
        "replicates",
        "experiments",
        "bundles",
        "table1",
        "tiers",
        "replay",
        "findings",
        "notes",
        "plots",
        "reproduction",
    ] {
        assert!(report.get(key).is_some(), "report.json lacks `{key}`");
    }
    assert_eq!(report["baseline"], "promo-only");
    let labels = |section: &Value, key: &str| -> Vec<String> {
        section
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item[key].as_str().unwrap().to_string())
            .collect()
    };
    let bundles = labels(&report["bundles"], "label");
    let table = labels(&report["table1"], "experiment");
    let arms = labels(&report["replay"]["arms"], "label");
    // Table 1 variants train every seed, evaluated as one experiment; the others one.
    for experiment in EXPERIMENTS {
        let row = report["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["label"] == experiment.label)
            .unwrap_or_else(|| panic!("{} missing from experiments", experiment.label));
        let seeds = row["seeds"].as_array().unwrap().len();
        assert_eq!(
            seeds,
            if experiment.table1 { TEST_SEEDS } else { 1 },
            "{}: {row}",
            experiment.label
        );
        assert_eq!(seed_dirs(experiment.label).len(), seeds);
    }
    for experiment in EXPERIMENTS {
        assert!(
            bundles.iter().any(|bundle| bundle == experiment.label
                || bundle.starts_with(&format!("{}/v", experiment.label))),
            "{} missing from bundles",
            experiment.label
        );
        assert!(
            table.contains(&experiment.label.to_string()),
            "{} missing from table1",
            experiment.label
        );
        assert!(
            arms.contains(&experiment.label.to_string()),
            "{} missing from the replay",
            experiment.label
        );
    }
    // Table 1's four setups carry the paper's values and a sign verdict.
    for setup in ["ads-stream-only", "ads-anc", "mtl"] {
        let row = report["table1"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["experiment"] == setup)
            .unwrap();
        for key in ["ads_sign", "promotions_sign"] {
            let verdict = row["paper"][key].as_str().unwrap_or("");
            assert!(
                ["agrees", "disagrees", "inconclusive"].contains(&verdict),
                "{setup}: no sign verdict: {row}"
            );
        }
    }
    // Every claim has a verdict among the four the report knows.
    for finding in report["findings"].as_array().unwrap() {
        let verdict = finding["verdict"].as_str().unwrap();
        assert!(
            ["agrees", "disagrees", "inconclusive", "not_measured"].contains(&verdict),
            "{finding}"
        );
    }
    let markdown =
        std::fs::read_to_string(reproduction().join("report").join("report.md")).unwrap();
    for heading in [
        "## Table 1",
        "## By popularity group",
        "## A/B replay",
        "## The paper's claims, checked",
    ] {
        assert!(markdown.contains(heading), "report.md lacks {heading}");
    }
    let plots = report["plots"].as_array().unwrap();
    assert!(plots.len() >= 2 + EXPERIMENTS.len(), "{plots:?}");
    for name in ["ap_by_group.png", "replay_by_group.png"] {
        assert!(plots.iter().any(|p| p == name), "{name} not listed");
    }
    // One reliability diagram per bundle, so per seed of the joint model.
    assert!(
        plots
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("reliability_mtl-v")),
        "no reliability diagram of mtl: {plots:?}"
    );
    for plot in plots {
        let path = reproduction().join("report").join(plot.as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 2_000,
            "{} is not a drawn PNG",
            path.display()
        );
    }
}

fn interval_in(value: &Value, what: &str, range: (f64, f64)) {
    let get = |key: &str| {
        value[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: `{key}` missing in {value}"))
    };
    let (mean, low, high) = (get("mean"), get("low"), get("high"));
    assert!(
        low <= mean && mean <= high && low.is_finite() && high.is_finite(),
        "{what}: {value}"
    );
    assert!(
        (range.0..=range.1).contains(&mean),
        "{what}: mean {mean} outside {range:?}"
    );
    assert!(value["seeds"].as_u64().unwrap() >= 1, "{what}: {value}");
}

/// The learning curves of the reduced grid: every arm at every label count and seed has
/// a test AP and ECE in range (or says why it could not run), every mean lies in its
/// interval, each arm has a labels-to-reach answer, and the report shows the section and
/// its plot.
#[test]
fn reproduce_small_measures_learning_curves() {
    let report = report_json();
    let curves = &report["learning_curves"];
    let arms: Vec<&str> = curves["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arm| arm["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        arms,
        [
            "scratch",
            "new-head on mtl",
            "new-head on promo-only",
            "full on mtl",
            "zero-shot on mtl"
        ]
    );
    let objective = &curves["objectives"][0];
    assert_eq!(objective["objective"], "video_follow");
    let cells = objective["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 5 * 2 * 2, "arms x label counts x seeds");
    let mut made = 0;
    for cell in cells {
        if cell["error"].is_string() {
            assert!(cell["ap"].is_null(), "{cell}");
            continue;
        }
        made += 1;
        in_unit_range(&cell["ap"], "cell AP");
        in_unit_range(&cell["ece"], "cell ECE");
        in_unit_range(&cell["mean_predicted"], "cell mean prediction");
    }
    assert!(made >= 16, "most runs are made: {made} of {}", cells.len());
    for point in objective["points"].as_array().unwrap() {
        if let Some(ap) = point["ap"].as_object() {
            let (low, mean, high) = (
                ap["low"].as_f64().unwrap(),
                ap["mean"].as_f64().unwrap(),
                ap["high"].as_f64().unwrap(),
            );
            assert!(low <= mean && mean <= high, "{point}");
        }
    }
    assert_eq!(objective["reach"].as_array().unwrap().len(), 5);
    assert!(
        objective["verdict"]
            .as_str()
            .unwrap()
            .contains("from-scratch AP")
    );
    in_unit_range(&objective["oracle_ap"], "oracle AP");
    let markdown =
        std::fs::read_to_string(reproduction().join("report").join("report.md")).unwrap();
    assert!(markdown.contains("## New objectives: learning curves"));
    assert!(markdown.contains("**Verdict:**"));
    let plots = report["plots"].as_array().unwrap();
    assert!(
        plots
            .iter()
            .any(|plot| plot == "learning_curves_video_follow.png"),
        "{plots:?}"
    );
}

/// Every metric is finite and in its range, every interval holds its mean: AP, AUC, ECE
/// and rates in [0, 1], eCPS > 0; the baseline's change against itself is exactly 0.
#[test]
fn every_metric_is_finite_and_in_range() {
    let report = report_json();
    for bundle in report["bundles"].as_array().unwrap() {
        let label = bundle["label"].as_str().unwrap();
        for head in bundle["heads"].as_array().unwrap() {
            let what = format!("{label} {} on {}", head["head"], head["kind"]);
            for key in ["ap", "auc"] {
                if !head[key].is_null() || head["positives"].as_u64().unwrap() > 0 {
                    in_unit_range(&head[key], &format!("{what} {key}"));
                }
            }
            in_unit_range(&head["ece"], &format!("{what} ece"));
            in_unit_range(&head["mean_predicted"], &format!("{what} mean_predicted"));
            assert!(
                !head["reliability"].as_array().unwrap().is_empty(),
                "{what}: no reliability bins"
            );
        }
        // Ten slices: per kind, all impressions and four groups.
        let slices = bundle["stream_ap"].as_array().unwrap();
        assert_eq!(slices.len(), 10, "{label}");
        for slice in slices {
            if !slice["ap"].is_null() {
                in_unit_range(&slice["ap"], &format!("{label} slice AP"));
            }
        }
    }
    for row in report["table1"].as_array().unwrap() {
        let what = row["experiment"].as_str().unwrap();
        interval_in(
            &row["promotions_ap"],
            &format!("{what} Promotions AP"),
            (0.0, 1.0),
        );
        interval_in(&row["ads_ap"], &format!("{what} Ads AP"), (0.0, 1.0));
        if row["is_baseline"] == false {
            interval_in(
                &row["ads_ap_change"],
                &format!("{what} Ads AP change"),
                (-1.0, 100.0),
            );
        }
    }
    for arm in report["replay"]["arms"].as_array().unwrap() {
        let label = arm["label"].as_str().unwrap();
        interval_in(
            &arm["overall"]["ecps"],
            &format!("{label} eCPS"),
            (1e-9, 1e9),
        );
        interval_in(&arm["overall"]["i2s"], &format!("{label} i2s"), (0.0, 1.0));
        for group in arm["groups"].as_array().unwrap() {
            if !group["ecps"].is_null() {
                interval_in(&group["ecps"], &format!("{label} group eCPS"), (1e-9, 1e9));
            }
        }
    }
    let change = &report["replay"]["arms"][0]["overall"]["ecps_change"];
    assert_eq!(
        (
            change["low"].as_f64(),
            change["mean"].as_f64(),
            change["high"].as_f64()
        ),
        (Some(0.0), Some(0.0), Some(0.0)),
        "the baseline's change against itself is 0: {change}"
    );
}

/// The replay's reference arms bound the models: the oracle buys streams more cheaply
/// than random choice, and the cost-only arm is there.
#[test]
fn replay_has_its_reference_arms() {
    let report = report_json();
    let arms = report["replay"]["arms"].as_array().unwrap();
    let ecps = |prefix: &str| {
        arms.iter()
            .find(|arm| arm["label"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} arm"))["overall"]["ecps"]["mean"]
            .as_f64()
            .unwrap()
    };
    assert!(
        ecps("oracle") < ecps("random"),
        "{} vs {}",
        ecps("oracle"),
        ecps("random")
    );
    assert!(ecps("cost only") > 0.0);
    assert!(report["replay"]["opportunities"].as_u64().unwrap() > 100);
}

/// Tier cells with fewer than 200 positives are reported as such, never as a number.
#[test]
fn thin_tier_cells_are_not_numbers() {
    let report = report_json();
    let markdown =
        std::fs::read_to_string(reproduction().join("report").join("report.md")).unwrap();
    let mut thin = 0;
    for row in report["tiers"].as_array().unwrap() {
        for cell in row["cells"].as_array().unwrap() {
            let positives = cell["positives"].as_u64().unwrap();
            if positives < 200 {
                thin += 1;
                assert!(cell["ap"].is_null() && cell["change"].is_null(), "{cell}");
            } else {
                assert!(!cell["ap"].is_null(), "{cell}");
            }
        }
    }
    // The small world's ad groups are thin: the report must say so.
    assert!(thin > 0);
    assert!(markdown.contains("n<200 ("), "report.md shows no thin cell");
}

/// A bundle with no head filling `stream` for ads is refused in one line naming it.
#[test]
fn eval_refuses_a_bundle_without_an_ad_stream_head() {
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("broken").join("1");
    copy_dir(&bundle_dir("mtl"), &broken);
    let manifest_path = broken.join("manifest.json");
    let mut manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest.name = "broken".into();
    manifest.heads.retain(|head| {
        !(head.field == ResponseField::Stream && head.kinds.contains(&CandidateKind::Ad))
    });
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();

    let error = eval::run(&eval_args(
        vec![bundle_dir("promo-only"), broken],
        &scratch.path().join("report"),
    ))
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("bundle broken") && message.contains("`stream` for ad"),
        "{message}"
    );
    assert!(!message.contains('\n'), "not one line: {message}");
}

/// A baseline that names no bundle is refused, listing the bundles there are.
#[test]
fn eval_refuses_an_unknown_baseline() {
    let scratch = tempfile::tempdir().unwrap();
    let mut args = eval_args(
        vec![bundle_dir("promo-only"), bundle_dir("mtl")],
        &scratch.path().join("report"),
    );
    args.baseline = Some("no-such-bundle".into());
    let message = format!("{:#}", eval::run(&args).unwrap_err());
    assert!(
        message.contains("no-such-bundle") && message.contains("mtl"),
        "{message}"
    );
}

/// A world whose test days hold no promotion impressions is an empty test split, said so.
#[test]
fn eval_refuses_an_empty_test_split() {
    let scratch = tempfile::tempdir().unwrap();
    let world = scratch.path().join("world");
    copy_dir(&reproduction().join("world"), &world);
    let promotions = podscore::logs::impressions_path(&world, CandidateKind::Promotion);
    let days = podscore::dataset::count_days(&world).unwrap();
    let test_start = podscore::dataset::split_days(days).test.start;
    let rows: Vec<_> = podscore::logs::read_impressions(&promotions)
        .unwrap()
        .into_iter()
        .filter(|row| row.day < test_start)
        .collect();
    podscore::logs::write_impressions(&promotions, &rows).unwrap();

    let mut args = eval_args(
        vec![bundle_dir("promo-only")],
        &scratch.path().join("report"),
    );
    args.data = world;
    let message = format!("{:#}", eval::run(&args).unwrap_err());
    assert!(
        message.contains("empty test split") && message.contains("promotion"),
        "{message}"
    );
}

/// Evaluating one experiment (its seeds) by itself gives the same AP as in the full
/// reproduction: the scores do not depend on which other bundles are evaluated beside it.
#[test]
fn eval_of_one_bundle_matches_the_reproduction() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("report");
    eval::run(&eval_args(seed_dirs("ads-anc"), &out)).unwrap();
    let alone: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let full = report_json();
    let ads_ap = |report: &Value| {
        report["table1"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["experiment"] == "ads-anc")
            .unwrap()["ads_ap"]["mean"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(ads_ap(&alone), ads_ap(&full));
    assert_eq!(
        alone["baseline"], "ads-anc",
        "the only bundle is its own baseline"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Per-head metrics compute AP on the kinds a head serves, from served probabilities:
/// a hand-computed case (descending 0.9+, 0.8-, 0.7+, 0.1-: AP = 0.5 + 0.5 * 2/3).
#[test]
fn head_metrics_match_a_hand_computed_ap() {
    use podscore::bundle::{Calibration, HeadSpec};
    use podscore::entities::{ContextRecord, CreativeRecord};
    use podscore::eval::data::TestSet;
    use podscore::eval::inference::Scores;
    use podscore::logs::{Impression, Snapshot};

    let row = |id: u64, kind: CandidateKind, stream: bool| Impression {
        impression_id: id,
        timestamp: 0,
        day: 9,
        user_id: "u".into(),
        kind,
        show_id: "s".into(),
        episode_id: None,
        show_tier: 3,
        creative: CreativeRecord::default(),
        context: ContextRecord::default(),
        cost: 1.0,
        stream,
        click: false,
        like: false,
        follow: false,
        p_stream: 0.5,
        p_click: 0.0,
        p_like: 0.0,
        p_follow: 0.0,
    };
    // Four ads and one promotion the ad head does not serve (its score must not count).
    let rows = vec![
        row(0, CandidateKind::Ad, false),
        row(1, CandidateKind::Ad, true),
        row(2, CandidateKind::Ad, true),
        row(3, CandidateKind::Ad, false),
        row(4, CandidateKind::Promotion, false),
    ];
    let test = TestSet {
        data: PathBuf::from("hand-made"),
        splits: podscore::dataset::split_days(10),
        snapshot: Snapshot::default(),
        rows,
    };
    let head = HeadSpec {
        name: "ad_stream".into(),
        output: "logits".into(),
        index: 0,
        kinds: vec![CandidateKind::Ad],
        field: ResponseField::Stream,
        calibration: Calibration::identity(),
        calibration_by_kind: Default::default(),
    };
    let scores = Scores {
        heads: vec![head],
        probabilities: vec![0.1, 0.9, 0.7, 0.8, 0.95],
        rows: 5,
        seconds: 0.0,
        runtime_calls: 5,
    };
    let metrics = eval::metrics::head_metrics(&scores, &test);
    assert_eq!(metrics.len(), 1, "one head, one kind");
    let ad = &metrics[0];
    assert_eq!((ad.rows, ad.positives), (4, 2));
    assert!(
        (ad.ap.unwrap() - (0.5 + 1.0 / 3.0)).abs() < 1e-12,
        "{:?}",
        ad.ap
    );
    assert_eq!(ad.auc, Some(0.75));
    assert!((ad.mean_predicted - 0.625).abs() < 1e-12);
}
