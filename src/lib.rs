//! # podscore
//!
//! Scores podcast ads and promotions for ad servers with one multi-task model, after
//! "Cold-Starting Podcast Ads and Promotions with Multi-Task Learning on Spotify"
//! (WSDM '26): a shared encoder over user, content, context and creative features, one
//! tower per task (promotion stream, ad stream, click, like, follow), source-balanced
//! batches and a directional loss mask.
//!
//! ## Data flow
//!
//! ```text
//! simulate ──► impression logs (Parquet) ─┐
//!          └─► feature snapshot (Parquet) ├─► train ──► model bundle (ONNX + manifest) ─┐
//!                                         └─► eval  ◄───────────────────────────────────┤
//! ad server ── POST /score ──► serve: validate ► look up features ► assemble ► tract ► respond
//!                                          ▲ snapshot (default) or Redis          └► /metrics
//! ```
//!
//! ## Code map
//!
//! Domain (no HTTP, no async runtime):
//!
//! - [`entities`]: raw records (user, show, episode, context, creative), defined once each
//!   with their overlay (inline fields win over stored ones, field by field), and the
//!   per-request and per-candidate views of them.
//! - [`features`]: the one feature-assembly module: feature specs, vocabularies, which
//!   entity field each feature reads ([`features::raw_value`]), numeric shaping and its
//!   statistics ([`features::shape`], [`features::NumericStats`]), and the
//!   [`features::Assembler`] that turns views into model tensors.
//! - [`graph`]: the graph contract: input names, scopes, parts, element types and shapes,
//!   the output, the candidate dimension, the embedding-rows metadata, and the layout of
//!   features onto inputs ([`graph::lay_out`]).
//! - [`bundle`]: model bundles on disk: manifest, vocabularies, ONNX bytes, the training
//!   weights' file name, discovery, and [`bundle::Heads`], the one rule of head selection
//!   by kind and calibration, over the four fixed response fields and those a manifest
//!   names.
//! - [`onnx`]: writes the network as a standard ONNX graph.
//! - [`model`]: the network's forward pass in plain Rust, the reference for parity tests.
//! - [`runtime`]: runs a bundle's graph in tract with plans optimized per size bucket.
//! - [`logs`]: the Parquet formats of impression logs, the feature snapshot and the
//!   labels of new objectives.
//! - [`dataset`]: the logs as learning data: the day split and the entity views of an
//!   impression, shared by the trainer and the evaluator.
//! - [`quality`]: average precision, ROC AUC, calibration error and Platt scaling.
//! - [`proto`]: the protobuf messages and gRPC services generated from `proto/` (the
//!   `/score` API and the Open Inference Protocol).
//!
//! Commands and serving:
//!
//! - [`world`]: `podscore simulate`, the synthetic world, and new ad objectives labelled on
//!   the days after its window.
//! - [`store`]: feature stores behind one trait, and the timeout that turns a slow or
//!   failing store into the cold-start path: the in-memory snapshot, and Redis or Redis
//!   Cluster in Feast's online-store layout behind a circuit breaker; `podscore features
//!   load` fills Redis in that layout.
//! - [`service`]: the service layer between the front ends and the domain: the pipeline
//!   [`service::Service::score`] (`validate`, `lookup`, `infer`, `respond`, one file
//!   each), the served `models` and their `reload` and `golden` checks, `admission` (a
//!   bounded line entered before decoding, in front of the inference slots), `tensors`
//!   (the Open Inference Protocol's raw-tensor path, behind the same admission), the
//!   `request` and response types, and the `metrics`. It knows nothing of HTTP.
//! - [`api`]: the HTTP front end (axum): the router, `error` (the one table of statuses
//!   and wire codes), `extract` (JSON and protobuf bodies, `Accept`, deadline header),
//!   `protobuf` (the `/score` codec, shared with gRPC), one file per route family.
//!   It knows nothing of tract or the store's internals.
//! - [`grpc`]: the gRPC front end (tonic): `podscore.v1.Scorer` and the Open Inference
//!   Protocol's `GRPCInferenceService`, calling the same service entry points as `api`
//!   (`admit` takes a call's place in line before its message is read), and `status`,
//!   the table from wire codes to gRPC status codes.
//! - [`serve`]: `podscore serve` and `podscore score`: flags, building the service, the
//!   server's lifecycle.
//! - [`reexport`]: `podscore reexport`, a bundle written again in the current graph from
//!   the weights inside its `model.onnx`, its golden cases checked and rescored.
//! - [`healthcheck`]: `podscore healthcheck`, the container image's readiness probe.
//! - `train` (feature `train`): the candle trainer in four phases (`scan`, `fit`,
//!   `calibrate`, `package`), its sampler, network and optimizer, and `podscore finetune`
//!   (a new objective on a trained bundle, through the same phases).
//! - `eval` (feature `train`): offline evaluation, `podscore reproduce`, and the learning
//!   curves of new objectives (`podscore curves`).
//!
//! Each module imports only modules listed above it (the domain list comes first), so no
//! two modules import each other; a test in `tests/layout.rs` holds the code to this.
//!
//! ## Invariants
//!
//! - The server reads feature and head names, and the response fields beyond the fixed
//!   four, only from the manifest.
//! - The trainer, the evaluator and the server use the same assembly code
//!   ([`features::Assembler`]) and the same head selection ([`bundle::Heads`]);
//!   training-serving skew is designed out.
//! - A model that fails to load, or whose golden outputs do not match, never replaces the
//!   one being served.
//! - tract runs off the async runtime, behind a bound; a request is admitted (or answered
//!   503 at once) before its body is read, and waits only while its deadline allows.
//! - Only [`api`] knows HTTP and JSON error formats; domain modules and the service
//!   return typed errors.
//! - Assembly never emits an id outside its vocabulary, so tract's Gather cannot panic.

pub mod api;
pub mod bundle;
pub mod dataset;
pub mod entities;
#[cfg(feature = "train")]
pub mod eval;
pub mod features;
pub mod graph;
pub mod grpc;
pub mod healthcheck;
pub mod logs;
pub mod model;
pub mod onnx;
pub mod proto;
pub mod quality;
pub mod reexport;
pub mod runtime;
pub mod serve;
pub mod service;
pub mod store;
#[cfg(feature = "train")]
pub mod train;
pub mod world;
