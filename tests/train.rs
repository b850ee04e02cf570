//! The trainer end to end: a small world trains into a bundle that loads in tract and
//! passes its golden check; candle and tract agree on the exported graph; bad input to
//! `podscore train` fails with one line and writes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use podscore::bundle::Bundle;
use podscore::dataset;
use podscore::entities::CandidateKind;
use podscore::features::{self, Assembler, FeatureSpec, Kind, RawValue, ScopeTensors};
use podscore::model::testing::{self, VocabularySizes};
use podscore::runtime::{Runtime, RuntimeConfig};
use podscore::service::Model;
use podscore::train::adam::Adam;
use podscore::train::network::Network;
use podscore::train::{self, MaskMode, TrainArgs, Variant};
use podscore::world::{self, Preset, WorldConfig};

fn small_world(dir: &Path) {
    world::simulate(&WorldConfig::preset(Preset::Small), dir).expect("simulate the small world");
}

/// Training settings for tests: the defaults, with few short epochs.
fn quick_args(data: &Path, out: PathBuf, variant: Variant) -> TrainArgs {
    TrainArgs {
        data: data.to_path_buf(),
        out,
        variant,
        mask: MaskMode::Directional,
        promo_share: 0.5,
        name: None,
        batch_size: 512,
        learning_rate: 2e-3,
        learning_rate_decay: 0.6,
        max_epochs: 2,
        steps_per_epoch: 20,
        validations_per_epoch: 1,
        patience: 1,
        embedding_l2: 1e-4,
        embedding_dim: 16,
        encoder: vec![64, 32],
        tower: vec![16],
        id_dropout: 0.1,
        min_count: 2,
        validation_rows: 5_000,
        shuffle_buffer: 4_096,
        seed: 5,
        log: None,
        quiet: true,
    }
}

/// A small-preset run writes a bundle that loads in tract and passes its own golden check,
/// with the manifest the server needs: heads, calibration, features and split.
#[test]
fn small_world_trains_into_a_bundle_that_passes_its_golden_check() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("world");
    small_world(&data);
    let out = temp.path().join("models/podcast-mtl/1");
    let log = temp.path().join("train.jsonl");
    let mut args = quick_args(&data, out.clone(), Variant::Mtl);
    args.log = Some(log.clone());
    train::run(&args).expect("train");

    let model =
        Model::open(&out, &RuntimeConfig::default()).expect("bundle loads and passes golden");
    let manifest = &model.manifest;
    assert_eq!(manifest.name, "podcast-mtl");
    assert_eq!(manifest.version, 1);
    let heads: Vec<&str> = manifest.heads.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(heads, train::ALL_HEADS);
    assert!(
        manifest.golden.len() >= 2,
        "golden cases: {}",
        manifest.golden.len()
    );
    for head in &manifest.heads {
        assert!(head.calibration.slope.is_finite() && head.calibration.intercept.is_finite());
        // A head serving both kinds is scaled per kind (both have both classes here).
        let per_kind: Vec<CandidateKind> = head.calibration_by_kind.keys().copied().collect();
        if head.kinds.len() > 1 {
            assert_eq!(per_kind, CandidateKind::ALL.to_vec(), "{}", head.name);
        } else {
            assert!(per_kind.is_empty(), "{}", head.name);
        }
    }
    // Calibrated means land on the observed validation rates of every kind a head serves.
    for (head, report) in manifest.metrics["calibration"].as_object().unwrap() {
        let spec = manifest.heads.iter().find(|h| &h.name == head).unwrap();
        for kind in &spec.kinds {
            let report = &report[kind.as_str()];
            let observed = report["observed_rate"].as_f64().unwrap();
            let predicted = report["mean_calibrated"].as_f64().unwrap();
            assert!(
                (observed - predicted).abs() < 0.01 + 0.2 * observed,
                "{head} on {kind:?}: {observed} vs {predicted}"
            );
        }
    }
    assert_trained_numerics_standardize(&data, &Bundle::read(&out).unwrap());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.lines().count() >= 2,
        "one line per epoch and a summary: {log_text}"
    );
    assert!(log_text.contains("\"done\":true"));
}

/// The statistics a trained manifest records standardize the training rows they were
/// fitted on when the server's assembly applies them (mean 0, standard deviation 1 over
/// the rows that carry a value): the trainer and the server shape numerics alike.
fn assert_trained_numerics_standardize(data: &Path, bundle: &Bundle) {
    let snapshot = podscore::logs::read_snapshot(data).unwrap();
    let splits = dataset::split_days(dataset::count_days(data).unwrap());
    let assembler = Assembler::new(&bundle.manifest.features, &bundle.vocabularies).unwrap();
    let numerics: Vec<&FeatureSpec> = assembler
        .specs()
        .iter()
        .filter(|spec| spec.kind == Kind::Numeric)
        .collect();
    assert!(!numerics.is_empty());
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); numerics.len()];
    for kind in CandidateKind::ALL {
        let path = podscore::logs::impressions_path(data, kind);
        let rows: Vec<_> = podscore::logs::read_impressions(&path)
            .unwrap()
            .into_iter()
            .filter(|row| splits.train.contains(&row.day))
            .collect();
        for chunk in rows.chunks(8192) {
            let (requests, candidates): (Vec<_>, Vec<_>) = chunk
                .iter()
                .map(|row| dataset::views(&snapshot, row))
                .unzip();
            let assembled = [
                assembler.request(&requests).unwrap(),
                assembler.candidates(&candidates).unwrap(),
            ];
            for (spec, values) in numerics.iter().zip(&mut values) {
                let tensors = &assembled[spec.scope as usize];
                for (row, (request, candidate)) in requests.iter().zip(&candidates).enumerate() {
                    if let RawValue::Number(_) =
                        features::raw_value(spec.source, request, candidate)
                    {
                        values.push(f64::from(
                            tensors.dense[row * tensors.widths.dense + spec.slot],
                        ));
                    }
                }
            }
        }
    }
    for (spec, values) in numerics.iter().zip(&values) {
        let count = values.len() as f64;
        assert!(count > 100.0, "{}: {count} values", spec.name);
        let mean = values.iter().sum::<f64>() / count;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0)).sqrt();
        assert!(mean.abs() < 1e-3, "{}: mean {mean}", spec.name);
        assert!((std - 1.0).abs() < 1e-3, "{}: std {std}", spec.name);
    }
}

/// Each Table 1 variant trains on its own sources and exports only its heads, with the
/// single stream head serving both kinds.
#[test]
fn single_source_variants_export_their_heads() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("world");
    small_world(&data);
    for (variant, expected) in [
        (Variant::PromoOnly, vec!["promo_stream"]),
        (
            Variant::AdsAnc,
            vec!["ad_stream", "click", "like", "follow"],
        ),
    ] {
        let out = temp.path().join(format!("{variant:?}/1"));
        train::run(&quick_args(&data, out.clone(), variant)).expect("train");
        let bundle = Bundle::read(&out).unwrap();
        let heads: Vec<&str> = bundle
            .manifest
            .heads
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(heads, expected);
        assert_eq!(
            bundle.manifest.heads[0].kinds.len(),
            2,
            "{variant:?} stream head serves both kinds"
        );
        Model::load(bundle, &RuntimeConfig::default()).expect("golden check");
    }
}

fn max_probability_difference(candle: &[f32], tract: &[f32]) -> f32 {
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    candle
        .iter()
        .zip(tract)
        .map(|(a, b)| (sigmoid(*a) - sigmoid(*b)).abs())
        .fold(0.0, f32::max)
}

/// Rows whose ids are all unknown and whose bags are empty: the cold-start path.
fn blank_rows(tensors: &mut ScopeTensors, rows: std::ops::Range<usize>) {
    for row in rows {
        let widths = tensors.widths;
        tensors.ids[row * widths.ids..(row + 1) * widths.ids].fill(0);
        tensors.bag_ids[row * widths.bag..(row + 1) * widths.bag].fill(0);
        tensors.bag_mask[row * widths.bag..(row + 1) * widths.bag].fill(0.0);
    }
}

/// candle's forward pass and tract on the exported file agree within 1e-5 in
/// probability for N = 1, 7 and 1000, including unknown ids and empty bags, after
/// training steps have moved every weight and the batch-norm statistics.
#[test]
fn candle_and_tract_agree_on_the_exported_graph() {
    let bundle = testing::random_bundle(VocabularySizes::small(), 11);
    let manifest = bundle.manifest;
    let heads: Vec<String> = manifest.heads.iter().map(|h| h.name.clone()).collect();
    let mut network = Network::new(
        &manifest.architecture,
        &manifest.features,
        &bundle.vocabularies,
        &heads,
        3,
    )
    .unwrap();
    let mut optimizer = Adam::new(1e-2);
    let initial = network.export_weights().unwrap();
    for step in 0..5 {
        let (request, candidates) =
            testing::random_inputs(&manifest, &bundle.vocabularies, 64, step);
        let labels = Tensor::from_vec(
            (0..64 * heads.len())
                .map(|i| f32::from(i % 7 == 0))
                .collect::<Vec<f32>>(),
            (64, heads.len()),
            network.device(),
        )
        .unwrap();
        let mask =
            Tensor::ones((64, heads.len()), candle_core::DType::F32, network.device()).unwrap();
        let loss = network
            .train_step(&mut optimizer, &request, &candidates, &labels, &mask)
            .unwrap();
        assert!(loss.is_finite());
    }
    // The steps moved the embedding tables (trained outside autograd) as well as the rest.
    let trained = network.export_weights().unwrap();
    for name in [
        "embedding.user_history",
        "embedding.show_id",
        "encoder.0.request_weight",
    ] {
        assert_ne!(
            initial.tensors[name].data, trained.tensors[name].data,
            "{name} did not move"
        );
    }
    let onnx = podscore::onnx::export(&manifest, &network.export_weights().unwrap()).unwrap();
    let runtime = Runtime::load(&manifest, &onnx, &RuntimeConfig::default()).unwrap();
    for (rows, seed) in [(1usize, 100u64), (7, 101), (1000, 102)] {
        let (mut request, mut candidates) =
            testing::random_inputs(&manifest, &bundle.vocabularies, rows, seed);
        blank_rows(&mut candidates, 0..rows.min(2));
        if rows == 7 {
            blank_rows(&mut request, 0..1);
        }
        let candle = network.forward(&request, &candidates, false).unwrap();
        let candle = candle.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let tract = runtime.infer(&request, &candidates).unwrap();
        assert_eq!(tract.rows, rows);
        let difference = max_probability_difference(&candle, &tract.values);
        assert!(
            difference <= 1e-5,
            "N={rows}: max probability difference {difference}"
        );
    }
}

fn podscore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_podscore"))
        .args(args)
        .output()
        .expect("run podscore")
}

/// Bad input to `podscore train` exits non-zero with a one-line cause and writes nothing.
#[test]
fn bad_training_input_fails_with_one_line_and_writes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let existing = temp.path().join("existing");
    std::fs::create_dir_all(&existing).unwrap();
    let empty_data = temp.path().join("empty");
    std::fs::create_dir_all(&empty_data).unwrap();
    let out = temp.path().join("out/1");
    let out_text = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train",
                "--data",
                empty_data.to_str().unwrap(),
                "--out",
                existing.to_str().unwrap(),
            ],
            "already exists",
        ),
        (
            vec![
                "train",
                "--data",
                empty_data.to_str().unwrap(),
                "--out",
                out_text,
            ],
            "users.parquet",
        ),
        (
            vec![
                "train",
                "--data",
                empty_data.to_str().unwrap(),
                "--out",
                out_text,
                "--variant",
                "nope",
            ],
            "invalid value 'nope'",
        ),
        (
            vec![
                "train",
                "--data",
                empty_data.to_str().unwrap(),
                "--out",
                out_text,
                "--promo-share",
                "1.5",
            ],
            "--promo-share must be in (0, 1)",
        ),
        (
            vec![
                "train",
                "--data",
                empty_data.to_str().unwrap(),
                "--out",
                out_text,
                "--learning-rate",
                "0",
                "--batch-size",
                "1",
            ],
            "--batch-size must be in 2..=65536, got 1; --learning-rate must be in (0, 1]",
        ),
    ];
    for (args, expected) in cases {
        let output = podscore(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        let first_line = stderr.lines().next().unwrap_or_default();
        assert!(
            first_line.starts_with("error: ") && first_line.contains(expected),
            "{args:?}: {stderr}"
        );
        // clap follows its one-line cause with a hint; our own errors are one line only.
        if !stderr.contains("For more information, try '--help'") {
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{args:?}: one line, got {stderr}"
            );
        }
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    assert_eq!(
        std::fs::read_dir(&existing).unwrap().count(),
        0,
        "the existing bundle dir is untouched"
    );
}

/// The directional mask keeps ad impressions away from `promo_stream` only; siloed also
/// keeps promotions away from `ad_stream`; bidirectional trains everything.
#[test]
fn loss_masks_follow_the_paper() {
    use podscore::entities::CandidateKind::{Ad, Promotion};
    let table = |mask| -> Vec<f32> {
        [Ad, Promotion]
            .into_iter()
            .flat_map(|kind| {
                train::ALL_HEADS
                    .iter()
                    .map(move |head| train::mask_weight(mask, kind, head))
            })
            .collect()
    };
    assert_eq!(
        table(MaskMode::Directional),
        [0., 1., 1., 1., 1., 1., 1., 1., 1., 1.]
    );
    assert_eq!(
        table(MaskMode::Siloed),
        [0., 1., 1., 1., 1., 1., 0., 1., 1., 1.]
    );
    assert_eq!(table(MaskMode::Bidirectional), [1.0; 10]);
}

/// The shipped default bundle loads in tract and passes its golden check.
#[test]
fn shipped_default_bundle_passes_its_golden_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/podcast-mtl/1");
    let model = Model::open(&dir, &RuntimeConfig::default())
        .expect("the shipped bundle loads and passes golden");
    assert_eq!(model.manifest.heads.len(), 5);
}

/// Every batch draws the configured share from promotions and the rest from ads, and
/// only rows of the training days.
#[test]
fn balanced_sampler_keeps_the_promotion_share() {
    use podscore::train::sampler::{BalancedSampler, SourceStream};
    use rand::SeedableRng;
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("world");
    small_world(&data);
    let stream = |kind| {
        Some(SourceStream::new(
            podscore::logs::impressions_path(&data, kind),
            0..5,
            2_000,
        ))
    };
    let mut sampler = BalancedSampler::new(
        stream(CandidateKind::Promotion),
        stream(CandidateKind::Ad),
        0.25,
        400,
        rand_chacha::ChaCha8Rng::seed_from_u64(1),
    );
    for _ in 0..30 {
        let batch = sampler.next_batch().unwrap();
        assert_eq!(batch.len(), 400);
        let promotions = batch
            .iter()
            .filter(|row| row.kind == CandidateKind::Promotion)
            .count();
        assert_eq!(promotions, 100);
        assert!(batch.iter().all(|row| row.day < 5));
    }
}

/// A source's first full pass ends with the draw of its last training row, not a
/// coupon collector's tail later: the next pass over the file begins only once the
/// buffer holds no row of the one before.
#[test]
fn a_full_pass_ends_when_every_training_row_is_drawn() {
    use podscore::train::sampler::SourceStream;
    use rand::SeedableRng;
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("world");
    small_world(&data);
    let path = podscore::logs::impressions_path(&data, CandidateKind::Promotion);
    let days = 0..5;
    let mut training_rows = 0;
    for group in podscore::logs::open_impressions(&path).unwrap() {
        training_rows += group
            .unwrap()
            .iter()
            .filter(|row| days.contains(&row.day))
            .count();
    }
    // A buffer far smaller than the rows, so that passes would overlap.
    let mut stream = SourceStream::new(path, days, 1_000);
    assert!(training_rows > 10 * 1_000, "{training_rows} rows");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..training_rows - 1 {
        stream.draw(&mut rng).unwrap();
    }
    assert_eq!(stream.full_passes(), 0, "a row of the first pass is left");
    stream.draw(&mut rng).unwrap();
    assert_eq!(
        stream.full_passes(),
        1,
        "every row of the first pass was drawn"
    );
}

/// The two embedding bugs of issue 14 stay fixed: trained under the protocol (checkpoint
/// from the end of the first epoch, so the joint model's may come before the promotions
/// are drawn in full), no embedding row of a bundle is left at its initialization unless
/// its token never occurred in the variant's training rows: a row no step updated by the
/// checkpoint holds the unknown row's values; every vocabulary row did occur
/// (vocabularies are counted per feature, so a show only listened to is not in
/// `show_id`'s); and row 0 starts at zero, so a value a variant never sees (a
/// promotions-only model asked about an ad slot) reads a neutral row.
#[test]
fn no_embedding_row_is_left_at_its_initialization() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("world");
    small_world(&data);
    let snapshot = podscore::logs::read_snapshot(&data).unwrap();
    let splits = dataset::split_days(dataset::count_days(&data).unwrap());
    for variant in [Variant::PromoOnly, Variant::Mtl] {
        let mut args = quick_args(&data, temp.path().join("unused"), variant);
        // The protocol's own epochs (passes of the smaller source) under its cap;
        // patience short, as the test is about rows, not quality.
        (
            args.steps_per_epoch,
            args.max_epochs,
            args.validations_per_epoch,
        ) = (0, 40, 2);
        args.patience = 2;
        let (scanned, fitted) = train::fit_only(&args).expect("fit");
        assert!(
            fitted.best_epoch >= 1.0,
            "{variant:?}: checkpoint at epoch {} precedes the first pass",
            fitted.best_epoch
        );
        if variant == Variant::PromoOnly {
            // One source: the end of the first epoch is a full pass, so every row trained.
            assert!(
                fitted.warmed_up,
                "promo-only: checkpoint before a full pass"
            );
            assert!(
                fitted.untrained_rows.values().all(|count| *count == 0),
                "promo-only: rows fell back to the unknown row: {:?}",
                fitted.untrained_rows
            );
        }
        let plan = train::Plan::of(variant);
        let initial = Network::new(
            &fitted.network.architecture,
            &scanned.specs,
            &scanned.vocabularies,
            &plan.head_names(),
            args.seed,
        )
        .unwrap();
        // Which index of each id feature the variant's training rows look up.
        let assembler = Assembler::new(&scanned.specs, &scanned.vocabularies).unwrap();
        let ids: Vec<&FeatureSpec> = assembler
            .specs()
            .iter()
            .filter(|s| matches!(s.kind, Kind::Id | Kind::IdBag))
            .collect();
        let mut occurred: Vec<std::collections::BTreeSet<i64>> =
            vec![Default::default(); ids.len()];
        for kind in CandidateKind::ALL.into_iter().filter(|k| plan.uses(*k)) {
            let rows: Vec<_> =
                podscore::logs::read_impressions(&podscore::logs::impressions_path(&data, kind))
                    .unwrap()
                    .into_iter()
                    .filter(|row| splits.train.contains(&row.day))
                    .collect();
            for chunk in rows.chunks(4096) {
                let (requests, candidates): (Vec<_>, Vec<_>) = chunk
                    .iter()
                    .map(|row| dataset::views(&snapshot, row))
                    .unzip();
                let tensors = [
                    assembler.request(&requests).unwrap(),
                    assembler.candidates(&candidates).unwrap(),
                ];
                for (spec, seen) in ids.iter().zip(&mut occurred) {
                    let t = &tensors[spec.scope as usize];
                    for row in 0..t.rows {
                        match spec.kind {
                            Kind::Id => {
                                seen.insert(t.ids[row * t.widths.ids + spec.slot]);
                            }
                            _ => {
                                let start = row * t.widths.bag + spec.slot;
                                for (id, mask) in t.bag_ids[start..start + spec.width]
                                    .iter()
                                    .zip(&t.bag_mask[start..start + spec.width])
                                {
                                    if *mask != 0.0 {
                                        seen.insert(*id);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let dim = fitted.network.architecture.embedding_dim;
        for (spec, seen) in ids.iter().zip(&occurred) {
            let trained = fitted.network.table_values(&spec.name).unwrap();
            let start = initial.table_values(&spec.name).unwrap();
            // Rows that took the unknown row's values are the ones the fit reports.
            let unknown = &trained[..dim];
            let fell_back = (1..trained.len() / dim)
                .filter(|row| &trained[row * dim..(row + 1) * dim] == unknown)
                .count();
            assert_eq!(
                fell_back, fitted.untrained_rows[&spec.name],
                "{variant:?} {}: rows holding the unknown row's values",
                spec.name
            );
            assert!(
                start[..dim].iter().all(|v| *v == 0.0),
                "{}: row 0 starts at zero",
                spec.name
            );
            for row in 0..trained.len() / dim {
                let at_start =
                    trained[row * dim..(row + 1) * dim] == start[row * dim..(row + 1) * dim];
                if row > 0 {
                    assert!(
                        seen.contains(&(row as i64)),
                        "{variant:?} {}: vocabulary row {row} never occurs in training",
                        spec.name
                    );
                }
                if seen.contains(&(row as i64)) {
                    assert!(
                        !at_start,
                        "{variant:?} {}: row {row} occurred in training but is at its initialization",
                        spec.name
                    );
                }
            }
        }
    }
}
