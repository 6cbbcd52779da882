//! `a * x + b * y` in one parallel pass: the arithmetic of an optimiser's update.

use burn::tensor::Tensor;

/// `a * x + b * y`, element-wise: the arithmetic of an optimiser's update. On `flex` outside
/// autodiff it is one pass spread over the cores, written into `x`'s buffer when nothing else
/// holds it; `flex` runs each element-wise operation as a pass of its own, on one thread below
/// 4M elements (every ViT-S parameter).
pub fn axpby<const D: usize>(a: f64, x: Tensor<D>, b: f64, y: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if crate::flex::on_plain_flex(&x) && crate::flex::on_plain_flex(&y) && x.shape() == y.shape() {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::Axpby>::axpby(
            x.into_dispatch(),
            y.into_dispatch(),
            [a as f32, b as f32],
        ));
    }
    // A factor of 1 (the SGD update has two) is no operation on the device.
    let scaled = |t: Tensor<D>, factor: f64| if factor == 1.0 { t } else { t.mul_scalar(factor) };
    scaled(x, a) + scaled(y, b)
}

#[cfg(feature = "flex")]
pub(crate) mod flex {

    use crate::flex::*;

    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;

    use std::mem::MaybeUninit;

    /// [`super::axpby`]'s fast path, for two tensors of one shape.
    #[backend_extension(Flex)]
    pub trait Axpby: Backend {
        fn axpby(x: FloatTensor<Self>, y: FloatTensor<Self>, coefficients: [f32; 2]) -> FloatTensor<Self>;
    }

    impl Axpby for Flex {
        fn axpby(x: FloatTensor<Self>, y: FloatTensor<Self>, [a, b]: [f32; 2]) -> FloatTensor<Self> {
            let (y, _) = dense(y);
            let y = &y.storage::<f32>()[..y.layout().num_elements()];
            let (x, shape) = dense(x);
            let values = if x.is_unique() {
                let (mut values, _) = flex_values(x);
                values
                    .par_chunks_mut(CHUNK)
                    .zip(y.par_chunks(CHUNK))
                    .for_each(|(x, y)| {
                        x.iter_mut().zip(y).for_each(|(x, y)| *x = a * *x + b * y);
                    });
                values
            } else {
                let x = &x.storage::<f32>()[..y.len()];
                let fill = |out: &mut [MaybeUninit<f32>]| {
                    out.par_chunks_mut(CHUNK)
                        .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
                        .for_each(|(out, (x, y))| {
                            for ((out, x), y) in out.iter_mut().zip(x).zip(y) {
                                out.write(a * x + b * y);
                            }
                        });
                };
                // SAFETY: the chunks of `out` pair up with those of `x` and `y`, all `y.len()` long.
                unsafe { written(y.len(), fill) }
            };
            FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::Distribution;

    #[test]
    fn axpby_equals_burns_arithmetic_in_place_or_not() {
        let (device, _draws) = flex();
        // Several parallel chunks and a tail; `x` held elsewhere (a new buffer), then `x` alone
        // (its own buffer, updated in place), then a non-contiguous `y`.
        let x = Tensor::<2>::random([3, 20011], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<2>::random([20011, 3], Distribution::Normal(0.0, 1.0), &device).swap_dims(0, 1);
        let expected = (x.clone().mul_scalar(0.9) + y.clone().mul_scalar(-3e-4)).into_data();
        let shared = axpby(0.9, x.clone(), -3e-4, y.clone());
        shared.into_data().assert_eq(&expected, true);
        let x_values = x.to_data();
        let alone = axpby(0.9, x, -3e-4, y);
        alone.into_data().assert_eq(&expected, true);
        assert_ne!(x_values, expected, "the update changes something");
    }
}
