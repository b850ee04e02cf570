//! The report: its JSON shape, its Markdown rendering and its plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::entities::CandidateKind;
use crate::logs::WorldSettings;

use super::SeedGroup;
use super::data::{Candidate, DataSummary};
use super::inference::Scores;
use super::metrics::{Finding, HeadMetrics, Slice, SliceAp, Table1Row, TierGroup, TierRow};
use super::plots::{self, Line, Panel};
use super::replay::{ReplayFigures, ReplayReport};
use super::stats::{self, Interval, Verdict};

pub const MARKDOWN_FILE: &str = "report.md";
pub const JSON_FILE: &str = "report.json";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generator: String,
    pub created_at: String,
    pub data: DataSummary,
    /// The settings of the world evaluated on (seed, sizes, knobs).
    pub world: WorldSettings,
    /// Label of the experiment every change is relative to.
    pub baseline: String,
    /// Bootstrap replicates behind every interval.
    pub replicates: usize,
    pub experiments: Vec<ExperimentReport>,
    pub bundles: Vec<BundleReport>,
    pub table1: Vec<Table1Row>,
    pub tiers: Vec<TierRow>,
    pub replay: ReplayReport,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    /// PNG file names, relative to the report directory.
    pub plots: Vec<String>,
    /// Set by `podscore reproduce`: preset, seeds, training protocol, timings.
    pub reproduction: Option<serde_json::Value>,
    /// Set by `podscore reproduce` when it measures them.
    pub learning_curves: Option<super::curves::Curves>,
}

/// One experiment: the bundles that are its training seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentReport {
    pub label: String,
    pub variant: Option<String>,
    pub mask: Option<String>,
    pub promo_share: Option<f64>,
    pub seeds: Vec<u64>,
    pub bundles: Vec<String>,
}

impl ExperimentReport {
    pub fn new(experiment: &SeedGroup, candidates: &[Candidate]) -> ExperimentReport {
        let first = &candidates[experiment.members[0]];
        ExperimentReport {
            label: experiment.label.clone(),
            variant: first.variant().map(str::to_string),
            mask: first
                .setting("mask")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            promo_share: first.setting("promo_share").and_then(|v| v.as_f64()),
            seeds: experiment
                .members
                .iter()
                .filter_map(|m| candidates[*m].setting("seed").and_then(|v| v.as_u64()))
                .collect(),
            bundles: experiment
                .members
                .iter()
                .map(|m| candidates[*m].label.clone())
                .collect(),
        }
    }
}

/// The stream AP of one bundle on one slice, on the whole test set.
#[derive(Debug, Clone, Serialize)]
pub struct SlicePoint {
    pub slice: Slice,
    pub rows: usize,
    pub positives: usize,
    pub ap: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    pub label: String,
    pub dir: String,
    pub name: String,
    pub version: u32,
    pub seed: Option<u64>,
    pub variant: Option<String>,
    pub mask: Option<String>,
    pub promo_share: Option<f64>,
    pub best_epoch: Option<f64>,
    pub training_steps: Option<u64>,
    pub scoring_seconds: f64,
    pub runtime_calls: usize,
    pub heads: Vec<HeadMetrics>,
    pub stream_ap: Vec<SlicePoint>,
}

impl BundleReport {
    pub fn new(
        candidate: &Candidate,
        heads: Vec<HeadMetrics>,
        slices: &[SliceAp],
        scores: &Scores,
    ) -> BundleReport {
        let manifest = &candidate.bundle.manifest;
        let text = |key: &str| {
            candidate
                .setting(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        BundleReport {
            label: candidate.label.clone(),
            dir: candidate.bundle.dir.display().to_string(),
            name: manifest.name.clone(),
            version: manifest.version,
            seed: candidate.setting("seed").and_then(|v| v.as_u64()),
            variant: text("variant"),
            mask: text("mask"),
            promo_share: candidate.setting("promo_share").and_then(|v| v.as_f64()),
            best_epoch: manifest.metrics.get("best_epoch").and_then(|v| v.as_f64()),
            training_steps: manifest.metrics.get("steps").and_then(|v| v.as_u64()),
            scoring_seconds: scores.seconds,
            runtime_calls: scores.runtime_calls,
            heads,
            stream_ap: slices
                .iter()
                .map(|s| SlicePoint {
                    slice: s.slice,
                    rows: s.rows,
                    positives: s.positives,
                    ap: s.ap.point,
                })
                .collect(),
        }
    }
}

/// Draws the plots into `out`, then writes `report.json` and `report.md` beside them.
pub fn write(report: &mut Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    report.plots = draw_plots(report, out)?
        .iter()
        .filter_map(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let json_path = out.join(JSON_FILE);
    let mut json = serde_json::to_string_pretty(report).context("serializing the report")?;
    json.push('\n');
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    let markdown_path = out.join(MARKDOWN_FILE);
    std::fs::write(&markdown_path, markdown(report))
        .with_context(|| format!("writing {}", markdown_path.display()))?;
    Ok(())
}

/// A label as a file-name part: letters, digits, `.`, `-` and `_` only.
pub fn file_stem(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn kind_title(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Promotion => "promotion impressions",
        CandidateKind::Ad => "ad impressions",
    }
}

fn group_categories() -> Vec<String> {
    TierGroup::ALL
        .iter()
        .map(|g| g.label().to_string())
        .collect()
}

fn draw_plots(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();

    // Pooled stream AP per tier group, one line per experiment (mean over seeds).
    let ap_panels: Vec<Panel> = [CandidateKind::Promotion, CandidateKind::Ad]
        .into_iter()
        .map(|kind| Panel {
            title: format!("Stream AP by tier group, {}", kind_title(kind)),
            x_label: "popularity group of the show".into(),
            y_label: "average precision (mean over seeds)".into(),
            lines: report
                .tiers
                .iter()
                .filter(|row| row.kind == kind)
                .map(|row| Line {
                    label: row.experiment.clone(),
                    points: row
                        .cells
                        .iter()
                        .enumerate()
                        .map(|(x, cell)| (x as f64, cell.ap.map(|i| i.mean)))
                        .collect(),
                    reference: false,
                    intervals: Vec::new(),
                })
                .collect(),
            diagonal: false,
            categories: group_categories(),
            log_x: false,
        })
        .collect();
    written.push(plots::draw(
        &out.join("ap_by_group.png"),
        "AP of the stream head by popularity group (cells under 200 positives left out)",
        &ap_panels,
    )?);

    // Reliability diagrams, one file per bundle, one panel per kind.
    for bundle in &report.bundles {
        let panels: Vec<Panel> = [CandidateKind::Promotion, CandidateKind::Ad]
            .into_iter()
            .map(|kind| Panel {
                title: format!("{}: {}", bundle.label, kind_title(kind)),
                x_label: "mean served probability (equal-mass bins)".into(),
                y_label: "observed rate".into(),
                lines: bundle
                    .heads
                    .iter()
                    .filter(|h| h.kind == kind)
                    .map(|h| Line {
                        label: format!("{} (ECE {:.4})", h.head, h.ece),
                        points: h
                            .reliability
                            .iter()
                            .map(|bin| (bin.mean_predicted, Some(bin.observed_rate)))
                            .collect(),
                        reference: false,
                        intervals: Vec::new(),
                    })
                    .collect(),
                diagonal: true,
                categories: Vec::new(),
                log_x: false,
            })
            .collect();
        let path = out.join(format!("reliability_{}.png", file_stem(&bundle.label)));
        written.push(plots::draw(
            &path,
            &format!("Reliability of {} (calibrated, as served)", bundle.label),
            &panels,
        )?);
    }

    // eCPS and i2s per tier group in the replay.
    let replay_panel = |title: &str,
                        y_label: &str,
                        metric: &dyn Fn(&ReplayFigures) -> Option<Interval>|
     -> Panel {
        Panel {
            title: title.into(),
            x_label: "popularity group of the chosen ad's show".into(),
            y_label: y_label.into(),
            lines: report
                .replay
                .arms
                .iter()
                .map(|arm| Line {
                    label: arm.label.clone(),
                    points: arm
                        .groups
                        .iter()
                        .enumerate()
                        .map(|(x, figures)| (x as f64, metric(figures).map(|i| i.mean)))
                        .collect(),
                    reference: arm.reference,
                    intervals: Vec::new(),
                })
                .collect(),
            diagonal: false,
            categories: group_categories(),
            log_x: false,
        }
    };
    written.push(plots::draw(
        &out.join("replay_by_group.png"),
        "A/B replay: same budget per arm, streams drawn from the true probabilities",
        &[
            replay_panel("eCPS (spend / streams), lower is better", "eCPS", &|f| {
                f.ecps
            }),
            replay_panel("i2s (streams / impressions)", "i2s", &|f| f.i2s),
        ],
    )?);
    if let Some(curves) = &report.learning_curves {
        written.extend(super::curves::draw(curves, out)?);
    }
    for path in &written {
        anyhow::ensure!(plots::is_png(path)?, "{} is not a PNG", path.display());
    }
    Ok(written)
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

/// `0.1234 [0.1200, 0.1300]`.
pub fn interval(value: Option<Interval>, digits: usize) -> String {
    value.map_or_else(
        || "n/a".to_string(),
        |i| {
            format!(
                "{:.digits$} [{:.digits$}, {:.digits$}]",
                i.mean, i.low, i.high
            )
        },
    )
}

/// `+1.2% [-0.3%, +2.7%]`.
pub fn interval_change(value: Option<Interval>) -> String {
    value.map_or_else(
        || "n/a".to_string(),
        |i| {
            format!(
                "{:+.1}% [{:+.1}%, {:+.1}%]",
                i.mean * 100.0,
                i.low * 100.0,
                i.high * 100.0
            )
        },
    )
}

pub fn verdict_text(verdict: Verdict) -> String {
    match verdict {
        Verdict::Disagrees => "**disagrees**".into(),
        other => other.as_str().into(),
    }
}

fn too_few(positives: usize) -> String {
    format!("n<{} ({positives} positives)", stats::MIN_POSITIVES)
}

/// The Markdown report: every table of the JSON, in reading order.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let data = &report.data;
    let world = &report.world;
    let _ = writeln!(md, "# podscore offline evaluation\n");
    let _ = writeln!(
        md,
        "Data: `{}` (seed {}, {} users, {} shows, {} impressions, ad share {}; ad affinity correlation {}, ad structure {}, content-embedding noise {}); test split: days {}..{} of {} (the trainer's time split). Test impressions: {} promotions (stream rate {:.4}), {} ads (stream rate {:.4}). Baseline: **{}**. Intervals: 95%, over training seeds and {} bootstrap replicates of the test users. {} at {}.\n",
        data.data,
        world.seed,
        world.users,
        world.shows,
        world.impressions,
        world.ad_share,
        world
            .ad_affinity_correlation
            .map_or("1 (default)".to_string(), |v| v.to_string()),
        world
            .ad_structure
            .map_or("0 (default)".to_string(), |v| v.to_string()),
        world
            .content_embedding_noise
            .map_or("0.3 (default)".to_string(), |v| v.to_string()),
        data.test_days[0],
        data.test_days[1],
        data.days,
        data.test_rows.get("promotion").copied().unwrap_or(0),
        data.test_stream_rate
            .get("promotion")
            .copied()
            .unwrap_or(0.0),
        data.test_rows.get("ad").copied().unwrap_or(0),
        data.test_stream_rate.get("ad").copied().unwrap_or(0.0),
        report.baseline,
        report.replicates,
        report.generator,
        report.created_at
    );
    if let Some(reproduction) = &report.reproduction {
        let _ = writeln!(
            md,
            "Reproduction: preset `{}`, every experiment trained with the same protocol and hyper-parameters: `{}`. Simulation {:.0}s, evaluation {:.0}s, total {:.0}s.\n",
            reproduction["preset"].as_str().unwrap_or("?"),
            reproduction["protocol"],
            reproduction["simulate_seconds"].as_f64().unwrap_or(0.0),
            reproduction["evaluate_seconds"].as_f64().unwrap_or(0.0),
            reproduction["total_seconds"].as_f64().unwrap_or(0.0),
        );
        if let Some(trainings) = reproduction["trainings"].as_array() {
            let _ = writeln!(
                md,
                "| bundle | seed | purpose | training seconds | stopped by | every source drawn by the checkpoint |\n|---|---|---|---|---|---|"
            );
            for training in trainings {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} | {} | {} |",
                    training["label"].as_str().unwrap_or("?"),
                    training["seed"],
                    training["purpose"].as_str().unwrap_or(""),
                    training["seconds"].as_f64().unwrap_or(0.0),
                    training["stopped_by"].as_str().unwrap_or("?"),
                    match training["warmed_up"].as_bool() {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "?",
                    }
                );
            }
            md.push('\n');
        }
    }

    let _ = writeln!(md, "## Experiments and bundles\n");
    let _ = writeln!(
        md,
        "| experiment | variant | mask | promo share | seeds |\n|---|---|---|---|---|"
    );
    for e in &report.experiments {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:?} |",
            e.label,
            e.variant.as_deref().unwrap_or("?"),
            e.mask.as_deref().unwrap_or("?"),
            optional(e.promo_share, 2),
            e.seeds
        );
    }
    let _ = writeln!(
        md,
        "\n| bundle | seed | best epoch | steps | scoring s | runtime calls | dir |\n|---|---|---|---|---|---|---|"
    );
    for b in &report.bundles {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {} | `{}` |",
            b.label,
            b.seed.map_or("?".into(), |s| s.to_string()),
            b.best_epoch.map_or("?".into(), |e| format!("{e:.2}")),
            b.training_steps.map_or("?".into(), |e| e.to_string()),
            b.scoring_seconds,
            b.runtime_calls,
            b.dir
        );
    }

    let _ = writeln!(md, "\n## Table 1: AP change against the baseline\n");
    let _ = writeln!(
        md,
        "Promotions AP: the stream head serving promotions, on promotion impressions. Ads AP: the stream head serving ads, on ad impressions. Mean over seeds [95% interval]. Paper columns: the paper's change rebased onto the baseline's setup (printed value in parentheses); \"sign\" says whether the measured interval is on the paper's side of zero (agrees), on the other (disagrees), or spans it (inconclusive).\n"
    );
    let _ = writeln!(
        md,
        "| experiment | seeds | Promotions AP | change | paper | sign | Ads AP | change | paper | sign |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in &report.table1 {
        let paper = |rebased: f64, printed: f64| {
            format!("{:+.1}% ({:+.1}%)", rebased * 100.0, printed * 100.0)
        };
        let (promotions_paper, promotions_sign, ads_paper, ads_sign) = match &row.paper {
            Some(_) if row.is_baseline => (
                "".to_string(),
                "baseline".to_string(),
                "".to_string(),
                "baseline".to_string(),
            ),
            Some(p) => (
                paper(p.promotions_ap_change, p.promotions_ap_change_printed),
                verdict_text(p.promotions_sign),
                paper(p.ads_ap_change, p.ads_ap_change_printed),
                verdict_text(p.ads_sign),
            ),
            None => (
                "no Table 1 row".into(),
                "n/a".into(),
                "no Table 1 row".into(),
                "n/a".into(),
            ),
        };
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.experiment,
            if row.is_baseline { " (baseline)" } else { "" },
            row.seeds.len(),
            interval(row.promotions_ap, 4),
            interval_change(row.promotions_ap_change),
            promotions_paper,
            promotions_sign,
            interval(row.ads_ap, 4),
            interval_change(row.ads_ap_change),
            ads_paper,
            ads_sign
        );
    }
    if report
        .table1
        .iter()
        .any(|r| r.ads_ap_change_vs_ads_only.is_some())
    {
        let _ = writeln!(
            md,
            "\nThe same against ads-stream-only (the model trained on ad data alone):\n"
        );
        let _ = writeln!(
            md,
            "| experiment | Promotions AP change | Ads AP change |\n|---|---|---|"
        );
        for row in report
            .table1
            .iter()
            .filter(|r| r.ads_ap_change_vs_ads_only.is_some())
        {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                row.experiment,
                interval_change(row.promotions_ap_change_vs_ads_only),
                interval_change(row.ads_ap_change_vs_ads_only)
            );
        }
    }

    let _ = writeln!(md, "\n## The paper's claims, checked\n");
    let _ = writeln!(
        md,
        "| claim | paper | measured | verdict |\n|---|---|---|---|"
    );
    for finding in &report.findings {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            finding.claim,
            finding.paper,
            finding.measured,
            verdict_text(finding.verdict)
        );
    }

    let _ = writeln!(md, "\n## By popularity group\n");
    let group_header: String = TierGroup::ALL
        .iter()
        .map(|g| format!(" {} |", g.label()))
        .collect();
    let group_rule = "---|".repeat(TierGroup::ALL.len());
    for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
        let rows: Vec<&TierRow> = report.tiers.iter().filter(|r| r.kind == kind).collect();
        let Some(first) = rows.first() else {
            continue;
        };
        let counts: Vec<String> = first
            .cells
            .iter()
            .map(|c| {
                format!(
                    "{} {} rows / {} streams",
                    c.group.label(),
                    c.rows,
                    c.positives
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "### Pooled stream AP on {} ({})\n",
            kind_title(kind),
            counts.join(", ")
        );
        let _ = writeln!(md, "| experiment |{group_header}\n|---|{group_rule}");
        for row in &rows {
            let cells: String = row
                .cells
                .iter()
                .map(|c| match c.ap {
                    Some(ap) => format!(" {} |", interval(Some(ap), 4)),
                    None if c.positives < stats::MIN_POSITIVES => {
                        format!(" {} |", too_few(c.positives))
                    }
                    None => " n/a |".into(),
                })
                .collect();
            let _ = writeln!(md, "| {} |{cells}", row.experiment);
        }
        let _ = writeln!(
            md,
            "\nRelative change of the pooled AP against {}:\n",
            report.baseline
        );
        let _ = writeln!(md, "| experiment |{group_header}\n|---|{group_rule}");
        for row in rows.iter().filter(|r| r.experiment != report.baseline) {
            let cells: String = row
                .cells
                .iter()
                .map(|c| {
                    if c.positives < stats::MIN_POSITIVES {
                        format!(" {} |", too_few(c.positives))
                    } else {
                        format!(" {} |", interval_change(c.change))
                    }
                })
                .collect();
            let _ = writeln!(md, "| {} |{cells}", row.experiment);
        }
        let _ = writeln!(
            md,
            "\nImpression-to-stream rate per group, predicted (mean served probability, first seed) / true (mean `p_stream`):\n"
        );
        let _ = writeln!(md, "| experiment |{group_header}\n|---|{group_rule}");
        for row in &rows {
            let cells: String = row
                .cells
                .iter()
                .map(|c| format!(" {:.4} / {:.4} |", c.predicted_i2s, c.true_i2s))
                .collect();
            let _ = writeln!(md, "| {} |{cells}", row.experiment);
        }
        md.push('\n');
    }

    let replay = &report.replay;
    let _ = writeln!(md, "## A/B replay\n");
    let _ = writeln!(
        md,
        "{} ad opportunities of the test days, each with {} competing ads ({} candidates) drawn by the world's oracle for the same user, moment and slot. Each arm spends the same budget ({:.2} per replicate on average) choosing by {}; streams drawn from the true probabilities with common random numbers; {} replicates, each resampling the test users. Changes are paired per seed and replicate against {}.\n",
        replay.opportunities,
        replay.settings.candidates,
        replay.candidates,
        replay.budget,
        match replay.settings.policy {
            super::replay::ReplayPolicy::PerCost => "predicted stream probability per unit cost",
            super::replay::ReplayPolicy::Probability => "predicted stream probability",
        },
        replay.settings.replicates,
        replay.baseline
    );
    let _ = writeln!(
        md,
        "| arm | seeds | impressions | streams | spend | eCPS | eCPS change | i2s | i2s change |\n|---|---|---|---|---|---|---|---|---|"
    );
    for arm in &replay.arms {
        let f = &arm.overall;
        let _ = writeln!(
            md,
            "| {}{} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} |",
            arm.label,
            if arm.reference { " (reference)" } else { "" },
            arm.seeds,
            f.impressions,
            f.streams,
            f.spend,
            interval(f.ecps, 3),
            interval_change(f.ecps_change),
            interval(f.i2s, 4),
            interval_change(f.i2s_change)
        );
    }
    let _ = writeln!(
        md,
        "\neCPS / i2s change per group of the chosen ad's show against {} (paper, online, MTL against production: tier 3 CPS -20% / i2s +27%, tier 4 -24% / +33%, tier 5 -38% / +60%):\n",
        replay.baseline
    );
    let _ = writeln!(md, "| arm |{group_header}\n|---|{group_rule}");
    for arm in &replay.arms {
        let cells: String = arm
            .groups
            .iter()
            .map(|f| {
                format!(
                    " {} / {} |",
                    interval_change(f.ecps_change),
                    interval_change(f.i2s_change)
                )
            })
            .collect();
        let _ = writeln!(md, "| {} |{cells}", arm.label);
    }

    let _ = writeln!(md, "\n## Every head\n");
    let _ = writeln!(
        md,
        "Calibrated probabilities as served, per bundle (each seed); ECE over {} equal-mass bins.\n",
        super::metrics::RELIABILITY_BINS
    );
    let _ = writeln!(
        md,
        "| bundle | head | on | rows | positives | AP | ROC AUC | ECE | mean predicted | observed |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for b in &report.bundles {
        for h in &b.heads {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.4} |",
                b.label,
                h.head,
                h.kind.as_str(),
                h.rows,
                h.positives,
                optional(h.ap, 4),
                optional(h.auc, 4),
                h.ece,
                h.mean_predicted,
                h.observed_rate
            );
        }
    }

    if let Some(curves) = &report.learning_curves {
        md.push_str(&super::curves::markdown(curves));
    }

    let _ = writeln!(md, "\n## Plots\n");
    for plot in &report.plots {
        let _ = writeln!(md, "![{plot}]({plot})\n");
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for note in &report.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}
