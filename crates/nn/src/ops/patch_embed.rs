//! ViT's patch embedding: a convolution whose stride is its kernel, as a product of patch rows.

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// A patch embedding: `conv.forward(x)` for a convolution whose stride is its kernel (ViT's
/// `patch_embed.proj`), as `[batch, patches, dim]` with the patches row-major over the grid.
/// On `flex` (with autodiff or without) each patch is cut out as one row of a `[batch,
/// patches, c_in * kh * kw]` matrix and the rows go through [`linear`](fn@super::linear)'s kernel, the
/// convolution's weight read in place as the `[c_in * kh * kw, dim]` matrix; `flex`'s own
/// convolution runs mostly on one thread, and its tokens then need a transposing copy.
pub fn patch_embed(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let Some(bias) = &conv.bias
        && flex::cuts_patches(conv, &x)
    {
        use burn::backend::Dispatch;
        let (rows, weight) = flex::rows_and_weight(conv, x);
        return Tensor::from_dispatch(<Dispatch as crate::ops::linear::flex::FusedLinear>::fused_linear(
            rows,
            weight,
            bias.val().into_dispatch(),
        ));
    }
    burns_patch_embed(conv, x)
}

/// [`patch_embed`] with bf16 products: on `flex` the patch rows go through
/// [`linear_bf16`](fn@super::linear_bf16)'s kernel (the images and the kernel rounded there,
/// the weight's gradient rounded as bf16 gradients are); elsewhere burn's convolution takes
/// rounded operands.
pub fn patch_embed_bf16(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let Some(bias) = &conv.bias
        && flex::cuts_patches(conv, &x)
    {
        use burn::backend::Dispatch;
        let (rows, weight) = flex::rows_and_weight(conv, x);
        return Tensor::from_dispatch(
            <Dispatch as crate::ops::linear_bf16::flex::FusedLinearBf16>::fused_linear_bf16(
                rows,
                weight,
                bias.val().into_dispatch(),
            ),
        );
    }
    rounded_patch_embed(conv, x)
}

/// burn's patch embedding of the operands rounded to bf16: [`patch_embed_bf16`]'s path off
/// `flex`, and its reference.
fn rounded_patch_embed(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    use super::bf16::round_to_bf16;
    let mut rounded = conv.clone();
    rounded.weight = rounded.weight.map(round_to_bf16);
    burns_patch_embed(&rounded, round_to_bf16(x))
}

/// burn's own patch embedding, the convolution with its grid flattened into tokens: what
/// [`patch_embed`] runs off its fast path, and what the tests hold that path to.
fn burns_patch_embed(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    conv.forward(x) // [batch, dim, gh, gw]
        .flatten::<3>(2, 3)
        .swap_dims(1, 2)
}

#[cfg(feature = "flex")]
pub(crate) mod flex {
    use super::*;
    use crate::flex::*;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;

    use std::mem::MaybeUninit;

    /// Whether [`super::patch_embed`] can cut `x` into patch rows for `conv`: `f32` on `flex`,
    /// one group, stride equal to the kernel, no dilation or padding, and a plane that the
    /// kernel tiles exactly (else the convolution drops the border, which `flex`'s own handles).
    pub fn cuts_patches(conv: &Conv2d, x: &Tensor<4>) -> bool {
        use burn::nn::PaddingConfig2d;
        let [_, _, h, w] = x.dims();
        let [kh, kw] = conv.kernel_size;
        let unpadded = match conv.padding {
            PaddingConfig2d::Valid => true,
            PaddingConfig2d::Explicit(top, left, bottom, right) => top + left + bottom + right == 0,
            _ => false,
        };
        on_flex(x)
            && on_flex(&conv.weight.val())
            && conv.groups == 1
            && conv.stride == conv.kernel_size
            && conv.dilation == [1, 1]
            && unpadded
            && h % kh == 0
            && w % kw == 0
    }

    /// The patch rows of `x` and the convolution's weight read in place as the `[c_in * kh *
    /// kw, dim]` matrix that multiplies them.
    pub fn rows_and_weight(conv: &Conv2d, x: Tensor<4>) -> (FloatTensor<Dispatch>, FloatTensor<Dispatch>) {
        let [dim, c_in, kh, kw] = conv.weight.dims();
        let weight = conv.weight.val().reshape([dim, c_in * kh * kw]).swap_dims(0, 1);
        let rows = <Dispatch as PatchRows>::patch_rows(x.into_dispatch(), [kh, kw]);
        (rows, weight.into_dispatch())
    }

    /// `[batch, c, gh * kh, gw * kw]` cut into `[batch, gh * gw, c * kh * kw]`: one row per
    /// patch, row-major over the grid, holding the patch in the order of a `[c, kh, kw]`
    /// convolution kernel.
    #[backend_extension(Flex, Autodiff)]
    pub trait PatchRows: Backend {
        fn patch_rows(x: FloatTensor<Self>, patch: [usize; 2]) -> FloatTensor<Self>;
    }

    impl PatchRows for Flex {
        fn patch_rows(x: FloatTensor<Self>, [kh, kw]: [usize; 2]) -> FloatTensor<Self> {
            let (x, [batch, c, h, w]) = contiguous(x);
            assert!(
                h % kh == 0 && w % kw == 0,
                "patch_rows: the patches do not tile the plane"
            );
            let (gh, gw) = (h / kh, w / kw);
            let row = c * kh * kw;
            let x = &x.storage::<f32>()[..batch * c * h * w];
            // One task per grid row of an image: its patches, read from `c * kh` image rows.
            let fill = |out: &mut [MaybeUninit<f32>]| {
                out.par_chunks_mut(gw * row)
                    .enumerate()
                    .for_each(|(task, strip)| {
                        let (image, gy) = (task / gh, task % gh);
                        for (gx, patch) in strip.chunks_exact_mut(row).enumerate() {
                            for (line, piece) in patch.chunks_exact_mut(kw).enumerate() {
                                let (channel, ky) = (line / kh, line % kh);
                                let start = ((image * c + channel) * h + gy * kh + ky) * w + gx * kw;
                                piece.write_copy_of_slice(&x[start..start + kw]);
                            }
                        }
                    })
            };
            // SAFETY: the patches tile the plane, so every row is written whole.
            let out = unsafe { written(batch * c * h * w, fill) };
            FloatTensor::<Flex>::from_data(TensorData::new(out, [batch, gh * gw, row]))
        }
    }

    impl<C: CheckpointStrategy> PatchRows for Autodiff<Flex, C> {
        fn patch_rows(x: FloatTensor<Self>, patch: [usize; 2]) -> FloatTensor<Self> {
            match PatchRowsBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let x = x.into_primitive();
                    let dims = x.layout().shape().to_vec();
                    let dims = [dims[0], dims[1], dims[2], dims[3]];
                    prep.finish((dims, patch), Flex::patch_rows(x, patch))
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::patch_rows(x.into_primitive(), patch)),
            }
        }
    }

    /// The image's gradient: each patch row's gradient put back where the patch was cut from
    /// (the patches do not overlap, so nothing is summed). The image of a training step is
    /// data, so this runs only when an input is tracked (a test, an input-gradient map).
    #[derive(Debug)]
    struct PatchRowsBackward;

    impl Backward<Flex, 1> for PatchRowsBackward {
        type State = ([usize; 4], [usize; 2]);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let ([batch, c, h, w], [kh, kw]) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let (grad, _) = dense(grad);
                let grad = &grad.storage::<f32>()[..batch * c * h * w];
                let (gh, gw) = (h / kh, w / kw);
                let row = c * kh * kw;
                // One task per band of `kh` image rows of one channel.
                let fill = |dx: &mut [MaybeUninit<f32>]| {
                    dx.par_chunks_mut(kh * w).enumerate().for_each(|(task, band)| {
                        let (image, channel, gy) = (task / (c * gh), task / gh % c, task % gh);
                        for (ky, line) in band.chunks_exact_mut(w).enumerate() {
                            for (gx, piece) in line.chunks_exact_mut(kw).enumerate() {
                                let start = ((image * gh + gy) * gw + gx) * row + (channel * kh + ky) * kw;
                                piece.write_copy_of_slice(&grad[start..start + kw]);
                            }
                        }
                    })
                };
                // SAFETY: the bands tile the image, each written whole.
                let dx = unsafe { written(batch * c * h * w, fill) };
                FloatTensor::<Flex>::from_data(TensorData::new(dx, [batch, c, h, w]))
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
    fn patch_embed_equals_burns_convolution() {
        let device = flex();
        // Square and oblong patches on a non-square plane, read through a permute; a stride
        // that is not the kernel and a plane the kernel does not tile take burn's path.
        for (kernel, stride, [h, w], cut) in [
            ([4, 4], [4, 4], [12, 8], true),
            ([2, 3], [2, 3], [6, 12], true),
            ([4, 4], [2, 2], [12, 8], false),
            ([4, 4], [4, 4], [13, 8], false),
        ] {
            let conv = patch_conv(kernel, stride, &device);
            let x =
                Tensor::<4>::random([2, 5, w, h], Distribution::Normal(0.0, 1.0), &device).swap_dims(2, 3);
            assert_eq!(
                flex::cuts_patches(&conv, &x),
                cut,
                "{kernel:?} {stride:?} {h}x{w}"
            );
            let expected = burns_patch_embed(&conv, x.clone()).into_data();
            let got = patch_embed(&conv, x).into_data();
            assert_eq!(got.shape(), expected.shape());
            got.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn patch_embed_gradients_equal_burns() {
        let device = flex().autodiff();
        let conv = patch_conv([2, 3], [2, 3], &device);
        let x = Tensor::<4>::random([2, 5, 6, 12], Distribution::Normal(0.0, 1.0), &device);
        // The tokens `[2, 12, 7]` with a leading 1, so input and output share a rank.
        let weight = Tensor::<4>::random([1, 2, 12, 7], Distribution::Normal(0.0, 1.0), &device);
        let bias = conv.bias.as_ref().unwrap();
        assert!(flex::cuts_patches(&conv, &x));
        // dw and db sum 24 products of unit normals.
        assert_same_gradients(
            (&x, &weight),
            &|x| patch_embed(&conv, x).unsqueeze(),
            &|x| burns_patch_embed(&conv, x).unsqueeze(),
            &|grads| {
                vec![
                    (
                        "dw",
                        conv.weight.grad(grads).expect("weight is tracked").into_data(),
                    ),
                    ("db", bias.grad(grads).expect("bias is tracked").into_data()),
                ]
            },
            1e-4,
        );
    }

    #[test]
    fn bf16_patch_embedding_equals_rounded_operands_with_gradients() {
        let device = flex().autodiff();
        let conv = patch_conv([2, 3], [2, 3], &device);
        let x = Tensor::<4>::random([2, 5, 6, 12], Distribution::Normal(0.0, 1.0), &device);
        let dy = Tensor::<3>::random([2, 12, 7], Distribution::Normal(0.0, 1.0), &device);
        assert!(flex::cuts_patches(&conv, &x));
        // The output and the gradients of x, the weight and the bias, flattened.
        let run =
            |f: &dyn Fn(&Conv2d, Tensor<4>) -> Tensor<3>, conv: &Conv2d, x: Tensor<4>, dy: Tensor<3>| {
                let x = x.require_grad();
                let out = f(conv, x.clone());
                let grads = (out.clone() * dy).sum().backward();
                let dw = conv.weight.grad(&grads).expect("weight is tracked");
                let db = conv.bias.as_ref().unwrap().grad(&grads).expect("bias is tracked");
                [
                    out.inner().reshape([-1]),
                    x.grad(&grads).expect("x is tracked").reshape([-1]),
                    dw.reshape([-1]),
                    db,
                ]
            };
        let got = run(&patch_embed_bf16, &conv, x.clone(), dy.clone());
        let want = run(&rounded_patch_embed, &conv, x.clone(), dy.clone());
        // The same sums of the same rounded operands but for the output's gradient, which the
        // kernel rounds before its products (2^-9 of each term). Gradients rounded to bf16 from
        // sums that differ may land a step apart (2^-7 relative at most). Both bounded by 2^-6
        // of the sums of the terms' magnitudes, which the same sums of absolute values give.
        let mut magnitude_conv = conv.clone();
        magnitude_conv.weight = magnitude_conv.weight.map(|w| w.abs().detach().require_grad());
        magnitude_conv.bias = magnitude_conv
            .bias
            .map(|b| b.map(|b| b.abs().detach().require_grad()));
        let magnitudes = run(&rounded_patch_embed, &magnitude_conv, x.clone().abs(), dy.abs());
        for (((name, got), want), magnitude) in ["output", "dx", "dw", "db"]
            .iter()
            .zip(got)
            .zip(want)
            .zip(magnitudes)
        {
            let excess: f32 = ((got - want).abs() - magnitude * 2f32.powi(-6) - 1e-6)
                .max()
                .into_scalar();
            assert!(excess <= 0.0, "{name}: beyond the bound by {excess}");
        }
        // Not the fp32 embedding: the operands were rounded.
        let moved: f32 = (patch_embed(&conv, x.clone()) - patch_embed_bf16(&conv, x))
            .abs()
            .max()
            .into_scalar();
        assert!(moved > 1e-4, "bf16 moved the embedding by {moved}");
    }
}
