//! Fuzzing the request path (decode, validate, look up, assemble, infer, respond) from a
//! committed corpus of `/score` bodies (`tests/corpus/score/`), each mutated by proptest:
//! structure-aware (a value anywhere replaced by a hostile one: extreme numbers, long
//! strings, huge lists, deep nesting, long keys; a value removed; a list grown) and then
//! byte-wise. Coverage-guided fuzzing (`cargo fuzz`, libFuzzer) needs a nightly toolchain,
//! which this machine cannot fetch; the corpus, the structure-aware mutations and
//! proptest's shrinking stand in for it, bounded in cases. Failures proptest finds are
//! kept in `fuzz.proptest-regressions` beside this file and replayed first.
//!
//! What must hold for every input: no 500 and no panic; a 200 carries only finite
//! probabilities in [0, 1]; every refusal is the JSON error format with a code.

mod common;

use std::path::Path;
use std::sync::LazyLock;

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use common::hostile::{self, hostile_value};
use common::{Setup, TestServer, post_json, send};

/// The corpus: every `*.json` under `tests/corpus/score/`, in name order.
static CORPUS: LazyLock<Vec<(String, Value)>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/score");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read(&path).expect("corpus files read");
            let value = serde_json::from_slice(&text)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                value,
            )
        })
        .collect()
});

/// One server (the default 2 MiB body limit, so that huge values are decoded, not cut at
/// the door) and one runtime for every case.
static SERVER: LazyLock<(TestServer, tokio::runtime::Runtime)> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    (TestServer::start(Setup::default()), runtime)
});

/// A change to a request's tree.
#[derive(Debug, Clone)]
enum Edit {
    /// The value at a path removed from its object or list.
    Remove(Vec<Index>),
    /// The list at a path grown by copies of its first element.
    Grow(Vec<Index>, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        hostile::path().prop_map(Edit::Remove),
        (hostile::path(), 1_usize..1_500).prop_map(|(path, count)| Edit::Grow(path, count)),
    ]
}

fn apply(tree: &mut Value, edit: &Edit) {
    match edit {
        Edit::Remove(path) => {
            let Some((last, parent)) = path.split_last() else {
                return;
            };
            match hostile::walk(tree, parent) {
                Value::Object(map) if !map.is_empty() => {
                    let key = map.keys().nth(last.index(map.len())).cloned();
                    key.map(|key| map.remove(&key));
                }
                Value::Array(items) if !items.is_empty() => {
                    items.remove(last.index(items.len()));
                }
                _ => {}
            }
        }
        Edit::Grow(path, count) => {
            if let Value::Array(items) = hostile::walk(tree, path)
                && let Some(first) = items.first().cloned()
            {
                items.extend(std::iter::repeat_n(first, *count));
            }
        }
    }
}

/// A corpus body after tree edits, a hostile value spliced in, and a byte changed.
#[derive(Debug, Clone)]
struct Mutant {
    seed: Index,
    edits: Vec<Edit>,
    hostile: Option<(Vec<Index>, String)>,
    byte: Option<(Index, u8)>,
}

impl Mutant {
    fn body(&self) -> (String, Vec<u8>) {
        let (name, seed) = &CORPUS[self.seed.index(CORPUS.len())];
        let mut tree = seed.clone();
        for edit in &self.edits {
            apply(&mut tree, edit);
        }
        let mut body = match &self.hostile {
            Some((path, raw)) => hostile::splice(&tree, path, raw),
            None => tree.to_string().into_bytes(),
        };
        if let Some((at, byte)) = self.byte
            && !body.is_empty()
        {
            let at = at.index(body.len());
            body[at] = byte;
        }
        (name.clone(), body)
    }
}

fn mutant() -> impl Strategy<Value = Mutant> {
    (
        any::<Index>(),
        prop::collection::vec(edit(), 0..3),
        prop::option::weighted(0.8, (hostile::path(), hostile_value())),
        prop::option::weighted(0.2, (any::<Index>(), any::<u8>())),
    )
        .prop_map(|(seed, edits, hostile, byte)| Mutant {
            seed,
            edits,
            hostile,
            byte,
        })
}

/// The corpus itself: every seed scores 200 on the test model, so mutations start from
/// requests that reach assembly and inference.
#[test]
fn every_corpus_request_scores() {
    assert!(CORPUS.len() >= 8, "the corpus has {} files", CORPUS.len());
    let (server, runtime) = &*SERVER;
    for (name, body) in CORPUS.iter() {
        let reply = runtime.block_on(send(&server.app(), post_json("/score", body.to_string())));
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// No mutant of the corpus gets a 500 or a non-finite score, and every refusal is the
    /// JSON error format.
    #[test]
    fn corpus_mutants_never_yield_500_or_non_finite_scores(mutant in mutant()) {
        let (name, body) = mutant.body();
        let (server, runtime) = &*SERVER;
        let reply = runtime.block_on(send(&server.app(), post_json("/score", body)));
        prop_assert_ne!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}: {}", name, reply.text());
        let answer = reply.json();
        if reply.status == StatusCode::OK {
            for candidate in answer["candidates"].as_array().expect("candidates") {
                for field in ["stream", "click", "like", "follow"] {
                    let value = &candidate[field];
                    prop_assert!(
                        value.is_null() || value.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)),
                        "{}: {} = {}", name, field, value
                    );
                }
            }
        } else {
            prop_assert!(answer["error"]["code"].is_string(), "{}: {}", name, answer);
        }
    }
}
