//! `reproduce --grid` end to end on the small preset, on two real cells of the
//! pre-registered grid (A1 and C2, its corners), with real trainings and evaluations:
//! the layout, the grid report with the pre-registered expectations, resuming (a rerun
//! reuses everything and writes the same report; an unfinished bundle is trained again),
//! and refusals (a bundle or a world that is not the cell's, learning curves with --grid).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use podscore::eval::grid::{self, CELLS, Claim, Expectation, GridRun, PREDICTIONS, Step};
use podscore::eval::{Preset, ReproduceArgs};
use serde_json::Value;

/// The cells the tests run: the grid's corners (R 1.0 at ad share 0.05, R 0.5 at 0.20).
const TEST_CELLS: [&str; 2] = ["A1", "C2"];
/// Training seeds per experiment and cell (the grid's default).
const SEEDS: u64 = 2;
/// The world seed and first training seed (`reproduce`'s default).
const SEED: u64 = 17;
const LABELS: [&str; 4] = ["promo-only", "ads-stream-only", "ads-anc", "mtl"];

fn grid_args(out: &Path, cells: &[&str]) -> ReproduceArgs {
    ReproduceArgs {
        grid: true,
        grid_cells: cells.iter().map(|c| c.to_string()).collect(),
        quiet: true,
        ..ReproduceArgs::new(out.to_path_buf(), Preset::Small)
    }
}

/// A fresh folder under the target's scratch space for one test, named by process id so
/// that two checkouts sharing a target do not meet; those older than an hour are removed.
fn scratch(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3_600));
        if old && entry.file_name().to_string_lossy().starts_with("grid-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(format!("grid-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The grid run every test starts from (minutes: 2 cells x 8 trainings and 2 evaluations).
fn first_run() -> &'static (PathBuf, GridRun) {
    static RUN: OnceLock<(PathBuf, GridRun)> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = scratch("first");
        let run = grid::run(&grid_args(&out, &TEST_CELLS))
            .unwrap_or_else(|error| panic!("reproduce --grid --preset small failed: {error:#}"));
        (out, run)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the first run's cell A1 (and its grid.log) in a folder of its own.
fn copy_of_a1(name: &str) -> PathBuf {
    let (first, _) = first_run();
    let out = scratch(name);
    copy_dir(&first.join("A1"), &out.join("A1"));
    std::fs::copy(first.join(grid::LOG_FILE), out.join(grid::LOG_FILE)).unwrap();
    out
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn steps(run: &GridRun) -> Vec<Step> {
    run.items.iter().map(|item| item.step).collect()
}

/// The command line, for the refusals: one line on stderr and a non-zero exit.
fn podscore(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(args)
        .output()
        .expect("running podscore");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `reproduce --grid --grid-cells A1 --preset small --out OUT` must fail with one line:
/// its stderr.
fn refusal(out: &Path, what: &str) -> String {
    let (ok, stderr) = podscore(&[
        "reproduce",
        "--grid",
        "--grid-cells",
        "A1",
        "--preset",
        "small",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "{what}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// The first run makes every world, bundle and cell report of its cells, in the layout
/// the grid script shares, with the cell's knobs in world.json and the grid's settings
/// in every manifest.
#[test]
fn grid_makes_the_layout_of_its_cells() {
    let (out, run) = first_run();
    assert_eq!(
        run.items.len(),
        TEST_CELLS.len() * (2 + LABELS.len() * SEEDS as usize)
    );
    assert!(
        steps(run).iter().all(|s| *s == Step::Made),
        "{:?}",
        run.items
    );
    for name in TEST_CELLS {
        let cell = CELLS.iter().find(|c| c.name == name).unwrap();
        let dir = out.join(name);
        let world = json(&dir.join("world/world.json"))["settings"].clone();
        assert_eq!(world["preset"], "small");
        assert_eq!(world["seed"], SEED);
        assert_eq!(world["ad_share"].as_f64(), Some(cell.ad_share));
        assert_eq!(world["ad_structure"].as_f64(), Some(1.0));
        assert_eq!(world["content_embedding_noise"].as_f64(), Some(1.0));
        // world.json writes the correlation only where it is not the default 1.0.
        let correlation = world["ad_affinity_correlation"].as_f64().unwrap_or(1.0);
        assert_eq!(correlation, cell.ad_affinity_correlation, "{name}");
        for label in LABELS {
            for index in 1..=SEEDS {
                let seed = SEED + index - 1;
                let bundle = dir.join("models").join(label).join(index.to_string());
                assert!(bundle.join("model.onnx").is_file(), "{}", bundle.display());
                let manifest = json(&bundle.join("manifest.json"));
                assert_eq!(manifest["name"], label);
                assert_eq!(manifest["settings"]["variant"], label);
                assert_eq!(manifest["settings"]["seed"], seed);
                assert_eq!(manifest["settings"]["mask"], "directional");
                assert_eq!(manifest["settings"]["promo_share"], 0.5);
                // The small preset's budget, as `reproduce --preset small` trains.
                assert_eq!(manifest["settings"]["max_epochs"], 2);
                assert_eq!(manifest["settings"]["steps_per_epoch"], 40);
                let log = dir
                    .join("train-logs")
                    .join(format!("{label}-seed{seed}.jsonl"));
                assert!(
                    std::fs::metadata(&log).unwrap().len() > 0,
                    "{}",
                    log.display()
                );
            }
        }
        let report = json(&dir.join("report/report.json"));
        assert_eq!(report["baseline"], "promo-only");
        assert_eq!(report["table1"].as_array().unwrap().len(), LABELS.len());
    }
    for name in ["A2", "B1", "B2", "C1"] {
        assert!(!out.join(name).exists(), "cell {name} was not asked for");
    }
}

/// The grid report has every cell and claim, the pre-registered expectation beside each
/// verdict, each cell's Table 1 and times, and the figure.
#[test]
fn grid_report_sets_verdicts_beside_the_pre_registration() {
    let (out, run) = first_run();
    assert_eq!(run.report, out.join("report"));
    let report = json(&out.join("report/grid.json"));
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(
        cells
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        CELLS.map(|c| c.name)
    );
    let mut evaluated_claims = 0;
    let mut as_expected = 0;
    for (index, cell) in cells.iter().enumerate() {
        let name = cell["name"].as_str().unwrap();
        let evaluated = TEST_CELLS.contains(&name);
        assert_eq!(cell["evaluated"], evaluated, "{name}");
        let claims = cell["claims"].as_array().unwrap();
        assert_eq!(claims.len(), Claim::ALL.len());
        for (claim, (expected_claim, row)) in claims.iter().zip(PREDICTIONS) {
            assert_eq!(claim["claim"], expected_claim.id());
            let expected = serde_json::to_value(row[index]).unwrap();
            assert_eq!(
                claim["expected"],
                expected,
                "{name} {}",
                expected_claim.id()
            );
            let verdict = claim["verdict"].as_str().unwrap();
            let admits = match row[index] {
                Expectation::Agrees => verdict == "agrees",
                Expectation::Inconclusive => verdict == "inconclusive",
                Expectation::NotMeasured => verdict == "not_measured",
                Expectation::DisagreesOrInconclusive => {
                    verdict == "disagrees" || verdict == "inconclusive"
                }
            };
            assert_eq!(claim["as_expected"], evaluated && admits, "{name}: {claim}");
            if evaluated {
                evaluated_claims += 1;
                as_expected += usize::from(admits);
                assert!(!claim["measured"].as_str().unwrap().is_empty());
            } else {
                assert_eq!(verdict, "not_measured");
            }
        }
        if !evaluated {
            assert!(cell["table1"].as_array().unwrap().is_empty());
            continue;
        }
        // C1, C2 and C5 carry the interval their verdict rests on.
        for position in [0, 1, 5] {
            let value = &claims[position]["value"];
            let (low, mean, high) = (
                value["low"].as_f64(),
                value["mean"].as_f64(),
                value["high"].as_f64(),
            );
            assert!(
                low <= mean && mean <= high && low.is_some(),
                "{name}: {value}"
            );
        }
        let table = cell["table1"].as_array().unwrap();
        assert_eq!(
            table
                .iter()
                .map(|r| r["experiment"].as_str().unwrap())
                .collect::<Vec<_>>(),
            LABELS
        );
        for row in table {
            assert_eq!(row["seeds"], serde_json::json!([SEED, SEED + 1]));
            assert!(row["ads_ap"]["mean"].as_f64().unwrap() > 0.0, "{row}");
        }
        let times = &cell["times"];
        assert!(
            times["simulate_seconds"].as_f64().is_some(),
            "{name}: {times}"
        );
        assert!(
            times["evaluate_seconds"].as_f64().is_some(),
            "{name}: {times}"
        );
        let trainings = times["trainings"].as_array().unwrap();
        assert_eq!(trainings.len(), LABELS.len() * SEEDS as usize);
        assert!(
            trainings
                .iter()
                .all(|t| t["seconds"].as_f64().unwrap() > 0.0),
            "{trainings:?}"
        );
        assert_eq!(times["incomplete"], false);
    }
    assert_eq!(report["evaluated_claims"], evaluated_claims);
    assert_eq!(report["as_expected"], as_expected);
    assert_eq!(report["total_incomplete"], false);
    assert!(report["total_seconds"].as_f64().unwrap() > 0.0);
    let markdown = std::fs::read_to_string(out.join("report/grid.md")).unwrap();
    for needle in [
        "## Verdicts against the pre-registered expectation",
        "### C3: ads-stream-only < ads-anc < mtl on Ads AP",
        "disagrees or inconclusive",
        "## Pre-registered trends",
        "### C2 (R 0.5, ad share 0.20)",
        "Grid total: ",
    ] {
        assert!(markdown.contains(needle), "grid.md lacks {needle:?}");
    }
    let png = std::fs::read(out.join("report/transfer_map.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
}

/// A rerun (here over a copy of the grid, as after moving it) reuses every world,
/// bundle and cell report, and writes the same grid report.
#[test]
fn a_rerun_reuses_everything_and_writes_the_same_report() {
    let (first, first_run_items) = first_run();
    let out = scratch("rerun");
    copy_dir(first, &out);
    let run = grid::run(&grid_args(&out, &TEST_CELLS)).unwrap();
    assert_eq!(run.items.len(), first_run_items.items.len());
    assert!(
        steps(&run).iter().all(|s| *s == Step::Reused),
        "{:?}",
        run.items
    );
    for file in ["grid.md", "grid.json"] {
        assert_eq!(
            std::fs::read_to_string(out.join("report").join(file)).unwrap(),
            std::fs::read_to_string(first.join("report").join(file)).unwrap(),
            "{file} differs after a rerun"
        );
    }
}

/// A bundle folder without its model.onnx (a training stopped half-way) is removed and
/// trained again; everything else of the cell is reused, and the cell is evaluated.
#[test]
fn an_unfinished_bundle_is_trained_again() {
    let out = copy_of_a1("partial");
    let bundle = out.join("A1/models/mtl/2");
    std::fs::remove_file(bundle.join("model.onnx")).unwrap();
    std::fs::remove_dir_all(out.join("A1/report")).unwrap();
    let run = grid::run(&grid_args(&out, &["A1"])).unwrap();
    let remade: Vec<&Path> = run
        .items
        .iter()
        .filter(|i| i.step != Step::Reused)
        .map(|i| i.path.as_path())
        .collect();
    assert_eq!(
        remade,
        [bundle.as_path(), out.join("A1/report").as_path()],
        "{:?}",
        run.items
    );
    assert_eq!(
        run.items.iter().find(|i| i.path == bundle).unwrap().step,
        Step::Remade
    );
    assert!(bundle.join("model.onnx").is_file());
    assert_eq!(
        json(&bundle.join("manifest.json"))["settings"]["seed"],
        SEED + 1
    );
    assert!(out.join("A1/report/report.json").is_file());
}

/// A finished bundle whose manifest is another experiment's seed is refused with one
/// line naming its manifest, and nothing is removed.
#[test]
fn a_bundle_with_another_manifest_is_refused() {
    let out = copy_of_a1("wrong-bundle");
    let manifest_path = out.join("A1/models/ads-anc/2/manifest.json");
    let mut manifest = json(&manifest_path);
    manifest["settings"]["seed"] = Value::from(99);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let stderr = refusal(&out, "a wrong bundle was reused");
    assert!(stderr.contains(manifest_path.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("seed: found 99, expected 18"), "{stderr}");
    assert!(manifest_path.is_file() && out.join("A1/report/report.json").is_file());
}

/// A world simulated with another ad share is refused with one line naming its
/// world.json.
#[test]
fn a_world_of_other_settings_is_refused() {
    let out = copy_of_a1("wrong-world");
    let world_path = out.join("A1/world/world.json");
    let mut world = json(&world_path);
    world["settings"]["ad_share"] = Value::from(0.2);
    std::fs::write(&world_path, world.to_string()).unwrap();
    let stderr = refusal(&out, "a wrong world was reused");
    assert!(stderr.contains(world_path.to_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains("ad_share: found 0.2, expected 0.05"),
        "{stderr}"
    );
}

/// The grid trains the Table 1 experiments only: learning curves are refused, as are an
/// unknown cell and --grid-cells without --grid; plain reproduce still wants an empty
/// --out.
#[test]
fn grid_flags_are_checked() {
    let out = scratch("flags");
    std::fs::create_dir_all(&out).unwrap();
    let out_text = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec![
                "reproduce",
                "--grid",
                "--learning-curves",
                "on",
                "--out",
                out_text,
            ],
            "--learning-curves on does not go with --grid",
        ),
        (
            vec![
                "reproduce",
                "--grid",
                "--grid-cells",
                "A1,Z9",
                "--out",
                out_text,
            ],
            "no cell \"Z9\"",
        ),
        (
            vec!["reproduce", "--grid-cells", "A1", "--out", out_text],
            "--grid-cells needs --grid",
        ),
    ] {
        let (ok, stderr) = podscore(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    std::fs::write(out.join("something"), "x").unwrap();
    let (ok, stderr) = podscore(&["reproduce", "--preset", "small", "--out", out_text]);
    assert!(!ok && stderr.contains("not empty"), "{stderr}");
}

/// The expectations in code are the README's pre-registered sentences, cell by cell.
#[test]
fn predictions_are_the_readme_pre_registration() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("### The transfer map: pre-registered grid and predictions")
        .nth(1)
        .expect("the README's pre-registration section");
    for sentence in [
        "**C1 agrees in all six\n  cells**",
        "**C2 agrees in all six cells**",
        "**C3 agrees in A1 and B1, inconclusive in A2, B2 and C1, disagrees or inconclusive in C2**",
        "**C4 for ads is not measured in any cell**",
        "**C4 for promotions inconclusive in all cells**",
        "**C5 agrees wherever C1 agrees with margin, so in all six cells**",
    ] {
        let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat(section).contains(&flat(sentence)),
            "README lacks {sentence:?}"
        );
    }
    let expectations = |claim: Claim| PREDICTIONS.iter().find(|(c, _)| *c == claim).unwrap().1;
    use Expectation::*;
    assert_eq!(expectations(Claim::C1), [Agrees; 6]);
    assert_eq!(expectations(Claim::C2), [Agrees; 6]);
    assert_eq!(
        expectations(Claim::C3),
        [
            Agrees,
            Inconclusive,
            Agrees,
            Inconclusive,
            Inconclusive,
            DisagreesOrInconclusive
        ]
    );
    assert_eq!(expectations(Claim::C4Ads), [NotMeasured; 6]);
    assert_eq!(expectations(Claim::C4Promotions), [Inconclusive; 6]);
    assert_eq!(expectations(Claim::C5), [Agrees; 6]);
    assert_eq!(CELLS.map(|c| c.name), ["A1", "A2", "B1", "B2", "C1", "C2"]);
    assert_eq!(
        CELLS.map(|c| (c.ad_affinity_correlation, c.ad_share)),
        [
            (1.0, 0.05),
            (1.0, 0.20),
            (0.8, 0.05),
            (0.8, 0.20),
            (0.5, 0.05),
            (0.5, 0.20)
        ]
    );
}

/// Times logged by the grid shell script (its simulation as the gap to its next
/// timestamped line, its "evaluated in") are read like this command's own.
#[test]
fn times_logged_by_the_grid_script_are_read() {
    let out = copy_of_a1("script-log");
    std::fs::write(
        out.join(grid::LOG_FILE),
        "[07:08:57 +0s] A1: simulating (R=1.0, ad share 0.05)\n\
         wrote runs/grid/A1/world: 2850000 promotion and 150000 ad impressions\n\
         [07:09:17 +20s] A1: training promo-only seed 17\n\
         [07:35:33 +1596s] A1: trained promo-only seed 17 in 1576s\n\
         [08:10:00 +3663s] A1: evaluating\n\
         [08:15:37 +4000s] A1: evaluated in 337s\n",
    )
    .unwrap();
    grid::write_report(&grid_args(&out, &["A1"])).unwrap();
    let report = json(&out.join("report/grid.json"));
    let times = &report["cells"][0]["times"];
    assert_eq!(times["simulate_seconds"], 20.0, "{times}");
    assert_eq!(times["evaluate_seconds"], 337.0, "{times}");
    assert_eq!(times["incomplete"], false, "{times}");
}
