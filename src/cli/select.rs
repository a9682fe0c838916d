//! `xca select [CONFIG]` (alias `val_test`): pick the best checkpoint on the validation
//! split, then report it on the test split (SPEC §8). The choice is [`xca::select`].

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;
use xca::evaluate::ground_truth;
use xca::select::{ValRow, checkpoints_in, choose};

use super::eval::{evaluate_loaded, print_scores};
use super::{InputError, common, score};

/// Evaluate every saved checkpoint (epoch_031 … epoch_050 by default) on the validation
/// split, choose the highest average mAP (ties → earlier epoch), and print the test tables
/// of the chosen one. The dataset is loaded once.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML config.
    #[arg(default_value = "configs/vessel.yaml")]
    pub config: PathBuf,
    /// Checkpoint folder (default: the one `xca train CONFIG --output NAME` wrote).
    #[arg(long)]
    pub ckpt_dir: Option<PathBuf>,
    /// Run name used to find the default checkpoint folder.
    #[arg(long, default_value = "reproduce", value_parser = super::common::run_name)]
    pub output: String,
    /// Epochs to consider, e.g. 31..50 (default: the epochs the config saves).
    #[arg(long, value_name = "A..B")]
    pub epochs: Option<String>,
    /// Write {"val": [...], "chosen_epoch": n, "test": ..., "test_full": ...} here (`-` for stdout).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub run: common::InferArgs,
}

/// Parse `A..B`, `A..=B` or `A-B` (inclusive) or a single epoch.
pub fn parse_epochs(s: &str) -> Result<std::ops::RangeInclusive<usize>> {
    let bad = || InputError(format!("--epochs '{s}': expected A..B (inclusive), e.g. 31..50"));
    let (a, b) = if let Some((a, b)) = s.split_once("..=") {
        (a, b)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b)
    } else if let Some((a, b)) = s.split_once('-') {
        (a, b)
    } else {
        (s, s)
    };
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad().into());
    }
    Ok(a..=b)
}

pub fn run(args: Args) -> Result<()> {
    let cfg = super::config::load_config(&args.config)?;
    let device = common::device(args.run.device)?;
    let dir = args
        .ckpt_dir
        .clone()
        .unwrap_or_else(|| common::run_dir(&cfg, &args.config, &args.output));
    let epochs = match &args.epochs {
        Some(s) => parse_epochs(s)?,
        None => cfg.saved_epochs(),
    };
    let ckpts = checkpoints_in(&dir, &epochs);
    if let Some(out) = &args.json {
        let mut ins: Vec<(&str, &std::path::Path)> = vec![("config", &args.config)];
        ins.extend(ckpts.iter().map(|(_, p)| ("checkpoint", p.as_path())));
        xca::fsio::check_outputs(&[("--json", out)], &ins).map_err(InputError)?;
    }
    if ckpts.is_empty() {
        return Err(InputError(format!(
            "no checkpoints epoch_{:03}..epoch_{:03} in {} (train first: `xca train {}`)",
            epochs.start(),
            epochs.end(),
            dir.display(),
            args.config.display()
        ))
        .into());
    }
    let seed = args.run.seed.unwrap_or(cfg.init_rand_seed);
    let val_split = cfg.val_split.first().cloned().unwrap_or_else(|| "validation".into());
    let test_split = cfg.test_split.first().cloned().unwrap_or_else(|| "test".into());
    let ann = common::annotations(&cfg)?;
    let val = common::load_data(&cfg, &ann, std::slice::from_ref(&val_split), args.run.quiet)?;
    let gt = ground_truth(&cfg).map_err(|e| InputError(e.to_string()))?;

    let mut rows = Vec::new();
    println!(
        "Validation ({val_split}, paper protocol) per checkpoint in {}:",
        dir.display()
    );
    println!("| epoch | avg mAP (%) | AD | F |\n|---|---|---|---|");
    for (epoch, path) in &ckpts {
        let model = common::load_model(&cfg, path, &device)?;
        let (s, _) = evaluate_loaded(&cfg, &model, &val, &gt, &val_split, seed, &device, true)?;
        let (ad, f) = s
            .paper
            .keyframes
            .as_ref()
            .map(|k| (k.ad, k.f1))
            .unwrap_or((f64::NAN, f64::NAN));
        let row = ValRow {
            epoch: *epoch,
            average_map: s.paper.detection.average_map,
            ad,
            f,
        };
        println!(
            "| {:>3} | {:.2} | {:.2} | {:.4} |",
            row.epoch,
            100.0 * row.average_map,
            row.ad,
            row.f
        );
        rows.push(row);
    }
    let chosen = choose(&rows).map(|r| r.epoch).unwrap_or(ckpts[0].0);
    println!("\nChosen: epoch {chosen} (highest validation average mAP; ties go to the earlier epoch)\n");
    // The file listed for that epoch (ckpts is not empty, and `chosen` is one of its epochs).
    let path = ckpts
        .iter()
        .find(|(e, _)| *e == chosen)
        .map_or_else(|| ckpts[0].1.clone(), |(_, p)| p.clone());
    let model = common::load_model(&cfg, &path, &device)?;
    let test = common::load_data(&cfg, &ann, std::slice::from_ref(&test_split), args.run.quiet)?;
    let (scores, _) = evaluate_loaded(&cfg, &model, &test, &gt, &test_split, seed, &device, args.run.quiet)?;
    print_scores(&scores, &super::eval::ckpt_label(&path));
    if let Some(p) = &args.json {
        let val_json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| json!({"epoch": r.epoch, "average_mAP": r.average_map, "AD": r.ad, "F": r.f}))
            .collect();
        common::write_json_out(
            p,
            &json!({
                "val": val_json,
                "chosen_epoch": chosen,
                "test": score::report_json(&scores.paper),
                "test_full": score::report_json(&scores.full),
            }),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_parse_as_inclusive_ranges() {
        assert_eq!(parse_epochs("31..50").unwrap(), 31..=50);
        assert_eq!(parse_epochs("3-5").unwrap(), 3..=5);
        assert_eq!(parse_epochs("7").unwrap(), 7..=7);
        assert!(parse_epochs("9..2").is_err());
        assert!(parse_epochs("x").is_err());
        assert_eq!(parse_epochs("1..4000000000").unwrap(), 1..=4_000_000_000);
    }
}
