//! bf16 matrix products: each product's operands rounded to the nearest bf16 (ties to even)
//! and multiplied with f32 accumulation. Master weights, optimiser state, softmax, layer-norm
//! statistics and the loss stay f32. The gradient passes through the rounding and is itself
//! rounded to bf16, as autocast's gradients of bf16 activations are.
//!
//! The linear layers' products, forward and backward, and attention's (all but dQ and dK, see
//! [`crate::ops::attention::attention_bf16`]) run on gaze's bf16 kernel: AVX512_BF16's
//! `vdpbf16ps` where the CPU has it, else an emulation that gives the same bits more slowly.
//! The patch embedding multiplies rounded operands with its f32 kernel. Runs on `flex` only;
//! other backends refuse it ([`Precision::prepare`]).

use std::fmt;
use std::str::FromStr;

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// How a model's matrix products run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and products.
    #[default]
    Fp32,
    /// bf16 operands, f32 accumulation (see the module).
    Bf16,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision {other:?}: use fp32 or bf16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// Whether `device` can run this precision (bf16 needs the `flex` device), and the one
    /// line to print before a bf16 run: which kernel multiplies (the emulation is slower than fp32).
    pub fn prepare(self, device: &Device) -> Result<Option<String>, String> {
        if self == Precision::Fp32 {
            return Ok(None);
        }
        if !on_flex_device(device) {
            return Err(
                "bf16 precision runs on the flex device (the CPU) only: pass --device flex, or --precision fp32 (run.precision = \"fp32\") on this device"
                    .into(),
            );
        }
        Ok(Some(if cpu_has_avx512_bf16() {
            "bf16: the linear layers multiply with AVX512_BF16 (vdpbf16ps)".to_string()
        } else {
            "bf16: this CPU has no bf16 instructions, so the products are emulated (operands rounded to bf16, f32 arithmetic): slower than fp32".to_string()
        }))
    }

    /// `x` as a product operand: unchanged in fp32, rounded to bf16 in bf16.
    pub fn operand<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Precision::Fp32 => x,
            Precision::Bf16 => round_to_bf16(x),
        }
    }

    /// [`crate::ops::linear`], or in bf16 [`crate::ops::linear_bf16`] (the input and weight as
    /// product operands, the bias added in f32).
    pub fn linear<const D: usize>(self, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        match self {
            Precision::Fp32 => crate::ops::linear(layer, x),
            Precision::Bf16 => crate::ops::linear_bf16(layer, x),
        }
    }

    /// [`Self::linear`] whose output is a product operand ([`Self::operand`]), in bf16
    /// rounded as it is written ([`crate::ops::linear_bf16::linear_bf16_operand`]).
    pub fn linear_operand<const D: usize>(self, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        match self {
            Precision::Fp32 => crate::ops::linear(layer, x),
            Precision::Bf16 => crate::ops::linear_bf16::linear_bf16_operand(layer, x),
        }
    }

    /// [`crate::ops::attention`] on a projection whose queries, keys and values are already
    /// product operands; in bf16 the probabilities become one too
    /// ([`crate::ops::attention::attention_bf16`]).
    pub fn attention(self, qkv: Tensor<3>, heads: usize) -> Tensor<3> {
        match self {
            Precision::Fp32 => crate::ops::attention(qkv, heads),
            Precision::Bf16 => crate::ops::attention::attention_bf16(qkv, heads),
        }
    }

    /// [`crate::ops::patch_embed`] with the images and the kernel as product operands.
    pub fn patch_embed(self, conv: &Conv2d, images: Tensor<4>) -> Tensor<3> {
        if self == Precision::Fp32 {
            return crate::ops::patch_embed(conv, images);
        }
        let mut rounded = conv.clone();
        rounded.weight = rounded.weight.map(round_to_bf16);
        crate::ops::patch_embed(&rounded, self.operand(images))
    }
}

/// Every value rounded to the nearest bf16 (ties to even; NaN stays NaN), kept as f32. The
/// gradient passes through, rounded to bf16.
pub fn round_to_bf16<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if crate::flex::on_flex(&x) {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::RoundToBf16>::round_to_bf16(x.into_dispatch()));
    }
    round_by_casting(x)
}

/// [`round_to_bf16`] by burn's casts: its path off `flex`, and its reference.
fn round_by_casting<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.cast(FloatDType::BF16).cast(FloatDType::F32)
}

#[cfg(feature = "flex")]
mod flex {
    use crate::flex::*;
    use crate::simd::round_to_bf16_slice;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, unary};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};

    /// [`super::round_to_bf16`] in one vectorised pass over the cores (burn's two casts
    /// convert one value at a time).
    #[backend_extension(Flex, Autodiff)]
    pub trait RoundToBf16: Backend {
        fn round_to_bf16(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl RoundToBf16 for Flex {
        fn round_to_bf16(x: FloatTensor<Self>) -> FloatTensor<Self> {
            map_in_place(x, round_to_bf16_slice)
        }
    }

    impl<C: CheckpointStrategy> RoundToBf16 for Autodiff<Flex, C> {
        fn round_to_bf16(x: FloatTensor<Self>) -> FloatTensor<Self> {
            RoundToBf16Backward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateless(Flex::round_to_bf16(x.into_primitive()))
        }
    }

    /// The gradient passes through, rounded to bf16.
    #[derive(Debug)]
    struct RoundToBf16Backward;

    impl Backward<Flex, 1> for RoundToBf16Backward {
        type State = ();

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            unary::<Flex, _>(ops.parents, ops.node, grads, Flex::round_to_bf16);
        }
    }
}

/// The reference for [`round_to_bf16`] on one value: add half a bf16 unit in the last place,
/// less one unless the kept part is odd, and drop the low 16 bits. Branch-free, so that the
/// kernels' loops over it vectorise.
#[inline(always)]
pub fn round_to_bf16_scalar(x: f32) -> f32 {
    let bits = x.to_bits();
    let odd = (bits >> 16) & 1;
    let rounded = f32::from_bits(bits.wrapping_add(0x7fff + odd) & 0xffff_0000);
    if x.is_nan() { x } else { rounded }
}

fn on_flex_device(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    return device.clone().inner() == Device::flex();
    #[cfg(not(feature = "flex"))]
    return {
        let _ = device;
        false
    };
}

/// Whether the CPU has `vdpbf16ps`.
pub fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn rounding_is_to_nearest_with_ties_to_even() {
        let one_ulp = 2f32.powi(-7); // a bf16 unit in the last place at 1.0
        let cases = [
            (1.0 + one_ulp / 2.0, 1.0),                 // tie, 1.0 is even
            (1.0 + 1.5 * one_ulp, 1.0 + 2.0 * one_ulp), // tie, the upper one is even
            (1.0 + 0.5001 * one_ulp, 1.0 + one_ulp),    // above the tie
            (-(1.0 + 0.4999 * one_ulp), -1.0),          // below the tie, negative
            (f32::MAX, f32::INFINITY),                  // past the largest bf16
        ];
        for (x, want) in cases {
            assert_eq!(round_to_bf16_scalar(x), want, "{x:e}");
        }
        assert!(round_to_bf16_scalar(f32::NAN).is_nan());
        // The tensor paths, flex's kernel and burn's casts, agree with the reference bit for
        // bit on awkward values (more than one parallel chunk of them).
        let (device, _draws) = flex();
        let mut values: Vec<f32> = cases.iter().map(|c| c.0).collect();
        values.extend([1e-40, -3e-39, f32::INFINITY, 0.0, -0.0]);
        values.extend((0..40000).map(|i| ((i as f32) * 0.7123).sin() * 10f32.powi(i % 9 - 4)));
        let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), &device);
        for rounded in [round_to_bf16(x.clone()), round_by_casting(x)] {
            let got: Vec<f32> = rounded.into_data().try_to_vec().unwrap();
            for (x, got) in values.iter().zip(got) {
                assert_eq!(got.to_bits(), round_to_bf16_scalar(*x).to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn the_gradient_passes_through_rounded() {
        let (device, _draws) = autodiff_flex();
        let x = Tensor::<2>::random([3, 9000], Distribution::Normal(0.0, 1.0), &device);
        let weight = Tensor::<2>::random([3, 9000], Distribution::Normal(0.0, 1.0), &device);
        // flex's backward and that of burn's casts give the same bits.
        assert_same_gradients(
            (&x, &weight),
            &round_to_bf16,
            &round_by_casting,
            &|_| Vec::new(),
            0.0,
        );
        // Both are the output's gradient, here the weight, rounded: it moved.
        let x = x.require_grad();
        let grads = (round_to_bf16(x.clone()) * weight.clone()).sum().backward();
        let (dx, weight) = (x.grad(&grads).unwrap(), weight.inner());
        let rounded: Vec<f32> = weight
            .clone()
            .into_data()
            .iter::<f32>()
            .map(round_to_bf16_scalar)
            .collect();
        assert_eq!(dx.into_data().try_to_vec::<f32>().unwrap(), rounded);
        assert!(
            (round_by_casting(weight.clone()) - weight)
                .abs()
                .max()
                .into_scalar::<f32>()
                > 0.0
        );
    }

    #[test]
    fn bf16_products_are_f32_products_of_rounded_operands_and_gradients_pass() {
        let (device, _draws) = autodiff_flex();
        let layer = random_linear(48, 20, true, &device);
        let x = Tensor::<3>::random([2, 7, 48], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let bf16 = Precision::Bf16.linear(&layer, x.clone());
        // The same product from operands rounded beforehand.
        let w = round_to_bf16(layer.weight.val()).detach();
        let by_hand = round_to_bf16(x.clone()).detach().matmul(w.unsqueeze())
            + layer.bias.as_ref().unwrap().val().unsqueeze();
        bf16.clone()
            .into_data()
            .assert_approx_eq::<f32>(&by_hand.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        // Each operand moves by at most half a bf16 step (2^-9 relative), so each output by at
        // most 2^-8 of the sum of its terms' magnitudes, and by something.
        let fp32 = Precision::Fp32.linear(&layer, x.clone());
        let terms = x.clone().abs().matmul(layer.weight.val().abs().unsqueeze());
        let diff = (fp32 - bf16.clone()).abs();
        let excess: f32 = (diff.clone() - terms * 2f32.powi(-8)).max().into_scalar();
        assert!(excess <= 1e-6, "an output moved {excess} beyond the bound");
        assert!(diff.max().into_scalar::<f32>() > 0.0, "bf16 changed nothing");
        // The weight's gradient reaches the f32 master weight.
        let grads = bf16.sum().backward();
        let dw = layer.weight.grad(&grads).expect("the master weight is tracked");
        assert_eq!(dw.dims(), [48, 20]);
        assert!(x.grad(&grads).is_some());
    }

    #[test]
    fn names_parse_and_other_devices_are_refused() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("bfloat16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::Fp32));
        assert!("fp16".parse::<Precision>().unwrap_err().contains("fp32 or bf16"));
        assert_eq!(Precision::Fp32.prepare(&Device::flex()), Ok(None));
        let notice = Precision::Bf16
            .prepare(&Device::flex().autodiff())
            .unwrap()
            .unwrap();
        let path = if cpu_has_avx512_bf16() {
            "vdpbf16ps"
        } else {
            "emulated"
        };
        assert!(notice.contains(path), "{notice}");
        #[cfg(feature = "wgpu")]
        {
            let wgpu = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
            let refusal = Precision::Bf16.prepare(&wgpu).unwrap_err();
            assert!(refusal.contains("--device flex"), "{refusal}");
            assert_eq!(Precision::Fp32.prepare(&wgpu), Ok(None));
        }
    }
}
