//! What the kernels' tests share: a seeded device, random layers, and the comparison of
//! outputs and gradients with burn's own operations.

use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Distribution, Gradients, Tensor, TensorData, Tolerance};

/// The `flex` device, seeded.
pub(super) fn flex() -> Device {
    let device = Device::flex();
    device.seed(7);
    device
}

/// Runs `ours` and `burns` on `x` under autodiff with the loss `(f(x) * weight).sum()`,
/// and asserts that the outputs, the gradients of `x` and those `params` reads (named)
/// agree within `tolerance`.
pub(crate) fn assert_same_gradients<const D: usize>(
    (x, weight): (&Tensor<D>, &Tensor<D>),
    ours: &dyn Fn(Tensor<D>) -> Tensor<D>,
    burns: &dyn Fn(Tensor<D>) -> Tensor<D>,
    params: &dyn Fn(&Gradients) -> Vec<(&'static str, TensorData)>,
    tolerance: f32,
) {
    let run = |f: &dyn Fn(Tensor<D>) -> Tensor<D>| {
        let x = x.clone().require_grad();
        let out = f(x.clone());
        let grads = (out.clone() * weight.clone()).sum().backward();
        let mut all = vec![
            ("output", out.inner().into_data()),
            ("dx", x.grad(&grads).expect("x is tracked").into_data()),
        ];
        all.extend(params(&grads));
        all
    };
    for ((name, a), (_, b)) in run(ours).iter().zip(&run(burns)) {
        assert_eq!(a.shape(), b.shape(), "{name}");
        a.assert_approx_eq::<f32>(b, Tolerance::absolute(tolerance));
    }
}

/// A `d_in -> d_out` layer on `device`, its weight stored transposed when `transposed` (so
/// the kernel reads it through strides).
pub(crate) fn random_linear(d_in: usize, d_out: usize, transposed: bool, device: &Device) -> Linear {
    use burn::module::Param;
    let mut layer = burn::nn::LinearConfig::new(d_in, d_out).init(device);
    if transposed {
        let w = Tensor::<2>::random([d_out, d_in], Distribution::Normal(0.0, 1.0), device);
        layer.weight = Param::from_tensor(w.swap_dims(0, 1));
    }
    layer.bias = Some(random_bias(d_out, device));
    layer
}

/// `n` unit normals, as a layer's bias.
pub(crate) fn random_bias(n: usize, device: &Device) -> burn::module::Param<Tensor<1>> {
    burn::module::Param::from_tensor(Tensor::random([n], Distribution::Normal(0.0, 1.0), device))
}

/// A layer norm over `d` features with random γ and β.
pub(crate) fn random_norm(d: usize, epsilon: f64, device: &Device) -> LayerNorm {
    use burn::module::Param;
    let mut norm = burn::nn::LayerNormConfig::new(d)
        .with_epsilon(epsilon)
        .init(device);
    let random = || Param::from_tensor(Tensor::random([d], Distribution::Normal(0.5, 1.0), device));
    norm.gamma = random();
    norm.beta = Some(random());
    norm
}

/// A `5 -> 7` convolution with a `kernel` and stride `stride`, and a bias.
pub(crate) fn patch_conv(kernel: [usize; 2], stride: [usize; 2], device: &Device) -> Conv2d {
    let mut conv = burn::nn::conv::Conv2dConfig::new([5, 7], kernel)
        .with_stride(stride)
        .init(device);
    conv.bias = Some(random_bias(7, device));
    conv
}
