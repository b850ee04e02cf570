//! The model's forward pass in plain Rust: the reference the exported graph and the
//! runtime are checked against, written for clarity, not speed.
//!
//! It follows the contract of [`crate::onnx`] literally (one tower per head, the bag mean
//! as a sum divided by the clamped count), so that the fused graph is checked against
//! the unfused arithmetic. [`testing`] builds complete random bundles and inputs for
//! tests and benchmarks.
//!
//! This module knows [`Weights`], the manifest and assembled tensors; it knows nothing
//! of protobuf, tract, candle or HTTP.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bundle::Manifest;
use crate::features::{Kind, Scope, ScopeTensors, Vocabularies};
use crate::onnx::{WeightTensor, Weights, embedding_weight_name, weight_shapes};

/// Logits `[candidates.rows * heads]`, row-major, columns in head `index` order.
///
/// Test support: it indexes the tensors as the manifest says and panics when they do
/// not match it (out-of-range ids, wrong widths, a missing weight). The runtime is what
/// checks untrusted input.
pub fn forward(
    manifest: &Manifest,
    weights: &Weights,
    request: &ScopeTensors,
    candidates: &ScopeTensors,
) -> Vec<f32> {
    let weight = |name: &str| -> &WeightTensor {
        weights
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("weight `{name}` is missing"))
    };
    let architecture = &manifest.architecture;
    let mut shared = weight("encoder.0.bias").data.clone();
    if let Some(request_weight) = weights.tensors.get("encoder.0.request_weight") {
        let request_vector = feature_vector(manifest, weights, Scope::Request, request, 0);
        let request_part = vector_times_matrix(&request_vector, request_weight);
        // Same association as the graph: (request part + bias), then + candidate part.
        shared = request_part
            .iter()
            .zip(&shared)
            .map(|(part, bias)| part + bias)
            .collect();
    }
    let mut heads: Vec<_> = manifest.heads.iter().collect();
    heads.sort_by_key(|head| head.index);
    let mut logits = Vec::with_capacity(candidates.rows * heads.len());
    for row in 0..candidates.rows {
        let candidate_vector = feature_vector(manifest, weights, Scope::Candidate, candidates, row);
        let candidate_part =
            vector_times_matrix(&candidate_vector, weight("encoder.0.candidate_weight"));
        let mut hidden: Vec<f32> = candidate_part
            .iter()
            .zip(&shared)
            .map(|(part, shared)| (part + shared).max(0.0))
            .collect();
        for layer in 1..architecture.encoder.len() {
            hidden = dense(
                &hidden,
                weight(&format!("encoder.{layer}.weight")),
                weight(&format!("encoder.{layer}.bias")),
                true,
            );
        }
        let scale = &weight("batch_norm.scale").data;
        let shift = &weight("batch_norm.shift").data;
        for (value, (scale, shift)) in hidden.iter_mut().zip(scale.iter().zip(shift)) {
            *value = *value * scale + shift;
        }
        for head in &heads {
            let mut tower = hidden.clone();
            let layers = architecture.tower.len() + 1;
            for layer in 0..layers {
                let prefix = format!("tower.{}.{layer}", head.name);
                let relu = layer + 1 < layers;
                tower = dense(
                    &tower,
                    weight(&format!("{prefix}.weight")),
                    weight(&format!("{prefix}.bias")),
                    relu,
                );
            }
            logits.push(tower[0]);
        }
    }
    logits
}

/// One row's feature vector for `scope`: per feature in spec order, its embedding, its
/// bag's masked mean, or its dense columns.
fn feature_vector(
    manifest: &Manifest,
    weights: &Weights,
    scope: Scope,
    tensors: &ScopeTensors,
    row: usize,
) -> Vec<f32> {
    let embedding_dim = manifest.architecture.embedding_dim;
    let widths = tensors.widths;
    let mut vector = Vec::new();
    for spec in manifest.features.iter().filter(|spec| spec.scope == scope) {
        let table = || {
            let name = embedding_weight_name(&spec.name);
            weights
                .tensors
                .get(&name)
                .unwrap_or_else(|| panic!("weight `{name}` is missing"))
        };
        let embedding_row = |table: &WeightTensor, id: i64| -> Vec<f32> {
            let id = usize::try_from(id).expect("ids are never negative");
            table.data[id * embedding_dim..(id + 1) * embedding_dim].to_vec()
        };
        match spec.kind {
            Kind::Id => {
                let id = tensors.ids[row * widths.ids + spec.slot];
                vector.extend(embedding_row(table(), id));
            }
            Kind::IdBag => {
                let table = table();
                let mut sum = vec![0.0f32; embedding_dim];
                let mut count = 0.0f32;
                for column in spec.slot..spec.slot + spec.width {
                    let id = tensors.bag_ids[row * widths.bag + column];
                    let mask = tensors.bag_mask[row * widths.bag + column];
                    for (total, value) in sum.iter_mut().zip(embedding_row(table, id)) {
                        *total += value * mask;
                    }
                    count += mask;
                }
                let divisor = count.max(1.0);
                vector.extend(sum.iter().map(|total| total / divisor));
            }
            Kind::Dense | Kind::Numeric => {
                let start = row * widths.dense + spec.slot;
                vector.extend_from_slice(&tensors.dense[start..start + spec.width]);
            }
        }
    }
    vector
}

/// `vector @ matrix` for a `[in]` vector and an `[in, out]` matrix.
fn vector_times_matrix(vector: &[f32], matrix: &WeightTensor) -> Vec<f32> {
    let (rows, columns) = (matrix.shape[0], matrix.shape[1]);
    assert_eq!(
        vector.len(),
        rows,
        "vector of {} against a [{rows}, {columns}] matrix",
        vector.len()
    );
    let mut out = vec![0.0f32; columns];
    for (row, value) in vector.iter().enumerate() {
        for (total, weight) in out
            .iter_mut()
            .zip(&matrix.data[row * columns..(row + 1) * columns])
        {
            *total += value * weight;
        }
    }
    out
}

fn dense(vector: &[f32], weight: &WeightTensor, bias: &WeightTensor, relu: bool) -> Vec<f32> {
    vector_times_matrix(vector, weight)
        .iter()
        .zip(&bias.data)
        .map(|(product, bias)| {
            let value = product + bias;
            if relu { value.max(0.0) } else { value }
        })
        .collect()
}

/// Random weights of the right shapes, seeded: Glorot-uniform matrices so that logits
/// stay in the range where probabilities differ, small biases, batch-norm scales near 1.
///
/// Test support: panics when the manifest or vocabularies are inconsistent.
pub fn random_weights(manifest: &Manifest, vocabularies: &Vocabularies, seed: u64) -> Weights {
    let shapes = weight_shapes(manifest, vocabularies)
        .unwrap_or_else(|error| panic!("random_weights: {error}"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tensors = shapes
        .into_iter()
        .map(|(name, shape)| {
            let len: usize = shape.iter().product();
            let data: Vec<f32> = if name.starts_with("embedding.") {
                (0..len).map(|_| rng.random_range(-0.5..0.5)).collect()
            } else if name == "batch_norm.scale" {
                (0..len).map(|_| rng.random_range(0.5..1.5)).collect()
            } else if shape.len() == 1 {
                (0..len).map(|_| rng.random_range(-0.1..0.1)).collect()
            } else {
                let limit = (6.0 / (shape[0] + shape[1]) as f32).sqrt();
                (0..len).map(|_| rng.random_range(-limit..limit)).collect()
            };
            (name, WeightTensor::new(shape, data))
        })
        .collect();
    Weights { tensors }
}

/// Complete random bundles and assembled inputs for tests and benchmarks.
pub mod testing {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::bundle::{Architecture, Calibration, HeadSpec, Manifest, ResponseField};
    use crate::entities::{
        CandidateKind, CandidateView, ContextRecord, CreativeRecord, EpisodeRecord, RequestView,
        ShowRecord, UserRecord,
    };
    use crate::features::{
        self, Assembler, ScopeTensors, Source, Transform, Vocabularies, Vocabulary,
    };
    use crate::onnx::Weights;

    /// Token counts of the synthetic vocabularies (not counting the reserved row 0).
    #[derive(Debug, Clone, Copy)]
    pub struct VocabularySizes {
        pub show: usize,
        pub episode: usize,
        pub campaign: usize,
        pub creative: usize,
        pub topic: usize,
        /// Every other vocabulary (country, platform, genre, ...).
        pub other: usize,
    }

    impl VocabularySizes {
        /// Small enough that tests build them in microseconds.
        pub fn small() -> VocabularySizes {
            VocabularySizes {
                show: 50,
                episode: 80,
                campaign: 12,
                creative: 20,
                topic: 30,
                other: 6,
            }
        }

        /// About the sizes of the shipped model's vocabularies, so that benchmarks and
        /// load-time measurements see a realistic parameter count (about 1.2 million).
        pub fn shipped_like() -> VocabularySizes {
            VocabularySizes {
                show: 10_000,
                episode: 50_000,
                campaign: 2_000,
                creative: 2_000,
                topic: 500,
                other: 20,
            }
        }
    }

    /// A manifest, its vocabularies and weights: everything a bundle holds but the graph.
    #[derive(Debug, Clone)]
    pub struct RandomBundle {
        pub manifest: Manifest,
        pub vocabularies: Vocabularies,
        pub weights: Weights,
    }

    /// The architecture of the shipped model.
    pub fn default_architecture() -> Architecture {
        Architecture {
            embedding_dim: 16,
            encoder: vec![256, 128],
            tower: vec![64],
        }
    }

    /// The paper's five heads with identity calibration.
    pub fn default_heads() -> Vec<HeadSpec> {
        use CandidateKind::{Ad, Promotion};
        let head =
            |name: &str, index: usize, kinds: Vec<CandidateKind>, field: ResponseField| HeadSpec {
                name: name.into(),
                output: crate::graph::OUTPUT_NAME.into(),
                index,
                kinds,
                field,
                calibration: Calibration::identity(),
                calibration_by_kind: Default::default(),
            };
        vec![
            head("promo_stream", 0, vec![Promotion], ResponseField::Stream),
            head("ad_stream", 1, vec![Ad], ResponseField::Stream),
            head("click", 2, vec![Ad, Promotion], ResponseField::Click),
            head("like", 3, vec![Ad, Promotion], ResponseField::Like),
            head("follow", 4, vec![Ad, Promotion], ResponseField::Follow),
        ]
    }

    /// A manifest over the default feature set with the default architecture and heads,
    /// and no golden cases.
    pub fn random_manifest() -> Manifest {
        Manifest {
            name: "random".into(),
            version: 1,
            created_at: "1970-01-01T00:00:00Z".into(),
            settings: serde_json::json!({"variant": "random weights, for tests"}),
            data_summary: serde_json::json!({}),
            metrics: serde_json::json!({}),
            architecture: default_architecture(),
            features: crate::graph::lay_out(&features::default_definitions()),
            heads: default_heads(),
            golden: Vec::new(),
        }
    }

    /// The family of synthetic tokens a feature's vocabulary holds: what its source reads,
    /// so that a show id, a history entry and a follow share `show_{i}` tokens as real ids
    /// would, although each feature has a vocabulary of its own.
    fn token_family(source: Source) -> &'static str {
        match source {
            Source::ShowId | Source::UserHistory | Source::UserFollows => "show",
            Source::EpisodeId => "episode",
            Source::CampaignId => "campaign",
            Source::CreativeId => "creative",
            Source::UserSearchTopics | Source::ShowTopics | Source::EpisodeTopics => "topic",
            Source::ShowGenres | Source::ContextHostGenre => "genre",
            Source::UserCountry => "country",
            Source::UserPlatform => "platform",
            Source::UserAgeBucket => "age_bucket",
            Source::ContextSurface => "surface",
            Source::CreativeFormat => "format",
            Source::CreativeSlot => "slot",
            Source::CreativeLayout => "layout",
            Source::CandidateKind => "kind",
            Source::ContextHourOfDay => "hour",
            Source::ContextDayOfWeek => "weekday",
            Source::ContextSessionLength
            | Source::ShowEmbedding
            | Source::ShowStreams30d
            | Source::EpisodeDuration => "other",
        }
    }

    /// Vocabularies for every id feature of the manifest. Kind, hour and weekday get their
    /// real tokens so that assembly maps them; the others synthetic `{family}_{i}` tokens
    /// (see [`token_family`]).
    pub fn random_vocabularies(manifest: &Manifest, sizes: VocabularySizes) -> Vocabularies {
        manifest
            .features
            .iter()
            .filter_map(|spec| match &spec.transform {
                Transform::Id { vocab } | Transform::IdBag { vocab, .. } => {
                    Some((vocab.clone(), token_family(spec.source)))
                }
                _ => None,
            })
            .map(|(name, family)| {
                let tokens: Vec<String> = match family {
                    "kind" => vec!["ad".into(), "promotion".into()],
                    "hour" => (0..24).map(|hour| format!("h{hour:02}")).collect(),
                    "weekday" => ["thu", "fri", "sat", "sun", "mon", "tue", "wed"]
                        .map(String::from)
                        .to_vec(),
                    _ => {
                        let count = match family {
                            "show" => sizes.show,
                            "episode" => sizes.episode,
                            "campaign" => sizes.campaign,
                            "creative" => sizes.creative,
                            "topic" => sizes.topic,
                            _ => sizes.other,
                        };
                        (0..count)
                            .map(|index| format!("{family}_{index}"))
                            .collect()
                    }
                };
                (name, Vocabulary::from_tokens(tokens))
            })
            .collect()
    }

    pub fn random_bundle(sizes: VocabularySizes, seed: u64) -> RandomBundle {
        let manifest = random_manifest();
        let vocabularies = random_vocabularies(&manifest, sizes);
        let weights = super::random_weights(&manifest, &vocabularies, seed);
        RandomBundle {
            manifest,
            vocabularies,
            weights,
        }
    }

    /// Draws tokens from the vocabulary a source feeds, with a share of tokens the
    /// vocabulary does not know (the cold-start path) and of missing values.
    struct TokenSource<'a> {
        manifest: &'a Manifest,
        vocabularies: &'a Vocabularies,
        rng: ChaCha8Rng,
    }

    impl TokenSource<'_> {
        fn vocabulary(&self, source: Source) -> Option<&Vocabulary> {
            self.manifest
                .features
                .iter()
                .find(|spec| spec.source == source)
                .and_then(|spec| match &spec.transform {
                    Transform::Id { vocab } | Transform::IdBag { vocab, .. } => {
                        self.vocabularies.get(vocab)
                    }
                    _ => None,
                })
        }

        fn token(&mut self, source: Source) -> String {
            let tokens = self
                .vocabulary(source)
                .map(|vocabulary| vocabulary.tokens().to_vec())
                .unwrap_or_default();
            if tokens.is_empty() || self.rng.random_bool(0.1) {
                format!("never-seen-{}", self.rng.random_range(0..1_000_000))
            } else {
                tokens[self.rng.random_range(0..tokens.len())].clone()
            }
        }

        fn maybe_token(&mut self, source: Source) -> Option<String> {
            if self.rng.random_bool(0.1) {
                None
            } else {
                Some(self.token(source))
            }
        }

        fn tokens(&mut self, source: Source, most: usize) -> Option<Vec<String>> {
            if self.rng.random_bool(0.1) {
                return None;
            }
            let count = self.rng.random_range(0..=most);
            Some((0..count).map(|_| self.token(source)).collect())
        }

        fn number(&mut self, most: f64) -> Option<f64> {
            if self.rng.random_bool(0.1) {
                None
            } else {
                Some(self.rng.random_range(0.0..most))
            }
        }
    }

    /// Request-scope tensors (one row) and candidate-scope tensors (`candidates` rows)
    /// assembled by [`Assembler`] from random entity records, so every id is in range.
    /// Bags are drawn longer than their `max_len` at times, to exercise truncation.
    pub fn random_inputs(
        manifest: &Manifest,
        vocabularies: &Vocabularies,
        candidates: usize,
        seed: u64,
    ) -> (ScopeTensors, ScopeTensors) {
        let mut source = TokenSource {
            manifest,
            vocabularies,
            rng: ChaCha8Rng::seed_from_u64(seed),
        };
        let user = UserRecord {
            id: Some("user".into()),
            country: source.maybe_token(Source::UserCountry),
            platform: source.maybe_token(Source::UserPlatform),
            age_bucket: source.maybe_token(Source::UserAgeBucket),
            history: source.tokens(Source::UserHistory, 25),
            follows: source.tokens(Source::UserFollows, 12),
            search_topics: source.tokens(Source::UserSearchTopics, 10),
        };
        let context = ContextRecord {
            timestamp: Some(source.rng.random_range(0..2_000_000_000)),
            surface: source.maybe_token(Source::ContextSurface),
            session_length_s: source.number(7_200.0),
            host_genre: source.maybe_token(Source::ContextHostGenre),
        };
        let embedding_dim = manifest
            .features
            .iter()
            .find_map(|spec| match (spec.source, &spec.transform) {
                (Source::ShowEmbedding, Transform::Dense { dim }) => Some(*dim),
                _ => None,
            })
            .unwrap_or(0);
        let mut records = Vec::with_capacity(candidates);
        for _ in 0..candidates {
            let kind = if source.rng.random_bool(0.5) {
                CandidateKind::Ad
            } else {
                CandidateKind::Promotion
            };
            let show = ShowRecord {
                id: Some(source.token(Source::ShowId)),
                genres: source.tokens(Source::ShowGenres, 4),
                topics: source.tokens(Source::ShowTopics, 7),
                embedding: Some(
                    (0..embedding_dim)
                        .map(|_| source.rng.random_range(-1.0..1.0))
                        .collect(),
                ),
                streams_30d: source.number(1e7),
                tier: None,
            };
            let episode = EpisodeRecord {
                id: Some(source.token(Source::EpisodeId)),
                show_id: show.id.clone(),
                topics: source.tokens(Source::EpisodeTopics, 7),
                duration_s: source.number(7_200.0),
            };
            let creative = CreativeRecord {
                creative_id: source.maybe_token(Source::CreativeId),
                campaign_id: source.maybe_token(Source::CampaignId),
                format: source.maybe_token(Source::CreativeFormat),
                slot: source.maybe_token(Source::CreativeSlot),
                layout: source.maybe_token(Source::CreativeLayout),
            };
            // Some candidates come without store records: the cold-start path.
            let known = source.rng.random_bool(0.8);
            records.push((
                kind,
                known.then_some(show),
                known.then_some(episode),
                creative,
            ));
        }
        let assembler = Assembler::new(&manifest.features, vocabularies)
            .expect("random manifests are consistent");
        let request = assembler
            .request(&[RequestView {
                user: Some(&user),
                context: &context,
            }])
            .expect("random values are finite");
        let views: Vec<CandidateView<'_>> = records
            .iter()
            .map(|(kind, show, episode, creative)| CandidateView {
                kind: *kind,
                show_id: show.as_ref().and_then(|show| show.id.as_deref()),
                show: show.as_ref(),
                episode_id: episode.as_ref().and_then(|episode| episode.id.as_deref()),
                episode: episode.as_ref(),
                creative,
            })
            .collect();
        let candidate_tensors = assembler
            .candidates(&views)
            .expect("random values are finite");
        (request, candidate_tensors)
    }
}
