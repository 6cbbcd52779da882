//! The operations where burn's pure-Rust `flex` backend spends its time, beyond the matrix
//! multiply itself. Each module holds one operation: its public function, burn's own
//! operations as the reference path (what runs on every other backend, and what the tests
//! hold the fast path to), the fast path as a burn backend extension with its own backward
//! pass, and its tests.
//!
//! The fast paths run for `f32` tensors on the `flex` device, with autodiff or without
//! (`conv_bn` and `axpby` without only), and attention's also on libtorch's CPU device.
//! They exist because `flex` runs element-wise operations one scalar at a time or on one
//! thread, copies strided tensors on every reshape, and differentiates attention and layer
//! norm through chains of generic operations; each module's function says what its kernel
//! does instead. `docs/optimization-log.md` has the measurements.

pub mod attention;
#[cfg(feature = "tch")]
mod attention_tch;
pub mod axpby;
pub mod bf16;
pub mod conv_bn;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod linear_bf16;
pub mod patch_embed;

pub use attention::{attention, merge_heads, split_heads};
pub use axpby::axpby;
pub use bf16::{Precision, round_to_bf16};
pub use conv_bn::conv_bn;
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use linear_bf16::linear_bf16;
pub use patch_embed::patch_embed;

use burn::tensor::Tensor;

/// Whether `x` is an `f32` tensor on the `flex` device outside autodiff: where copying a
/// model's weights out for the slice kernels ([`crate::decode`]) pays off.
pub fn on_plain_flex<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex")]
    return crate::flex::on_plain_flex(x);
    #[cfg(not(feature = "flex"))]
    return {
        let _ = x;
        false
    };
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn empty_batches_pass_through() {
        // burn's own linear layer crashes on an empty batch (flex's matmul); ours returns one.
        let (device, _draws) = flex();
        let x = Tensor::<3>::zeros([0, 5, 24], &device);
        let layer = random_linear(24, 17, false, &device);
        assert_eq!(linear(&layer, x.clone()).dims(), [0, 5, 17]);
        let norm = random_norm(24, 1e-6, &device);
        assert_eq!(layer_norm(&norm, x.clone(), 1e-6).dims(), [0, 5, 24]);
        assert_eq!(
            attention(Tensor::zeros([0, 5, 72], &device), 3).dims(),
            [0, 5, 24]
        );
        assert_eq!(gelu(x).dims(), [0, 5, 24]);
        // Training on nothing: zero gradients of the right shapes.
        let device = device.autodiff();
        let layer = random_linear(24, 17, false, &device);
        let x = Tensor::<3>::zeros([0, 5, 24], &device).require_grad();
        let grads = linear(&layer, x.clone()).sum().backward();
        let dw = layer.weight.grad(&grads).expect("weight is tracked");
        assert_eq!(dw.dims(), [24, 17]);
        assert_eq!(dw.abs().sum().into_scalar::<f32>(), 0.0);
        assert_eq!(x.grad(&grads).expect("x is tracked").dims(), [0, 5, 24]);
    }
}
