//! A convolution followed by a frozen batch norm (and ReLU), as CATR's ResNet runs them.

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::activation;

/// `conv.forward(x) * scale + shift` per output channel, then ReLU if `relu`: a convolution
/// followed by a frozen batch norm, for `x` `[batch, c_in, h, w]`. On `flex` outside autodiff
/// (`groups = 1`, symmetric padding) it is one im2col matrix per image (none for a plain 1x1
/// convolution), one GEMM split over the cores and one pass for the affine and ReLU. `flex`
/// itself tiles the output positions by 512, converts the input to NHWC and reorders the
/// weight on every call, and the batch norm and ReLU are three more passes over the output.
pub fn conv_bn(conv: &Conv2d, x: Tensor<4>, scale: Tensor<1>, shift: Tensor<1>, relu: bool) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(padding) = flex::im2col_padding(conv, &x) {
        use burn::backend::Dispatch;
        // (W x + b) * scale + shift = (W x) * scale + (b * scale + shift).
        let shift = match &conv.bias {
            Some(bias) => shift + bias.val() * scale.clone(),
            None => shift,
        };
        return Tensor::from_dispatch(<Dispatch as flex::FusedConvBn>::fused_conv_bn(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
            [conv.stride, conv.dilation, padding],
            relu,
        ));
    }
    let [c] = scale.dims();
    let y = conv.forward(x) * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1]);
    if relu { activation::relu(y) } else { y }
}

#[cfg(feature = "flex")]
pub(crate) mod flex {
    use super::*;
    use crate::flex::*;
    use crate::gemm::*;
    use crate::simd::*;

    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;

    use std::mem::MaybeUninit;

    /// [`super::conv_bn`]'s fast path: `x` `[batch, c_in, h, w]`, `weight`
    /// `[c_out, c_in, kh, kw]`, `scale` and `shift` `[c_out]`, and `[stride, dilation,
    /// padding]` (each `[along h, along w]`).
    #[backend_extension(Flex)]
    pub trait FusedConvBn: Backend {
        fn fused_conv_bn(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            scale: FloatTensor<Self>,
            shift: FloatTensor<Self>,
            geometry: [[usize; 2]; 3],
            relu: bool,
        ) -> FloatTensor<Self>;
    }

    impl FusedConvBn for Flex {
        fn fused_conv_bn(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            scale: FloatTensor<Self>,
            shift: FloatTensor<Self>,
            geometry: [[usize; 2]; 3],
            relu: bool,
        ) -> FloatTensor<Self> {
            let [stride, dilation, padding] = geometry;
            let (x, [batch, c_in, h, w]) = contiguous(x);
            let (weight, [c_out, _, kh, kw]) = contiguous(weight);
            let (scale, _) = flex_values(scale);
            let (shift, _) = flex_values(shift);
            let out_size = |size: usize, k: usize, i: usize| {
                (size + 2 * padding[i]).saturating_sub(dilation[i] * (k - 1) + 1) / stride[i] + 1
            };
            let (oh, ow) = (out_size(h, kh, 0), out_size(w, kw, 1));
            let (x, weight): (&[f32], &[f32]) = (x.storage(), weight.storage());
            let rows = c_in * kh * kw;
            // A 1x1 convolution with stride 1 and no padding multiplies the image itself.
            let direct = kh * kw == 1 && stride == [1, 1] && padding == [0, 0];
            let mut cols = vec![0f32; if direct { 0 } else { rows * oh * ow }];
            let fill = |out: &mut [MaybeUninit<f32>]| {
                for (image, out) in x
                    .chunks_exact(c_in * h * w)
                    .zip(out.chunks_exact_mut(c_out * oh * ow))
                {
                    if !direct {
                        im2col(&mut cols, image, [h, w], [kh, kw], geometry, [oh, ow]);
                    }
                    let rhs = if direct { image } else { &cols };
                    let out = gemm_into(
                        out,
                        [c_out, oh * ow, rows],
                        (weight, 1, rows),
                        (rhs, 1, oh * ow),
                        1.0,
                        gemm::Parallelism::Rayon(0),
                    );
                    out.par_chunks_mut(oh * ow)
                        .zip(scale.par_iter().zip(&shift))
                        .for_each(|(channel, (&scale, &shift))| affine(channel, scale, shift, relu));
                }
            };
            // SAFETY: each image's `[c_out, oh, ow]` block is written whole by its GEMM.
            let out = unsafe { written(batch * c_out * oh * ow, fill) };
            FloatTensor::<Flex>::from_data(TensorData::new(out, [batch, c_out, oh, ow]))
        }
    }

    /// `cols[(c, ky, kx), (oy, ox)] = image[c, oy·s + ky·d − p, ox·s + kx·d − p]`, or 0 outside
    /// the image, for one `[c, h, w]` image; each channel on its own task.
    fn im2col(
        cols: &mut [f32],
        image: &[f32],
        [h, w]: [usize; 2],
        [kh, kw]: [usize; 2],
        [stride, dilation, padding]: [[usize; 2]; 3],
        [oh, ow]: [usize; 2],
    ) {
        cols.par_chunks_mut(kh * kw * oh * ow)
            .zip(image.par_chunks(h * w))
            .for_each(|(cols, plane)| {
                for (k, cols) in cols.chunks_exact_mut(oh * ow).enumerate() {
                    let (ky, kx) = (k / kw, k % kw);
                    for (oy, row) in cols.chunks_exact_mut(ow).enumerate() {
                        let iy = (oy * stride[0] + ky * dilation[0]).wrapping_sub(padding[0]);
                        if iy >= h {
                            row.fill(0.0);
                            continue;
                        }
                        let source = &plane[iy * w..][..w];
                        for (ox, v) in row.iter_mut().enumerate() {
                            let ix = (ox * stride[1] + kx * dilation[1]).wrapping_sub(padding[1]);
                            *v = if ix < w { source[ix] } else { 0.0 };
                        }
                    }
                }
            });
    }

    /// The padding [`FusedConvBn`] takes for `conv` on `x`, if it applies: `f32` on `flex`
    /// without autodiff, `groups = 1`, symmetric padding.
    pub fn im2col_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 2]> {
        use burn::nn::PaddingConfig2d;
        if conv.groups != 1 || !on_plain_flex(x) || !on_plain_flex(&conv.weight.val()) {
            return None;
        }
        match conv.padding {
            PaddingConfig2d::Valid => Some([0, 0]),
            PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
                Some([top, left])
            }
            _ => None,
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn conv2d_affine_equals_burns_convolution_and_affine() {
        use burn::nn::PaddingConfig2d;
        use burn::nn::conv::Conv2dConfig;
        let (device, _draws) = flex();
        // (kernel, stride, dilation, padding (h, w), bias, relu)
        let cases = [
            ([3, 3], 1, 1, (1, 1), false, true),
            ([3, 3], 2, 1, (1, 1), false, false),
            ([3, 3], 1, 2, (2, 2), false, true),
            ([7, 7], 2, 1, (3, 3), true, true),
            ([3, 1], 1, 1, (1, 0), true, false),
            ([2, 2], 2, 1, (0, 0), false, false),
            ([1, 1], 1, 1, (0, 0), true, true),
            ([1, 1], 2, 1, (0, 0), false, false),
        ];
        for (kernel, stride, dilation, (ph, pw), bias, relu) in cases {
            let conv = Conv2dConfig::new([5, 7], kernel)
                .with_stride([stride, stride])
                .with_dilation([dilation, dilation])
                .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
                .with_bias(bias)
                .init(&device);
            // Non-contiguous (as after a permute), two images, a non-square plane.
            let x =
                Tensor::<4>::random([2, 5, 13, 10], Distribution::Normal(0.0, 1.0), &device).swap_dims(2, 3);
            let scale = Tensor::<1>::random([7], Distribution::Normal(0.0, 1.0), &device);
            let shift = Tensor::<1>::random([7], Distribution::Normal(0.0, 1.0), &device);
            assert!(flex::im2col_padding(&conv, &x).is_some());
            let y = conv.forward(x.clone()) * scale.clone().reshape([1, 7, 1, 1])
                + shift.clone().reshape([1, 7, 1, 1]);
            let expected = if relu { activation::relu(y) } else { y }.into_data();
            conv_bn(&conv, x, scale, shift, relu)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }
}
