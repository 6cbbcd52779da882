//! What the kernels' tests share: a seeded device that parallel tests cannot disturb, random layers, and the comparison of
//! outputs and gradients with burn's own operations.

use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Distribution, Gradients, Tensor, TensorData, Tolerance};
use std::sync::MutexGuard;

/// The `flex` device, seeded, with the guard that keeps the tests running beside this one
/// from drawing until it drops (`crate::device::seeded`): hold it for the whole test.
pub(super) fn flex() -> (Device, MutexGuard<'static, ()>) {
    let device = Device::flex();
    let draws = crate::device::seeded(&device, 7);
    (device, draws)
}

/// [`flex`] under autodiff.
pub(super) fn autodiff_flex() -> (Device, MutexGuard<'static, ()>) {
    let (device, draws) = flex();
    (device.autodiff(), draws)
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

/// Where `ours` departs from `reference` by more than `tolerance`: how many elements, and
/// the largest gap as a fraction of the reference's largest magnitude.
pub(crate) fn departure(ours: &TensorData, reference: &TensorData, tolerance: f32) -> (usize, f32) {
    assert_eq!(ours.shape(), reference.shape());
    let (ours, reference) = (
        ours.as_slice::<f32>().unwrap(),
        reference.as_slice::<f32>().unwrap(),
    );
    let largest = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let gaps = ours.iter().zip(reference).map(|(a, b)| (a - b).abs());
    let beyond: Vec<f32> = gaps.filter(|&gap| gap > tolerance).collect();
    let widest = beyond.iter().fold(0f32, |m, &gap| m.max(gap));
    (beyond.len(), widest / largest)
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
