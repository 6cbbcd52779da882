//! The linear layer, `x W + b`, forward and backward.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `layer.forward(x)`: `x W + b` for `x` `[..., d_in]`. On `flex` (with autodiff or without)
/// the bias is each output tile's starting value and row blocks of about half an image's
/// tokens are spread over the cores, each one single-threaded product: `flex` zeroes every
/// fresh output, adds the bias in another pass and, at 577 rows, multiplies eight images on
/// one thread each anyway. Under autodiff its backward takes `dX` by the same row blocks, and
/// `dW` and `db` as one partial sum per core. Outside autodiff the weight's packed copy is
/// kept for the next call (up to 1 GiB of them, least recently used dropped first).
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(bias) = &layer.bias
        && crate::flex::on_flex(&x)
        && crate::flex::on_flex(&layer.weight.val())
    {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::FusedLinear>::fused_linear(
            x.into_dispatch(),
            layer.weight.val().into_dispatch(),
            bias.val().into_dispatch(),
        ));
    }
    layer.forward(x)
}

#[cfg(feature = "flex")]
pub(crate) mod flex {

    use crate::flex::*;
    use crate::gemm::*;

    #[allow(unused_imports)]
    use crate::panels::Panels;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;
    use std::any::Any;
    use std::collections::VecDeque;
    use std::mem::MaybeUninit;
    use std::sync::{Arc, Mutex, PoisonError};

    /// [`super::linear`]'s fast path: `x` `[..., d_in]`, `weight` `[d_in, d_out]`, `bias`
    /// `[d_out]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait FusedLinear: Backend {
        fn fused_linear(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self>;
    }

    impl FusedLinear for Flex {
        fn fused_linear(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            linear_forward(x, weight, bias, Packing::Keep)
        }
    }

    /// Where the forward of a linear layer gets its weight's packed copy from.
    pub(crate) enum Packing {
        /// [`kept`]: outside autodiff the same weights come back call after call.
        Keep,
        /// Packed for this call alone: under autodiff the optimiser replaces the weights
        /// every step.
        Once,
    }

    pub(crate) fn linear_forward(
        x: FloatTensor<Flex>,
        weight: FloatTensor<Flex>,
        bias: FloatTensor<Flex>,
        packing: Packing,
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
        let panels = match packing {
            Packing::Keep => kept(&weight, Panels::bytes, Operand::panels),
            Packing::Once => weight.panels().map(Arc::new),
        };
        let out = product_rows(
            (x.storage(), rows, d_in),
            (weight.values(), weight.cs, weight.rs),
            weight.cols,
            Some(bias.storage()),
            panels.as_deref(),
        );
        shape.push(weight.cols);
        FloatTensor::<Flex>::from_data(TensorData::new(out, shape))
    }

    /// Budget of [`kept`], in bytes of packed copies plus the weights they keep alive.
    const KEPT_BYTES: usize = 1 << 30;

    /// A weight, its packed copy (of whichever type) and the bytes both hold.
    type Kept = (FloatTensor<Flex>, Arc<dyn Any + Send + Sync>, usize);

    /// Weights packed by inference forwards, least recently used first.
    static KEPT: Mutex<VecDeque<Kept>> = Mutex::new(VecDeque::new());

    /// `weight` packed by `pack` (into [`Panels`], or bf16 panels), once, and kept for the next
    /// forward with the same weight and packing while the packed weights stay within
    /// [`KEPT_BYTES`] (ViT-S/16's 49 linear layers take 176 MB) and someone else still holds
    /// the weight: at batch 1, packing on every call would be a noticeable share of inference.
    ///
    /// An entry holds a clone of the weight tensor: `flex` copies shared storage before writing
    /// to it, so while the entry lives the values at that address are the packed ones and no
    /// other tensor can be allocated there. The same address and layout is the same matrix.
    pub(crate) fn kept<'a, T: Any + Send + Sync>(
        weight: &Operand<'a>,
        bytes: fn(&T) -> usize,
        pack: impl FnOnce(&Operand<'a>) -> Option<T>,
    ) -> Option<Arc<T>> {
        let same = |(kept, packed, _): &Kept| {
            kept.storage::<f32>().as_ptr() == weight.tensor.storage::<f32>().as_ptr()
                && kept.layout() == weight.tensor.layout()
                && packed.is::<T>()
        };
        let mut entries = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = entries.iter().position(same) {
            let entry = entries.remove(i).expect("found above");
            let packed = Arc::clone(&entry.1).downcast::<T>().expect("checked by same()");
            entries.push_back(entry);
            return Some(packed);
        }
        drop(entries);
        let packed = Arc::new(pack(weight)?);
        let held = 4 * weight.tensor.storage::<f32>().len() + bytes(&packed);
        let mut entries = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        // A weight that only its entries still hold (its model was dropped, or the optimiser
        // replaced it) can never be asked for again.
        entries.retain(|(tensor, _, _)| !tensor.is_unique());
        entries.push_back((
            weight.tensor.clone(),
            Arc::clone(&packed) as Arc<dyn Any + Send + Sync>,
            held,
        ));
        let mut total: usize = entries.iter().map(|entry| entry.2).sum();
        while total > KEPT_BYTES
            && let Some(oldest) = entries.pop_front()
        {
            total -= oldest.2;
        }
        Some(packed)
    }

    impl<C: CheckpointStrategy> FusedLinear for Autodiff<Flex, C> {
        fn fused_linear(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let nodes = [x.node(), weight.node(), bias.node()];
            let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
            match FusedLinearBackward.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let out = linear_forward(x.clone(), weight.clone(), bias, Packing::Once);
                    prep.finish((x, weight), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(linear_forward(x, weight, bias, Packing::Once)),
            }
        }
    }

    /// With `dY` the output's gradient, flattened to `[rows, d_out]`: `dX = dY Wᵀ`,
    /// `dW = Xᵀ dY` and `db` the column sums of `dY`.
    #[derive(Debug)]
    struct FusedLinearBackward;

    impl Backward<Flex, 3> for FusedLinearBackward {
        type State = (FloatTensor<Flex>, FloatTensor<Flex>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, weight) = ops.state;
            let (grad, x_shape) = dense(grads.consume::<Flex>(&ops.node));
            let weight = Operand::new(&weight);
            let (d_in, d_out) = (weight.rows, weight.cols);
            let rows = grad.layout().num_elements() / d_out;
            let grad = grad.storage::<f32>();
            let [parent_x, parent_weight, parent_bias] = ops.parents;
            if let Some(node) = parent_x {
                let mut shape = x_shape;
                *shape.last_mut().expect("rank >= 1") = d_in;
                // Wᵀ is W read with its strides swapped.
                let transposed = (weight.values(), weight.rs, weight.cs);
                let panels = Panels::pack(transposed, [d_out, d_in]);
                let dx = product_rows((grad, rows, d_out), transposed, d_in, None, panels.as_ref());
                register(grads, Some(node.id), dx, shape);
            }
            if parent_weight.is_none() && parent_bias.is_none() {
                return;
            }
            let (x, _) = dense(x);
            let x = x.storage::<f32>();
            // dW and db are sums over the rows: each core sums its share of the rows into its
            // own partial (one single-threaded GEMM, faster than one GEMM split by gemm
            // itself), and the partials are added.
            let parts = rayon::current_num_threads().min(rows / 256).max(1);
            let block = rows.div_ceil(parts).max(1);
            let parts = x[..rows * d_in]
                .par_chunks(block * d_in)
                .zip(grad[..rows * d_out].par_chunks(block * d_out))
                .map(|(x, grad)| {
                    let m = x.len() / d_in;
                    let dw = if parent_weight.is_some() {
                        // Xᵀ is X [m, d_in] read with its strides swapped.
                        let product = |dw: &mut [MaybeUninit<f32>]| {
                            matmul(dw, [d_in, d_out, m], (x, d_in, 1), (grad, 1, d_out), 1.0);
                        };
                        // SAFETY: `matmul` writes all `d_in * d_out` elements.
                        unsafe { written(d_in * d_out, product) }
                    } else {
                        Vec::new()
                    };
                    let mut db = vec![0f32; d_out];
                    for row in grad.chunks_exact(d_out) {
                        db.iter_mut().zip(row).for_each(|(sum, g)| *sum += g);
                    }
                    (dw, db)
                })
                .collect();
            let (dw, db) =
                add_in_order(parts).unwrap_or_else(|| (vec![0f32; d_in * d_out], vec![0f32; d_out]));
            register(grads, parent_weight.map(|node| node.id), dw, vec![d_in, d_out]);
            register(grads, parent_bias.map(|node| node.id), db, vec![d_out]);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn matrix(value: f32) -> FloatTensor<Flex> {
            FloatTensor::<Flex>::from_data(TensorData::new(vec![value; 32 * 48], [32, 48]))
        }

        /// Packed wherever the CPU runs the panels, so that the cache is tested on a CPU with
        /// AVX-512 too (where [`Operand::panels`] leaves the products to `gemm`).
        fn pack(weight: &Operand) -> Option<Panels> {
            Panels::pack_here(
                (weight.values(), weight.cs, weight.rs),
                [weight.rows, weight.cols],
            )
        }

        #[test]
        fn kept_panels_are_reused_and_let_go_with_their_weight() {
            let weight = matrix(1.0);
            let Some(panels) = kept(&Operand::new(&weight), Panels::bytes, pack) else {
                return eprintln!("no AVX2 + FMA: nothing is packed on this CPU");
            };
            let again = kept(&Operand::new(&weight), Panels::bytes, pack).expect("packed above");
            assert!(Arc::ptr_eq(&panels, &again), "the same weight was packed twice");
            assert_eq!(Arc::strong_count(&panels), 3, "the cache holds the panels too");
            // Once the weight is dropped, the next insertion lets go of its entry.
            drop(weight);
            let other = matrix(2.0);
            kept(&Operand::new(&other), Panels::bytes, pack);
            assert_eq!(Arc::strong_count(&panels), 2);
        }

        #[test]
        fn each_packing_of_a_weight_is_kept_apart() {
            use crate::bf16_panels::Bf16Panels;
            let weight = matrix(1.0);
            let bf16 = |w: &Operand| Some(w.bf16_panels());
            let first = kept(&Operand::new(&weight), Bf16Panels::bytes, bf16).expect("packed");
            // The f32 panels of the same weight are not the bf16 ones, and do not evict them.
            if kept(&Operand::new(&weight), Panels::bytes, pack).is_none() {
                eprintln!("no AVX2 + FMA: no f32 panels on this CPU");
            }
            let again = kept(&Operand::new(&weight), Bf16Panels::bytes, bf16).expect("kept");
            assert!(Arc::ptr_eq(&first, &again), "the bf16 panels were packed twice");
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn linear_equals_burns_linear() {
        let (device, _draws) = flex();
        // 2100 rows make seven row blocks spread over the threads, 97 rows one block per
        // thread (up to two); 10 rows one GEMM.
        for (shape, transposed) in [
            ([3, 700, 24], false),
            ([2, 5, 24], true),
            ([3, 700, 24], true),
            ([1, 97, 24], false),
        ] {
            let layer = random_linear(24, 17, transposed, &device);
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let expected = layer.forward(x.clone()).into_data();
            let got = linear(&layer, x).into_data();
            assert_eq!(got.shape(), expected.shape());
            got.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn linear_follows_a_changed_weight() {
        use burn::module::Param;
        let (device, _draws) = flex();
        // Outside autodiff the packed weights are kept between calls: each call here has a
        // new weight (the old one dropped, so its memory may be reused), and must use it.
        let mut layer = random_linear(40, 48, false, &device);
        let x = Tensor::<3>::random([2, 9, 40], Distribution::Normal(0.0, 1.0), &device);
        for _ in 0..3 {
            let expected = layer.forward(x.clone()).into_data();
            linear(&layer, x.clone())
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
            let changed = layer.weight.val() * 2.0 - 0.5;
            layer.weight = Param::from_tensor(changed);
        }
    }

    #[test]
    fn linear_gradients_equal_burns() {
        let (device, _draws) = autodiff_flex();
        // 1300 rows: five row blocks; 6 rows: one GEMM.
        for (shape, transposed) in [([2, 650, 24], false), ([2, 3, 24], true)] {
            let layer = random_linear(24, 17, transposed, &device);
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let weight =
                Tensor::<3>::random([shape[0], shape[1], 17], Distribution::Normal(0.0, 1.0), &device);
            let bias = layer.bias.as_ref().unwrap();
            // Sums over up to 1300 rows of products of unit normals.
            assert_same_gradients(
                (&x, &weight),
                &|x| linear(&layer, x),
                &|x| layer.forward(x),
                &|grads| {
                    vec![
                        (
                            "dw",
                            layer.weight.grad(grads).expect("weight is tracked").into_data(),
                        ),
                        ("db", bias.grad(grads).expect("bias is tracked").into_data()),
                    ]
                },
                1e-3,
            );
        }
    }
}
