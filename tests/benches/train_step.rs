//! Training throughput: one full step (forward, masked loss, backward, Adam) of the
//! default network on a batch of 1024 random rows, in rows per second.
//!
//! `tests/benches/torch_reference.py` builds the same network in PyTorch for comparison; the
//! README reports both.

use std::collections::BTreeMap;

use candle_core::Tensor;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use podscore::bundle::Architecture;
use podscore::features::{self, Kind, ScopeTensors, ScopeWidths, Transform, Vocabulary};
use podscore::train::ALL_HEADS;
use podscore::train::adam::Adam;
use podscore::train::network::Network;
use rand::{Rng, SeedableRng};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1024;

/// Vocabulary sizes like the default world's (shows, episodes, campaigns, creatives).
fn vocabulary_size(name: &str) -> usize {
    match name {
        "show" => 10_000,
        "episode" => 50_000,
        "campaign" | "creative" => 2_000,
        "topic" => 200,
        _ => 24,
    }
}

fn random_scope(
    specs: &[features::FeatureSpec],
    scope: features::Scope,
    rng: &mut impl Rng,
) -> ScopeTensors {
    let widths = ScopeWidths::of(specs, scope);
    let mut tensors = ScopeTensors {
        rows: BATCH,
        widths,
        ids: vec![0; BATCH * widths.ids],
        bag_ids: vec![0; BATCH * widths.bag],
        bag_mask: vec![0.0; BATCH * widths.bag],
        dense: (0..BATCH * widths.dense)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        cold_start: vec![false; BATCH],
    };
    for spec in specs.iter().filter(|s| s.scope == scope) {
        let vocab = match &spec.transform {
            Transform::Id { vocab } | Transform::IdBag { vocab, .. } => {
                vocabulary_size(vocab) as i64
            }
            _ => continue,
        };
        for row in 0..BATCH {
            match spec.kind {
                Kind::Id => tensors.ids[row * widths.ids + spec.slot] = rng.random_range(0..vocab),
                _ => {
                    let filled = rng.random_range(0..=spec.width);
                    for column in 0..filled {
                        let index = row * widths.bag + spec.slot + column;
                        tensors.bag_ids[index] = rng.random_range(0..vocab);
                        tensors.bag_mask[index] = 1.0;
                    }
                }
            }
        }
    }
    tensors
}

fn train_step(c: &mut Criterion) {
    let specs = podscore::graph::lay_out(&features::default_definitions());
    let mut vocabularies = BTreeMap::new();
    for spec in &specs {
        if let Transform::Id { vocab } | Transform::IdBag { vocab, .. } = &spec.transform {
            let tokens = (1..vocabulary_size(vocab))
                .map(|i| format!("{vocab}{i}"))
                .collect();
            vocabularies.insert(vocab.clone(), Vocabulary::from_tokens(tokens));
        }
    }
    let architecture = Architecture {
        embedding_dim: 16,
        encoder: vec![256, 128],
        tower: vec![64],
    };
    let heads: Vec<String> = ALL_HEADS.iter().map(|h| h.to_string()).collect();
    let mut network =
        Network::new(&architecture, &specs, &vocabularies, &heads, 1).expect("network");
    eprintln!("parameters: {}", network.parameter_count());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let request = random_scope(&specs, features::Scope::Request, &mut rng);
    let candidates = random_scope(&specs, features::Scope::Candidate, &mut rng);
    let labels: Vec<f32> = (0..BATCH * heads.len())
        .map(|_| f32::from(rng.random_bool(0.05)))
        .collect();
    let mask = vec![1.0f32; BATCH * heads.len()];
    let device = network.device().clone();
    let labels = Tensor::from_vec(labels, (BATCH, heads.len()), &device).expect("labels");
    let mask = Tensor::from_vec(mask, (BATCH, heads.len()), &device).expect("mask");
    let mut optimizer = Adam::new(1e-3);
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("batch_1024", |b| {
        b.iter(|| {
            // Dense parameters get a full Adam step; embedding tables only the rows
            // this batch touched (LazyAdam), as in training.
            network
                .train_step(&mut optimizer, &request, &candidates, &labels, &mask)
                .expect("train step")
        })
    });
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
