//! The linear layer with bf16 products, `round(x) round(W) + b`, forward and backward: what
//! [`crate::ops::Precision::linear`] runs in bf16.
//!
//! On `flex` the products are [`crate::bf16_panels`]' (`vdpbf16ps` where the CPU has
//! AVX512_BF16, its exact emulation elsewhere). The backward multiplies bf16 operands too,
//! `dX = round(dY) round(W)ᵀ` and `dW = round(X)ᵀ round(dY)`, and rounds both to bf16 as the
//! gradients of bf16 tensors are; `db` sums `dY` in f32. The reference path is burn's
//! operations on rounded operands.

use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::ops::bf16::round_to_bf16;

/// `x W + b` with `x` and `W` rounded to bf16 and f32 accumulation, `x` `[..., d_in]`.
pub fn linear_bf16<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    fused_or_reference(layer, x, false)
}

/// [`linear_bf16`] whose output is a product operand, rounded to bf16 (and its gradient with
/// it, as [`round_to_bf16`] does): on `flex` rounded by the tasks that write it, while it is
/// in cache.
pub fn linear_bf16_operand<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    fused_or_reference(layer, x, true)
}

fn fused_or_reference<const D: usize>(layer: &Linear, x: Tensor<D>, rounded: bool) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(bias) = &layer.bias
        && crate::flex::on_flex(&x)
        && crate::flex::on_flex(&layer.weight.val())
    {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::FusedLinearBf16>::fused_linear_bf16(
            x.into_dispatch(),
            layer.weight.val().into_dispatch(),
            bias.val().into_dispatch(),
            rounded,
        ));
    }
    let y = reference(layer, x);
    if rounded { round_to_bf16(y) } else { y }
}

/// [`linear_bf16`] by burn's operations: the operands rounded, then an f32 product (whose
/// sums may be added in another order than the kernels').
pub fn reference<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let rounded = Linear {
        weight: layer.weight.clone().map(round_to_bf16),
        bias: layer.bias.clone(),
    };
    rounded.forward(round_to_bf16(x))
}

#[cfg(feature = "flex")]
pub(crate) mod flex {
    use crate::bf16_panels::{Bf16Kernel, Bf16Panels, product_rows_bf16};
    use crate::flex::*;
    use crate::gemm::Operand;
    use crate::ops::linear::flex::{Packing, kept};
    use crate::simd::round_to_bf16_slice;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use std::sync::Arc;

    /// [`super::linear_bf16`]'s fast path: `x` `[..., d_in]`, `weight` `[d_in, d_out]`,
    /// `bias` `[d_out]`; with `rounded`, [`super::linear_bf16_operand`]'s.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedLinearBf16: Backend {
        fn fused_linear_bf16(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            rounded: bool,
        ) -> FloatTensor<Self>;
    }

    impl FusedLinearBf16 for Flex {
        fn fused_linear_bf16(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            rounded: bool,
        ) -> FloatTensor<Self> {
            forward(x, weight, bias, Packing::Keep, rounded)
        }
    }

    fn forward(
        x: FloatTensor<Flex>,
        weight: FloatTensor<Flex>,
        bias: FloatTensor<Flex>,
        packing: Packing,
        rounded: bool,
    ) -> FloatTensor<Flex> {
        let (x, mut shape) = dense(x);
        let weight = Operand::new(&weight);
        let (bias, _) = dense(bias);
        let d_in = shape.pop().expect("linear takes at least one dimension");
        let rows = shape.iter().product();
        assert_eq!(
            weight.rows, d_in,
            "linear: the input's last dimension is not d_in"
        );
        shape.push(weight.cols);
        if rows == 0 || d_in == 0 {
            // Nothing to multiply: as the f32 layer does.
            let y = crate::ops::linear::flex::linear_forward(x, weight.tensor.clone(), bias, packing);
            return if rounded {
                map_in_place(y, round_to_bf16_slice)
            } else {
                y
            };
        }
        let panels = match packing {
            Packing::Keep => kept(&weight, Bf16Panels::bytes, |w| Some(w.bf16_panels())).expect("packed"),
            Packing::Once => Arc::new(weight.bf16_panels()),
        };
        let out = product_rows_bf16(
            Bf16Kernel::detect(),
            (x.storage(), 1, d_in),
            rows,
            &panels,
            Some(bias.storage()),
            rounded,
        );
        FloatTensor::<Flex>::from_data(TensorData::new(out, shape))
    }

    impl<C: CheckpointStrategy> FusedLinearBf16 for Autodiff<Flex, C> {
        fn fused_linear_bf16(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            rounded: bool,
        ) -> FloatTensor<Self> {
            let nodes = [x.node(), weight.node(), bias.node()];
            let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
            match (LinearBf16Backward { rounded })
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let out = forward(x.clone(), weight.clone(), bias, Packing::Once, rounded);
                    prep.finish((x, weight), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(forward(x, weight, bias, Packing::Once, rounded)),
            }
        }
    }

    /// With `dY` the output's gradient, flattened to `[rows, d_out]`: `dX = round(dY)
    /// round(W)ᵀ` and `dW = round(X)ᵀ round(dY)`, each rounded to bf16, and `db` the column
    /// sums of `dY`, or of `round(dY)` where the output was rounded (the products' operands
    /// are rounded already, so no pass rounds `dY` itself).
    #[derive(Debug)]
    struct LinearBf16Backward {
        rounded: bool,
    }

    impl Backward<Flex, 3> for LinearBf16Backward {
        type State = (FloatTensor<Flex>, FloatTensor<Flex>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, weight) = ops.state;
            let (grad, x_shape) = dense(grads.consume::<Flex>(&ops.node));
            let weight = Operand::new(&weight);
            let (d_in, d_out) = (weight.rows, weight.cols);
            let rows = grad.layout().num_elements() / d_out;
            let grad = grad.storage::<f32>();
            let kernel = Bf16Kernel::detect();
            let [parent_x, parent_weight, parent_bias] = ops.parents;
            if let Some(node) = parent_x {
                let mut shape = x_shape;
                *shape.last_mut().expect("rank >= 1") = d_in;
                let dx = if rows * d_in * d_out == 0 {
                    vec![0f32; rows * d_in]
                } else {
                    // Wᵀ is W read with its strides swapped.
                    let transposed = Bf16Panels::pack((weight.values(), weight.rs, weight.cs), [d_out, d_in]);
                    product_rows_bf16(kernel, (grad, 1, d_out), rows, &transposed, None, true)
                };
                register(grads, Some(node.id), dx, shape);
            }
            // dY packed for dW, its columns summed for db on the way.
            let wanted = parent_weight.is_some() || parent_bias.is_some();
            let packed = (wanted && rows * d_out > 0).then(|| {
                if self.rounded {
                    Bf16Panels::pack_with_rounded_column_sums((grad, d_out), [rows, d_out])
                } else {
                    Bf16Panels::pack_with_column_sums((grad, d_out), [rows, d_out])
                }
            });
            if let Some(node) = parent_weight {
                let dw = match &packed {
                    Some((dy, _)) => {
                        let (x, _) = dense(x);
                        // Xᵀ is X [rows, d_in] read with its strides swapped.
                        product_rows_bf16(kernel, (x.storage(), d_in, 1), d_in, dy, None, true)
                    }
                    None => vec![0f32; d_in * d_out],
                };
                register(grads, Some(node.id), dw, vec![d_in, d_out]);
            }
            if let Some(node) = parent_bias {
                let db = packed.map_or_else(|| vec![0f32; d_out], |(_, db)| db);
                register(grads, Some(node.id), db, vec![d_out]);
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
    fn the_fast_path_equals_the_reference() {
        let (device, _draws) = flex();
        // 2100 rows: row blocks over the threads; 10 rows: one block; a transposed weight.
        for (shape, transposed) in [([3, 700, 24], false), ([2, 5, 24], true)] {
            let layer = random_linear(24, 17, transposed, &device);
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let want = reference(&layer, x.clone()).into_data();
            linear_bf16(&layer, x)
                .into_data()
                .assert_approx_eq::<f32>(&want, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn an_operand_output_equals_the_rounded_output_with_its_gradients_bit_for_bit() {
        let (device, _draws) = autodiff_flex();
        let layer = random_linear(40, 24, false, &device);
        let x = Tensor::<3>::random([2, 300, 40], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let dy = Tensor::<3>::random([2, 300, 24], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let y = if fused {
                linear_bf16_operand(&layer, x.clone())
            } else {
                round_to_bf16(linear_bf16(&layer, x.clone()))
            };
            let grads = (y.clone() * dy.clone()).sum().backward();
            let bias = layer.bias.as_ref().unwrap();
            [
                y.into_data(),
                x.grad(&grads).unwrap().into_data(),
                layer.weight.grad(&grads).unwrap().into_data(),
                bias.grad(&grads).unwrap().into_data(),
            ]
        };
        let (got, want) = (run(true), run(false));
        // The rounding moves the output, so a fused layer that skipped it would fail below.
        assert_ne!(want[0], linear_bf16(&layer, x.clone()).into_data());
        for (part, (got, want)) in ["y", "dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
            assert_eq!(got, want, "{part}");
        }
    }

    #[test]
    fn gradients_are_bf16_products_of_rounded_operands() {
        let (device, _draws) = autodiff_flex();
        let layer = random_linear(40, 24, false, &device);
        let x = Tensor::<3>::random([2, 300, 40], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let dy = Tensor::<3>::random([2, 300, 24], Distribution::Normal(0.0, 1.0), &device);
        let grads = (linear_bf16(&layer, x.clone()) * dy.clone()).sum().backward();
        let round = |t: Tensor<2>| round_to_bf16(t.detach());
        let (x2, dy2) = (
            round(x.clone().reshape([600, 40])),
            round(dy.clone().reshape([600, 24])),
        );
        let w = round(layer.weight.val());
        // Sums of up to 600 products of about unit size, each operand exact in bf16: the sums'
        // order alone differs (1e-4), while the final rounding to bf16 moves by up to 2^-9
        // relative.
        let close = |got: Tensor<2>, want: Tensor<2>| {
            let bound = want.clone().abs() * 2f32.powi(-8) + 1e-3;
            let excess: f32 = ((got - want).abs() - bound).max().into_scalar();
            assert!(excess <= 0.0, "beyond the bound by {excess}");
        };
        let dx: Tensor<2> = x.grad(&grads).unwrap().reshape([600, 40]);
        close(dx.clone(), dy2.clone().matmul(w.transpose()));
        let dw = layer.weight.grad(&grads).unwrap();
        close(dw.clone(), x2.transpose().matmul(dy2));
        // Both gradients are bf16 values.
        for g in [dx, dw] {
            let again = round_to_bf16(g.clone());
            assert_eq!(g.into_data(), again.into_data());
        }
        let db = layer.bias.as_ref().unwrap().grad(&grads).unwrap();
        db.into_data().assert_approx_eq::<f32>(
            &dy.detach().sum_dim(0).sum_dim(1).reshape([24]).into_data(),
            Tolerance::absolute(1e-3),
        );
    }
}
