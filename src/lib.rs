//! podscore: multi-task scoring of podcast ads and promotions (TODO: architecture overview)

pub mod api;
pub mod bundle;
pub mod entities;
#[cfg(feature = "train")]
pub mod eval;
pub mod features;
pub mod logs;
pub mod metrics;
pub mod onnx;
pub mod runtime;
pub mod scoring;
pub mod serve;
pub mod store;
#[cfg(feature = "train")]
pub mod train;
pub mod world;
