//! Helpers for the kernels that run on `flex` tensors: reading their values where they lie,
//! registering gradients, filling new buffers without zeroing them first, and adding the
//! parallel tasks' partial sums.

use burn::backend::Flex;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel task of an element-wise kernel: large enough to amortise the
/// task, small enough to spread a ViT-S activation over many.
pub(crate) const CHUNK: usize = 1 << 14;

/// The values of a `flex` tensor in row-major order (no copy when it is contiguous and
/// not shared) and its shape.
pub(crate) fn flex_values(x: FloatTensor<Flex>) -> (Vec<f32>, Vec<usize>) {
    let data = x.into_data();
    let shape = data.shape().to_vec();
    (
        data.try_into_vec::<f32>()
            .expect("on_flex() lets f32 tensors through only"),
        shape,
    )
}

/// `x` with the slice kernel `kernel` applied to every value, in chunks over the cores, in
/// `x`'s own buffer when nothing else holds it ([`flex_values`]).
pub(crate) fn map_in_place(x: FloatTensor<Flex>, kernel: fn(&mut [f32])) -> FloatTensor<Flex> {
    let (mut values, shape) = flex_values(x);
    values.par_chunks_mut(CHUNK).for_each(kernel);
    FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
}

/// The element-wise sums of the parallel tasks' `parts` (each two vectors, such as a
/// weight's and a bias's gradient), added in the tasks' order: rayon's `reduce` would pair
/// them up as the threads happen to finish, and the bits would change from run to run.
pub(crate) fn add_in_order(parts: Vec<(Vec<f32>, Vec<f32>)>) -> Option<(Vec<f32>, Vec<f32>)> {
    let mut parts = parts.into_iter();
    let (mut first, mut second) = parts.next()?;
    for (more_first, more_second) in parts {
        first.iter_mut().zip(&more_first).for_each(|(a, b)| *a += b);
        second.iter_mut().zip(&more_second).for_each(|(a, b)| *a += b);
    }
    Some((first, second))
}

/// Registers `values`, row-major of `shape`, as the gradient of `node` if it is tracked.
pub(crate) fn register(grads: &mut Gradients, node: Option<NodeId>, values: Vec<f32>, shape: Vec<usize>) {
    if let Some(id) = node {
        grads.register::<Flex>(id, FloatTensor::<Flex>::from_data(TensorData::new(values, shape)));
    }
}

/// A contiguous, offset-free `flex` tensor (copied only when it is not) and its shape.
pub(crate) fn dense(x: FloatTensor<Flex>) -> (FloatTensor<Flex>, Vec<usize>) {
    let shape = x.layout().shape().to_vec();
    let x = if x.is_contiguous() && x.layout().start_offset() == 0 {
        x
    } else {
        x.to_contiguous()
    };
    (x, shape)
}

/// [`dense`] for a 4-D tensor.
pub(crate) fn contiguous(x: FloatTensor<Flex>) -> (FloatTensor<Flex>, [usize; 4]) {
    let (x, dims) = dense(x);
    (x, [dims[0], dims[1], dims[2], dims[3]])
}

/// A new `Vec` of `len` values, all written by `fill` into uninitialised memory (by the
/// tasks of a parallel loop, typically), so that no serial zero-fill comes first.
///
/// SAFETY: `fill` must initialise every element of the slice it is given.
pub(crate) unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut values = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the caller vouches that `fill` initialised all `len` elements.
    unsafe { values.set_len(len) };
    values
}

/// Whether `x` is an `f32` tensor on the `flex` device, with autodiff or without.
pub(crate) fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// Whether `x` is an `f32` tensor on the `flex` device with no autodiff graph to extend.
pub(crate) fn on_plain_flex<const D: usize>(x: &Tensor<D>) -> bool {
    on_flex(x) && !x.is_autodiff()
}
