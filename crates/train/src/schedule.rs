//! The learning rate of each optimizer step, and the optimizer a config names.

use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};

use crate::{Decay, OptimSection, OptimizerKind, ScheduleSection, Sgd};

/// Learning rate of optimizer step `step` (0-based) out of `total`: linear warm-up
/// `lr * (step + 1) / warmup`, then cosine from `lr` to `min_lr` at the last step, or constant.
pub fn learning_rate(schedule: &ScheduleSection, lr: f64, step: usize, total: usize) -> f64 {
    let warmup = schedule.warmup_steps;
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    match schedule.decay {
        Decay::Constant => lr,
        Decay::Cosine => {
            let span = total.saturating_sub(warmup).saturating_sub(1).max(1) as f64;
            let t = ((step - warmup) as f64 / span).min(1.0);
            schedule.min_lr + 0.5 * (lr - schedule.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// The optimizer of `optim`, with PyTorch's semantics: gaze's [`Sgd`] (dampening 0), burn's
/// AdamW.
pub fn build_optimizer(optim: &OptimSection) -> ModuleOptimizer {
    let clipping = optim
        .clip_grad_norm
        .map(|n| GradientClippingConfig::Norm(n as f32));
    match optim.name {
        OptimizerKind::Sgd => {
            let sgd = ModuleOptimizer::from(Sgd {
                momentum: optim.momentum,
                weight_decay: optim.weight_decay,
                nesterov: optim.nesterov,
            });
            match clipping {
                Some(clipping) => sgd.with_grad_clipping(clipping.init()),
                None => sgd,
            }
        }
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_beta_1(optim.betas[0] as f32)
            .with_beta_2(optim.betas[1] as f32)
            .with_epsilon(optim.eps as f32)
            .with_weight_decay(optim.weight_decay as f32)
            .with_grad_clipping(clipping)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = ScheduleSection {
            epochs: 1,
            warmup_steps: 4,
            decay: Decay::Cosine,
            min_lr: 0.0,
        };
        let lrs: Vec<f64> = (0..10).map(|i| learning_rate(&s, 1.0, i, 10)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!((lrs[4] - 1.0).abs() < 1e-12 && lrs[9].abs() < 1e-12);
        assert!(lrs[5..].windows(2).all(|w| w[1] < w[0]));
        let constant = ScheduleSection {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(learning_rate(&constant, 0.1, 9, 10), 0.1);
    }
}
