//! The evaluation's inputs: the test split of a world, and the bundles to compare,
//! checked against each other and against what the data can feed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::bundle::{Bundle, Manifest, ResponseField};
use crate::dataset::{self, Splits};
use crate::entities::CandidateKind;
use crate::features::{self, FeatureSpec, RawValue, Transform};
use crate::logs::{self, Impression, Snapshot};

/// The held-out days of a world: every impression of the test split, both kinds, with the
/// snapshot that feeds their features.
pub struct TestSet {
    pub data: PathBuf,
    pub splits: Splits,
    pub snapshot: Snapshot,
    /// Promotion impressions first, then ads, each in log (time) order.
    pub rows: Vec<Impression>,
}

impl TestSet {
    /// Reads the test days of `data`: the same split the trainer held out, so that no
    /// bundle trained by `podscore train` on this world has seen these rows.
    pub fn read(data: &Path) -> Result<TestSet> {
        let snapshot = logs::read_snapshot(data)
            .with_context(|| format!("reading the snapshot in {}", data.display()))?;
        // One pass over the logs instead of `dataset::count_days` and a second pass: the
        // test split's first day only grows with the last day seen, so a row before the
        // current first test day can never be a test row and is dropped at once. The
        // split is then exactly the trainer's: `split_days(last day + 1)`.
        let mut last_day: Option<u32> = None;
        let mut rows = Vec::new();
        for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
            let path = logs::impressions_path(data, kind);
            let reader = logs::open_impressions(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            for group in reader {
                let group = group.with_context(|| format!("reading {}", path.display()))?;
                for row in group {
                    last_day = Some(last_day.map_or(row.day, |day| day.max(row.day)));
                    let first_test_day = dataset::split_days(last_day.unwrap_or(0) + 1).test.start;
                    if row.day >= first_test_day {
                        rows.push(row);
                    }
                }
            }
        }
        let splits = Splits::after_last_day(last_day)
            .with_context(|| format!("splitting the days of {}", data.display()))?;
        rows.retain(|row| splits.test.contains(&row.day));
        for kind in [CandidateKind::Promotion, CandidateKind::Ad] {
            if !rows.iter().any(|row| row.kind == kind) {
                bail!(
                    "empty test split: no {} impressions in the test days {:?} of {} ({} days in all)",
                    kind.as_str(),
                    splits.test,
                    logs::impressions_path(data, kind).display(),
                    splits.days
                );
            }
        }
        Ok(TestSet {
            data: data.to_path_buf(),
            splits,
            snapshot,
            rows,
        })
    }

    pub fn count(&self, kind: CandidateKind) -> usize {
        self.rows.iter().filter(|row| row.kind == kind).count()
    }
}

/// A bundle under evaluation, with the label the report uses for it.
pub struct Candidate {
    pub label: String,
    pub bundle: Bundle,
}

impl Candidate {
    /// `settings.variant` of the manifest (`promo-only`, `mtl`, ...), if recorded.
    pub fn variant(&self) -> Option<&str> {
        self.bundle.manifest.settings.get("variant")?.as_str()
    }

    pub fn setting(&self, key: &str) -> Option<&serde_json::Value> {
        self.bundle.manifest.settings.get(key)
    }
}

/// Reads every bundle and gives each a unique label: its manifest name, or
/// `name/vVERSION` when names repeat, or its directory when both repeat.
pub fn read_bundles(dirs: &[PathBuf]) -> Result<Vec<Candidate>> {
    if dirs.is_empty() {
        bail!("no bundle given: pass one or more bundle directories (models/<name>/<version>)");
    }
    let mut bundles = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let bundle =
            Bundle::read(dir).with_context(|| format!("bundle {}: reading", dir.display()))?;
        bundles.push(bundle);
    }
    let count = |f: &dyn Fn(&Bundle) -> String, value: &str| {
        bundles.iter().filter(|b| f(b) == value).count()
    };
    let by_name = |b: &Bundle| b.manifest.name.clone();
    let by_version = |b: &Bundle| format!("{}/v{}", b.manifest.name, b.manifest.version);
    let labels: Vec<String> = bundles
        .iter()
        .map(|bundle| {
            if count(&by_name, &by_name(bundle)) == 1 {
                by_name(bundle)
            } else if count(&by_version, &by_version(bundle)) == 1 {
                by_version(bundle)
            } else {
                bundle.dir.display().to_string()
            }
        })
        .collect();
    Ok(labels
        .into_iter()
        .zip(bundles)
        .map(|(label, bundle)| Candidate { label, bundle })
        .collect())
}

/// Picks the baseline: `--baseline` by label, manifest name or path; otherwise the first
/// bundle trained as `promo-only` (the paper's reference), otherwise the first bundle.
pub fn baseline_index(candidates: &[Candidate], requested: Option<&str>) -> Result<usize> {
    if let Some(wanted) = requested {
        let wanted_path = Path::new(wanted);
        return candidates
            .iter()
            .position(|c| {
                c.label == wanted
                    || c.bundle.manifest.name == wanted
                    || c.bundle.dir == wanted_path
                    || (c
                        .bundle
                        .dir
                        .canonicalize()
                        .ok()
                        .zip(wanted_path.canonicalize().ok()))
                    .is_some_and(|(a, b)| a == b)
            })
            .with_context(|| {
                let labels: Vec<&str> = candidates.iter().map(|c| c.label.as_str()).collect();
                format!("--baseline {wanted}: no such bundle among {labels:?}")
            });
    }
    Ok(candidates
        .iter()
        .position(|c| c.variant() == Some("promo-only"))
        .unwrap_or(0))
}

/// Everything a bundle needs from the data, checked before any inference: a stream head
/// for both kinds (Table 1 and the replay read them), and for each id feature the model
/// learned a vocabulary for, at least one test row that provides its source. One line
/// naming the bundle and what is missing.
pub fn check_feedable(candidate: &Candidate, test: &TestSet) -> Result<()> {
    let manifest = &candidate.bundle.manifest;
    for kind in CandidateKind::ALL {
        if manifest.head_for(kind, &ResponseField::Stream).is_none() {
            let heads: Vec<&str> = manifest.heads.iter().map(|h| h.name.as_str()).collect();
            bail!(
                "bundle {}: no head fills `stream` for {} candidates (heads: {heads:?}); the \
                 evaluation compares stream heads on both kinds",
                candidate.label,
                kind.as_str()
            );
        }
    }
    for spec in &manifest.features {
        let learned = match &spec.transform {
            Transform::Id { vocab } | Transform::IdBag { vocab, .. } => candidate
                .bundle
                .vocabularies
                .get(vocab)
                .is_some_and(|v| !v.is_empty()),
            _ => false,
        };
        if learned && !any_row_provides(spec, test) {
            bail!(
                "bundle {}: feature `{}` reads `{}`, which no test impression of {} provides",
                candidate.label,
                spec.name,
                source_name(spec),
                test.data.display()
            );
        }
    }
    Ok(())
}

fn any_row_provides(spec: &FeatureSpec, test: &TestSet) -> bool {
    test.rows.iter().any(|row| {
        let (request, candidate) = dataset::views(&test.snapshot, row);
        match features::raw_value(spec.source, &request, &candidate) {
            RawValue::Missing => false,
            RawValue::Texts(tokens) => !tokens.is_empty(),
            _ => true,
        }
    })
}

fn source_name(spec: &FeatureSpec) -> String {
    serde_json::to_value(spec.source)
        .ok()
        .and_then(|value| value.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", spec.source))
}

/// How two bundles' feature specs differ, in words; `None` when they are the same
/// features from the same sources (numeric statistics and vocabularies may differ: each
/// bundle was fitted on its own training rows).
pub fn describe_spec_difference(first: &Manifest, second: &Manifest) -> Option<String> {
    let signature = |manifest: &Manifest| -> BTreeMap<String, String> {
        manifest
            .features
            .iter()
            .map(|spec| {
                let shape = match &spec.transform {
                    Transform::Id { vocab } => format!("id({vocab})"),
                    Transform::IdBag { vocab, max_len } => format!("bag({vocab},{max_len})"),
                    Transform::Dense { dim } => format!("dense({dim})"),
                    Transform::Numeric { log1p, .. } => format!("numeric(log1p={log1p})"),
                };
                (spec.name.clone(), format!("{} {shape}", source_name(spec)))
            })
            .collect()
    };
    let (a, b) = (signature(first), signature(second));
    if a == b {
        return None;
    }
    let only_first: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_second: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let changed: Vec<&String> = a
        .keys()
        .filter(|k| b.get(*k).is_some_and(|v| v != &a[*k]))
        .collect();
    Some(format!(
        "only in the first: {only_first:?}; only in the second: {only_second:?}; defined differently: {changed:?}"
    ))
}

/// What the report says about the data it was computed on.
#[derive(Debug, Clone, Serialize)]
pub struct DataSummary {
    pub data: String,
    pub days: u32,
    pub test_days: [u32; 2],
    pub test_rows: BTreeMap<String, usize>,
    pub test_stream_rate: BTreeMap<String, f64>,
    pub test_rows_by_tier: BTreeMap<String, Vec<usize>>,
}

impl DataSummary {
    pub fn of(test: &TestSet) -> DataSummary {
        let mut test_rows = BTreeMap::new();
        let mut test_stream_rate = BTreeMap::new();
        let mut test_rows_by_tier = BTreeMap::new();
        for kind in CandidateKind::ALL {
            let rows: Vec<&Impression> = test.rows.iter().filter(|row| row.kind == kind).collect();
            let streams = rows.iter().filter(|row| row.stream).count();
            let mut tiers = vec![0usize; super::TIERS];
            for row in &rows {
                if let Some(count) = tiers.get_mut(usize::from(row.show_tier)) {
                    *count += 1;
                }
            }
            test_rows.insert(kind.as_str().to_string(), rows.len());
            test_stream_rate.insert(
                kind.as_str().to_string(),
                streams as f64 / rows.len().max(1) as f64,
            );
            test_rows_by_tier.insert(kind.as_str().to_string(), tiers);
        }
        DataSummary {
            data: test.data.display().to_string(),
            days: test.splits.days,
            test_days: [test.splits.test.start, test.splits.test.end],
            test_rows,
            test_stream_rate,
            test_rows_by_tier,
        }
    }
}
