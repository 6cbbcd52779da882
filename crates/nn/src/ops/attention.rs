//! Multi-head self-attention from a fused `qkv` projection, without a mask.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::module;
use burn::tensor::ops::AttentionModuleOptions;

use super::bf16::round_to_bf16;

/// Queries, keys and values `[batch, heads, tokens, head_dim]` from timm's fused projection
/// `qkv` `[batch, tokens, 3 * dim]`: its output columns are `s * dim + h * head_dim + d` for
/// `s` in (q, k, v), so a chunk per `s` then a head split reproduces timm's
/// `reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`.
pub fn split_heads(qkv: Tensor<3>, heads: usize) -> [Tensor<4>; 3] {
    let [batch, tokens, width] = qkv.dims();
    let head_dim = width / 3 / heads;
    let split = |t: Tensor<3>| -> Tensor<4> { t.reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2) };
    let mut qkv = qkv.chunk(3, 2).into_iter().map(split);
    [qkv.next().unwrap(), qkv.next().unwrap(), qkv.next().unwrap()]
}

/// `[batch, heads, tokens, head_dim]` back to `[batch, tokens, heads * head_dim]`.
pub fn merge_heads(context: Tensor<4>) -> Tensor<3> {
    let [batch, heads, tokens, head_dim] = context.dims();
    context.swap_dims(1, 2).reshape([batch, tokens, heads * head_dim])
}

/// Self-attention without a mask from a fused projection: `qkv` `[batch, tokens, 3 * dim]`
/// ([`split_heads`]' layout) to `softmax(q kᵀ / sqrt(head_dim)) v` with the heads merged,
/// `[batch, tokens, dim]`. On `flex` the kernel reads each head where it lies in `qkv` and
/// writes it where it lies in the output: `flex` copies a non-contiguous tensor on every
/// reshape, so the head split and merge were two copies of the activations per block (and
/// under autodiff their backward two more, plus a zero-filled gradient per chunk).
pub fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    if let Some(out) = flex_kernel(&qkv, heads, false) {
        return out;
    }
    #[cfg(feature = "tch")]
    if super::attention_tch::takes_flash_attention(&qkv) {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(
            <Dispatch as super::attention_tch::FlashAttention>::flash_attention(qkv.into_dispatch(), heads),
        );
    }
    burns_attention(qkv, heads)
}

/// [`attention`] as bf16 products run it ([`crate::ops::bf16`]): the probabilities are rounded
/// to bf16 before they multiply the values, and their gradient is rounded as
/// [`round_to_bf16`]'s is, and so is the output's where it multiplies V and P in the backward
/// pass. Softmax and its backward stay f32; the scores' gradient is rounded where it multiplies
/// the scaled queries and the scaled keys, these centred on their mean (rounded to bf16) first.
/// Rounding the queries, keys and values is the caller's part.
pub fn attention_bf16(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    flex_kernel(&qkv, heads, true).unwrap_or_else(|| explicit_attention_bf16(qkv, heads))
}

/// The `flex` kernel's attention, when `qkv` lives there.
fn flex_kernel(qkv: &Tensor<3>, heads: usize, bf16_probabilities: bool) -> Option<Tensor<3>> {
    #[cfg(feature = "flex")]
    if crate::flex::on_flex(qkv) && qkv.shape().num_elements() > 0 {
        use burn::backend::Dispatch;
        return Some(Tensor::from_dispatch(
            <Dispatch as flex::SdpAttention>::sdp_attention(
                qkv.clone().into_dispatch(),
                heads,
                bf16_probabilities,
            ),
        ));
    }
    #[cfg(not(feature = "flex"))]
    let _ = (qkv, heads, bf16_probabilities);
    None
}

/// [`attention_bf16`] in burn's operations: its path off `flex`, and its reference.
fn explicit_attention_bf16(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [q, k, v] = split_heads(qkv, heads);
    let [.., head_dim] = q.dims();
    let scale = (head_dim as f64).powf(-0.5);
    let scores = q.clone().mul_scalar(scale).matmul(k.clone().swap_dims(2, 3));
    // The scores' gradient dS reaches q as round(dS) round(scale (k - c)), with c the keys' mean
    // rounded (dS's rows sum to zero, so c drops out), and k as round(dS)ᵀ round(scale q): two
    // products that add nothing to the scores' value.
    let centre = round_to_bf16(k.clone().mean_dim(2)).detach();
    let keys = round_to_bf16((k.clone() - centre).mul_scalar(scale)).detach();
    let queries = round_to_bf16(q.clone().mul_scalar(scale)).detach();
    let gradient_only = |x: Tensor<4>| round_gradient(x.clone()) - x.detach();
    let scores = scores.detach()
        + gradient_only(q.matmul(keys.swap_dims(2, 3)))
        + gradient_only(queries.matmul(k.swap_dims(2, 3)));
    let out = round_to_bf16(softmax(scores, 3)).matmul(v);
    round_gradient(merge_heads(out))
}

/// `x` unchanged, its gradient rounded to bf16: where a bf16 product takes a gradient (dO)
/// as its operand. The two roundings cancel exactly in the forward pass.
fn round_gradient<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().detach() + (round_to_bf16(x.clone()) - round_to_bf16(x).detach())
}

/// burn's own attention on the fused projection, through the head split and merge: what
/// [`attention`] runs off its fast paths, and what the tests hold those paths to.
fn burns_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [q, k, v] = split_heads(qkv, heads);
    merge_heads(module::attention(
        q,
        k,
        v,
        None,
        None,
        AttentionModuleOptions::default(),
    ))
}

#[cfg(feature = "flex")]
pub(crate) mod flex {

    use crate::bf16_panels::{Bf16Kernel, Bf16Panels, BothWays, Epilogue};
    use crate::flex::*;
    use crate::gemm::*;
    use crate::ops::bf16::round_to_bf16_scalar;
    use crate::simd::*;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::TensorData;
    use rayon::prelude::*;

    use std::cell::RefCell;
    use std::mem::MaybeUninit;
    use std::sync::Arc;

    /// Attention as a backend extension: `Flex` runs [`attention_forward`], `Autodiff<Flex>`
    /// keeps the probabilities for [`AttentionBackward`].
    #[backend_extension(Flex, Autodiff)]
    pub trait SdpAttention: Backend {
        /// With `bf16_probabilities`, [`super::attention_bf16`]; without, [`super::attention`].
        fn sdp_attention(qkv: FloatTensor<Self>, heads: usize, bf16_probabilities: bool)
        -> FloatTensor<Self>;
    }

    impl SdpAttention for Flex {
        fn sdp_attention(
            qkv: FloatTensor<Self>,
            heads: usize,
            bf16_probabilities: bool,
        ) -> FloatTensor<Self> {
            let inputs = AttentionInputs::new(qkv, heads, bf16_probabilities);
            let (out, _) = attention_forward(&inputs, false);
            inputs.merged(out)
        }
    }

    impl<C: CheckpointStrategy> SdpAttention for Autodiff<Flex, C> {
        fn sdp_attention(
            qkv: FloatTensor<Self>,
            heads: usize,
            bf16_probabilities: bool,
        ) -> FloatTensor<Self> {
            let nodes = [qkv.node()];
            let inputs = AttentionInputs::new(qkv.into_primitive(), heads, bf16_probabilities);
            match AttentionBackward.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let (out, probabilities) = attention_forward(&inputs, true);
                    let out = inputs.merged(out);
                    prep.finish((Arc::new(inputs), Arc::new(probabilities)), out)
                }
                OpsKind::UnTracked(prep) => {
                    let (out, _) = attention_forward(&inputs, false);
                    prep.finish(inputs.merged(out))
                }
            }
        }
    }

    /// The fused projection `[batch, tokens, 3 * dim]`, dense, and its geometry. A pair is
    /// one (image, head); its queries, keys and values are `[tokens, head_dim]` matrices
    /// with row stride `3 * dim`, and its context goes to a `[tokens, head_dim]` band of the
    /// merged `[batch, tokens, dim]` output, row stride `dim`.
    #[derive(Debug)]
    pub struct AttentionInputs {
        qkv: FloatTensor<Flex>,
        batch: usize,
        heads: usize,
        tokens: usize,
        head_dim: usize,
        /// bf16 products in the forward pass ([`bf16_pair`]): the probabilities multiply the
        /// values rounded to bf16 (kept unrounded for the softmax backward).
        bf16_probabilities: bool,
    }

    /// Which of the fused projection's three parts.
    #[derive(Clone, Copy)]
    enum Part {
        Query = 0,
        Key = 1,
        Value = 2,
    }

    impl AttentionInputs {
        fn new(qkv: FloatTensor<Flex>, heads: usize, bf16_probabilities: bool) -> Self {
            let (qkv, dims) = dense(qkv);
            let [batch, tokens, width] = dims[..] else {
                panic!("attention takes a [batch, tokens, 3 * dim] projection, got {dims:?}")
            };
            assert!(
                heads > 0 && width % (3 * heads) == 0,
                "attention: {width} columns do not split into q, k, v of {heads} heads"
            );
            Self {
                qkv,
                batch,
                heads,
                tokens,
                head_dim: width / 3 / heads,
                bf16_probabilities,
            }
        }

        fn dim(&self) -> usize {
            self.heads * self.head_dim
        }

        fn scale(&self) -> f32 {
            (self.head_dim as f32).powf(-0.5)
        }

        /// Offset of `pair`'s `[tokens, head_dim]` band in a `[batch, tokens, parts * dim]`
        /// tensor, `part` being which of the `parts` column groups.
        fn band(&self, pair: usize, part: usize, parts: usize) -> usize {
            let (image, head) = (pair / self.heads, pair % self.heads);
            image * self.tokens * parts * self.dim() + part * self.dim() + head * self.head_dim
        }

        /// One pair's part, from its first element on, with its (column, row) strides.
        fn read(&self, pair: usize, part: Part) -> (&[f32], usize, usize) {
            let start = self.band(pair, part as usize, 3);
            (&self.qkv.storage::<f32>()[start..], 1, 3 * self.dim())
        }

        fn merged(&self, out: Vec<f32>) -> FloatTensor<Flex> {
            FloatTensor::<Flex>::from_data(TensorData::new(out, [self.batch, self.tokens, self.dim()]))
        }
    }

    /// A buffer that the tasks of one parallel loop write in disjoint bands, each band by a
    /// GEMM that does not read it first (so the buffer may start uninitialised).
    #[derive(Clone, Copy)]
    struct DisjointBands(*mut f32, usize);

    // SAFETY: every task writes only its own pair's bands ([`AttentionInputs::band`]).
    unsafe impl Send for DisjointBands {}
    unsafe impl Sync for DisjointBands {}

    impl DisjointBands {
        fn new(buffer: &mut [MaybeUninit<f32>]) -> Self {
            Self(buffer.as_mut_ptr().cast(), buffer.len())
        }

        /// `dst = scale lhs · rhs` into the `[m, n]` band at `offset` with row stride `rs`.
        ///
        /// SAFETY: no other task may touch that band meanwhile.
        unsafe fn matmul(
            self,
            (offset, rs): (usize, usize),
            [m, n, k]: [usize; 3],
            lhs: (&[f32], usize, usize),
            rhs: (&[f32], usize, usize),
            scale: f32,
        ) {
            assert!(offset + (m - 1) * rs + n <= self.1);
            // SAFETY: in bounds by the assert; exclusive by the caller's promise.
            unsafe {
                gemm_raw(
                    (self.0.add(offset), rs, false),
                    [m, n, k],
                    lhs,
                    rhs,
                    scale,
                    gemm::Parallelism::None,
                )
            }
        }
    }

    /// `softmax(scale q kᵀ) v` per pair, written into the merged `[batch, tokens, dim]`
    /// output, pairs spread over the cores; with `keep`, also the probabilities
    /// `[pairs, tokens, tokens]` (for the backward pass).
    fn attention_forward(x: &AttentionInputs, keep: bool) -> (Vec<f32>, Vec<f32>) {
        let (n, d) = (x.tokens, x.head_dim);
        let pairs = x.batch * x.heads;
        // Both buffers are first written by the tasks that fill them: zeroing them here was a
        // serial pass over 64 MB per block (a ViT-S training step) while the other core idled.
        let mut kept = Vec::new();
        let fill = |out: &mut [MaybeUninit<f32>]| {
            let bands = DisjointBands::new(out);
            let one_pair = |pair: usize, scores: &mut [MaybeUninit<f32>]| {
                if x.bf16_probabilities {
                    return bf16_pair(x, pair, scores, &bands);
                }
                let (q, q_cs, q_rs) = x.read(pair, Part::Query);
                let (k, k_cs, k_rs) = x.read(pair, Part::Key);
                let (v, v_cs, v_rs) = x.read(pair, Part::Value);
                // scores = scale q kᵀ
                let scores = matmul(scores, [n, n, d], (q, q_cs, q_rs), (k, k_rs, k_cs), x.scale());
                softmax_rows(scores, n);
                // out = p v, into this pair's band of the merged output
                // SAFETY: one task per pair, and pairs have disjoint bands.
                unsafe {
                    bands.matmul(
                        (x.band(pair, 0, 1), x.dim()),
                        [n, d, n],
                        (scores, 1, n),
                        (v, v_cs, v_rs),
                        1.0,
                    )
                };
            };
            if keep {
                // Each pair's scores become its slice of the kept probabilities.
                // SAFETY: every pair's scores are written by its first GEMM.
                kept = unsafe {
                    written(pairs * n * n, |kept| {
                        kept.par_chunks_mut(n * n)
                            .enumerate()
                            .for_each(|(pair, scores)| one_pair(pair, scores))
                    })
                };
            } else {
                (0..pairs).into_par_iter().for_each_init(
                    || Vec::with_capacity(n * n),
                    |scores: &mut Vec<f32>, pair| one_pair(pair, &mut scores.spare_capacity_mut()[..n * n]),
                );
            }
        };
        // SAFETY: the pairs' bands tile the whole output, each written by its second GEMM.
        let out = unsafe { written(x.batch * n * x.dim(), fill) };
        (out, kept)
    }

    /// One pair of [`attention_forward`] with bf16 products ([`crate::bf16_panels`]): scores
    /// from the rounded queries and keys, `softmax` in f32 left in `scores`, then the
    /// probabilities rounded (by the packing) times the values into the pair's band.
    fn bf16_pair(x: &AttentionInputs, pair: usize, scores: &mut [MaybeUninit<f32>], bands: &DisjointBands) {
        let (n, d) = (x.tokens, x.head_dim);
        let kernel = Bf16Kernel::detect();
        let (q, q_cs, q_rs) = x.read(pair, Part::Query);
        let (k, k_cs, k_rs) = x.read(pair, Part::Key);
        let (v, v_cs, v_rs) = x.read(pair, Part::Value);
        // scores = scale q kᵀ, then softmax, a block of rows at a time while it is in cache
        let keys = Bf16Panels::pack((k, k_rs, k_cs), [d, n]);
        let scale = x.scale();
        let scores = keys.product_finishing_rows(
            kernel,
            &mut scores[..n * n],
            (q, q_cs, q_rs),
            Epilogue::default(),
            |_, rows| {
                rows.iter_mut().for_each(|s| *s *= scale);
                softmax_rows(rows, n);
            },
        );
        // out = p v
        let values = Bf16Panels::pack((v, v_cs, v_rs), [n, d]);
        let (offset, ldc) = (x.band(pair, 0, 1), x.dim());
        assert!(offset + (n - 1) * ldc + d <= bands.1);
        // SAFETY: in bounds by the assert; one task per pair, and pairs have disjoint bands.
        unsafe {
            values.product_raw(
                kernel,
                (bands.0.add(offset), ldc),
                n,
                (scores, 1, n),
                Epilogue::default(),
            )
        };
    }

    /// One pair of [`AttentionBackward`] in bf16 ([`crate::bf16_panels`]), into its bands of
    /// `d qkv`: `dP = dO Vᵀ` rounded, `dS` by the softmax backward from the f32 probabilities,
    /// `dV = round(P)ᵀ dO`, `dQ = round(dS) round(scale (K - c))` and `dK = round(dS)ᵀ
    /// round(scale Q)`. dS's rows sum to zero, so dQ = dS K cancels the keys' common part; the
    /// keys centred on `c`, their mean rounded to bf16, keep that part out of dS's rounding
    /// error (`docs/optimization-log.md`, dQ and dK in bf16).
    fn bf16_pair_backward(
        x: &AttentionInputs,
        pair: usize,
        (p, d_out): (&[f32], &[f32]),
        scratch: &mut Scratch,
        bands: &DisjointBands,
    ) {
        let (n, d, dim) = (x.tokens, x.head_dim, x.dim());
        let kernel = Bf16Kernel::detect();
        let part = |part: Part| (x.read(pair, part), x.band(pair, part as usize, 3));
        let ldc = 3 * dim;
        // dP = dO Vᵀ; dS two rows at a time, packed for dQ and dK while in cache, each block
        // of rows as soon as the product has finished it
        let ((v, v_cs, v_rs), dv_offset) = part(Part::Value);
        let values_t = Bf16Panels::pack((v, v_rs, v_cs), [d, n]);
        let mut both = BothWays::new([n, n], (&mut scratch.rows, &mut scratch.columns));
        values_t.product_finishing_rows(
            kernel,
            room(&mut scratch.ds, n * n),
            (d_out, 1, dim),
            Epilogue::default(),
            |_, block| {
                both.pack(block, |i, rows| {
                    round_to_bf16_slice(rows);
                    softmax_backward_rows(rows, &p[i * n..][..rows.len()], n);
                })
            },
        );
        let [ds, ds_t] = both.packed();
        // dV = Pᵀ dO, after the softmax backward has streamed P into the cache
        let grad_out = Bf16Panels::pack((d_out, 1, dim), [n, d]);
        assert!(dv_offset + (n - 1) * ldc + d <= bands.1);
        // SAFETY: in bounds by the assert; one task per pair, and pairs have disjoint bands.
        unsafe {
            grad_out.product_raw(
                kernel,
                (bands.0.add(dv_offset), ldc),
                n,
                (p, n, 1),
                Epilogue::default(),
            )
        };
        // dQ = dS (scale (K - c)), dK = dSᵀ (scale Q)
        let ((q, _, q_rs), dq_offset) = part(Part::Query);
        let ((k, _, k_rs), dk_offset) = part(Part::Key);
        let keys = scaled((k, k_rs), [n, d], (x.scale(), true), &mut scratch.head);
        let keys = Bf16Panels::pack((keys, 1, d), [n, d]);
        let queries = scaled((q, q_rs), [n, d], (x.scale(), false), &mut scratch.head);
        let queries = Bf16Panels::pack((queries, 1, d), [n, d]);
        for (offset, panels, lhs) in [(dq_offset, &keys, &ds), (dk_offset, &queries, &ds_t)] {
            assert!(offset + (n - 1) * ldc + d <= bands.1);
            // SAFETY: in bounds by the assert; one task per pair, and pairs have disjoint bands.
            unsafe { panels.product_packed(kernel, (bands.0.add(offset), ldc), lhs) };
        }
    }

    /// `scale m`, or with `centred` `scale (m - c)` where `c` is the mean of `m`'s rows rounded
    /// to bf16, for the `[n, d]` matrix `m` with row stride `rs`, row-major into `out`. One
    /// pass over `m`'s rows, which lie pages apart in the fused projection.
    fn scaled<'a>(
        (m, rs): (&[f32], usize),
        [n, d]: [usize; 2],
        (scale, centred): (f32, bool),
        out: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        out.clear();
        for row in m.chunks(rs).take(n) {
            out.extend_from_slice(&row[..d]);
        }
        let mut centre = vec![0f32; d];
        if centred {
            out.chunks_exact(d)
                .for_each(|row| centre.iter_mut().zip(row).for_each(|(c, &x)| *c += x));
            centre
                .iter_mut()
                .for_each(|c| *c = round_to_bf16_scalar(*c / n as f32));
        }
        for row in out.chunks_exact_mut(d) {
            row.iter_mut()
                .zip(&centre)
                .for_each(|(x, &c)| *x = scale * (*x - c));
        }
        out
    }

    /// A thread's buffers for [`AttentionBackward`], kept from pair to pair and from step to
    /// step (fresh ones cost page faults and zeroing): dP (then dS) in f32, dS packed both
    /// ways in bf16, and one head's scaled keys or queries.
    #[derive(Default)]
    struct Scratch {
        ds: Vec<f32>,
        rows: Vec<u32>,
        columns: Vec<u32>,
        head: Vec<f32>,
    }

    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::default();
    }

    /// `task` with this thread's [`Scratch`] (fresh buffers if it is already in use).
    fn with_scratch(task: impl FnOnce(&mut Scratch)) {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => task(&mut scratch),
            Err(_) => task(&mut Scratch::default()),
        })
    }

    /// Room for `len` values in `buffer` (which holds none).
    fn room(buffer: &mut Vec<f32>, len: usize) -> &mut [MaybeUninit<f32>] {
        buffer.reserve(len);
        &mut buffer.spare_capacity_mut()[..len]
    }

    /// The gradient of the fused projection from the merged output's, given the inputs and
    /// the softmax probabilities P, per pair:
    /// `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dQ = scale dS K`,
    /// `dK = scale dSᵀ Q`, each written into its band of `d qkv`. With bf16 probabilities,
    /// `dV` takes P rounded and `dP` is rounded, as [`super::round_to_bf16`] passes it.
    #[derive(Debug)]
    struct AttentionBackward;

    impl Backward<Flex, 1> for AttentionBackward {
        type State = (Arc<AttentionInputs>, Arc<Vec<f32>>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, probabilities) = ops.state;
            let (grad_out, _) = dense(grads.consume::<Flex>(&ops.node));
            let grad_out = grad_out.storage::<f32>();
            let (n, d, dim) = (x.tokens, x.head_dim, x.dim());
            let pairs = x.batch * x.heads;
            let fill = |dqkv: &mut [MaybeUninit<f32>]| {
                let bands = DisjointBands::new(dqkv);
                (0..pairs).into_par_iter().for_each(|pair| {
                    with_scratch(|scratch| {
                        let p = &probabilities[pair * n * n..][..n * n];
                        let d_out = &grad_out[x.band(pair, 0, 1)..];
                        if x.bf16_probabilities {
                            return bf16_pair_backward(&x, pair, (p, d_out), scratch, &bands);
                        }
                        let (q, q_cs, q_rs) = x.read(pair, Part::Query);
                        let (k, k_cs, k_rs) = x.read(pair, Part::Key);
                        let (v, v_cs, v_rs) = x.read(pair, Part::Value);
                        let band = |part: Part| (x.band(pair, part as usize, 3), 3 * dim);
                        let ds = room(&mut scratch.ds, n * n);
                        // dP = dO Vᵀ, then dS in place
                        let ds = matmul(ds, [n, n, d], (d_out, 1, dim), (v, v_rs, v_cs), 1.0);
                        softmax_backward_rows(ds, p, n);
                        // SAFETY (each `bands.matmul`): one task per pair, disjoint bands.
                        // dV = Pᵀ dO, after the softmax backward has streamed P into the cache: the
                        // product reads Pᵀ in strips of a few columns across all of P's rows, which
                        // straight from memory is twice as slow.
                        unsafe {
                            bands.matmul(band(Part::Value), [n, d, n], (p, n, 1), (d_out, 1, dim), 1.0)
                        };
                        // dQ = scale dS K, dK = scale dSᵀ Q
                        unsafe {
                            bands.matmul(
                                band(Part::Query),
                                [n, d, n],
                                (ds, 1, n),
                                (k, k_cs, k_rs),
                                x.scale(),
                            )
                        };
                        unsafe {
                            bands.matmul(band(Part::Key), [n, d, n], (ds, n, 1), (q, q_cs, q_rs), x.scale())
                        };
                    })
                })
            };
            // SAFETY: each pair's dQ, dK and dV bands are written by its GEMMs, and the pairs'
            // bands tile the whole gradient.
            let dqkv = unsafe { written(x.batch * n * 3 * dim, fill) };
            let [parent] = ops.parents;
            register(grads, parent.map(|node| node.id), dqkv, vec![x.batch, n, 3 * dim]);
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Device, Distribution, TensorData, Tolerance};

    #[test]
    fn attention_equals_burns_attention() {
        let (device, _draws) = flex();
        // 3 heads of 16; a non-contiguous projection (copied first) and a contiguous one.
        let strided =
            Tensor::<3>::random([2, 144, 5], Distribution::Normal(0.0, 2.0), &device).swap_dims(1, 2);
        let dense = Tensor::<3>::random([3, 7, 144], Distribution::Normal(0.0, 2.0), &device);
        for qkv in [strided, dense] {
            let expected = burns_attention(qkv.clone(), 3).into_data();
            let got = attention(qkv, 3).into_data();
            assert_eq!(got.shape(), expected.shape());
            got.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn attention_gradients_equal_burns() {
        let (device, _draws) = autodiff_flex();
        let qkv = Tensor::<3>::random([2, 7, 144], Distribution::Normal(0.0, 1.5), &device);
        let weight = Tensor::<3>::random([2, 7, 48], Distribution::Normal(0.0, 1.5), &device);
        assert_same_gradients(
            (&qkv, &weight),
            &|qkv| attention(qkv, 3),
            &|qkv| burns_attention(qkv, 3),
            &|_| Vec::new(),
            2e-5,
        );
    }

    #[test]
    fn keys_sharing_a_large_mean_leave_the_bf16_query_gradient_near_f32s() {
        // dQ = dS K cancels the keys' common part (dS's rows sum to zero); dS rounded to bf16
        // against uncentred keys 32 apart from zero would leave about 2^-9 of it, several % of dQ.
        let (device, _draws) = autodiff_flex();
        let shift = Tensor::<3>::cat(
            vec![
                Tensor::zeros([1, 1, 48], &device),
                Tensor::full([1, 1, 48], 32.0, &device),
                Tensor::zeros([1, 1, 48], &device),
            ],
            2,
        );
        let qkv =
            round_to_bf16(Tensor::<3>::random([2, 24, 144], Distribution::Normal(0.0, 1.5), &device) + shift);
        let weight = Tensor::<3>::random([2, 24, 48], Distribution::Normal(0.0, 1.0), &device);
        let dq = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let x = qkv.clone().require_grad();
            let grads = (f(x.clone()) * weight.clone()).sum().backward();
            x.grad(&grads).unwrap().narrow(2, 0, 48)
        };
        let (exact, bf16) = (dq(&|x| attention(x, 3)), dq(&|x| attention_bf16(x, 3)));
        let largest: f32 = exact.clone().abs().max().into_scalar();
        let error: f32 = (bf16 - exact).abs().max().into_scalar();
        assert!(error < 1e-2 * largest, "dQ off by {error} of at most {largest}");
    }

    /// bf16 attention's output without autodiff, then its output and the gradient of `qkv`
    /// under the loss `(out * weight).sum()`, by `f`.
    fn bf16_outputs(
        f: &dyn Fn(Tensor<3>) -> Tensor<3>,
        qkv: &Tensor<3>,
        weight: &Tensor<3>,
    ) -> [TensorData; 3] {
        let inference = f(qkv.clone().inner()).into_data();
        let x = qkv.clone().require_grad();
        let out = f(x.clone());
        let grads = (out.clone() * weight.clone()).sum().backward();
        [
            inference,
            out.inner().into_data(),
            x.grad(&grads).unwrap().into_data(),
        ]
    }

    #[test]
    fn bf16_attention_equals_its_reference_but_where_a_rounding_falls_the_other_way() {
        // Both sides round values they compute in f32 in different orders (probabilities, dP,
        // dS), so one within an f32 step of a bf16 rounding boundary can round up on one side
        // and down on the other: a probability moves one row of the output (16 values here), an
        // element of dS a row of dQ and one of dK. About one draw in fifty shows such a flip,
        // of less than a bf16 step (2^-8) of the largest value; more often, wider or larger is
        // an error. 7 tokens, so that the kernel's remainder paths run.
        let mut departed = Vec::new();
        for seed in 0..1000 {
            let device = Device::flex().autodiff();
            let draws = crate::device::seeded(&device, seed);
            // Queries, keys and values already bf16, as the model's are.
            let qkv = round_to_bf16(Tensor::<3>::random(
                [2, 7, 144],
                Distribution::Normal(0.0, 1.5),
                &device,
            ));
            let weight = Tensor::<3>::random([2, 7, 48], Distribution::Normal(0.0, 1.5), &device);
            drop(draws);
            let ours = bf16_outputs(&|x| attention_bf16(x, 3), &qkv, &weight);
            let reference = bf16_outputs(&|x| explicit_attention_bf16(x, 3), &qkv, &weight);
            let names = ["inference", "output", "d qkv"];
            let mut flipped = false;
            for ((name, ours), (reference, tolerance)) in names
                .iter()
                .zip(&ours)
                .zip(reference.iter().zip([1e-5, 1e-5, 2e-5]))
            {
                let (elements, largest) = departure(ours, reference, tolerance);
                assert!(
                    elements <= 32 && largest < 2f32.powi(-8),
                    "seed {seed}: {name} departs from its reference at {elements} elements, by up to {largest} of its largest value"
                );
                flipped |= elements > 0;
            }
            if flipped {
                departed.push(seed);
            }
        }
        assert!(
            departed.len() <= 40,
            "{} of 1000 draws depart from the reference: {departed:?}",
            departed.len()
        );
    }

    #[test]
    fn bf16_probabilities_move_the_output_and_the_gradient() {
        let (device, _draws) = autodiff_flex();
        let qkv = round_to_bf16(Tensor::<3>::random(
            [2, 7, 144],
            Distribution::Normal(0.0, 1.5),
            &device,
        ));
        let weight = Tensor::<3>::random([2, 7, 48], Distribution::Normal(0.0, 1.5), &device);
        // The rounding shows, forward (a bf16 step is 2^-8 relative) and backward.
        let moved: f32 = (attention(qkv.clone().inner(), 3) - attention_bf16(qkv.clone().inner(), 3))
            .abs()
            .max()
            .into_scalar();
        assert!(moved > 1e-4, "the bf16 probabilities moved the output by {moved}");
        let gradient = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let x = qkv.clone().require_grad();
            let grads = (f(x.clone()) * weight.clone()).sum().backward();
            x.grad(&grads).unwrap()
        };
        let moved: f32 = (gradient(&|x| attention(x, 3)) - gradient(&|x| attention_bf16(x, 3)))
            .abs()
            .max()
            .into_scalar();
        assert!(
            moved > 1e-4,
            "the bf16 probabilities moved the gradient by {moved}"
        );
    }
}
