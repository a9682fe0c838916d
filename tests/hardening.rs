//! Interrupted runs and failing disks, on the real `xca` binary and the tiny setup of
//! tests/common (4 training videos, batch 1: 4 steps per epoch, 3 epochs, checkpoints of
//! epochs 2 and 3).
//!
//! A child `xca train` is killed (SIGKILL, SIGINT) at several points — inside an epoch,
//! right after a checkpoint, in the middle of a checkpoint write and in the middle of the
//! state swap — and after each kill every checkpoint on disk must load, half-written
//! temporaries must not pass for checkpoints, and `--resume` must end with checkpoints whose
//! tensors are bitwise an uninterrupted run's, and the same per-step losses in `log.jsonl`.
//! Writes "in the middle" are made deterministic with the test-only `XCA_TEST_FAULT`
//! variable of src/fsio.rs (abort, pause or fail half way through a write).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use xca::config::Config;
use xca::train::checkpoint;
use xca::train::trainer::{LogLine, TrainError, TrainOptions, train};

/// The tiny setup with one video per batch, so that an epoch has 4 steps to stop between.
fn tiny(dir: &Path) -> PathBuf {
    let config = common::setup(dir, 3);
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("loader: {batch_size: 1}\n");
    std::fs::write(&config, yaml).unwrap();
    config
}

fn run_dir(dir: &Path, output: &str) -> PathBuf {
    dir.join(format!("ckpt/tiny_{output}"))
}

fn train_cmd(config: &Path, output: &str, resume: bool, fault: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xca"));
    cmd.arg("train")
        .arg(config)
        .args(["--output", output, "--quiet", "--log-every", "1"]);
    if resume {
        cmd.arg("--resume");
    }
    match fault {
        Some(f) => cmd.env("XCA_TEST_FAULT", f),
        None => cmd.env_remove("XCA_TEST_FAULT"),
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A child `xca train` whose stderr is collected as it comes.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Poll until `cond` holds; the child must still be running then.
    fn wait_until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join();
                panic!("xca train ended ({status}) before {what}; stderr:\n{}", self.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn sigint(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn join(&mut self) {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }

    /// Wait for the end; its status and whole stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.join();
        (status, self.stderr())
    }

    fn sigkill(mut self) -> String {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success());
        self.join();
        self.stderr()
    }
}

fn log_lines(run: &Path) -> Vec<LogLine> {
    // A kill can cut the last line short: only whole lines count.
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn step_losses(run: &Path) -> Vec<(usize, usize, f64, f64, Option<f64>)> {
    log_lines(run)
        .iter()
        .filter(|l| l.kind == "step")
        .map(|l| (l.epoch, l.step, l.cls_loss, l.reg_loss, l.con_loss))
        .collect()
}

fn has_step_of_epoch(run: &Path, epoch: usize) -> bool {
    log_lines(run).iter().any(|l| l.kind == "step" && l.epoch == epoch)
}

fn state(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("state/state.json")).unwrap()).unwrap()
}

fn temps(run: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(xca::fsio::TEMP_PREFIX))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

fn network(config: &Path) -> xca::model::Network {
    let cfg = Config::load(config).unwrap().config;
    let device = xca::device::DeviceChoice::Cpu.device().unwrap();
    xca::config::adapt::network_config(&cfg).init(&device).unwrap()
}

/// Bitwise equality of two safetensors files: the same tensor names, dtypes, shapes and data
/// bytes. (The files' own bytes may differ: burn lays the tensors out in a varying order.)
fn same_tensors(a: &Path, b: &Path) {
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&ba).unwrap(),
        safetensors::SafeTensors::deserialize(&bb).unwrap(),
    );
    let mut names = ta.names();
    names.sort_unstable();
    let mut names_b = tb.names();
    names_b.sort_unstable();
    assert_eq!(
        names,
        names_b,
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    assert!(names.len() > 100);
    for n in names {
        let (x, y) = (ta.tensor(n).unwrap(), tb.tensor(n).unwrap());
        assert!(
            x.dtype() == y.dtype() && x.shape() == y.shape() && x.data() == y.data(),
            "{}: tensor {n} differs from the uninterrupted run's",
            a.display()
        );
    }
}

/// Every `epoch_*.safetensors` in `run` loads into the config's network, its sidecar (when
/// written) names its epoch, and its tensors are bitwise those of the reference run. Returns
/// the epochs found.
fn checkpoints_are_whole(config: &Path, run: &Path) -> Vec<usize> {
    let mut epochs = Vec::new();
    for e in std::fs::read_dir(run).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("epoch_").and_then(|s| s.strip_suffix(".safetensors")) else {
            continue;
        };
        let epoch: usize = n.parse().unwrap();
        let path = run.join(&name);
        checkpoint::load(network(config), &path).unwrap_or_else(|e| panic!("{name} does not load: {e}"));
        if checkpoint::meta_path(&path).exists() {
            assert_eq!(checkpoint::read_meta(&path).expect("a readable sidecar").epoch, epoch);
        }
        same_tensors(&path, &reference().join(&name));
        epochs.push(epoch);
    }
    epochs.sort_unstable();
    epochs
}

/// The finished run has the reference's checkpoints (bitwise, tensor by tensor) and per-step losses.
fn same_as_reference(config: &Path, run: &Path) {
    assert_eq!(checkpoints_are_whole(config, run), [2, 3]);
    let (got, want) = (step_losses(run), step_losses(reference()));
    assert_eq!(want.len(), 12, "3 epochs of 4 steps, each logged once");
    assert_eq!(got, want, "the resumed run's log differs from the uninterrupted run's");
    assert_eq!(temps(run), [], "no temporary files are left behind");
}

/// The uninterrupted run, trained once for all tests of this file.
fn reference() -> &'static Path {
    static REF: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny(dir.path());
        let (status, err) = Running::spawn(train_cmd(&config, "ref", false, None)).finish();
        assert!(status.success(), "{err}");
        let run = run_dir(dir.path(), "ref");
        (dir, run)
    })
    .1
}

#[test]
fn sigkill_anywhere_keeps_checkpoints_whole_and_resume_reaches_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let run = run_dir(dir.path(), "k");

    // 1. Inside epoch 2 (a step of it is logged; the state is epoch 1's).
    let mut t = Running::spawn(train_cmd(&config, "k", false, None));
    t.wait_until("a step of epoch 2", |_| has_step_of_epoch(&run, 2));
    t.sigkill();
    checkpoints_are_whole(&config, &run);
    assert!(state(&run)["epochs_done"].as_u64().unwrap() >= 1);

    // 2. Right after the checkpoint of epoch 2 is complete.
    let mut t = Running::spawn(train_cmd(&config, "k", true, None));
    t.wait_until("epoch_002.json", |_| run.join("epoch_002.json").exists());
    t.sigkill();
    assert!(checkpoints_are_whole(&config, &run).contains(&2));

    // 3. Between the two renames that swap in a new state: the old state is aside, no
    //    `state/` exists. The next run must find it again (and say it resumes).
    let (status, err) = Running::spawn(train_cmd(&config, "k", true, Some("abort:#swap"))).finish();
    assert!(!status.success() && status.code().is_none(), "aborted: {status} {err}");
    assert!(!run.join("state").exists() && run.join(".xca-old-state").is_dir());
    checkpoints_are_whole(&config, &run);

    // 4. Half way through writing epoch_003.safetensors: a partial temporary file, which
    //    no reader takes for a checkpoint; every complete checkpoint still loads.
    let (status, err) = Running::spawn(train_cmd(&config, "k", true, Some("abort:epoch_003.safetensors"))).finish();
    assert!(
        err.contains("resuming from"),
        "the moved-aside state is found again: {err}"
    );
    assert!(!status.success() && status.code().is_none(), "aborted: {status} {err}");
    let full = std::fs::metadata(reference().join("epoch_003.safetensors"))
        .unwrap()
        .len();
    let partial = temps(&run);
    assert!(
        partial.iter().any(|(_, len)| *len > 0 && *len < full),
        "a half-written temporary file: {partial:?}"
    );
    checkpoints_are_whole(&config, &run);

    // 5. Resume to the end.
    let (status, err) = Running::spawn(train_cmd(&config, "k", true, None)).finish();
    assert!(status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");
    same_as_reference(&config, &run);
}

#[test]
fn ctrl_c_saves_a_resumable_state_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let run = run_dir(dir.path(), "i");

    // 1. Ctrl-C inside epoch 1: exit 130 with a one-line message naming the way back.
    let mut t = Running::spawn(train_cmd(&config, "i", false, None));
    t.wait_until("the first step", |_| has_step_of_epoch(&run, 1));
    t.sigint();
    let (status, err) = t.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("xca: interrupted in epoch")
            && last.contains(&format!(
                "continue with: xca train {} --output i --resume",
                config.display()
            )),
        "{err}"
    );
    // The state holds exactly the logged steps (mid-epoch or at the epoch end).
    let st = state(&run);
    assert_eq!(st["step"].as_u64().unwrap() as usize, step_losses(&run).len(), "{st}");
    assert!(!run.join("lock").exists(), "the lock is released");

    // 2. Ctrl-C while epoch_002.safetensors is being written: the write completes, the
    //    epoch's state is saved, and the run stops there.
    let mut t = Running::spawn(train_cmd(&config, "i", true, Some("pause:epoch_002.safetensors")));
    t.wait_until("the paused checkpoint write", |t| {
        t.stderr().contains("XCA_TEST_FAULT: pausing")
    });
    t.sigint();
    let (status, err) = t.finish();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted in epoch 2"), "{err}");
    assert_eq!(checkpoints_are_whole(&config, &run), [2]);
    let st = state(&run);
    assert_eq!(
        (st["epochs_done"].as_u64(), st.get("mid_epoch")),
        (Some(2), None),
        "{st}"
    );

    // 3. Resume to the end.
    let (status, err) = Running::spawn(train_cmd(&config, "i", true, None)).finish();
    assert!(status.success(), "{err}");
    same_as_reference(&config, &run);
}

/// The library's side of Ctrl-C, made deterministic: the interrupt is requested before the
/// run, so it stops after exactly one step, inside an epoch.
#[test]
fn a_state_saved_inside_an_epoch_resumes_exactly() {
    use xca::train::interrupt;

    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let cfg = Config::load(&config).unwrap().config;
    let ann = xca::dataset::Annotations::load(&cfg.dataset.json_file).unwrap();
    let data = xca::dataset::load_split(&cfg, &ann, &cfg.train_split, |_| {}).unwrap();
    let run = run_dir(dir.path(), "m");
    let opts = |resume: bool, max: Option<usize>| TrainOptions {
        run_dir: run.clone(),
        device: xca::device::DeviceChoice::Cpu.device().unwrap(),
        parallel: Vec::new(),
        seed: cfg.init_rand_seed,
        resume,
        log_every: 1,
        quiet: true,
        max_epochs_this_run: max,
    };
    // Only this test trains inside this test process, so the process-wide flag is ours.
    interrupt::request();
    let r = train(&cfg, &data, &opts(false, None), |_| {});
    interrupt::clear();
    match r {
        Err(TrainError::Interrupted { epoch: 1, steps: 1, .. }) => {}
        other => panic!("expected an interrupt after step 1 of epoch 1, got {other:?}"),
    }
    let st = state(&run);
    assert_eq!(st["epochs_done"], 0);
    assert_eq!(st["mid_epoch"]["iters_done"], 1);
    // Finish epoch 1, then stop again after the first step of epoch 2.
    train(&cfg, &data, &opts(true, Some(1)), |_| {}).unwrap();
    assert_eq!(state(&run)["epochs_done"], 1);
    interrupt::request();
    let r = train(&cfg, &data, &opts(true, None), |_| {});
    interrupt::clear();
    assert!(
        matches!(r, Err(TrainError::Interrupted { epoch: 2, steps: 5, .. })),
        "{r:?}"
    );
    assert_eq!(state(&run)["mid_epoch"]["iters_done"], 1);
    train(&cfg, &data, &opts(true, None), |_| {}).unwrap();
    same_as_reference(&config, &run);
    let epoch_lines: Vec<LogLine> = log_lines(&run).into_iter().filter(|l| l.kind == "epoch").collect();
    let want: Vec<LogLine> = log_lines(reference())
        .into_iter()
        .filter(|l| l.kind == "epoch")
        .collect();
    let key = |l: &LogLine| (l.epoch, l.step, l.cls_loss, l.reg_loss, l.con_loss);
    assert_eq!(
        epoch_lines.iter().map(key).collect::<Vec<_>>(),
        want.iter().map(key).collect::<Vec<_>>(),
        "the epoch averages include the steps before the interrupt"
    );
}

#[test]
fn a_failed_write_names_the_file_and_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let run = run_dir(dir.path(), "f");
    let mut cmd = train_cmd(&config, "f", false, None);
    cmd.args(["--epochs", "2"]);
    let (status, err) = Running::spawn(cmd).finish();
    assert!(status.success(), "{err}");
    let kept = [
        "epoch_002.safetensors",
        "epoch_002.json",
        "state/state.json",
        "state/model.bpk",
    ];
    let before: Vec<Vec<u8>> = kept.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();

    // The disk "fills up" while epoch 3's checkpoint is written.
    let (status, err) = Running::spawn(train_cmd(&config, "f", true, Some("fail:epoch_003.safetensors"))).finish();
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    let target = run.join("epoch_003.safetensors");
    assert!(
        last.starts_with("xca: error: cannot write ")
            && last.contains(&target.display().to_string())
            && last.contains("no space left on device"),
        "{err}"
    );
    assert_eq!(err.matches("xca: error").count(), 1, "{err}");
    for (f, b) in kept.iter().zip(&before) {
        assert!(std::fs::read(run.join(f)).unwrap() == *b, "{f} changed");
    }
    assert!(!target.exists() && !run.join("epoch_003.json").exists());
    assert_eq!(temps(&run), []);

    // A result file that cannot be replaced keeps its old content.
    let out = dir.path().join("eval.json");
    std::fs::write(&out, "previous results\n").unwrap();
    let ckpt = run.join("epoch_002.safetensors");
    let eval = |fault: Option<&str>| {
        let mut cmd = common::xca();
        cmd.arg("eval").arg(&ckpt).arg("--quiet").arg("--json").arg(&out);
        match fault {
            Some(f) => cmd.env("XCA_TEST_FAULT", f),
            None => cmd.env_remove("XCA_TEST_FAULT"),
        };
        cmd.output().unwrap()
    };
    let o = eval(Some("fail:eval.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.trim_end().lines().count() == 1
            && err.contains(&out.display().to_string())
            && err.contains("no space left"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous results\n");
    let o = eval(None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["paper"]["average_mAP"].is_number());

    // With room again, the run finishes as if nothing had happened.
    let (status, err) = Running::spawn(train_cmd(&config, "f", true, None)).finish();
    assert!(status.success(), "{err}");
    same_as_reference(&config, &run);
}

/// Run `xca ARGS…`: exit status and stderr; it must not have panicked.
fn xca_run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let o = common::xca().args(args).env_remove("XCA_TEST_FAULT").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code(), err)
}

#[test]
fn damaged_checkpoints_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let good = std::fs::read(reference().join("epoch_003.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut nan = good.clone();
    for w in nan[header..].chunks_exact_mut(4) {
        w.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let cases: [(&str, &[u8], &str); 5] = [
        ("truncated", &good[..good.len() / 2], "not fully covered"),
        ("header_cut", &good[..100], "header length"),
        ("empty", &[], "header too small"),
        ("huge_header", &huge_header, "header too large"),
        ("nan", &nan, "NaN or infinite values"),
    ];
    for (name, bytes, why) in cases {
        let ckpt = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&ckpt, bytes).unwrap();
        let (code, err) = xca_run(&[
            "eval".as_ref(),
            config.as_os_str(),
            ckpt.as_os_str(),
            "--quiet".as_ref(),
        ]);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(
            err.trim_end().lines().count() == 1 && err.contains(&ckpt.display().to_string()) && err.contains(why),
            "{name}: {err}"
        );
    }
    // A folder where a checkpoint should be.
    let (code, err) = xca_run(&[
        "eval".as_ref(),
        config.as_os_str(),
        dir.path().as_os_str(),
        "--quiet".as_ref(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn damaged_data_is_refused_and_the_run_folder_is_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    // A finished run, copied in: a resumed train on damaged data must not touch it.
    let run = run_dir(dir.path(), "ref");
    std::fs::create_dir_all(run.join("state")).unwrap();
    let kept = [
        "epoch_003.safetensors",
        "epoch_003.json",
        "log.jsonl",
        "state/state.json",
    ];
    for f in kept {
        std::fs::copy(reference().join(f), run.join(f)).unwrap();
    }
    let snapshot = || -> Vec<Vec<u8>> { kept.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect() };
    let before = snapshot();
    let image = dir.path().join("data/image");
    let npy = image.join("train01.npy");
    let original = std::fs::read(&npy).unwrap();
    let annotations = dir.path().join("data/annotations/vessel.json");
    let ann_original = std::fs::read(&annotations).unwrap();

    let mut with_nan = original.clone();
    let at = with_nan.len() - 8;
    with_nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let cases: [(&str, &std::path::Path, Vec<u8>, &str); 4] = [
        (
            "truncated npy",
            &npy,
            original[..original.len() - 10].to_vec(),
            "truncated",
        ),
        (
            "garbage npy",
            &npy,
            b"not an npy file at all".to_vec(),
            "not a valid .npy",
        ),
        ("NaN in npy", &npy, with_nan, "non-finite"),
        (
            "cut annotations",
            &annotations,
            ann_original[..ann_original.len() / 2].to_vec(),
            "not valid JSON",
        ),
    ];
    for (what, file, bytes, why) in cases {
        std::fs::write(file, &bytes).unwrap();
        let (code, err) = xca_run(&["check".as_ref(), config.as_os_str()]);
        assert_eq!(code, Some(2), "check, {what}: {err}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(why),
            "check, {what}: {err}"
        );
        let (code, err) = xca_run(&[
            "train".as_ref(),
            config.as_os_str(),
            "--output".as_ref(),
            "ref".as_ref(),
            "--resume".as_ref(),
            "--quiet".as_ref(),
        ]);
        assert_eq!(code, Some(2), "train, {what}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("xca: error: ") && last.contains(&file.display().to_string()) && last.contains(why),
            "train, {what}: {err}"
        );
        assert!(snapshot() == before, "train on {what} changed the run folder");
        std::fs::write(&npy, &original).unwrap();
        std::fs::write(&annotations, &ann_original).unwrap();
    }
}

/// Run `xca ARGS…` with a 30-second limit: exit status, stderr and how long it took; it must
/// not have panicked.
fn xca_timed(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let o = common::xca()
        .args(args)
        .env_remove("XCA_TEST_FAULT")
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (o.status.code(), err, started.elapsed())
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// What can stand where a file should be: (label, how to make it, what the error says).
type Impostor = (&'static str, fn(&Path), &'static str);
const IMPOSTORS: [Impostor; 5] = [
    (
        "a symlink to /dev/zero",
        |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap(),
        "it is a character device, not a regular file",
    ),
    (
        "a symlink to /dev/urandom",
        |p| std::os::unix::fs::symlink("/dev/urandom", p).unwrap(),
        "it is a character device, not a regular file",
    ),
    ("a FIFO", mkfifo, "it is a FIFO, not a regular file"),
    (
        "a folder",
        |p| std::fs::create_dir(p).unwrap(),
        "it is a folder, not a regular file",
    ),
    (
        "a sparse file one byte over the limit",
        |p| {
            let f = std::fs::File::create(p).unwrap();
            f.set_len(xca::fsio::limits::CHECKPOINT + 1).unwrap();
        },
        "4294967297 bytes, more than the ",
    ),
];

fn remove_any(p: &Path) {
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(p).unwrap();
    } else {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn checkpoints_that_are_no_regular_files_or_too_large_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    for name in ["c.safetensors", "c.pth.tar", "c"] {
        let ckpt = dir.path().join(name);
        for (what, make, why) in IMPOSTORS {
            make(&ckpt);
            for cmd in ["eval", "import"] {
                if cmd == "import" && name == "c" {
                    continue;
                }
                let args: [&std::ffi::OsStr; 4] = if cmd == "eval" {
                    [cmd.as_ref(), config.as_os_str(), ckpt.as_os_str(), "--quiet".as_ref()]
                } else {
                    [cmd.as_ref(), "--config".as_ref(), config.as_os_str(), ckpt.as_os_str()]
                };
                let (code, err, took) = xca_timed(&args);
                let ctx = format!("{cmd} {name}, {what}: {err}");
                assert_eq!(code, Some(2), "{ctx}");
                assert_eq!(err.trim_end().lines().count(), 1, "{ctx}");
                assert!(
                    err.contains(&format!("cannot read {}: ", ckpt.display())) && err.contains(why),
                    "{ctx}"
                );
                assert!(took < Duration::from_secs(5), "{ctx}: took {took:?}");
            }
            remove_any(&ckpt);
        }
    }
}

/// The reference run's finished state, copied to a fresh run folder `out` of `dir`, for
/// `config` (the same network and data, in another folder: the state's config hash is
/// updated to match).
fn copy_reference_run(dir: &Path, config: &Path, out: &str) -> PathBuf {
    let run = run_dir(dir, out);
    std::fs::create_dir_all(run.join("state")).unwrap();
    for f in [
        "config.yaml",
        "epoch_003.safetensors",
        "epoch_003.json",
        "log.jsonl",
        "state/state.json",
        "state/model.bpk",
        "state/ema.bpk",
        "state/optim.bin",
    ] {
        std::fs::copy(reference().join(f), run.join(f)).unwrap();
    }
    let mut st = state(&run);
    st["config_hash"] = checkpoint::config_hash(&Config::load(config).unwrap().config).into();
    std::fs::write(run.join("state/state.json"), serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    run
}

fn resume_cmd(config: &Path, out: &str) -> Vec<std::ffi::OsString> {
    vec![
        "train".into(),
        config.into(),
        "--output".into(),
        out.into(),
        "--resume".into(),
        "--quiet".into(),
    ]
}

#[test]
fn resume_state_files_that_are_no_regular_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let run = copy_reference_run(dir.path(), &config, "s");
    let args = resume_cmd(&config, "s");
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    // The untouched copy resumes (nothing left to train) and succeeds.
    let (code, err, _) = xca_timed(&args);
    assert_eq!(code, Some(0), "{err}");
    for f in [
        "state/state.json",
        "state/model.bpk",
        "state/ema.bpk",
        "state/optim.bin",
        "log.jsonl",
    ] {
        let path = run.join(f);
        let kept = std::fs::read(&path).unwrap();
        for (what, make, why) in IMPOSTORS {
            std::fs::remove_file(&path).unwrap();
            make(&path);
            let (code, err, took) = xca_timed(&args);
            let ctx = format!("{f}, {what}: {err}");
            assert_eq!(code, Some(2), "{ctx}");
            let last = err.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("xca: error: cannot read ")
                    && last.contains(&path.display().to_string())
                    && last.contains(why),
                "{ctx}"
            );
            assert!(took < Duration::from_secs(5), "{ctx}: took {took:?}");
            remove_any(&path);
            std::fs::write(&path, &kept).unwrap();
        }
    }
}

#[test]
fn absurd_resume_counters_are_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let run = copy_reference_run(dir.path(), &config, "c");
    let args = resume_cmd(&config, "c");
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let state_json = run.join("state/state.json");
    let good = state(&run);
    assert_eq!(
        (good["epochs_done"].as_u64(), good["step"].as_u64()),
        (Some(3), Some(12))
    );
    let snapshot = || -> Vec<Vec<u8>> {
        ["log.jsonl", "epoch_003.safetensors", "state/model.bpk"]
            .iter()
            .map(|f| std::fs::read(run.join(f)).unwrap())
            .collect()
    };
    let before = snapshot();
    type Edit = (&'static str, fn(&mut serde_json::Value), &'static str);
    let edits: [Edit; 6] = [
        (
            "epochs done 2^64-1",
            |s| s["epochs_done"] = u64::MAX.into(),
            "epochs_done is 18446744073709551615, more than the 3 epochs the config trains",
        ),
        (
            "step 999",
            |s| s["step"] = 999.into(),
            "step is 999, but 3 epochs of 4 steps make 12",
        ),
        (
            "a negative normaliser",
            |s| s["normalizer"]["value"] = (-1.0).into(),
            "normalizer.value is -1; it must be a positive number",
        ),
        (
            "a step of a 96-step epoch",
            |s| {
                s["epochs_done"] = 1.into();
                s["step"] = 4.into();
                s["mid_epoch"] = serde_json::json!({"iters_done": 95, "rng_word_pos": 0,
                    "sum_cls": 1.0, "sum_reg": 1.0, "sum_con": null, "n_con": 0});
            },
            "mid_epoch.iters_done is 95; it must lie in 1..4 (steps per epoch)",
        ),
        (
            "a negative loss sum",
            |s| {
                s["epochs_done"] = 1.into();
                s["step"] = 6.into();
                s["mid_epoch"] = serde_json::json!({"iters_done": 2, "rng_word_pos": 0,
                    "sum_cls": 1.0, "sum_reg": -1.0, "sum_con": null, "n_con": 0});
            },
            "mid_epoch.sum_reg is -1; a sum of losses is finite and not negative",
        ),
        (
            "a negative counter",
            |s| s["epochs_done"] = (-1).into(),
            "epochs_done: invalid value: integer `-1`, expected usize",
        ),
    ];
    for (what, edit, why) in edits {
        let mut st = good.clone();
        edit(&mut st);
        std::fs::write(&state_json, serde_json::to_vec(&st).unwrap()).unwrap();
        let (code, err, _) = xca_timed(&args);
        assert_eq!(code, Some(2), "{what}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("xca: error: cannot resume from {}: ", state_json.display()))
                && last.contains(why),
            "{what}: {err}"
        );
        assert!(snapshot() == before, "{what}: the run folder changed");
    }
}

/// The reference checkpoint with every tensor (or, for integer and boolean types, only the
/// first by name) re-encoded as `dtype`.
fn reencoded(src: &[u8], dtype: safetensors::Dtype) -> Vec<u8> {
    use burn::tensor::{bf16, f16};
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(src).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(src).unwrap();
    let mut names = st.names();
    names.sort_unstable();
    let float = matches!(dtype, Dtype::F64 | Dtype::F16 | Dtype::BF16);
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let t = st.tensor(n).unwrap();
        assert_eq!(t.dtype(), Dtype::F32);
        let vals = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
        let (dt, bytes): (Dtype, Vec<u8>) = if !float && i > 0 {
            (Dtype::F32, t.data().to_vec())
        } else {
            let bytes = match dtype {
                Dtype::F64 => vals.flat_map(|v| f64::from(v).to_le_bytes()).collect(),
                Dtype::F16 => vals.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
                Dtype::BF16 => vals.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect(),
                Dtype::I32 => vals.flat_map(|v| (v as i32).to_le_bytes()).collect(),
                Dtype::U8 | Dtype::BOOL => vals.map(|v| u8::from(v > 0.0)).collect(),
                other => panic!("{other:?}"),
            };
            (dtype, bytes)
        };
        out.push((n.to_string(), dt, t.shape().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, dt, shape, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

/// How far the tables' numbers (percent, frames) may move when the weights are rounded to
/// float16 / bfloat16. Measured: float16 gave the same tables, bfloat16 moved one mAP by
/// 0.05 points (25.57 → 25.62).
const TOL_F16: f64 = 0.5;
const TOL_BF16: f64 = 0.5;

/// Every number in `text`, in order.
fn numbers(text: &str) -> Vec<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn checkpoints_of_other_float_widths_evaluate_like_float32_and_other_dtypes_are_refused() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(dir.path());
    let good = std::fs::read(reference().join("epoch_003.safetensors")).unwrap();
    let eval = |dt: &str, bytes: &[u8]| {
        // Same file name in each folder, so that the tables' method label is the same.
        let ckpt = dir.path().join(dt).join("run/epoch_003.safetensors");
        std::fs::create_dir_all(ckpt.parent().unwrap()).unwrap();
        std::fs::write(&ckpt, bytes).unwrap();
        let o = common::xca()
            .args([
                "eval".as_ref(),
                config.as_os_str(),
                ckpt.as_os_str(),
                "--quiet".as_ref(),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{dt}: {err}");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            err,
            ckpt,
        )
    };
    let (code, want, err, _) = eval("f32", &good);
    assert_eq!(code, Some(0), "{err}");
    let want_numbers = numbers(&want);
    assert!(want_numbers.len() > 20, "{want}");
    let (code, got, err, _) = eval("f64", &reencoded(&good, Dtype::F64));
    assert_eq!(code, Some(0), "F64: {err}");
    assert_eq!(got, want, "float64 holds every float32 exactly: the same tables");
    for (dt, tol) in [(Dtype::F16, TOL_F16), (Dtype::BF16, TOL_BF16)] {
        let (code, got, err, _) = eval(&format!("{dt:?}"), &reencoded(&good, dt));
        assert_eq!(code, Some(0), "{dt:?}: {err}");
        let got_numbers = numbers(&got);
        assert_eq!(got_numbers.len(), want_numbers.len(), "{dt:?}:\n{got}\nvs\n{want}");
        let worst = got_numbers
            .iter()
            .zip(&want_numbers)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= tol, "{dt:?}: off by {worst}:\n{got}\nvs\n{want}");
    }
    let first = {
        let st = safetensors::SafeTensors::deserialize(&good).unwrap();
        let mut names = st.names();
        names.sort_unstable();
        names[0].to_string()
    };
    for dt in [Dtype::I32, Dtype::U8, Dtype::BOOL] {
        let (code, _, err, ckpt) = eval(&format!("{dt:?}"), &reencoded(&good, dt));
        assert_eq!(code, Some(2), "{dt:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&ckpt.display().to_string())
                && err.contains(&format!(
                    "tensor {first} holds {dt:?} values; weights are floating point"
                )),
            "{dt:?}: {err}"
        );
    }
}

/// The tiny network of fuzz/model.yaml (which the checkpoint fuzz seeds were made for).
fn fuzz_model_yaml() -> String {
    format!(
        "dataset: {{input_dim: 256, max_seq_len: 32}}\n{}",
        include_str!("../fuzz/model.yaml")
    )
}

fn fuzz_network() -> xca::model::Network {
    let cfg = Config::from_yaml_str(&fuzz_model_yaml(), Path::new("fuzz/model.yaml"))
        .unwrap()
        .config;
    let device = xca::device::DeviceChoice::Cpu.device().unwrap();
    xca::config::adapt::network_config(&cfg).init(&device).unwrap()
}

/// Every float weight of `net` is float32 (the dtypes found otherwise).
fn non_f32_weights(net: &xca::model::Network) -> Vec<burn::tensor::DType> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct V(Vec<burn::tensor::DType>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<D>>) {
            let dt = p.val().dtype();
            if dt != burn::tensor::DType::F32 {
                self.0.push(dt);
            }
        }
    }
    let mut v = V(Vec::new());
    net.visit(&mut v);
    v.0
}

/// The synthetic data of [`tiny`] in `dir`, the network of fuzz/model.yaml, one epoch.
fn fuzz_model_config(dir: &Path) -> PathBuf {
    tiny(dir);
    let config = dir.join("fuzz_model.yaml");
    let yaml = fuzz_model_yaml().replace(
        "dataset: {",
        &format!(
            "dataset: {{json_file: {d}/data/annotations/vessel.json, feat_folder: {d}/data/image, ",
            d = dir.display()
        ),
    ) + &format!(
        "opt: {{learning_rate: 0.001, epochs: 1, warmup_epochs: 0}}\noutput_folder: {}/ckpt\n",
        dir.display()
    );
    std::fs::write(&config, yaml).unwrap();
    config
}

/// Not a test: trains the network of fuzz/model.yaml for an epoch on the synthetic data and
/// writes the checkpoint to `$XCA_FUZZ_SEED`, the input of fuzz/make_seeds.py:
/// `XCA_FUZZ_SEED=/tmp/seed.safetensors cargo test --test hardening make_fuzz_seed -- --ignored`.
#[test]
#[ignore]
fn make_fuzz_seed() {
    let out = PathBuf::from(std::env::var_os("XCA_FUZZ_SEED").expect("XCA_FUZZ_SEED"));
    let dir = tempfile::tempdir().unwrap();
    let config = fuzz_model_config(dir.path());
    let (code, err) = xca_run(&[
        "train".as_ref(),
        config.as_os_str(),
        "--output".as_ref(),
        "seed".as_ref(),
        "--quiet".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::copy(dir.path().join("ckpt/fuzz_model_seed/epoch_001.safetensors"), &out).unwrap();
}

#[test]
fn pth_checkpoints_with_nan_are_refused_like_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let config = fuzz_model_config(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clean = root.join("fuzz/corpus/pth/tiny.pth.tar");
    let nan = root.join("tests/data/pth/tiny_nan.pth.tar");
    // The same archive without the NaN evaluates.
    let (code, err) = xca_run(&[
        "eval".as_ref(),
        config.as_os_str(),
        clean.as_os_str(),
        "--quiet".as_ref(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    for args in [
        ["eval".as_ref(), config.as_os_str(), nan.as_os_str(), "--quiet".as_ref()],
        [
            "import".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            nan.as_os_str(),
        ],
    ] {
        let cmd = args[0].to_string_lossy();
        let (code, err) = xca_run(&args);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
        assert!(
            err.contains(&nan.display().to_string())
                && err.contains("tensor backbone.branch.0.attn.key.bias holds NaN or infinite values"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn pytorch_named_checkpoints_with_integer_weights_are_refused() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let config = fuzz_model_config(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let good = std::fs::read(root.join("fuzz/corpus/safetensors/torch_names.safetensors")).unwrap();
    let eval = |name: &str, bytes: &[u8]| {
        let ckpt = dir.path().join(name);
        std::fs::write(&ckpt, bytes).unwrap();
        let (code, err) = xca_run(&[
            "eval".as_ref(),
            config.as_os_str(),
            ckpt.as_os_str(),
            "--quiet".as_ref(),
        ]);
        (code, err, ckpt)
    };
    let (code, err, _) = eval("torch.safetensors", &good);
    assert_eq!(code, Some(0), "{err}");
    let (code, err, _) = eval("torch_f16.safetensors", &reencoded(&good, Dtype::F16));
    assert_eq!(code, Some(0), "{err}");
    for dt in [Dtype::I32, Dtype::U8, Dtype::BOOL] {
        let (code, err, ckpt) = eval("torch_int.safetensors", &reencoded(&good, dt));
        assert_eq!(code, Some(2), "{dt:?}: {err}");
        assert!(
            err.trim_end().lines().count() == 1
                && err.contains(&ckpt.display().to_string())
                && err.contains(&format!(
                    "tensor 'backbone.branch.0.attn.key.bias' cannot be read as float32: it holds {} values, not floating point",
                    if dt == Dtype::BOOL { "Bool(Native)".to_string() } else { format!("{dt:?}") }
                )),
            "{dt:?}: {err}"
        );
    }
}

/// What the fuzz targets of fuzz/ check, on their seed corpora (fuzz/corpus/<target>/) and
/// on every input the fuzzers found a fault with (tests/fuzz_regressions/<target>/): no
/// panic, accepted configs print and read back unchanged, and no feature file yields more
/// values than it holds.
#[test]
fn fuzz_seeds_and_regressions_are_read_without_panic() {
    use xca::dataset::Annotations;
    use xca::dataset::features::Features;
    use xca::metrics::io::{parse_ground_truth, parse_predictions};
    use xca::metrics::score::{Protocol, score};

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inputs = |target: &str| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v = Vec::new();
        for dir in [
            root.join("fuzz/corpus").join(target),
            root.join("tests/fuzz_regressions").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries {
                let p = e.unwrap().path();
                v.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        v.sort();
        v
    };
    let name = Path::new("fuzz");
    let configs = inputs("config");
    assert!(configs.len() >= 3);
    let mut accepted = 0;
    for (p, bytes) in &configs {
        let Ok(text) = std::str::from_utf8(bytes) else { continue };
        if let Ok(loaded) = Config::from_yaml_str(text, name) {
            accepted += 1;
            let again = Config::from_yaml_str(&loaded.config.to_yaml(), name)
                .unwrap_or_else(|e| panic!("{}: printed config does not read back: {e}", p.display()));
            assert_eq!(again.config.to_json(), loaded.config.to_json(), "{}", p.display());
        }
    }
    assert!(accepted >= 3, "the real configs among the seeds are accepted");

    let anns = inputs("annotations");
    assert!(anns.len() >= 3);
    for (_, bytes) in &anns {
        if let Ok(a) = Annotations::from_slice(bytes, name) {
            let _ = a.split(&["train".to_string()]);
        }
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Ok(gt) = parse_ground_truth(text, name)
        {
            let _ = gt.split_segments("test");
        }
    }

    let gt = parse_ground_truth(
        &std::fs::read_to_string(root.join("fuzz/gt.json")).unwrap(),
        Path::new("gt.json"),
    )
    .unwrap();
    let preds = inputs("predictions");
    assert!(preds.len() >= 3);
    let mut scored = 0;
    for (_, bytes) in &preds {
        let Ok(text) = std::str::from_utf8(bytes) else { continue };
        if let Ok(p) = parse_predictions(text, name, &gt) {
            scored += usize::from(score(&gt, "test", &p.detections, Protocol::Full).is_ok());
            let _ = score(&gt, "test", &p.detections, Protocol::Paper);
        }
    }
    assert!(scored >= 2, "the well-formed detection files among the seeds score");

    let npys = inputs("npy");
    assert!(npys.len() >= 3);
    let mut read = 0;
    for (p, bytes) in &npys {
        for dim in [16, 4096] {
            if let Ok(f) = Features::from_npy_bytes(bytes, name, dim) {
                read += 1;
                assert_eq!(f.data.len(), f.rows * f.dim, "{}", p.display());
                assert!(f.data.len() * 4 <= bytes.len(), "{}", p.display());
            }
        }
    }
    assert!(read >= 3, "the well-formed .npy seeds are read");

    // Checkpoints, into the tiny network of fuzz/model.yaml: no panic, and what loads has
    // float32 weights only.
    use xca::model::load_torch_tensors;
    use xca::model::torch::{group_unused, read_torch_checkpoint, read_torch_safetensors};
    let sts = inputs("safetensors");
    assert!(sts.len() >= 3);
    let (mut ours, mut theirs) = (0, 0);
    for (p, bytes) in &sts {
        if let Ok(net) = checkpoint::load_bytes(fuzz_network(), bytes.clone(), name) {
            ours += 1;
            assert_eq!(non_f32_weights(&net), [], "{}", p.display());
        }
        if let Ok(tensors) = read_torch_safetensors(bytes.clone(), name)
            && let Ok((net, report)) = load_torch_tensors(fuzz_network(), &tensors)
        {
            theirs += usize::from(group_unused(&report).is_ok());
            assert_eq!(non_f32_weights(&net), [], "{}", p.display());
        }
    }
    assert!(
        ours >= 2 && theirs >= 1,
        "the real checkpoints among the seeds load ({ours}, {theirs})"
    );
    let pths = inputs("pth");
    assert!(pths.len() >= 2);
    let tmp = tempfile::tempdir().unwrap();
    let mut imported = 0;
    for (p, bytes) in &pths {
        let path = tmp.path().join(p.file_name().unwrap());
        std::fs::write(&path, bytes).unwrap();
        if let Ok((tensors, _)) = read_torch_checkpoint(&path)
            && let Ok((net, report)) = load_torch_tensors(fuzz_network(), &tensors)
        {
            imported += usize::from(group_unused(&report).is_ok());
            assert_eq!(non_f32_weights(&net), [], "{}", p.display());
        }
    }
    assert!(imported >= 2, "the real .pth seeds import ({imported})");
}

/// Many `xca train` started at the same instant into one run folder: exactly one trains;
/// every other one is refused (exit 2) — while the winner runs ("in use") or after it has
/// finished ("already holds a run") — and never runs a second training into the folder.
#[test]
fn of_many_simultaneous_trainers_into_one_folder_exactly_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::setup(dir.path(), 2);
    for round in 0..3 {
        let output = format!("race{round}");
        let barrier = Arc::new(std::sync::Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let mut cmd = train_cmd(&config, &output, false, None);
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let out = cmd.output().unwrap();
                    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
                })
            })
            .collect();
        let results: Vec<(Option<i32>, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = results.iter().filter(|(c, _)| *c == Some(0)).count();
        assert_eq!(winners, 1, "round {round}: {results:#?}");
        for (code, err) in results.iter().filter(|(c, _)| *c != Some(0)) {
            assert_eq!(*code, Some(2), "{err}");
            assert!(
                err.contains("is in use by another xca process") || err.contains("already holds a run"),
                "{err}"
            );
        }
        let log = std::fs::read_to_string(run_dir(dir.path(), &output).join("log.jsonl")).unwrap();
        let epochs = log.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).count();
        assert_eq!(epochs, 2, "one training's epochs in the log: {log}");
    }
}

/// Runs `xca args…` and returns (exit code, stderr), checking that stderr is one
/// `xca: error:` line.
fn one_line_error(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xca"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("xca: error: "), "{err}");
    (out.status.code(), err)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn bounded_reads_sizes_and_names_are_refused_with_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::setup(dir.path(), 2);
    let cfg = config.as_os_str();

    // A config that is a device: refused by type.
    let (code, err) = one_line_error(&[os("config"), os("/dev/zero")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/dev/zero") && err.contains("character device"), "{err}");

    // A feature file that is a symlink to /dev/zero: `check` names it (and reads nothing).
    let feats = dir.path().join("data/image");
    let victim = std::fs::read_dir(&feats).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&victim).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &victim).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xca"))
        .arg("check")
        .arg(cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains(victim.file_name().unwrap().to_str().unwrap()) && all.contains("character device"),
        "{all}"
    );

    // Sizes a config or flag may not ask for.
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "dataset: {max_seq_len: 1073741824}\n").unwrap();
    let (code, err) = one_line_error(&[os("config"), big.as_os_str()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("dataset.max_seq_len") && err.contains("too large"),
        "{err}"
    );
    let out_dir = dir.path().join("huge");
    let (code, err) = one_line_error(&[
        os("synth"),
        os("--out"),
        out_dir.as_os_str(),
        os("--train"),
        os("1000000000"),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("too many") && err.contains("100000"), "{err}");
    assert!(!out_dir.exists());

    // A run name that leaves output_folder.
    let (code, err) = one_line_error(&[os("train"), cfg, os("--output"), os("../../x")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("'../../x' is not a plain name"), "{err}");
    assert!(!dir.path().join("x").exists() && !dir.path().join("ckpt").exists());

    // clap's own errors: one line, exit 2.
    let (code, err) = one_line_error(&[os("train"), cfg, os("--bogus")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unexpected argument '--bogus'") && err.contains("usage: xca train"),
        "{err}"
    );

    // A batch larger than the training split: a config error, and no run folder is left.
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("loader: {batch_size: 5}\n");
    let b5 = dir.path().join("b5.yaml");
    std::fs::write(&b5, yaml).unwrap();
    let (code, err) = one_line_error(&[os("train"), b5.as_os_str(), os("--output"), os("x")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("batch_size 5 is larger than the training split (4 videos"),
        "{err}"
    );
    assert!(!dir.path().join("ckpt").exists(), "no run folder may be left");

    // `select --epochs` over a huge range lists the folder instead of probing each epoch.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, err) = one_line_error(&[
        os("select"),
        cfg,
        os("--ckpt-dir"),
        empty.as_os_str(),
        os("--epochs"),
        os("1..4000000000"),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no checkpoints epoch_001..epoch_4000000000"), "{err}");

    // Two outputs of one command that are the same file.
    let (code, err) = one_line_error(&[
        os("eval"),
        cfg,
        os("missing.safetensors"),
        os("--json"),
        os("x.json"),
        os("--detections"),
        os("./x.json"),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--json and --detections are both"), "{err}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_back_end_this_binary_lacks_is_refused_naming_its_feature() {
    let args = |device: &str| -> Vec<std::ffi::OsString> {
        [
            "bench",
            "configs/vessel_demo.yaml",
            "--iters",
            "1",
            "--long-t",
            "0",
            "--device",
            device,
        ]
        .iter()
        .map(Into::into)
        .collect()
    };
    let run = |device: &str| {
        let a = args(device);
        xca_run(&a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>())
    };
    let (code, err) = run("cuda:1");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("xca: error: device 'cuda:1' is not available") && err.contains("--features cuda"),
        "{err}"
    );
    let (code, err) = run("cuda:x");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown device 'cuda:x'"), "{err}");
}

#[test]
fn devices_lists_that_cannot_run_data_parallel_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::setup(dir.path(), 2);
    let cases: [(&[&str], &str); 5] = [
        (
            &["--devices", "cpu,cpu"],
            "xca: error: --devices cannot use 'cpu': burn has a single CPU device",
        ),
        (
            &["--devices", "wgpu,cuda:1"],
            "xca: error: --devices cannot use 'wgpu': wgpu drives one adapter",
        ),
        (
            &["--devices", "cuda:0,cuda:0"],
            "xca: error: --devices names 'cuda:0' twice",
        ),
        (
            &["--devices", "cuda:1"],
            "xca: error: --devices needs at least two devices (got 1)",
        ),
        #[cfg(not(feature = "cuda"))]
        (
            &["--devices", "cuda:0,cuda:1"],
            "xca: error: device 'cuda:0' is not available: this xca binary was built without the cargo feature 'cuda'",
        ),
        #[cfg(feature = "cuda")]
        (&["--devices", "cuda:0,cuda:1,cuda:2"], "cannot be shared by 3 devices"),
    ];
    for (extra, want) in cases {
        let mut args: Vec<&std::ffi::OsStr> = vec!["train".as_ref(), config.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let (code, err) = xca_run(&args);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: one line: {err}");
    }
    // --device and --devices together: clap names the conflict.
    let (code, err) = xca_run(&[
        "train".as_ref(),
        config.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--devices".as_ref(),
        "cuda:0,cuda:1".as_ref(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--devices") && err.contains("--device"), "{err}");
    assert!(!dir.path().join("ckpt").exists(), "nothing is written");
}
