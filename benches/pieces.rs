//! Criterion benchmarks of the pieces `xca bench` times: a training iteration, inference of
//! one video (T = 128 and 512, post-processing included) and the ConvLSTM forward+backward.
//!
//! `cargo bench --bench pieces` runs them for the paper's configs/vessel.yaml (seconds per
//! iteration on a CPU, so few samples); `XCA_BENCH_CONFIG=configs/vessel_demo.yaml` picks
//! another config.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use xca::bench::{ConvLstmBench, InferBench, TrainStepBench};
use xca::config::Config;

fn config() -> Config {
    let path = std::env::var_os("XCA_BENCH_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/vessel.yaml")));
    match Config::load(&path) {
        Ok(c) => c.config,
        Err(e) => panic!("benchmark config {}: {e}", path.display()),
    }
}

fn pieces(c: &mut Criterion) {
    // The same allocator policy as the `xca` binary (see xca::memory).
    xca::memory::keep_freed_memory();
    let cfg = config();
    let device = Device::flex();
    let mut group = c.benchmark_group("xca");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));

    let mut train = TrainStepBench::new(&cfg, &device, 2023).expect("training step");
    group.measurement_time(Duration::from_secs(60));
    group.bench_function("train_step", |b| b.iter(|| black_box(train.run().expect("step"))));
    drop(train);

    group.measurement_time(Duration::from_secs(15));
    for t in [128usize, 512] {
        let infer = InferBench::new(&cfg, &device, t, 2023).expect("inference model");
        group.bench_function(format!("infer_t{t}"), |b| {
            b.iter(|| black_box(infer.run().expect("inference")))
        });
    }

    if let Ok(lstm) = ConvLstmBench::new(&cfg, &device, 2023) {
        group.measurement_time(Duration::from_secs(30));
        group.bench_function("convlstm_fwd_bwd", |b| {
            b.iter(|| black_box(lstm.run().expect("ConvLSTM")))
        });
    }
    group.finish();
}

criterion_group!(benches, pieces);
criterion_main!(benches);
