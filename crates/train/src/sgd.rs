//! SGD with momentum as `torch.optim.SGD` computes it (dampening 0, L2 weight decay added to
//! the gradient, optional Nesterov), on burn's per-parameter [`Optimizer`] trait.
//!
//! burn's own `Sgd` does the same arithmetic as five element-wise operations per parameter,
//! each a pass of its own on one thread on `flex`; here each step of the update is one
//! [`axpby`] (a parallel pass on `flex`, in place where it can be), so a ViT-S/16 step's update
//! takes two passes over the weights instead of five. The state is recorded under burn's
//! names (`momentum.velocity`), so an optimizer file written with burn's `Sgd` resumes here.

use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};

use gaze_nn::ops::axpby;

/// `torch.optim.SGD(params, lr, momentum, dampening=0, weight_decay, nesterov)`.
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Momentum factor; 0 for plain SGD (no velocity is kept).
    pub momentum: f64,
    /// L2 penalty: `weight_decay * w` is added to each gradient.
    pub weight_decay: f64,
    /// Nesterov momentum: step along `g + momentum * v` instead of `v`.
    pub nesterov: bool,
}

/// The velocity of one parameter (`None` without momentum).
#[derive(Clone)]
pub struct SgdState<const D: usize> {
    velocity: Option<Tensor<D>>,
}

/// burn's `SgdState { momentum: Option<MomentumState { velocity }> }` records its velocity here.
const VELOCITY: &str = "momentum.velocity";

impl<const D: usize> RecordState for SgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(velocity) = &self.velocity {
            out.push_tensor(prefix, VELOCITY, velocity.clone().into_data());
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let velocity = src
            .take_tensor(prefix, VELOCITY)
            .map(|data| Tensor::from_data(data, device));
        Some(Self { velocity })
    }
}

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        weight: Tensor<D>,
        grad: Tensor<D>,
        state: Option<SgdState<D>>,
    ) -> (Tensor<D>, Option<SgdState<D>>) {
        let grad = if self.weight_decay > 0.0 {
            axpby(1.0, grad, self.weight_decay, weight.clone())
        } else {
            grad
        };
        let (direction, velocity) = if self.momentum > 0.0 {
            // The first step starts the velocity at the gradient, as PyTorch does.
            let velocity = match state.and_then(|state| state.velocity) {
                Some(velocity) => axpby(self.momentum, velocity, 1.0, grad.clone()),
                None => grad.clone(),
            };
            let direction = if self.nesterov {
                axpby(1.0, grad, self.momentum, velocity.clone())
            } else {
                velocity.clone()
            };
            (direction, Some(velocity))
        } else {
            (grad, None)
        };
        (axpby(1.0, weight, -lr, direction), Some(SgdState { velocity }))
    }

    fn to_device<const D: usize>(state: SgdState<D>, device: &Device) -> SgdState<D> {
        SgdState {
            velocity: state.velocity.map(|velocity| velocity.to_device(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
    use burn::tensor::TensorData;

    /// A `Linear(300, 70)` with seeded random weights, on `flex` under autodiff.
    fn layer() -> Linear {
        let device = Device::flex().autodiff();
        let _draws = gaze_nn::device::seeded(&device, 3);
        LinearConfig::new(300, 70).init(&device)
    }

    /// `steps` SGD steps with `optim` on a fixed batch, the learning rate falling step by step.
    fn train(mut layer: Linear, optim: &mut ModuleOptimizer, steps: usize) -> Linear {
        let values = (0..16 * 300)
            .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(values, [16, 300]), &layer.weight.device());
        for step in 0..steps {
            let loss = layer.forward(x.clone()).powf_scalar(2.0).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(0.1 / (step + 1) as f64, layer, grads);
        }
        layer
    }

    fn burns(momentum: f64, weight_decay: f64, nesterov: bool) -> ModuleOptimizer {
        SgdConfig::new()
            .with_momentum((momentum > 0.0).then_some(MomentumConfig {
                momentum,
                dampening: 0.0,
                nesterov,
            }))
            .with_weight_decay((weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)))
            .init()
    }

    fn ours(momentum: f64, weight_decay: f64, nesterov: bool) -> ModuleOptimizer {
        Sgd {
            momentum,
            weight_decay,
            nesterov,
        }
        .into()
    }

    /// The largest difference between the two layers' parameters.
    fn distance(a: &Linear, b: &Linear) -> f32 {
        let bias = |l: &Linear| l.bias.as_ref().expect("a bias").val();
        let dw = (a.weight.val() - b.weight.val()).abs().max().into_scalar::<f32>();
        let db = (bias(a) - bias(b)).abs().max().into_scalar::<f32>();
        dw.max(db)
    }

    #[test]
    fn steps_equal_burns_sgd() {
        let start = layer();
        for (momentum, weight_decay, nesterov) in [
            (0.9, 0.0, false),
            (0.9, 0.05, false),
            (0.9, 0.05, true),
            (0.0, 0.05, false),
        ] {
            let want = train(start.clone(), &mut burns(momentum, weight_decay, nesterov), 3);
            let got = train(start.clone(), &mut ours(momentum, weight_decay, nesterov), 3);
            let moved = distance(&want, &start);
            assert!(moved > 1e-3, "the steps barely moved the weights ({moved})");
            let off = distance(&got, &want);
            assert!(off < 1e-6, "{momentum} {weight_decay} {nesterov}: off by {off}");
        }
    }

    #[test]
    fn resumes_from_a_file_written_by_burns_sgd_and_from_its_own() {
        let dir = std::env::temp_dir().join(format!("gaze-sgd-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut reference = burns(0.9, 0.0, false);
        let halfway = train(layer(), &mut reference, 2);
        let path = dir.join("burn.bpk");
        reference.save(&path).unwrap();
        let want = train(halfway.clone(), &mut reference, 2);
        // Without the velocity the next steps differ, so the comparisons below can fail.
        let fresh = train(halfway.clone(), &mut ours(0.9, 0.0, false), 2);
        assert!(distance(&fresh, &want) > 1e-4, "momentum made no difference");

        let mut resumed = ours(0.9, 0.0, false).load(&path).unwrap();
        let got = train(halfway, &mut resumed, 2);
        assert!(distance(&got, &want) < 1e-6);

        let path = dir.join("ours.bpk");
        resumed.save(&path).unwrap();
        let again = train(got.clone(), &mut ours(0.9, 0.0, false).load(&path).unwrap(), 1);
        assert!(distance(&again, &train(got, &mut resumed, 1)) < 1e-6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
