//! Phase 1 of training, one pass over the logs: the vocabularies and numeric statistics
//! of the training days (through the shared feature module, so that the statistics are
//! fitted with the very shaping assembly applies), row counts and base rates, and the
//! capped validation rows.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};

use crate::dataset;
use crate::entities::CandidateKind;
use crate::features::{
    self, FeatureSpec, NumericStats, Transform, Vocabularies, Vocabulary, VocabularyBuilder,
};
use crate::graph;
use crate::logs::{self, Impression};

use super::Run;

/// What one pass over the training days learns.
pub struct Scanned {
    /// The feature spec with its numeric statistics filled in.
    pub specs: Vec<FeatureSpec>,
    pub vocabularies: Vocabularies,
    /// Training rows per source, and positives per source and label.
    pub counts: Counts,
    /// The first `--validation-rows` impressions of each source's validation days.
    pub validation: Vec<Impression>,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub train_rows: BTreeMap<CandidateKind, u64>,
    pub positives: BTreeMap<(CandidateKind, &'static str), u64>,
}

impl Counts {
    fn observe(&mut self, row: &Impression) {
        *self.train_rows.entry(row.kind).or_insert(0) += 1;
        for (label_name, label) in [
            ("stream", row.stream),
            ("click", row.click),
            ("like", row.like),
            ("follow", row.follow),
        ] {
            if label {
                *self.positives.entry((row.kind, label_name)).or_insert(0) += 1;
            }
        }
    }

    /// Each label's rate among the training rows of its source, `{kind}_{label}`.
    pub fn base_rates(&self) -> BTreeMap<String, f64> {
        self.positives
            .iter()
            .map(|((kind, label), count)| {
                let rows = self.train_rows.get(kind).copied().unwrap_or(1).max(1);
                (
                    format!("{}_{label}", kind.as_str()),
                    *count as f64 / rows as f64,
                )
            })
            .collect()
    }
}

pub fn scan(run: &Run<'_>) -> Result<Scanned> {
    let args = run.args;
    let mut definitions = features::default_definitions();
    let provisional = graph::lay_out(&definitions);
    let mut builder = VocabularyBuilder::default();
    let mut stats: Vec<Option<NumericStats>> = definitions
        .iter()
        .map(|definition| match definition.transform {
            Transform::Numeric { log1p, .. } => Some(NumericStats::new(log1p)),
            _ => None,
        })
        .collect();
    let mut counts = Counts::default();
    let mut validation = Vec::new();
    for kind in CandidateKind::ALL {
        let used = run.plan.uses(kind);
        let path = logs::impressions_path(&args.data, kind);
        let mut validation_rows = 0;
        for group in
            logs::open_impressions(&path).with_context(|| format!("opening {}", path.display()))?
        {
            let group = group.with_context(|| format!("reading {}", path.display()))?;
            for row in group {
                if run.splits.validation.contains(&row.day) {
                    if validation_rows < args.validation_rows {
                        validation_rows += 1;
                        validation.push(row);
                    }
                    continue;
                }
                if !used || !run.splits.train.contains(&row.day) {
                    continue;
                }
                counts.observe(&row);
                let (request, candidate) = dataset::views(&run.snapshot, &row);
                builder.observe_request(&provisional, &request);
                builder.observe_candidate(&provisional, &candidate);
                for (spec, stats) in provisional.iter().zip(&mut stats) {
                    if let Some(stats) = stats {
                        stats.observe(features::raw_value(spec.source, &request, &candidate));
                    }
                }
            }
        }
    }
    for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
        if run.plan.uses(kind) && counts.train_rows.get(&kind).copied().unwrap_or(0) == 0 {
            bail!(
                "{}: no {} impressions in the training days {:?}",
                logs::impressions_path(&args.data, kind).display(),
                kind.as_str(),
                run.splits.train
            );
        }
    }
    ensure!(
        !validation.is_empty(),
        "no impressions in the validation days {:?}",
        run.splits.validation
    );
    for (definition, stats) in definitions.iter_mut().zip(&stats) {
        if let Some(stats) = stats {
            definition.transform = stats.transform();
        }
    }
    let mut specs = graph::lay_out(&definitions);
    // Definitions and specs are in the same order: the served range of each numeric
    // feature is recorded from the same training values as its statistics.
    for (spec, stats) in specs.iter_mut().zip(&stats) {
        spec.bounds = stats.as_ref().and_then(NumericStats::bounds);
    }
    let mut vocabularies = builder.build(args.min_count);
    // A vocabulary no training row filled is still written, empty: the feature then
    // always takes the unknown row.
    for spec in &specs {
        if let Transform::Id { vocab } | Transform::IdBag { vocab, .. } = &spec.transform {
            vocabularies
                .entry(vocab.clone())
                .or_insert_with(|| Vocabulary::from_tokens(Vec::new()));
        }
    }
    Ok(Scanned {
        specs,
        vocabularies,
        counts,
        validation,
    })
}
