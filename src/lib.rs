//! podscore: multi-task scoring of podcast ads and promotions (TODO: architecture overview)

pub mod entities;
pub mod features;
pub mod logs;
pub mod world;
pub mod bundle;
pub mod onnx;
pub mod model;
pub mod runtime;
pub mod store;
pub mod scoring;
pub mod metrics;
pub mod api;
pub mod serve;
#[cfg(feature = "train")]
pub mod train;
#[cfg(feature = "train")]
pub mod eval;
