//! Exact (erf) GELU, forward and backward, as a vectorised kernel on every core.

use burn::tensor::Tensor;
use burn::tensor::activation;

/// Exact GELU, `x * Φ(x)`, as `torch.nn.GELU()` (timm's MLP) computes it.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if crate::flex::on_flex(&x) {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::ErfGelu>::erf_gelu(x.into_dispatch()));
    }
    activation::gelu(x)
}

#[cfg(feature = "flex")]
pub(crate) mod flex {

    use crate::flex::*;

    use crate::simd::*;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;

    /// GELU as a backend extension: `Flex` runs the kernel, `Autodiff<Flex>` records
    /// [`GeluBackward`] around it.
    #[backend_extension(Flex, Autodiff)]
    pub trait ErfGelu: Backend {
        fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl ErfGelu for Flex {
        fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            map_in_place(x, gelu_slice)
        }
    }

    impl<C: CheckpointStrategy> ErfGelu for Autodiff<Flex, C> {
        fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    // The graph keeps the input, so the output is a new buffer (`Flex`'s
                    // in-place kernel would copy the input first).
                    let (input, shape) = dense(x.into_primitive());
                    let values = &input.storage::<f32>()[..input.layout().num_elements()];
                    // SAFETY: `gelu_into` writes every element of every chunk.
                    let out = unsafe {
                        written(values.len(), |out| {
                            out.par_chunks_mut(CHUNK)
                                .zip(values.par_chunks(CHUNK))
                                .for_each(|(out, x)| gelu_into(out, x))
                        })
                    };
                    let out = FloatTensor::<Flex>::from_data(TensorData::new(out, shape));
                    prep.finish(input, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::erf_gelu(x.into_primitive())),
            }
        }
    }

    /// `grad * GELU'(x)`, keeping the input `x` as its state.
    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = FloatTensor<Flex>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                // Read where it lies: the state may still be shared, and a copy cost more
                // than the kernel.
                let (x, _) = dense(x);
                let x = &x.storage::<f32>()[..x.layout().num_elements()];
                let (mut grad, shape) = flex_values(grad);
                grad.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|(grad, x)| gelu_backward_slice(grad, x));
                FloatTensor::<Flex>::from_data(TensorData::new(grad, shape))
            });
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn gelu_equals_burns_gelu() {
        let (device, _draws) = flex();
        let x = Tensor::<3>::random([3, 7, 1000], Distribution::Normal(0.0, 3.0), &device);
        let expected = activation::gelu(x.clone()).into_data();
        // erf's 4.2e-7 times |x| / 2 up to |x| = 4√2 (1.2e-6), plus rounding.
        gelu(x)
            .into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::absolute(2e-6));
    }

    #[test]
    fn gelu_gradient_equals_burns() {
        let (device, _draws) = autodiff_flex();
        // Wide enough for several parallel chunks, and a weighting so each gradient differs.
        let x = Tensor::<2>::random([3, 20000], Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<2>::random([3, 20000], Distribution::Normal(0.0, 1.0), &device);
        // Φ(x) is off by erf's 4.2e-7 / 2, x φ(x) by exp's 2e-7 relative; |w| < 5 or so.
        assert_same_gradients((&x, &w), &gelu, &activation::gelu, &|_| Vec::new(), 2e-6);
        assert!(
            crate::flex::on_flex(&x) && !crate::flex::on_plain_flex(&x),
            "autodiff tensors: GELU yes, attention no"
        );
        assert!(crate::flex::on_plain_flex(&Tensor::<2>::zeros(
            [1, 1],
            &burn::tensor::Device::flex()
        )));
    }
}
