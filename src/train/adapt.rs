//! Adapters from the YAML tree to training's configs (losses, AdamW, learning-rate
//! schedule): the resolved [`Config`] in, the small typed config one piece needs out. The
//! network's and post-processing's adapters are [`crate::config::adapt`].

use super::loss::LossConfig;
use super::optim::{AdamWSettings, LrSchedule};
use crate::config::{Config, ScheduleType};

/// Loss weights (SPEC §4.2).
pub fn loss_config(cfg: &Config) -> LossConfig {
    LossConfig {
        loss_weight: cfg.train_cfg.loss_weight as f32,
        label_smoothing: cfg.train_cfg.label_smoothing as f32,
    }
}

/// AdamW hyper-parameters (SPEC §4.3).
pub fn adamw_settings(cfg: &Config) -> AdamWSettings {
    AdamWSettings {
        weight_decay: cfg.opt.weight_decay as f32,
        ..AdamWSettings::default()
    }
}

/// The learning-rate schedule for `iters_per_epoch` steps per epoch (SPEC §4.3).
pub fn lr_schedule(cfg: &Config, iters_per_epoch: usize) -> LrSchedule {
    let o = &cfg.opt;
    match (o.warmup, o.schedule_type) {
        (true, ScheduleType::Cosine) => LrSchedule::warmup_cosine(
            o.learning_rate,
            o.epochs,
            o.warmup_epochs,
            iters_per_epoch,
            cfg.model.pretrain,
            cfg.model.random_patch,
        ),
        _ => LrSchedule::cosine(o.learning_rate, o.epochs, iters_per_epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paper_config_maps_onto_the_schedule_and_losses() {
        let cfg = Config::load(Path::new("configs/vessel.yaml")).unwrap().config;
        let sched = lr_schedule(&cfg, 10);
        assert_eq!(sched.warmup_steps, 50);
        assert_eq!(sched.max_steps, 600);
        assert_eq!(loss_config(&cfg).loss_weight, 1.0);
        assert_eq!(adamw_settings(&cfg).weight_decay, 0.05);
    }
}
