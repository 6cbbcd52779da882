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
        let [dim, c_in, kh, kw] = conv.weight.dims();
        let weight = conv.weight.val().reshape([dim, c_in * kh * kw]).swap_dims(0, 1);
        let rows = <Dispatch as flex::PatchRows>::patch_rows(x.into_dispatch(), [kh, kw]);
        return Tensor::from_dispatch(<Dispatch as crate::ops::linear::flex::FusedLinear>::fused_linear(
            rows,
            weight.into_dispatch(),
            bias.val().into_dispatch(),
        ));
    }
    burns_patch_embed(conv, x)
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
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
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
        let (device, _draws) = flex();
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
        let (device, _draws) = autodiff_flex();
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
}
