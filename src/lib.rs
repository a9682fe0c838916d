//! xca: locate the start, apex and end keyframes of contrast-agent flow in X-ray
//! coronary angiograms with STA-IPCon (long short-term spatiotemporal attention with
//! image-to-patch contrastive learning), reimplemented on burn.
//!
//! Data flows one way: `config` → `dataset` → `model` → (`train`) / (`infer` → `metrics`).
//! The network returns tensors; everything after it is plain Rust on the host.

// Tests read tensors directly; the library reads through `host` (see clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod bench;
pub mod config;
pub mod dataset;
pub mod device;
pub mod evaluate;
pub mod fsio;
pub mod geometry;
pub mod host;
pub mod infer;
pub mod kernels;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod phase;
pub mod report;
pub mod select;
pub mod synth;
pub mod text;
pub mod train;
