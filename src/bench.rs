//! The pieces `xca bench` and the criterion benchmarks time: one full training iteration,
//! inference of one video including post-processing, and the ConvLSTM alone.
//!
//! Inputs are synthetic but shaped as the config says (batch size, `max_seq_len`, image
//! side), and seeded, so two runs time the same work. Each piece's `run` ends with one read
//! back to the host, so asynchronous devices (wgpu) are timed to completion.

use std::time::{Duration, Instant};

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::SeedableRng;
use rand::distr::{Distribution as _, Uniform};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::Config;
use crate::config::adapt;
use crate::dataset::Features;
use crate::dataset::batch::{Window, collate};
use crate::dataset::crop::Crop;
use crate::evaluate::{EvalError, detect, run_video};
use crate::model::convlstm::{ConvLstm, ConvLstmConfig};
use crate::model::{ModelError, Network};
use crate::train::ema::ema_init;
use crate::train::loss::{LossNormalizer, contrastive_active};
use crate::train::optim::{adamw_with_decay_group, param_ids_where};
use crate::train::step::{Learner, StepSetup};
use crate::train::trainer::{TrainError, decays};

/// Anything that stops a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("{0}")]
    Batch(#[from] crate::dataset::batch::BatchError),
    #[error("this config has no ConvLSTM (model.TeAtten is off)")]
    NoConvLstm,
    #[error("reading a result back from the device: {0}")]
    Readback(String),
}

/// Seeded synthetic features: `rows` images of `dim` pixels in [0, 1), like vessel maps.
pub fn synthetic_features(rows: usize, dim: usize, seed: u64) -> Features {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dist = Uniform::new(0.0f32, 1.0).unwrap_or_else(|_| unreachable!("0 < 1"));
    Features {
        rows,
        dim,
        data: (0..rows * dim).map(|_| dist.sample(&mut rng)).collect(),
    }
}

fn read_scalar(t: Tensor<1>) -> Result<f64, BenchError> {
    crate::host::read_scalar(t).map_err(BenchError::Readback)
}

/// One full training iteration of the config (forward, losses, backward, clip, AdamW,
/// EMA) on a fixed synthetic batch of `batch_size` videos of `max_seq_len` steps, each with
/// one foreground segment per class, with the contrastive term on when the config uses it.
pub struct TrainStepBench {
    setup: StepSetup,
    learner: Option<Learner>,
    feats: Vec<Features>,
    crops: Vec<Crop>,
    use_con: bool,
    device: Device,
    rng: ChaCha8Rng,
}

impl TrainStepBench {
    /// Build the model and the batch on `device` (autodiff is added here).
    pub fn new(cfg: &Config, device: &Device, seed: u64) -> Result<Self, BenchError> {
        let device = device.clone().autodiff();
        device.seed(seed);
        let model: Network = adapt::network_config(cfg).init(&device)?;
        let ema = ema_init(&model);
        let optim = adamw_with_decay_group(
            param_ids_where(&model, decays),
            &crate::train::adapt::adamw_settings(cfg),
        );
        let setup = StepSetup::new(cfg, &model);
        let t = cfg.dataset.max_seq_len;
        let b = cfg.loader.batch_size;
        let classes = cfg.dataset.num_classes;
        let feats = (0..b)
            .map(|i| synthetic_features(t, cfg.dataset.input_dim, seed + 1 + i as u64))
            .collect();
        // One segment per class over the middle of the window, as in an angiogram.
        let crops = (0..b)
            .map(|i| Crop {
                start: 0,
                len: t,
                segments: (0..classes)
                    .map(|c| {
                        let lo = (0.15 + 0.1 * (c + i) as f64) * t as f64;
                        [lo, lo + 0.35 * t as f64]
                    })
                    .collect(),
                labels: (0..classes).collect(),
            })
            .collect();
        // The heaviest epochs: the contrastive term is on from its first active epoch.
        let use_con =
            (0..cfg.total_epochs().max(1)).any(|e| contrastive_active(e, cfg.model.pretrain, cfg.model.random_patch));
        Ok(Self {
            setup,
            learner: Some(Learner {
                model,
                ema,
                optim,
                normalizer: LossNormalizer::new(cfg.train_cfg.init_loss_norm),
            }),
            feats,
            crops,
            use_con,
            device,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// Run the ConvLSTM as burn tensor ops (`false`) or fused where the back-end has them
    /// (`true`, the default); see [`ConvLstmBench::fused`].
    pub fn fused_convlstm(mut self, on: bool) -> Self {
        if let Some(l) = self.learner.as_mut() {
            for net in [&mut l.model, &mut l.ema] {
                if let Some(lstm) = net.backbone.long_term.convlstm.as_mut() {
                    lstm.fused = on;
                }
            }
        }
        self
    }

    /// One iteration; returns the classification loss (the one host read).
    pub fn run(&mut self) -> Result<f64, BenchError> {
        let cls = self.step()?;
        read_scalar(cls)
    }

    /// One iteration without reading anything back: what [`count`] measures. Returns the
    /// classification loss, still on the device.
    pub fn step(&mut self) -> Result<Tensor<1>, BenchError> {
        let windows: Vec<Window<'_>> = self.feats.iter().map(Window::whole).collect();
        let batch = collate(&windows, self.setup.t_len, &self.device)?;
        let learner = self
            .learner
            .take()
            .ok_or_else(|| BenchError::Readback("a previous step failed".into()))?;
        // A small fixed rate: the numbers must stay finite over many timed steps.
        let (learner, losses) = learner.step(&self.setup, batch, &self.crops, self.use_con, 1e-5, &mut self.rng)?;
        self.learner = Some(learner);
        Ok(losses.cls)
    }
}

/// Inference of one synthetic video of `t` steps: the network on the plain device, then
/// decoding, NMS and grid → seconds, as `xca eval` runs it.
pub struct InferBench {
    cfg: Config,
    model: Network,
    feats: Features,
    device: Device,
}

impl InferBench {
    /// Build an untrained model in eval mode and a video of `t` steps.
    pub fn new(cfg: &Config, device: &Device, t: usize, seed: u64) -> Result<Self, BenchError> {
        device.seed(seed);
        let model = adapt::network_config(cfg).init(device)?;
        Ok(Self {
            cfg: cfg.clone(),
            model,
            feats: synthetic_features(t, cfg.dataset.input_dim, seed + 100),
            device: device.clone(),
        })
    }

    /// Run the ConvLSTM as burn tensor ops (`false`) or fused where the back-end has them
    /// (`true`, the default); see [`ConvLstmBench::fused`].
    pub fn fused_convlstm(mut self, on: bool) -> Self {
        if let Some(l) = self.model.backbone.long_term.convlstm.as_mut() {
            l.fused = on;
        }
        self
    }

    /// One video; returns the number of detections.
    pub fn run(&self) -> Result<usize, BenchError> {
        let mid = self.cfg.image_side() / 2;
        let centre = self.cfg.model.random_patch.then_some((mid, mid));
        let out = run_video(&self.model, &self.cfg, &self.feats, centre, &self.device, "bench")?;
        let fps = 1.0;
        Ok(detect(&self.cfg, &out, fps, None)?.segs.len())
    }
}

/// The ConvLSTM block alone, forward and backward, on `[B, T, 1, H, W]` of the config's
/// shape (B = batch size, T = max_seq_len).
pub struct ConvLstmBench {
    lstm: ConvLstm,
    x: TensorData,
    device: Device,
}

impl ConvLstmBench {
    pub fn new(cfg: &Config, device: &Device, seed: u64) -> Result<Self, BenchError> {
        if !cfg.model.te_atten {
            return Err(BenchError::NoConvLstm);
        }
        let device = device.clone().autodiff();
        device.seed(seed);
        let lstm = ConvLstmConfig::new()
            .with_hidden_dims(cfg.xca.convlstm_hidden.clone())
            .init(&device);
        let side = cfg.image_side();
        let shape = [cfg.loader.batch_size, cfg.dataset.max_seq_len, 1, side, side];
        let x = Tensor::<5>::random(shape, Distribution::Uniform(0.0, 1.0), &device);
        let x = crate::host::read(x).map_err(BenchError::Readback)?;
        Ok(Self { lstm, x, device })
    }

    /// Run the layers as burn tensor ops (`false`, the path before the fused kernels) or
    /// fused where the back-end has them (`true`, the default).
    pub fn fused(mut self, on: bool) -> Self {
        self.lstm.fused = on;
        self
    }

    /// Forward, sum, backward; returns the sum (read back after the backward).
    pub fn run(&self) -> Result<f64, BenchError> {
        let (loss, g) = self.pass()?;
        // Reading one gradient value waits for the whole backward.
        read_scalar(g)?;
        read_scalar(loss)
    }

    /// Forward, sum, backward without reading anything back: what [`count`] measures.
    /// Returns the sum and one value of the input's gradient, still on the device.
    pub fn pass(&self) -> Result<(Tensor<1>, Tensor<1>), BenchError> {
        let x = Tensor::<5>::from_data(self.x.clone(), &self.device).require_grad();
        let h = self.lstm.forward(x.clone());
        let loss = h.sum();
        let grads = loss.backward();
        let g = x
            .grad(&grads)
            .ok_or_else(|| BenchError::Readback("no gradient for the input".into()))?;
        Ok((loss, g.slice([0..1, 0..1, 0..1, 0..1, 0..1]).reshape([1])))
    }
}

/// What one run of a piece asks of the device: kernel launches and reads back to the host,
/// the figures of merit of a launch- and sync-bound GPU run that need no GPU to measure.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Kernels launched, counted by CubeCL's `LaunchObserver` on burn's CubeCL back-ends
    /// (wgpu, cuda); `None` on the CPU back-ends, which launch no kernels.
    pub launches: Option<usize>,
    /// Tensor reads back to the host ([`crate::host`]): each one a device → host
    /// synchronisation on a GPU.
    pub host_reads: usize,
}

/// Run `f` once on this thread and count what it asks of `device` (see [`Counts`]). Run it
/// after a warm-up: the first run of a kernel on a GPU also autotunes, which launches more.
pub fn count<T, E>(device: &Device, f: impl FnOnce() -> Result<T, E>) -> Result<(T, Counts), E> {
    count_by_kernel(device, f).map(|(out, counts, _)| (out, counts))
}

/// Where the launches of a counted run went (empty on the CPU back-ends).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Launches {
    /// `(kernel, launches)`, most launched first, names as CubeCL's profiler shortens them
    /// (`Kernel<generics>` without module paths).
    pub by_kernel: Vec<(String, usize)>,
    /// Per [`crate::phase`] of the run (forward, losses, backward, clip, optimizer, ema;
    /// `other` outside them), most launched first, each with its kernels.
    pub by_phase: Vec<PhaseLaunches>,
}

/// The launches of one phase of a counted run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhaseLaunches {
    pub phase: String,
    pub launches: usize,
    /// `(kernel, launches)`, most launched first.
    pub kernels: Vec<(String, usize)>,
}

impl Launches {
    /// Sorted per kernel and per phase from `(phase, kernel, launches)` rows.
    fn from_rows(rows: Vec<(&'static str, String, usize)>) -> Self {
        use std::collections::BTreeMap;
        fn sorted(map: BTreeMap<String, usize>) -> Vec<(String, usize)> {
            let mut v: Vec<(String, usize)> = map.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        }
        let mut kernels: BTreeMap<String, usize> = BTreeMap::new();
        let mut phases: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for (phase, kernel, n) in rows {
            *kernels.entry(kernel.clone()).or_default() += n;
            *phases.entry(phase).or_default().entry(kernel).or_default() += n;
        }
        let mut by_phase: Vec<PhaseLaunches> = phases
            .into_iter()
            .map(|(phase, k)| PhaseLaunches {
                phase: phase.to_string(),
                launches: k.values().sum(),
                kernels: sorted(k),
            })
            .collect();
        by_phase.sort_by(|a, b| b.launches.cmp(&a.launches).then_with(|| a.phase.cmp(&b.phase)));
        Self {
            by_kernel: sorted(kernels),
            by_phase,
        }
    }
}

/// [`count`], with the launches also per kernel and per phase (see [`Launches`]).
pub fn count_by_kernel<T, E>(device: &Device, f: impl FnOnce() -> Result<T, E>) -> Result<(T, Counts, Launches), E> {
    let reads = crate::host::reads();
    let (out, launches, rows) = if crate::kernels::fused_cube(device) {
        let (out, rows) = launch_count::on_this_thread(f);
        let n = rows.iter().map(|(_, _, n)| n).sum();
        (out?, Some(n), rows)
    } else {
        (f()?, None, Vec::new())
    };
    let counts = Counts {
        launches,
        host_reads: crate::host::reads() - reads,
    };
    Ok((out, counts, Launches::from_rows(rows)))
}

/// Kernel launches through CubeCL's process-wide launch observer, keeping those of the
/// calling thread (other threads may launch meanwhile: tests run in parallel).
///
/// CubeCL has one observer slot for the process, and a second `LaunchObservation` replaces
/// the first until it drops (then puts back what it found). So xca installs one observer,
/// [`Hub`], while any thread counts, and the hub keeps a tally per counting thread: counts on
/// several threads at once do not see each other's launches or cut each other short.
mod launch_count {
    /// `(phase, kernel)` → launches.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    type Tally = std::collections::HashMap<(&'static str, &'static str), usize>;

    /// The one installed observer: a tally per counting thread.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    #[derive(Default)]
    struct Hub {
        tallies: std::sync::Mutex<std::collections::HashMap<std::thread::ThreadId, Tally>>,
    }

    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    impl cubecl::logging::LaunchObserver for Hub {
        fn launched(&self, kernel: &'static str) {
            let mut tallies = self.tallies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(tally) = tallies.get_mut(&std::thread::current().id()) {
                *tally.entry((crate::phase::current(), kernel)).or_default() += 1;
            }
        }
    }

    /// Run `f`, returning the launches this thread made as `(phase, kernel, launches)`
    /// rows, kernels by their short names. Not nested on one thread.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn on_this_thread<T>(f: impl FnOnce() -> T) -> (T, Vec<(&'static str, String, usize)>) {
        use std::sync::{Arc, LazyLock, Mutex, PoisonError};

        use cubecl::config::{TypeNameFormatLevel, type_name_format};
        use cubecl::logging::LaunchObservation;

        static HUB: LazyLock<Arc<Hub>> = LazyLock::new(Arc::default);
        /// Threads counting now, and the hub's installation while there are any.
        static INSTALLED: Mutex<(usize, Option<LaunchObservation>)> = Mutex::new((0, None));

        /// This thread's part: its tally in the hub, and the hub installed while it counts
        /// (also when `f` unwinds).
        struct Counting(std::thread::ThreadId);
        impl Counting {
            fn start() -> Self {
                let me = std::thread::current().id();
                HUB.tallies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(me, Tally::new());
                let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
                installed.0 += 1;
                if installed.1.is_none() {
                    installed.1 = Some(LaunchObservation::new(HUB.clone()));
                }
                Self(me)
            }
            fn tally(&self) -> Tally {
                let mut tallies = HUB.tallies.lock().unwrap_or_else(PoisonError::into_inner);
                tallies.get_mut(&self.0).map(std::mem::take).unwrap_or_default()
            }
        }
        impl Drop for Counting {
            fn drop(&mut self) {
                let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
                installed.0 -= 1;
                if installed.0 == 0 {
                    installed.1 = None;
                }
                drop(installed);
                HUB.tallies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&self.0);
            }
        }

        let counting = Counting::start();
        let out = f();
        let tally = counting.tally();
        drop(counting);
        let rows = tally
            .into_iter()
            .map(|((phase, name), n)| (phase, type_name_format(name, TypeNameFormatLevel::Balanced), n))
            .collect();
        (out, rows)
    }

    /// Without a CubeCL back-end nothing launches kernels ([`super::count`] does not call it).
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    pub fn on_this_thread<T>(f: impl FnOnce() -> T) -> (T, Vec<(&'static str, String, usize)>) {
        (f(), Vec::new())
    }
}

/// Median, minimum and maximum of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `ms` (empty → all zero).
    pub fn of(ms: &[f64]) -> Self {
        let mut v: Vec<f64> = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Wall and CPU time of the timed runs of one piece.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Timing {
    pub wall_ms: Stats,
    /// CPU time of the whole process (all threads); absent where the OS does not say.
    pub cpu_ms: Option<Stats>,
}

/// Run `f` `warmup` times untimed, then `iters` times timed (wall and process CPU time).
pub fn time_it<E>(warmup: usize, iters: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<Timing, E> {
    for _ in 0..warmup {
        f()?;
    }
    let mut wall = Vec::with_capacity(iters);
    let mut cpu = Vec::with_capacity(iters);
    for _ in 0..iters {
        let c0 = process_cpu_time();
        let t0 = Instant::now();
        f()?;
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
        if let (Some(a), Some(b)) = (c0, process_cpu_time()) {
            cpu.push(b.saturating_sub(a).as_secs_f64() * 1e3);
        }
    }
    Ok(Timing {
        wall_ms: Stats::of(&wall),
        cpu_ms: (cpu.len() == iters && iters > 0).then(|| Stats::of(&cpu)),
    })
}

#[cfg(unix)]
fn rusage() -> Option<libc::rusage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: on success the kernel has written the whole struct (it was zeroed anyway).
    (rc == 0).then(|| unsafe { usage.assume_init() })
}

/// User + system CPU time of this process so far (all threads).
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let u = rusage()?;
        let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
        Some(tv(u.ru_utime) + tv(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Peak resident memory of this program so far, in MiB: on Linux the `VmHWM` line of
/// `/proc/self/status`, the peak of this program image alone, because `getrusage`'s
/// `ru_maxrss` carries over `exec` (a child process that `xca bench` starts would report at
/// least the parent's size at the time); `ru_maxrss` elsewhere.
pub fn peak_rss_mb() -> Option<f64> {
    #[cfg(target_os = "linux")]
    if let Some(kb) = vm_hwm_kb() {
        return Some(kb as f64 / 1024.0);
    }
    #[cfg(unix)]
    {
        let kb = rusage()?.ru_maxrss.max(0) as f64;
        // Linux reports KiB, macOS bytes.
        let bytes = if cfg!(target_os = "macos") { kb } else { kb * 1024.0 };
        Some(bytes / (1024.0 * 1024.0))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `VmHWM` of `/proc/self/status`, in KiB.
#[cfg(target_os = "linux")]
fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every component on (ConvLSTM, spatial attention, self-attention, contrastive), small.
    fn tiny_config() -> Config {
        let yaml = "dataset: {input_dim: 256, max_seq_len: 32}\n\
             model: {backbone_arch: [2, 1, 2], regression_range: [[0, 4], [4, 8], [8, 10000]], \
             embd_dim: 16, fpn_dim: 16, head_dim: 16, n_head: 2, SpAtten: True, TeAtten: True, \
             SelfAtten: True, pretrain: True, random_patch: True}\n\
             loader: {batch_size: 2}\n";
        Config::from_yaml_str(yaml, std::path::Path::new("tiny.yaml"))
            .expect("valid tiny config")
            .config
    }

    /// What one warm run of each piece asks of `device`.
    fn counts_on(device: &Device) -> [Counts; 3] {
        let cfg = tiny_config();
        let mut train = TrainStepBench::new(&cfg, device, 1).expect("train bench");
        train.run().expect("warm-up");
        let (_, train_n) = count(device, || train.step()).expect("step");
        let infer = InferBench::new(&cfg, device, 64, 1).expect("infer bench");
        infer.run().expect("warm-up");
        let (_, infer_n) = count(device, || infer.run()).expect("infer");
        let lstm = ConvLstmBench::new(&cfg, device, 1).expect("lstm bench");
        lstm.run().expect("warm-up");
        let (_, lstm_n) = count(device, || lstm.pass()).expect("lstm");
        [train_n, infer_n, lstm_n]
    }

    #[test]
    fn reads_of_a_training_step_and_of_inference_are_counted() {
        let [train, infer, lstm] = counts_on(&Device::flex());
        // The CPU back-end launches no kernels.
        assert_eq!([train.launches, infer.launches, lstm.launches], [None; 3]);
        // One read: the clipping scale, which flex reads to scale the gradients in place (a
        // memory copy on the CPU; on the GPU back-ends it stays on the device, 0 reads).
        assert_eq!(train.host_reads, 1, "a training step reads only the clip scale on flex");
        assert_eq!(lstm.host_reads, 0);
        // Inference reads the head outputs once; on flex the spatial stack's weights are
        // also read (a memory copy there) to fold BatchNorm into the convs.
        assert!(infer.host_reads >= 1, "{infer:?}");
        // A read inside a counted run is counted.
        let dev = Device::flex();
        let (_, n) = count(&dev, || read_scalar(Tensor::<1>::ones([3], &dev).sum())).unwrap();
        assert_eq!(
            n,
            Counts {
                launches: None,
                host_reads: 1
            }
        );
    }

    /// On wgpu (lavapipe where there is no GPU): launches are counted, a training step reads
    /// nothing back, inference reads the head outputs once, the fused ConvLSTM launches a
    /// handful of kernels.
    #[cfg(feature = "wgpu")]
    #[test]
    fn on_wgpu_launches_are_counted_and_a_step_reads_nothing() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let [train, infer, lstm] = counts_on(&dev);
        println!("tiny config on wgpu: train step {train:?}, inference T = 64 {infer:?}, ConvLSTM {lstm:?}");
        assert_eq!(train.host_reads, 0);
        assert_eq!(infer.host_reads, 1);
        assert_eq!(lstm.host_reads, 0);
        let launches = |c: Counts| c.launches.expect("launches counted on wgpu");
        assert!(
            launches(train) > launches(lstm) && launches(lstm) > 0,
            "{train:?} {lstm:?}"
        );
        // 3 layers fused: one input conv (a few launches), one recurrence each way, the
        // weight gradients; far from the tensor-op path's thousands.
        assert!(launches(lstm) <= 3 * 100, "{lstm:?}");
        let name = crate::kernels::cube_device_name(&dev);
        assert!(name.as_deref().is_some_and(|n| !n.is_empty()), "{name:?}");
        // Per kernel: the rows add up to the total, and each layer's recurrence is one
        // launch each way.
        let bench = ConvLstmBench::new(&tiny_config(), &dev, 1).expect("lstm bench");
        let (_, n, launched) = count_by_kernel(&dev, || bench.pass()).expect("lstm");
        let kernels = launched.by_kernel;
        assert_eq!(
            kernels.iter().map(|(_, k)| k).sum::<usize>(),
            launches(n),
            "{kernels:?}"
        );
        let of = |name: &str| kernels.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
        let layers = tiny_config().xca.convlstm_hidden.len();
        assert_eq!(
            (of("LstmForward"), of("LstmBackward")),
            (Some(layers), Some(layers)),
            "{kernels:?}"
        );
    }

    /// A training step's launches per phase on wgpu: every phase of the step is there, the
    /// phases add up to the total, and the optimiser and the EMA launch only their grouped
    /// kernels: one per eight tensors the EMA blends, one per four parameters AdamW steps
    /// (and at most one more per kind of step: two rates, gradients transposed or not).
    #[cfg(feature = "wgpu")]
    #[test]
    fn on_wgpu_a_training_steps_launches_are_split_by_phase() {
        let dev = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let cfg = tiny_config();
        let mut train = TrainStepBench::new(&cfg, &dev, 1).expect("train bench");
        train.run().expect("warm-up");
        let (_, n, launched) = count_by_kernel(&dev, || train.step()).expect("step");
        let phase = |name: &str| launched.by_phase.iter().find(|p| p.phase == name);
        for name in ["forward", "losses", "backward", "clip", "optimizer", "ema"] {
            assert!(phase(name).is_some_and(|p| p.launches > 0), "{name}: {launched:?}");
        }
        let total: usize = launched.by_phase.iter().map(|p| p.launches).sum();
        assert_eq!(Some(total), n.launches);
        // Every float tensor of the model: parameters and BatchNorm running statistics.
        let model = &train.learner.as_ref().expect("learner").model;
        let floats = crate::train::optim::param_ids_where(model, |_| true).len();
        let ema = phase("ema").expect("ema");
        assert_eq!(
            ema.kernels[0],
            ("BlendGroupKernel".to_string(), floats.div_ceil(8)),
            "{ema:?}"
        );
        // Besides: the BatchNorm running statistics' pending values, divided as burn
        // synchronises them.
        assert!(
            ema.kernels[1..]
                .iter()
                .all(|(k, n)| k == "KernelScalarBinop | DivOp" && *n <= 4),
            "{ema:?}"
        );
        // AdamW: the parameters are all but the (at most 8) running statistics, which have
        // no gradient.
        let optimizer = phase("optimizer").expect("optimizer");
        assert_eq!(optimizer.kernels.len(), 1, "{optimizer:?}");
        assert_eq!(optimizer.kernels[0].0, "AdamwGroupKernel");
        let (fewest, most) = ((floats - 8).div_ceil(4), (floats - 1).div_ceil(4) + 3);
        assert!(
            (fewest..=most).contains(&optimizer.launches),
            "{optimizer:?} of {floats}"
        );
    }

    #[test]
    fn launches_are_tallied_per_kernel_and_per_phase() {
        let rows = vec![
            ("forward", "Mul".to_string(), 3),
            ("backward", "Mul".to_string(), 5),
            ("backward", "Add".to_string(), 1),
            ("forward", "Conv".to_string(), 3),
        ];
        let l = Launches::from_rows(rows);
        let own = |v: &[(&str, usize)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect::<Vec<_>>();
        assert_eq!(l.by_kernel, own(&[("Mul", 8), ("Conv", 3), ("Add", 1)]));
        assert_eq!(
            l.by_phase,
            vec![
                PhaseLaunches {
                    phase: "backward".into(),
                    launches: 6,
                    kernels: own(&[("Mul", 5), ("Add", 1)]),
                },
                PhaseLaunches {
                    phase: "forward".into(),
                    launches: 6,
                    kernels: own(&[("Conv", 3), ("Mul", 3)]),
                },
            ]
        );
        assert_eq!(Launches::from_rows(Vec::new()), Launches::default());
    }

    #[test]
    fn stats_are_the_median_min_and_max() {
        let s = Stats::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 8.0]).median, 3.0);
        assert_eq!(Stats::of(&[]).max, 0.0);
    }

    #[test]
    fn time_it_runs_warmup_and_timed_iterations() {
        let mut calls = 0;
        let t = time_it::<()>(2, 3, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 5);
        assert!(t.wall_ms.min >= 0.0 && t.wall_ms.max >= t.wall_ms.min);
        #[cfg(unix)]
        assert!(t.cpu_ms.is_some());
    }

    #[test]
    fn synthetic_features_are_seeded() {
        let a = synthetic_features(3, 4, 1);
        let b = synthetic_features(3, 4, 1);
        assert_eq!(a.data, b.data);
        assert_ne!(a.data, synthetic_features(3, 4, 2).data);
        assert!(a.data.iter().all(|v| (0.0..1.0).contains(v)));
    }

    #[cfg(unix)]
    #[test]
    fn resource_usage_is_read() {
        // Burn some CPU so the counter moves past its clock granularity.
        let t0 = process_cpu_time().unwrap();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time().unwrap() > t0);
        assert!(peak_rss_mb().unwrap() > 1.0);
        #[cfg(target_os = "linux")]
        {
            // VmHWM and ru_maxrss agree for a process whose parent is small (the test runner).
            let hwm = vm_hwm_kb().unwrap() as f64;
            let maxrss = rusage().unwrap().ru_maxrss as f64;
            assert!(hwm > 1000.0 && hwm <= maxrss * 1.01 + 1024.0, "{hwm} vs {maxrss}");
        }
    }
}
