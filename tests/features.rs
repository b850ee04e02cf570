//! Feature assembly against arbitrary input: declared shapes, ids always inside their
//! vocabulary, unknown ids at 0, non-finite numerics rejected by name.

use std::collections::BTreeMap;

use podscore::entities::{
    CandidateKind, CandidateView, ContextRecord, CreativeRecord, EpisodeRecord, RequestView,
    ShowRecord, UserRecord,
};
use podscore::features::{
    self, Assembler, AssemblyError, Kind, NumericStats, RawValue, Scope, ScopeTensors, Source,
    Transform, Vocabularies, Vocabulary, VocabularyBuilder,
};
use proptest::prelude::*;

/// A vocabulary per name over tokens `t0`..`t9`, so that generated tokens `t10`.. and any
/// other string are unknown.
fn vocabularies() -> Vocabularies {
    let specs = podscore::graph::lay_out(&features::default_definitions());
    let mut vocabularies = BTreeMap::new();
    for spec in &specs {
        if let Transform::Id { vocab } | Transform::IdBag { vocab, .. } = &spec.transform {
            vocabularies.insert(
                vocab.clone(),
                Vocabulary::from_tokens((0..10).map(|i| format!("t{i}")).collect()),
            );
        }
    }
    vocabularies
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![(0..20u32).prop_map(|i| format!("t{i}")), ".{0,12}",]
}

fn tokens() -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(proptest::collection::vec(token(), 0..30))
}

fn number() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(prop_oneof![
        -1e12..1e12f64,
        Just(0.0),
        Just(-1.0),
        Just(1e300)
    ])
}

prop_compose! {
    fn user()(id in token(), country in proptest::option::of(token()), platform in proptest::option::of(token()),
              age_bucket in proptest::option::of(token()), history in tokens(), follows in tokens(),
              search_topics in tokens()) -> UserRecord {
        UserRecord { id: Some(id), country, platform, age_bucket, history, follows, search_topics }
    }
}

prop_compose! {
    fn context()(timestamp in proptest::option::of(any::<i64>()), surface in proptest::option::of(token()),
                 session_length_s in number(), host_genre in proptest::option::of(token())) -> ContextRecord {
        ContextRecord { timestamp, surface, session_length_s, host_genre }
    }
}

prop_compose! {
    fn show()(id in token(), genres in tokens(), topics in tokens(),
              embedding in proptest::option::of(proptest::collection::vec(-10.0..10.0f32, 16)),
              streams_30d in number(), tier in proptest::option::of(0..8u8)) -> ShowRecord {
        ShowRecord { id: Some(id), genres, topics, embedding, streams_30d, tier }
    }
}

prop_compose! {
    fn episode()(id in token(), topics in tokens(), duration_s in number()) -> EpisodeRecord {
        EpisodeRecord { id: Some(id), show_id: None, topics, duration_s }
    }
}

prop_compose! {
    fn creative()(creative_id in proptest::option::of(token()), campaign_id in proptest::option::of(token()),
                  format in proptest::option::of(token()), slot in proptest::option::of(token()),
                  layout in proptest::option::of(token())) -> CreativeRecord {
        CreativeRecord { creative_id, campaign_id, format, slot, layout }
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    kind: CandidateKind,
    show_id: Option<String>,
    show: Option<ShowRecord>,
    episode: Option<EpisodeRecord>,
    creative: CreativeRecord,
}

prop_compose! {
    fn candidate()(ad in any::<bool>(), show_id in proptest::option::of(token()), show in proptest::option::of(show()),
                   episode in proptest::option::of(episode()), creative in creative()) -> Candidate {
        Candidate { kind: if ad { CandidateKind::Ad } else { CandidateKind::Promotion }, show_id, show, episode, creative }
    }
}

fn views(candidates: &[Candidate]) -> Vec<CandidateView<'_>> {
    candidates
        .iter()
        .map(|c| CandidateView {
            kind: c.kind,
            show_id: c.show_id.as_deref(),
            show: c.show.as_ref(),
            episode_id: c.episode.as_ref().and_then(|e| e.id.as_deref()),
            episode: c.episode.as_ref(),
            creative: &c.creative,
        })
        .collect()
}

/// Every id of every feature lies inside its vocabulary and every mask is 0 or 1.
fn check_tensors(
    assembler: &Assembler,
    vocabularies: &Vocabularies,
    scope: Scope,
    tensors: &ScopeTensors,
    rows: usize,
) {
    let widths = assembler.widths(scope);
    assert_eq!(tensors.rows, rows);
    assert_eq!(tensors.ids.len(), rows * widths.ids);
    assert_eq!(tensors.bag_ids.len(), rows * widths.bag);
    assert_eq!(tensors.bag_mask.len(), rows * widths.bag);
    assert_eq!(tensors.dense.len(), rows * widths.dense);
    assert_eq!(tensors.cold_start.len(), rows);
    assert!(tensors.dense.iter().all(|v| v.is_finite()));
    assert!(tensors.bag_mask.iter().all(|m| *m == 0.0 || *m == 1.0));
    for spec in assembler.specs().iter().filter(|s| s.scope == scope) {
        let vocab = match &spec.transform {
            Transform::Id { vocab } | Transform::IdBag { vocab, .. } => &vocabularies[vocab],
            _ => continue,
        };
        let (values, width) = if spec.kind == Kind::Id {
            (&tensors.ids, widths.ids)
        } else {
            (&tensors.bag_ids, widths.bag)
        };
        for row in 0..rows {
            for column in spec.slot..spec.slot + spec.width {
                let id = values[row * width + column];
                assert!(
                    id >= 0 && (id as usize) < vocab.len(),
                    "{}: id {id} outside 0..{}",
                    spec.name,
                    vocab.len()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary users, contexts and candidates assemble into the declared shapes with
    /// in-range ids, or fail with a typed error naming a feature; never a panic.
    #[test]
    fn assembly_has_declared_shapes_and_in_range_ids(
        user in proptest::option::of(user()),
        context in context(),
        candidates in proptest::collection::vec(candidate(), 0..12),
    ) {
        let specs = podscore::graph::lay_out(&features::default_definitions());
        let vocabularies = vocabularies();
        let assembler = Assembler::new(&specs, &vocabularies).unwrap();
        let request_view = RequestView { user: user.as_ref(), context: &context };
        match assembler.request(&[request_view]) {
            Ok(tensors) => check_tensors(&assembler, &vocabularies, Scope::Request, &tensors, 1),
            Err(error) => prop_assert!(matches!(error, AssemblyError::NotFinite { .. }), "{error}"),
        }
        let candidate_views = views(&candidates);
        match assembler.candidates(&candidate_views) {
            Ok(tensors) => {
                check_tensors(&assembler, &vocabularies, Scope::Candidate, &tensors, candidates.len());
                for (row, candidate) in candidates.iter().enumerate() {
                    let known = candidate.show_id.as_deref().or(candidate.show.as_ref().and_then(|s| s.id.as_deref()))
                        .is_some_and(|id| vocabularies["show_id"].lookup(id) != 0);
                    prop_assert_eq!(tensors.cold_start[row], !known);
                }
            }
            Err(error) => prop_assert!(matches!(error, AssemblyError::NotFinite { .. }), "{error}"),
        }
    }
}

/// Unknown and missing ids map to 0; known ones to their 1-based position; bags keep
/// unknown tokens as 0 with mask 1, and are truncated at `max_len`.
#[test]
fn unknown_ids_map_to_zero() {
    let specs = podscore::graph::lay_out(&features::default_definitions());
    let vocabularies = vocabularies();
    let assembler = Assembler::new(&specs, &vocabularies).unwrap();
    let user = UserRecord {
        id: Some("u".into()),
        country: Some("t3".into()),
        platform: Some("never-seen".into()),
        history: Some(
            (0..25)
                .map(|i| {
                    if i % 2 == 0 {
                        "t1".to_string()
                    } else {
                        "zzz".to_string()
                    }
                })
                .collect(),
        ),
        ..UserRecord::default()
    };
    let context = ContextRecord::default();
    let tensors = assembler
        .request(&[RequestView {
            user: Some(&user),
            context: &context,
        }])
        .unwrap();
    let spec = |name: &str| specs.iter().find(|s| s.name == name).unwrap();
    assert_eq!(tensors.ids[spec("user_country").slot], 4);
    assert_eq!(tensors.ids[spec("user_platform").slot], 0);
    assert_eq!(tensors.ids[spec("user_age_bucket").slot], 0);
    let history = spec("user_history");
    let bag = &tensors.bag_ids[history.slot..history.slot + history.width];
    assert_eq!(&bag[..4], &[2, 0, 2, 0]);
    assert_eq!(
        tensors.bag_mask[history.slot..history.slot + history.width],
        [1.0; 20]
    );
    let follows = spec("user_follows");
    assert_eq!(
        tensors.bag_mask[follows.slot..follows.slot + follows.width],
        [0.0; 10]
    );
}

/// A NaN or infinite numeric is rejected with the feature's name, and so is a show
/// embedding of the wrong width.
#[test]
fn non_finite_numerics_are_rejected_by_name() {
    let specs = podscore::graph::lay_out(&features::default_definitions());
    let vocabularies = vocabularies();
    let assembler = Assembler::new(&specs, &vocabularies).unwrap();
    let context = ContextRecord {
        session_length_s: Some(f64::NAN),
        ..ContextRecord::default()
    };
    let error = assembler
        .request(&[RequestView {
            user: None,
            context: &context,
        }])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "feature `context_session_length`: value is not finite (row 0)"
    );
    let creative = CreativeRecord::default();
    let show = ShowRecord {
        id: Some("s".into()),
        embedding: Some(vec![0.0; 3]),
        ..ShowRecord::default()
    };
    let view = CandidateView {
        kind: CandidateKind::Ad,
        show_id: None,
        show: Some(&show),
        episode_id: None,
        episode: None,
        creative: &creative,
    };
    let error = assembler.candidates(&[view]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "feature `show_embedding`: expected 16 values, got 3 (row 0)"
    );
    let show = ShowRecord {
        id: Some("s".into()),
        streams_30d: Some(f64::INFINITY),
        ..ShowRecord::default()
    };
    let view = CandidateView {
        show: Some(&show),
        ..view
    };
    let error = assembler.candidates(&[view]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "feature `show_streams_30d`: value is not finite (row 0)"
    );
}

/// Vocabularies keep tokens seen at least `min_count` times, most frequent first, ties by
/// token, with index 0 reserved; a spec naming a missing vocabulary is refused.
#[test]
fn vocabularies_are_built_by_count_with_index_zero_reserved() {
    let specs = podscore::graph::lay_out(&features::default_definitions());
    let mut builder = VocabularyBuilder::default();
    let context = ContextRecord {
        surface: Some("home".into()),
        ..ContextRecord::default()
    };
    for (country, times) in [("se", 3), ("de", 5), ("fr", 1), ("at", 3)] {
        let user = UserRecord {
            id: Some("u".into()),
            country: Some(country.into()),
            ..UserRecord::default()
        };
        for _ in 0..times {
            builder.observe_request(
                &specs,
                &RequestView {
                    user: Some(&user),
                    context: &context,
                },
            );
        }
    }
    let vocabularies = builder.build(2);
    let country = &vocabularies["user_country"];
    assert_eq!(country.tokens(), ["de", "at", "se"]);
    assert_eq!(country.len(), 4);
    assert_eq!(country.lookup("de"), 1);
    assert_eq!(country.lookup("fr"), 0);
    let error = Assembler::new(&specs, &vocabularies).unwrap_err();
    assert!(
        matches!(error, AssemblyError::MissingVocabulary { .. }),
        "{error}"
    );
}

/// The statistics the trainer fits and the standardization assembly applies share one
/// shaping rule: raw values (negatives included, which `log1p` clamps) fitted with
/// `NumericStats` assemble to mean 0 and standard deviation 1, and a missing value to 0.
#[test]
fn fitted_numeric_statistics_standardize_what_assembly_shapes() {
    let raw: Vec<f64> = (0..1000)
        .map(|i| (f64::from(i) * 73.1) % 5000.0 - 10.0)
        .collect();
    let mut stats = NumericStats::new(true);
    for value in &raw {
        stats.observe(RawValue::Number(*value));
    }
    stats.observe(RawValue::Missing);
    stats.observe(RawValue::Number(f64::NAN));
    let mut definitions = features::default_definitions();
    definitions
        .iter_mut()
        .find(|definition| definition.source == Source::ContextSessionLength)
        .unwrap()
        .transform = stats.transform();
    let specs = podscore::graph::lay_out(&definitions);
    let assembler = Assembler::new(&specs, &vocabularies()).unwrap();
    let spec = specs
        .iter()
        .find(|spec| spec.source == Source::ContextSessionLength)
        .unwrap();
    let contexts: Vec<ContextRecord> = raw
        .iter()
        .map(|value| Some(*value))
        .chain([None])
        .map(|session_length_s| ContextRecord {
            session_length_s,
            ..ContextRecord::default()
        })
        .collect();
    let views: Vec<RequestView<'_>> = contexts
        .iter()
        .map(|context| RequestView {
            user: None,
            context,
        })
        .collect();
    let tensors = assembler.request(&views).unwrap();
    let value = |row: usize| f64::from(tensors.dense[row * tensors.widths.dense + spec.slot]);
    let standardized: Vec<f64> = (0..raw.len()).map(value).collect();
    let count = standardized.len() as f64;
    let mean = standardized.iter().sum::<f64>() / count;
    let variance = standardized.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1.0);
    assert!(mean.abs() < 1e-5, "mean {mean}");
    assert!(
        (variance.sqrt() - 1.0).abs() < 1e-4,
        "std {}",
        variance.sqrt()
    );
    assert!(
        value(raw.len()).abs() < 1e-5,
        "missing: {}",
        value(raw.len())
    );
}
