//! Layer normalisation over the last dimension, forward and backward.

use burn::nn::LayerNorm;
use burn::tensor::Tensor;

/// `norm.forward(x)` for `x` `[..., d]`, `epsilon` being the one `norm` was made with (burn
/// keeps it private). On `flex` each row is normalised in two passes while it is in cache;
/// under autodiff the backward is one pass per row plus the column sums for γ and β, where
/// burn differentiates about ten tensor operations.
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(beta) = &norm.beta
        && crate::flex::on_flex(&x)
        && x.shape().num_elements() > 0
    {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::FusedLayerNorm>::fused_layer_norm(
            x.into_dispatch(),
            norm.gamma.val().into_dispatch(),
            beta.val().into_dispatch(),
            epsilon,
        ));
    }
    let _ = epsilon;
    norm.forward(x)
}

#[cfg(feature = "flex")]
pub(crate) mod flex {

    use crate::flex::*;

    use crate::simd::*;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;

    use std::mem::MaybeUninit;
    use std::sync::Arc;

    /// [`super::layer_norm`]'s fast path: `x` `[..., d]`, `gamma` and `beta` `[d]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedLayerNorm: Backend {
        fn fused_layer_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self>;
    }

    /// The normalised rows, and each row's mean and 1 / standard deviation.
    fn layer_norm_forward(
        x: &FloatTensor<Flex>,
        gamma: &FloatTensor<Flex>,
        beta: &FloatTensor<Flex>,
        epsilon: f64,
    ) -> (FloatTensor<Flex>, Vec<[f32; 2]>) {
        let (x, shape) = dense(x.clone());
        let (gamma, _) = dense(gamma.clone());
        let (beta, _) = dense(beta.clone());
        let d = *shape.last().expect("layer_norm takes at least one dimension");
        let (gamma, beta) = (gamma.storage::<f32>(), beta.storage::<f32>());
        assert!(
            gamma.len() >= d && beta.len() >= d,
            "layer_norm: γ and β are not [{d}]"
        );
        let x = &x.storage::<f32>()[..x.layout().num_elements()];
        let rows = x.len() / d;
        let mut stats = vec![[0f32; 2]; rows];
        let block = CHUNK.div_ceil(d);
        // SAFETY: `norm_rows` writes every element of every chunk.
        let out = unsafe {
            written(x.len(), |out| {
                out.par_chunks_mut(block * d)
                    .zip(x.par_chunks(block * d))
                    .zip(stats.par_chunks_mut(block))
                    .for_each(|((out, x), stats)| {
                        norm_rows(out, x, stats, &gamma[..d], &beta[..d], epsilon as f32)
                    })
            })
        };
        (FloatTensor::<Flex>::from_data(TensorData::new(out, shape)), stats)
    }

    impl FusedLayerNorm for Flex {
        fn fused_layer_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self> {
            layer_norm_forward(&x, &gamma, &beta, epsilon).0
        }
    }

    impl<C: CheckpointStrategy> FusedLayerNorm for Autodiff<Flex, C> {
        fn fused_layer_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self> {
            let nodes = [x.node(), gamma.node(), beta.node()];
            let (x, gamma, beta) = (x.into_primitive(), gamma.into_primitive(), beta.into_primitive());
            let (out, stats) = layer_norm_forward(&x, &gamma, &beta, epsilon);
            match FusedLayerNormBackward
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((x, gamma, Arc::new(stats)), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }

    /// With `x̂ = (x - mean) / σ` and `g` the output's gradient: `dx = (g γ - mean(g γ)
    /// - x̂ mean(g γ x̂)) / σ` per row, `dγ = Σ g x̂` and `dβ = Σ g` over the rows.
    #[derive(Debug)]
    struct FusedLayerNormBackward;

    impl Backward<Flex, 3> for FusedLayerNormBackward {
        type State = (FloatTensor<Flex>, FloatTensor<Flex>, Arc<Vec<[f32; 2]>>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, gamma, stats) = ops.state;
            let (grad, shape) = dense(grads.consume::<Flex>(&ops.node));
            let (x, _) = dense(x);
            let (gamma, _) = dense(gamma);
            let d = *shape.last().expect("rank >= 1");
            let gamma = &gamma.storage::<f32>()[..d];
            let grad = &grad.storage::<f32>()[..stats.len() * d];
            let x = &x.storage::<f32>()[..stats.len() * d];
            let block = CHUNK.div_ceil(d);
            let mut sums = Vec::new();
            let fill = |dx: &mut [MaybeUninit<f32>]| {
                sums = dx
                    .par_chunks_mut(block * d)
                    .zip(grad.par_chunks(block * d))
                    .zip(x.par_chunks(block * d))
                    .zip(stats.par_chunks(block))
                    .map(|(((dx, grad), x), stats)| {
                        let mut sums = (vec![0f32; d], vec![0f32; d]);
                        norm_backward_rows(dx, grad, x, stats, gamma, &mut sums.0, &mut sums.1);
                        sums
                    })
                    .collect();
            };
            // SAFETY: `norm_backward_rows` writes every element of every chunk.
            let dx = unsafe { written(grad.len(), fill) };
            let (dgamma, dbeta) = add_in_order(sums).expect("at least one row");
            let [parent_x, parent_gamma, parent_beta] = ops.parents;
            for (parent, values, shape) in [
                (parent_x, dx, shape),
                (parent_gamma, dgamma, vec![d]),
                (parent_beta, dbeta, vec![d]),
            ] {
                register(grads, parent.map(|node| node.id), values, shape);
            }
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn layer_norm_equals_burns() {
        let (device, _draws) = flex();
        // 384 features (the ViT's) and 13 (a tail past the eight lanes); an offset mean.
        for (d, epsilon) in [(384, 1e-6), (13, 1e-5)] {
            let norm = random_norm(d, epsilon, &device);
            let x = Tensor::<3>::random([3, 50, d], Distribution::Normal(2.0, 3.0), &device);
            let expected = norm.forward(x.clone()).into_data();
            layer_norm(&norm, x, epsilon)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn layer_norm_gradients_equal_burns() {
        let (device, _draws) = autodiff_flex();
        // Enough rows for several parallel blocks (their γ and β sums are added up).
        for (d, rows) in [(384, 200), (13, 3000)] {
            let norm = random_norm(d, 1e-6, &device);
            let x = Tensor::<2>::random([rows, d], Distribution::Normal(2.0, 3.0), &device);
            let weight = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device);
            let beta = norm.beta.as_ref().unwrap();
            // dγ and dβ sum up to 3000 rows of unit-size terms.
            assert_same_gradients(
                (&x, &weight),
                &|x| layer_norm(&norm, x, 1e-6),
                &|x| norm.forward(x),
                &|grads| {
                    vec![
                        ("dγ", norm.gamma.grad(grads).expect("γ is tracked").into_data()),
                        ("dβ", beta.grad(grads).expect("β is tracked").into_data()),
                    ]
                },
                1e-3,
            );
        }
    }

    #[test]
    fn gamma_and_beta_gradients_are_the_same_bits_every_time() {
        // The per-block sums over a training step's rows (8 images of 577 tokens), added in
        // the order of the blocks whichever thread finished first.
        let (device, _draws) = autodiff_flex();
        let norm = random_norm(384, 1e-6, &device);
        let x = Tensor::<2>::random([4616, 384], Distribution::Normal(2.0, 3.0), &device);
        let weight = Tensor::<2>::random([4616, 384], Distribution::Normal(0.0, 1.0), &device);
        let gradients = || {
            let grads = (layer_norm(&norm, x.clone(), 1e-6) * weight.clone())
                .sum()
                .backward();
            let beta = norm.beta.as_ref().unwrap();
            let bits = |t: Tensor<1>| t.into_data().iter::<f32>().map(f32::to_bits).collect::<Vec<_>>();
            (
                bits(norm.gamma.grad(&grads).unwrap()),
                bits(beta.grad(&grads).unwrap()),
            )
        };
        let first = gradients();
        for run in 1..20 {
            assert!(gradients() == first, "run {run} summed dγ or dβ in another order");
        }
    }
}
