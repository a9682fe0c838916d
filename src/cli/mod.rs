//! One file per subcommand. Each exposes `Args` (clap) and `run(args) -> anyhow::Result<()>`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod check;
pub mod common;
pub mod config;
pub mod demo;
pub mod eval;
pub mod import;
pub mod predict;
pub mod score;
pub mod select;
pub mod synth;
pub mod train;

/// Exit status for a usage, config or data error (bad input the user can fix).
pub const EXIT_INPUT: u8 = 2;
/// Exit status for a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;

/// Locate start, apex and end keyframes of contrast-agent flow in X-ray coronary
/// angiograms (STA-IPCon, TMI 2023) — train, select, evaluate and predict, on CPU or GPU.
#[derive(Debug, Parser)]
#[command(name = "xca", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the fully resolved configuration (defaults merged).
    Config(config::Args),
    /// Validate the dataset a config points at, before training.
    Check(check::Args),
    /// The whole pipeline on synthetic data: synth → train → select → test tables.
    Demo(demo::Args),
    /// Train a model and write EMA checkpoints to <output_folder>/<config stem>_<NAME>/.
    Train(train::Args),
    /// Pick the best checkpoint on the validation split and report the test tables.
    #[command(alias = "val_test")]
    Select(select::Args),
    /// The paper's two tables (mAP at tIoU 0.3–0.7; P, R, F, AD, CI) for one checkpoint.
    Eval(eval::Args),
    /// Keyframes and detections of feature files without annotations (table, JSON, pictures).
    Predict(predict::Args),
    /// Score a detection file against ground truth: the mAP table and the keyframe table.
    Score(score::Args),
    /// Write a synthetic XCA dataset (vessel maps + keyframe annotations) in the paper's layout.
    Synth(synth::Args),
    /// Time a training step, inference (T = 128, 512) and the ConvLSTM; peak memory.
    Bench(bench::Args),
    /// Convert the authors' PyTorch checkpoint (epoch_NNN.pth.tar) into an xca checkpoint.
    Import(import::Args),
}

/// An error caused by the user's input (config, data, arguments): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Is this error the user's input (exit 2) rather than a runtime failure (exit 1)?
fn is_input_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.is::<InputError>() || e.is::<xca::device::DeviceError>())
}

/// Help and version as clap prints them (exit 0); `xca` alone gets the help on stderr
/// (exit 2); every other usage error is one `xca: error:` line like the rest (exit 2).
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(e.exit_code() as u8)
        }
        _ => {
            eprintln!("xca: error: {}", clap_one_line(&e.render().to_string()));
            ExitCode::from(EXIT_INPUT)
        }
    }
}

/// clap's multi-line error as one line: the message, its tip, and the usage line.
fn clap_one_line(text: &str) -> String {
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(msg) = line.strip_prefix("error:") {
            parts.push(msg.trim().to_string());
        } else if let Some(tip) = line.strip_prefix("tip:") {
            parts.push(tip.trim().to_string());
        } else if let Some(usage) = line.strip_prefix("Usage:") {
            parts.push(format!("usage: {}", usage.trim()));
        } else if line.starts_with("For more information") {
            parts.push(
                line.trim_end_matches('.')
                    .to_lowercase()
                    .replace("for more information, ", ""),
            );
        } else {
            parts.push(line.to_string());
        }
    }
    parts.join("; ")
}

pub fn main() -> ExitCode {
    xca::memory::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    let result: anyhow::Result<()> = match cli.command {
        Command::Config(a) => config::run(a),
        Command::Check(a) => check::run(a),
        Command::Score(args) => score::run(args),
        Command::Train(a) => train::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Select(a) => select::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Synth(args) => synth::run(args),
        Command::Import(a) => import::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the outermost context first, then its causes.
            let mut msg = err.to_string();
            for cause in err.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("xca: error: {msg}");
            ExitCode::from(if is_input_error(&err) { EXIT_INPUT } else { EXIT_RUNTIME })
        }
    }
}
