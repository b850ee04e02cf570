//! The report: its JSON shape, its Markdown rendering and its plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::entities::CandidateKind;

use super::TIERS;
use super::data::{Candidate, DataSummary};
use super::inference::Scores;
use super::metrics::{Agreement, Finding, HeadMetrics, Table1Row, TierGain, TierMetrics};
use super::plots::{self, Line, Panel};
use super::replay::{Interval, ReplayReport};

pub const MARKDOWN_FILE: &str = "report.md";
pub const JSON_FILE: &str = "report.json";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generator: String,
    pub created_at: String,
    pub data: DataSummary,
    /// Label of the bundle every change is relative to.
    pub baseline: String,
    pub bundles: Vec<BundleReport>,
    pub table1: Vec<Table1Row>,
    pub tier_gains: Vec<TierGain>,
    pub replay: ReplayReport,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    /// PNG file names, relative to the report directory.
    pub plots: Vec<String>,
    /// Set by `podscore reproduce`: preset, seed, training budget, timings.
    pub reproduction: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleReport {
    pub label: String,
    pub dir: String,
    pub name: String,
    pub version: u32,
    pub variant: Option<String>,
    pub mask: Option<String>,
    pub promo_share: Option<f64>,
    pub best_epoch: Option<u64>,
    pub training_steps: Option<u64>,
    pub scoring_seconds: f64,
    pub runtime_calls: usize,
    pub heads: Vec<HeadMetrics>,
    pub tiers: Vec<TierMetrics>,
}

impl BundleReport {
    pub fn new(
        candidate: &Candidate,
        heads: Vec<HeadMetrics>,
        tiers: Vec<TierMetrics>,
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
            variant: text("variant"),
            mask: text("mask"),
            promo_share: candidate.setting("promo_share").and_then(|v| v.as_f64()),
            best_epoch: manifest.metrics.get("best_epoch").and_then(|v| v.as_u64()),
            training_steps: manifest.metrics.get("steps").and_then(|v| v.as_u64()),
            scoring_seconds: scores.seconds,
            runtime_calls: scores.runtime_calls,
            heads,
            tiers,
        }
    }

    /// AP of the stream head serving `kind`, on impressions of `kind`.
    pub fn stream_ap(&self, kind: CandidateKind) -> Option<f64> {
        self.heads
            .iter()
            .find(|m| m.kind == kind && m.field == crate::bundle::ResponseField::Stream)
            .and_then(|m| m.ap)
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

fn draw_plots(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let tiers_x = |tier: u8| f64::from(tier);

    // AP by tier, one line per bundle.
    let ap_panels: Vec<Panel> = [CandidateKind::Promotion, CandidateKind::Ad]
        .into_iter()
        .map(|kind| Panel {
            title: format!("Stream AP by tier, {}", kind_title(kind)),
            x_label: "popularity tier (0 = most streamed)".into(),
            y_label: "average precision".into(),
            lines: report
                .bundles
                .iter()
                .map(|bundle| Line {
                    label: bundle.label.clone(),
                    points: bundle
                        .tiers
                        .iter()
                        .filter(|t| t.kind == kind)
                        .map(|t| (tiers_x(t.tier), t.ap))
                        .collect(),
                    reference: false,
                })
                .collect(),
            diagonal: false,
            tier_axis: true,
        })
        .collect();
    written.push(plots::draw(
        &out.join("ap_by_tier.png"),
        "AP of the stream head by show popularity tier",
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
                    })
                    .collect(),
                diagonal: true,
                tier_axis: false,
            })
            .collect();
        let path = out.join(format!("reliability_{}.png", file_stem(&bundle.label)));
        written.push(plots::draw(
            &path,
            &format!("Reliability of {} (calibrated, as served)", bundle.label),
            &panels,
        )?);
    }

    // eCPS and i2s by tier in the replay.
    let replay_panel =
        |title: &str,
         y_label: &str,
         metric: &dyn Fn(&super::replay::TierReplay) -> Option<Interval>| Panel {
            title: title.into(),
            x_label: "popularity tier of the chosen ad's show".into(),
            y_label: y_label.into(),
            lines: report
                .replay
                .arms
                .iter()
                .map(|arm| Line {
                    label: arm.label.clone(),
                    points: arm
                        .tiers
                        .iter()
                        .map(|t| (f64::from(t.tier), metric(t).map(|i| i.mean)))
                        .collect(),
                    reference: arm.reference,
                })
                .collect(),
            diagonal: false,
            tier_axis: true,
        };
    written.push(plots::draw(
        &out.join("ecps_by_tier.png"),
        "eCPS replay: same budget per arm, streams drawn from the true probabilities",
        &[
            replay_panel("eCPS (spend / streams), lower is better", "eCPS", &|t| {
                t.ecps
            }),
            replay_panel("i2s (streams / impressions)", "i2s", &|t| t.i2s),
        ],
    )?);
    for path in &written {
        anyhow::ensure!(plots::is_png(path)?, "{} is not a PNG", path.display());
    }
    Ok(written)
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

fn change(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{:+.1}%", v * 100.0))
}

fn interval(value: Option<Interval>, digits: usize) -> String {
    value.map_or_else(
        || "n/a".to_string(),
        |i| {
            format!(
                "{:.digits$} ± {:.digits$}",
                i.mean,
                (i.high - i.mean).max(0.0)
            )
        },
    )
}

fn interval_change(value: Option<Interval>) -> String {
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

fn agreement(value: Option<Agreement>) -> &'static str {
    match value {
        Some(Agreement::Agrees) => "agrees",
        Some(Agreement::Disagrees) => "**disagrees**",
        None => "n/a",
    }
}

/// The Markdown report: every table of the JSON, in reading order.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let data = &report.data;
    let _ = writeln!(md, "# podscore offline evaluation\n");
    let _ = writeln!(
        md,
        "Data: `{}`; test split: days {}..{} of {} (the trainer's time split). Test impressions: {} promotions (stream rate {:.4}), {} ads (stream rate {:.4}). Baseline: **{}**. {} at {}.\n",
        data.data,
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
        report.generator,
        report.created_at
    );
    if let Some(reproduction) = &report.reproduction {
        let budget = &reproduction["training_budget"];
        let _ = writeln!(
            md,
            "Reproduction: preset `{}`, seed {}, every variant trained with the same budget and hyper-parameters: at most {} epochs of {} steps of batch {} (learning rate {}, decay {} per epoch, patience {}), embedding {}, encoder {}, towers {}. Simulation {:.0}s, evaluation {:.0}s, total {:.0}s.\n",
            reproduction["preset"].as_str().unwrap_or("?"),
            reproduction["seed"],
            budget["max_epochs"],
            budget["steps_per_epoch"],
            budget["batch_size"],
            budget["learning_rate"],
            budget["learning_rate_decay"],
            budget["patience"],
            budget["embedding_dim"],
            budget["encoder"],
            budget["tower"],
            reproduction["simulate_seconds"].as_f64().unwrap_or(0.0),
            reproduction["evaluate_seconds"].as_f64().unwrap_or(0.0),
            reproduction["total_seconds"].as_f64().unwrap_or(0.0),
        );
        if let Some(experiments) = reproduction["experiments"].as_array() {
            let _ = writeln!(md, "| bundle | purpose | training seconds |\n|---|---|---|");
            for experiment in experiments {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} |",
                    experiment["label"].as_str().unwrap_or("?"),
                    experiment["purpose"].as_str().unwrap_or(""),
                    experiment["seconds"].as_f64().unwrap_or(0.0)
                );
            }
            md.push('\n');
        }
    }

    let _ = writeln!(md, "## Bundles\n");
    let _ = writeln!(
        md,
        "| bundle | variant | mask | promo share | best epoch | steps | scoring s | runtime calls | dir |\n|---|---|---|---|---|---|---|---|---|"
    );
    for b in &report.bundles {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} | `{}` |",
            b.label,
            b.variant.as_deref().unwrap_or("?"),
            b.mask.as_deref().unwrap_or("?"),
            optional(b.promo_share, 2),
            b.best_epoch.map_or("?".into(), |e| e.to_string()),
            b.training_steps.map_or("?".into(), |e| e.to_string()),
            b.scoring_seconds,
            b.runtime_calls,
            b.dir
        );
    }

    let _ = writeln!(md, "\n## Table 1: AP change against the baseline\n");
    let _ = writeln!(
        md,
        "Promotions AP: the stream head serving promotions, on promotion impressions. Ads AP: the stream head serving ads, on ad impressions. Paper columns: the paper's change rebased onto the baseline's setup (printed value in parentheses); \"sign\" says whether ours has the paper's sign.\n"
    );
    let _ = writeln!(
        md,
        "| bundle | Promotions AP | change | paper | sign | Ads AP | change | paper | sign |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in &report.table1 {
        let paper = |rebased: f64, printed: f64| {
            format!("{:+.1}% ({:+.1}%)", rebased * 100.0, printed * 100.0)
        };
        let (promotions_paper, promotions_sign, ads_paper, ads_sign) = match &row.paper {
            Some(p) => (
                paper(p.promotions_ap_change, p.promotions_ap_change_printed),
                if row.is_baseline {
                    "baseline"
                } else {
                    agreement(p.promotions_sign)
                },
                paper(p.ads_ap_change, p.ads_ap_change_printed),
                if row.is_baseline {
                    "baseline"
                } else {
                    agreement(p.ads_sign)
                },
            ),
            None => (
                "no Table 1 row".into(),
                "n/a",
                "no Table 1 row".into(),
                "n/a",
            ),
        };
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.bundle,
            if row.is_baseline { " (baseline)" } else { "" },
            optional(row.promotions_ap, 4),
            change(row.promotions_ap_change),
            promotions_paper,
            promotions_sign,
            optional(row.ads_ap, 4),
            change(row.ads_ap_change),
            ads_paper,
            ads_sign
        );
    }

    let _ = writeln!(md, "\n## The paper's claims, checked\n");
    let _ = writeln!(
        md,
        "| claim | paper | measured | verdict |\n|---|---|---|---|"
    );
    for finding in &report.findings {
        let verdict = if finding.verdict == "disagrees" {
            "**disagrees**".to_string()
        } else {
            finding.verdict.clone()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            finding.claim, finding.paper, finding.measured, verdict
        );
    }

    let _ = writeln!(md, "\n## Every head\n");
    let _ = writeln!(
        md,
        "Calibrated probabilities as served; ECE over {} equal-mass bins.\n",
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

    let _ = writeln!(md, "\n## By popularity tier\n");
    let tier_header = (0..TIERS)
        .map(|t| format!(" tier {t} |"))
        .collect::<String>();
    let tier_rule = "---|".repeat(TIERS);
    for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
        let counts = data
            .test_rows_by_tier
            .get(kind.as_str())
            .cloned()
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "### Stream AP on {} (test rows per tier: {:?})\n",
            kind_title(kind),
            counts
        );
        let _ = writeln!(md, "| bundle |{tier_header}\n|---|{tier_rule}");
        for b in &report.bundles {
            let cells: String = b
                .tiers
                .iter()
                .filter(|t| t.kind == kind)
                .map(|t| format!(" {} |", optional(t.ap, 4)))
                .collect();
            let _ = writeln!(md, "| {} |{cells}", b.label);
        }
        let _ = writeln!(
            md,
            "\nRelative AP change against {} per tier, and the paper's grouping (0-2 high-stream, 3-5 low-stream):\n",
            report.baseline
        );
        let _ = writeln!(
            md,
            "| bundle |{tier_header} tiers 0-2 | tiers 3-5 |\n|---|{tier_rule}---|---|"
        );
        for gain in report.tier_gains.iter().filter(|g| g.kind == kind) {
            let cells: String = gain
                .per_tier
                .iter()
                .map(|c| format!(" {} |", change(*c)))
                .collect();
            let _ = writeln!(
                md,
                "| {} |{cells} {} | {} |",
                gain.bundle,
                change(gain.high_stream_tiers_0_2),
                change(gain.low_stream_tiers_3_5)
            );
        }
        let _ = writeln!(
            md,
            "\nImpression-to-stream rate per tier, predicted (mean served probability) / observed (logged) / true (mean `p_stream`):\n"
        );
        let _ = writeln!(md, "| bundle |{tier_header}\n|---|{tier_rule}");
        for b in &report.bundles {
            let cells: String = b
                .tiers
                .iter()
                .filter(|t| t.kind == kind)
                .map(|t| {
                    format!(
                        " {:.4} / {:.4} / {:.4} |",
                        t.predicted_i2s, t.observed_i2s, t.true_i2s
                    )
                })
                .collect();
            let _ = writeln!(md, "| {} |{cells}", b.label);
        }
        md.push('\n');
    }

    let replay = &report.replay;
    let _ = writeln!(md, "## eCPS replay (offline budget split)\n");
    let _ = writeln!(
        md,
        "{} auctions ({} candidates; {}). Each arm spends the same budget of {:.2} choosing by {}; streams drawn from the world's true probabilities with common random numbers; {} seeds, intervals are mean ± 1.96 sd/sqrt(n). Changes are paired per seed against {}.\n",
        replay.auctions,
        replay.candidates,
        replay.grouping,
        replay.budget,
        match replay.settings.policy {
            super::replay::ReplayPolicy::PerCost => "predicted stream probability per unit cost",
            super::replay::ReplayPolicy::Probability => "predicted stream probability",
        },
        replay.settings.seeds,
        replay.baseline
    );
    let _ = writeln!(
        md,
        "| arm | impressions | streams | spend | eCPS | eCPS change | i2s | i2s change |\n|---|---|---|---|---|---|---|---|"
    );
    for arm in &replay.arms {
        let _ = writeln!(
            md,
            "| {}{} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {} |",
            arm.label,
            if arm.reference { " (reference)" } else { "" },
            arm.impressions,
            arm.streams,
            arm.spend,
            interval(arm.ecps, 3),
            interval_change(arm.ecps_change),
            interval(arm.i2s, 4),
            interval_change(arm.i2s_change)
        );
    }
    let _ = writeln!(
        md,
        "\neCPS per tier of the chosen ad's show (n/a: no stream bought in that tier):\n"
    );
    let _ = writeln!(md, "| arm |{tier_header}\n|---|{tier_rule}");
    for arm in &replay.arms {
        let cells: String = arm
            .tiers
            .iter()
            .map(|t| format!(" {} |", interval(t.ecps, 2)))
            .collect();
        let _ = writeln!(md, "| {} |{cells}", arm.label);
    }
    let _ = writeln!(
        md,
        "\neCPS and i2s change per tier against {} (paper, online, MTL against production: tier 3 CPS -20% / i2s +27%, tier 4 -24% / +33%, tier 5 -38% / +60%):\n",
        replay.baseline
    );
    let _ = writeln!(md, "| arm |{tier_header}\n|---|{tier_rule}");
    for arm in replay.arms.iter().filter(|a| !a.reference) {
        let cells: String = arm
            .tiers
            .iter()
            .map(|t| {
                format!(
                    " {} / {} |",
                    change(t.ecps_change.map(|i| i.mean)),
                    change(t.i2s_change.map(|i| i.mean))
                )
            })
            .collect();
        let _ = writeln!(md, "| {} |{cells}", arm.label);
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
