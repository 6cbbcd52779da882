//! CPU kernels for the operations where burn's pure-Rust `flex` backend lost most of its time
//! against PyTorch, beyond the matrix multiply itself (`docs/benchmarks.md` has the profiles):
//!
//! * [`gelu`]: `flex` evaluates the exact (erf) GELU, and its derivative, one scalar at a time
//!   on one thread (`libm::erff`); here both are a vectorisable rational erf on every core,
//!   registered as a burn backend extension with its own backward, so training uses it too.
//! * [`attention`]: at 577 tokens `flex` takes its tiled "flash" path, whose 64-key tiles keep
//!   gemm far from its peak and whose softmax calls scalar `expf`; here each (image, head)
//!   is two whole gemm calls around a vectorised softmax, heads spread over the cores, reading
//!   the heads where they lie in the fused `qkv` projection and writing them where they lie
//!   in the merged output (`flex` copies a strided tensor on every reshape). Under autodiff it
//!   keeps the probabilities and its backward is five gemm calls per head into the fused
//!   gradient, where burn would differentiate a chain of generic ops over
//!   `[batch, heads, n, n]` tensors. On the `tch` backend's CPU device (module `torch`) it is
//!   libtorch's flash attention, and under autodiff its backward, as PyTorch runs them: burn
//!   itself differentiates attention there through the same chain of generic ops.
//! * [`linear`]: `flex` zeroes each fresh output, adds the bias in a second pass and leaves
//!   the split over the cores to its batch loop; here the bias is the product's starting
//!   value, and row blocks of about half an image are single-threaded products spread over
//!   the cores, with a backward of the same shape (+15-20 % inference, +12-25 % training step
//!   in alternating runs). On AVX2 CPUs without AVX-512 the products are module `panels`' own
//!   micro-kernel on weights packed once (kept between inference calls) instead of `gemm`,
//!   which packs both operands in every task (+4-8 % inference); with AVX-512 `gemm`'s
//!   512-bit kernels are faster.
//! * [`layer_norm`]: under autodiff burn decomposes a layer norm into about ten tensor
//!   operations, forward and backward (14-18 ms per `[8, 577, 384]` norm, 25 of them in a
//!   ViT-S step); here a row's statistics and its backward are each one pass while the row is
//!   in cache (4.9-5.2 ms).
//! * [`patch_embed`]: ViT's stride-16 convolution is a matrix product once each patch is a
//!   row; here the patches are cut out in one parallel pass and go through [`linear`]'s
//!   kernel, where `flex`'s convolution ran mostly on one thread (4.8 ms of a batch-1 forward).
//! * [`axpby`]: `a * x + b * y` in one parallel pass, in place when it can be, for the SGD
//!   update ([`crate::train::Sgd`]); `flex` gives every element-wise operation a pass of its
//!   own, on one thread below 4M elements.
//! * [`conv2d_affine`]: a convolution followed by a frozen batch norm (and ReLU), as CATR's
//!   ResNet runs them: one im2col matrix and one GEMM over the cores, then one pass for the
//!   affine; inference only (`#[backend_extension(Flex)]`).
//! * [`Team`], [`ArgmaxHead`] and [`attend_one`] (module `decode`): greedy decoding feeds one
//!   row at a time through small layers, where a tensor operation per step costs more than
//!   its arithmetic and each weight matrix is read once per token; these work on plain
//!   slices, with a few spinning threads splitting each product.
//!
//! GELU, attention, the linear layer, the layer norm and the patch cutting are burn backend
//! extensions (`#[backend_extension(Flex, Autodiff)]`) with their own `Backward`. The fast
//! paths run for `f32` tensors on the `flex` device, attention's also on libtorch's CPU device
//! (the slice kernels take plain `f32` slices); anything else calls burn's own operation, so
//! results never depend on which path ran beyond rounding (the tests at the bottom bound the
//! difference, gradients included).

// Without `flex` only the slice kernels (`decode`) are in use; the rest serve its fast paths.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::module;
use burn::tensor::ops::AttentionModuleOptions;
use std::mem::MaybeUninit;

/// Exact GELU, `x * Φ(x)`, as `torch.nn.GELU()` (timm's MLP) computes it.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if flex::on_flex(&x) {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::ErfGelu>::erf_gelu(x.into_dispatch()));
    }
    activation::gelu(x)
}

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
    #[cfg(feature = "flex")]
    if flex::on_flex(&qkv) && qkv.shape().num_elements() > 0 {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::SdpAttention>::sdp_attention(
            qkv.into_dispatch(),
            heads,
        ));
    }
    #[cfg(feature = "tch")]
    if torch::admits(&qkv) {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as torch::FlashAttention>::flash_attention(
            qkv.into_dispatch(),
            heads,
        ));
    }
    burns_attention(qkv, heads)
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
        && flex::on_flex(&x)
        && flex::on_flex(&layer.weight.val())
    {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::AffineRows>::affine_rows(
            x.into_dispatch(),
            layer.weight.val().into_dispatch(),
            bias.val().into_dispatch(),
        ));
    }
    layer.forward(x)
}

/// A patch embedding: `conv.forward(x)` for a convolution whose stride is its kernel (ViT's
/// `patch_embed.proj`), as `[batch, patches, dim]` with the patches row-major over the grid.
/// On `flex` (with autodiff or without) each patch is cut out as one row of a `[batch,
/// patches, c_in * kh * kw]` matrix and the rows go through [`linear`]'s kernel, the
/// convolution's weight read in place as the `[c_in * kh * kw, dim]` matrix; `flex`'s own
/// convolution took 4.8 ms of a 145 ms batch-1 forward and 80 ms of a batch-8 training step,
/// mostly on one thread, and the tokens then needed a transposing copy.
pub fn patch_embed(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let Some(bias) = &conv.bias
        && flex::cuts_patches(conv, &x)
    {
        use burn::backend::Dispatch;
        let [dim, c_in, kh, kw] = conv.weight.dims();
        let weight = conv.weight.val().reshape([dim, c_in * kh * kw]).swap_dims(0, 1);
        let rows = <Dispatch as flex::PatchRows>::patch_rows(x.into_dispatch(), [kh, kw]);
        return Tensor::from_dispatch(<Dispatch as flex::AffineRows>::affine_rows(
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

/// `norm.forward(x)` for `x` `[..., d]`, `epsilon` being the one `norm` was made with (burn
/// keeps it private). On `flex` each row is normalised in two passes while it is in cache;
/// under autodiff the backward is one pass per row plus the column sums for γ and β, where
/// burn differentiates about ten tensor operations (300 ms of a ViT-S training step).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(beta) = &norm.beta
        && flex::on_flex(&x)
        && x.shape().num_elements() > 0
    {
        use burn::backend::Dispatch;
        return Tensor::from_dispatch(<Dispatch as flex::RowNorm>::row_norm(
            x.into_dispatch(),
            norm.gamma.val().into_dispatch(),
            beta.val().into_dispatch(),
            epsilon,
        ));
    }
    let _ = epsilon;
    norm.forward(x)
}

/// `a * x + b * y`, element-wise: the arithmetic of an optimiser's update. On `flex` outside
/// autodiff it is one pass spread over the cores, written into `x`'s buffer when nothing else
/// holds it; `flex` runs each element-wise operation as a pass of its own, on one thread below
/// 4M elements (every ViT-S parameter), which made burn's SGD with momentum 47-58 ms of a
/// training step, all of it on one core.
pub fn axpby<const D: usize>(a: f64, x: Tensor<D>, b: f64, y: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if flex::admits(&x) && flex::admits(&y) && x.shape() == y.shape() {
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

/// `conv.forward(x) * scale + shift` per output channel, then ReLU if `relu`: a convolution
/// followed by a frozen batch norm, for `x` `[batch, c_in, h, w]`. On `flex` outside autodiff
/// (`groups = 1`, symmetric padding) it is one im2col matrix per image (none for a plain 1x1
/// convolution), one GEMM split over the cores and one pass for the affine and ReLU. `flex`
/// itself tiles the output positions by 512, converts the input to NHWC and reorders the
/// weight on every call, and the batch norm and ReLU are three more passes over the output.
pub fn conv2d_affine(
    conv: &Conv2d,
    x: Tensor<4>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    relu: bool,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(padding) = flex::im2col_padding(conv, &x) {
        use burn::backend::Dispatch;
        // (W x + b) * scale + shift = (W x) * scale + (b * scale + shift).
        let shift = match &conv.bias {
            Some(bias) => shift + bias.val() * scale.clone(),
            None => shift,
        };
        return Tensor::from_dispatch(<Dispatch as flex::ConvAffine>::conv_affine(
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

/// Whether `x` is an `f32` tensor on the `flex` device outside autodiff: where copying a
/// model's weights out for the slice kernels ([`Team`], [`attend_one`]) pays off.
pub fn plain_flex<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex")]
    return flex::admits(x);
    #[cfg(not(feature = "flex"))]
    return {
        let _ = x;
        false
    };
}

#[cfg(feature = "flex")]
mod flex {
    use super::panels::Panels;
    use super::*;
    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, Flex, backend_extension};
    use burn::tensor::{DType, Device, TensorData};
    use rayon::prelude::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex, PoisonError};

    /// GELU as a backend extension: `Flex` runs the kernel, `Autodiff<Flex>` records
    /// [`GeluBackward`] around it.
    #[backend_extension(Flex, Autodiff)]
    pub trait ErfGelu: Backend {
        fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl ErfGelu for Flex {
        fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let (mut values, shape) = flex_values(x);
            values.par_chunks_mut(CHUNK).for_each(gelu_slice);
            FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
        }
    }

    impl<C: CheckpointStrategy> ErfGelu for Autodiff<Flex, C> {
        fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    // The graph keeps the input, so the output is a new buffer (`Flex`'s
                    // in-place kernel would copy the input first).
                    let (input, shape) = dense(x.into_primitive());
                    let values = &input.storage::<f32>()[..input.layout().num_elements()];
                    // SAFETY: `gelu_into` writes every element of every chunk.
                    let out = unsafe {
                        written(values.len(), |out| {
                            out.par_chunks_mut(CHUNK)
                                .zip(values.par_chunks(CHUNK))
                                .for_each(|(out, x)| gelu_into(out, x))
                        })
                    };
                    let out = FloatTensor::<Flex>::from_data(TensorData::new(out, shape));
                    prep.finish(input, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(Flex::erf_gelu(x.into_primitive())),
            }
        }
    }

    /// `grad * GELU'(x)`, keeping the input `x` as its state.
    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = FloatTensor<Flex>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                // Read where it lies: the state may still be shared, and a copy cost more
                // than the kernel.
                let (x, _) = dense(x);
                let x = &x.storage::<f32>()[..x.layout().num_elements()];
                let (mut grad, shape) = flex_values(grad);
                grad.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|(grad, x)| gelu_backward_slice(grad, x));
                FloatTensor::<Flex>::from_data(TensorData::new(grad, shape))
            });
        }
    }

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

    /// Elements per parallel task of an element-wise kernel: large enough to amortise the
    /// task, small enough to spread a ViT-S activation over many.
    const CHUNK: usize = 1 << 14;

    /// The values of a `flex` tensor in row-major order (no copy when it is contiguous and
    /// not shared) and its shape.
    fn flex_values(x: FloatTensor<Flex>) -> (Vec<f32>, Vec<usize>) {
        let data = x.into_data();
        let shape = data.shape().to_vec();
        (
            data.try_into_vec::<f32>()
                .expect("on_flex() lets f32 tensors through only"),
            shape,
        )
    }

    /// Registers `values`, row-major of `shape`, as the gradient of `node` if it is tracked.
    fn register(grads: &mut Gradients, node: Option<NodeId>, values: Vec<f32>, shape: Vec<usize>) {
        if let Some(id) = node {
            grads.register::<Flex>(id, FloatTensor::<Flex>::from_data(TensorData::new(values, shape)));
        }
    }

    /// Attention as a backend extension: `Flex` runs [`attention_forward`], `Autodiff<Flex>`
    /// keeps the probabilities for [`AttentionBackward`].
    #[backend_extension(Flex, Autodiff)]
    pub trait SdpAttention: Backend {
        fn sdp_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
    }

    impl SdpAttention for Flex {
        fn sdp_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
            let inputs = AttentionInputs::new(qkv, heads);
            let (out, _) = attention_forward(&inputs, false);
            inputs.merged(out)
        }
    }

    impl<C: CheckpointStrategy> SdpAttention for Autodiff<Flex, C> {
        fn sdp_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
            let nodes = [qkv.node()];
            let inputs = AttentionInputs::new(qkv.into_primitive(), heads);
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
    }

    /// Which of the fused projection's three parts.
    #[derive(Clone, Copy)]
    enum Part {
        Query = 0,
        Key = 1,
        Value = 2,
    }

    impl AttentionInputs {
        fn new(qkv: FloatTensor<Flex>, heads: usize) -> Self {
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
    struct Bands(*mut f32, usize);

    // SAFETY: every task writes only its own pair's bands ([`AttentionInputs::band`]).
    unsafe impl Send for Bands {}
    unsafe impl Sync for Bands {}

    impl Bands {
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
            let bands = Bands::new(out);
            let one_pair = |pair: usize, scores: &mut [MaybeUninit<f32>]| {
                let (q, q_cs, q_rs) = x.read(pair, Part::Query);
                let (k, k_cs, k_rs) = x.read(pair, Part::Key);
                let (v, v_cs, v_rs) = x.read(pair, Part::Value);
                // scores = scale q kᵀ
                let scores = matmul(scores, [n, n, d], (q, q_cs, q_rs), (k, k_rs, k_cs), x.scale());
                softmax_rows(scores, n);
                // out = scores v, into this pair's band of the merged output
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

    /// The gradient of the fused projection from the merged output's, given the inputs and
    /// the softmax probabilities P, per pair:
    /// `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dQ = scale dS K`,
    /// `dK = scale dSᵀ Q`, each written into its band of `d qkv`.
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
                let bands = Bands::new(dqkv);
                (0..pairs).into_par_iter().for_each_init(
                    || Vec::with_capacity(n * n),
                    |ds: &mut Vec<f32>, pair| {
                        let (q, q_cs, q_rs) = x.read(pair, Part::Query);
                        let (k, k_cs, k_rs) = x.read(pair, Part::Key);
                        let (v, v_cs, v_rs) = x.read(pair, Part::Value);
                        let p = &probabilities[pair * n * n..][..n * n];
                        let d_out = &grad_out[x.band(pair, 0, 1)..];
                        let band = |part: Part| (x.band(pair, part as usize, 3), 3 * dim);
                        // SAFETY (each `bands.matmul`): one task per pair, disjoint bands.
                        // dP = dO Vᵀ, then dS in place
                        let ds = matmul(
                            &mut ds.spare_capacity_mut()[..n * n],
                            [n, n, d],
                            (d_out, 1, dim),
                            (v, v_rs, v_cs),
                            1.0,
                        );
                        softmax_backward_rows(ds, p, n);
                        // dV = Pᵀ dO, after the softmax backward has streamed P into the cache:
                        // the product reads Pᵀ in strips of a few columns across all of P's
                        // rows, and straight from memory it took 18-23 ms of a ViT-S block's
                        // backward, against 8-10 for each other product of its size
                        // (AVX-512 Xeon, docs/benchmarks.md item 13).
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
                    },
                )
            };
            // SAFETY: each pair's dQ, dK and dV bands are written by its GEMMs, and the pairs'
            // bands tile the whole gradient.
            let dqkv = unsafe { written(x.batch * n * 3 * dim, fill) };
            let [parent] = ops.parents;
            register(grads, parent.map(|node| node.id), dqkv, vec![x.batch, n, 3 * dim]);
        }
    }

    /// [`super::layer_norm`]'s fast path: `x` `[..., d]`, `gamma` and `beta` `[d]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait RowNorm: Backend {
        fn row_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self>;
    }

    /// The normalised rows, and each row's mean and 1 / standard deviation.
    fn row_norm_forward(
        x: &FloatTensor<Flex>,
        gamma: &FloatTensor<Flex>,
        beta: &FloatTensor<Flex>,
        epsilon: f64,
    ) -> (FloatTensor<Flex>, Vec<[f32; 2]>) {
        let (x, shape) = dense(x.clone());
        let (gamma, _) = dense(gamma.clone());
        let (beta, _) = dense(beta.clone());
        let d = *shape.last().expect("layer_norm takes at least one dimension");
        let (gamma, beta) = (gamma.storage::<f32>(), beta.storage::<f32>());
        assert!(
            gamma.len() >= d && beta.len() >= d,
            "layer_norm: γ and β are not [{d}]"
        );
        let x = &x.storage::<f32>()[..x.layout().num_elements()];
        let rows = x.len() / d;
        let mut stats = vec![[0f32; 2]; rows];
        let block = CHUNK.div_ceil(d);
        // SAFETY: `norm_rows` writes every element of every chunk.
        let out = unsafe {
            written(x.len(), |out| {
                out.par_chunks_mut(block * d)
                    .zip(x.par_chunks(block * d))
                    .zip(stats.par_chunks_mut(block))
                    .for_each(|((out, x), stats)| {
                        norm_rows(out, x, stats, &gamma[..d], &beta[..d], epsilon as f32)
                    })
            })
        };
        (FloatTensor::<Flex>::from_data(TensorData::new(out, shape)), stats)
    }

    impl RowNorm for Flex {
        fn row_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self> {
            row_norm_forward(&x, &gamma, &beta, epsilon).0
        }
    }

    impl<C: CheckpointStrategy> RowNorm for Autodiff<Flex, C> {
        fn row_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
        ) -> FloatTensor<Self> {
            let nodes = [x.node(), gamma.node(), beta.node()];
            let (x, gamma, beta) = (x.into_primitive(), gamma.into_primitive(), beta.into_primitive());
            let (out, stats) = row_norm_forward(&x, &gamma, &beta, epsilon);
            match RowNormBackward.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish((x, gamma, Arc::new(stats)), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            }
        }
    }

    /// With `x̂ = (x - mean) / σ` and `g` the output's gradient: `dx = (g γ - mean(g γ)
    /// - x̂ mean(g γ x̂)) / σ` per row, `dγ = Σ g x̂` and `dβ = Σ g` over the rows.
    #[derive(Debug)]
    struct RowNormBackward;

    impl Backward<Flex, 3> for RowNormBackward {
        type State = (FloatTensor<Flex>, FloatTensor<Flex>, Arc<Vec<[f32; 2]>>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, gamma, stats) = ops.state;
            let (grad, shape) = dense(grads.consume::<Flex>(&ops.node));
            let (x, _) = dense(x);
            let (gamma, _) = dense(gamma);
            let d = *shape.last().expect("rank >= 1");
            let gamma = &gamma.storage::<f32>()[..d];
            let grad = &grad.storage::<f32>()[..stats.len() * d];
            let x = &x.storage::<f32>()[..stats.len() * d];
            let block = CHUNK.div_ceil(d);
            let mut sums = None;
            let fill = |dx: &mut [MaybeUninit<f32>]| {
                sums = dx
                    .par_chunks_mut(block * d)
                    .zip(grad.par_chunks(block * d))
                    .zip(x.par_chunks(block * d))
                    .zip(stats.par_chunks(block))
                    .map(|(((dx, grad), x), stats)| {
                        let mut sums = (vec![0f32; d], vec![0f32; d]);
                        norm_backward_rows(dx, grad, x, stats, gamma, &mut sums.0, &mut sums.1);
                        sums
                    })
                    .reduce_with(|(mut dg, mut db), (dg2, db2)| {
                        dg.iter_mut().zip(&dg2).for_each(|(a, b)| *a += b);
                        db.iter_mut().zip(&db2).for_each(|(a, b)| *a += b);
                        (dg, db)
                    });
            };
            // SAFETY: `norm_backward_rows` writes every element of every chunk.
            let dx = unsafe { written(grad.len(), fill) };
            let (dgamma, dbeta) = sums.expect("at least one row");
            let [parent_x, parent_gamma, parent_beta] = ops.parents;
            for (parent, values, shape) in [
                (parent_x, dx, shape),
                (parent_gamma, dgamma, vec![d]),
                (parent_beta, dbeta, vec![d]),
            ] {
                register(grads, parent.map(|node| node.id), values, shape);
            }
        }
    }

    /// [`super::linear`]'s fast path: `x` `[..., d_in]`, `weight` `[d_in, d_out]`, `bias`
    /// `[d_out]`.
    #[backend_extension(Flex, Autodiff)]
    pub trait AffineRows: Backend {
        fn affine_rows(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self>;
    }

    impl AffineRows for Flex {
        fn affine_rows(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            affine_forward(x, weight, bias, Packing::Keep)
        }
    }

    /// Where the forward of a linear layer gets its weight's [`Panels`] from.
    enum Packing {
        /// [`kept_panels`]: outside autodiff the same weights come back call after call.
        Keep,
        /// Packed for this call alone: under autodiff the optimiser replaces the weights
        /// every step.
        Once,
    }

    fn affine_forward(
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
            Packing::Keep => kept_panels(&weight, Operand::panels),
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

    /// Budget of [`kept_panels`], in bytes of panels plus the weights they keep alive.
    const KEPT_BYTES: usize = 1 << 30;

    /// Weights packed by inference forwards, least recently used first.
    static KEPT: Mutex<VecDeque<(FloatTensor<Flex>, Arc<Panels>)>> = Mutex::new(VecDeque::new());

    /// `weight` packed into [`Panels`] by `pack`, once, and kept for the next forward with the
    /// same weight while the packed weights stay within [`KEPT_BYTES`] (ViT-S/16's 49 linear
    /// layers take 176 MB) and someone else still holds the weight. At batch 1 packing every
    /// call took about 5 % of inference.
    ///
    /// An entry holds a clone of the weight tensor: `flex` copies shared storage before writing
    /// to it, so while the entry lives the values at that address are the packed ones and no
    /// other tensor can be allocated there. The same address and layout is the same matrix.
    fn kept_panels<'a>(
        weight: &Operand<'a>,
        pack: impl FnOnce(&Operand<'a>) -> Option<Panels>,
    ) -> Option<Arc<Panels>> {
        let same = |kept: &FloatTensor<Flex>| {
            kept.storage::<f32>().as_ptr() == weight.tensor.storage::<f32>().as_ptr()
                && kept.layout() == weight.tensor.layout()
        };
        let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = kept.iter().position(|(tensor, _)| same(tensor)) {
            let entry = kept.remove(i).expect("found above");
            let panels = Arc::clone(&entry.1);
            kept.push_back(entry);
            return Some(panels);
        }
        drop(kept);
        let panels = Arc::new(pack(weight)?);
        let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        // A weight that only its entry still holds (its model was dropped, or the optimiser
        // replaced it) can never be asked for again.
        kept.retain(|(tensor, _)| !tensor.is_unique());
        kept.push_back((weight.tensor.clone(), Arc::clone(&panels)));
        let bytes = |(tensor, panels): &(FloatTensor<Flex>, Arc<Panels>)| {
            4 * (tensor.storage::<f32>().len() + panels.len())
        };
        let mut total: usize = kept.iter().map(bytes).sum();
        while total > KEPT_BYTES
            && let Some(oldest) = kept.pop_front()
        {
            total -= bytes(&oldest);
        }
        Some(panels)
    }

    impl<C: CheckpointStrategy> AffineRows for Autodiff<Flex, C> {
        fn affine_rows(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let nodes = [x.node(), weight.node(), bias.node()];
            let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
            match AffineRowsBackward.prepare::<C>(nodes).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let out = affine_forward(x.clone(), weight.clone(), bias, Packing::Once);
                    prep.finish((x, weight), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(affine_forward(x, weight, bias, Packing::Once)),
            }
        }
    }

    /// With `dY` the output's gradient, flattened to `[rows, d_out]`: `dX = dY Wᵀ`,
    /// `dW = Xᵀ dY` and `db` the column sums of `dY`.
    #[derive(Debug)]
    struct AffineRowsBackward;

    impl Backward<Flex, 3> for AffineRowsBackward {
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
            // own partial (one single-threaded GEMM; measured 5-25 % faster than one GEMM
            // split by gemm itself), and the partials are added.
            let parts = rayon::current_num_threads().min(rows / 256).max(1);
            let block = rows.div_ceil(parts).max(1);
            let (dw, db) = x[..rows * d_in]
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
                .reduce_with(|(mut dw, mut db), (dw2, db2)| {
                    dw.iter_mut().zip(&dw2).for_each(|(a, b)| *a += b);
                    db.iter_mut().zip(&db2).for_each(|(a, b)| *a += b);
                    (dw, db)
                })
                .unwrap_or_else(|| (vec![0f32; d_in * d_out], vec![0f32; d_out]));
            register(grads, parent_weight.map(|node| node.id), dw, vec![d_in, d_out]);
            register(grads, parent_bias.map(|node| node.id), db, vec![d_out]);
        }
    }

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

    /// A 2-D `flex` matrix read where it lies, with its element strides (a transposed weight
    /// is not copied).
    struct Operand<'a> {
        tensor: &'a FloatTensor<Flex>,
        rows: usize,
        cols: usize,
        /// Column and row strides, in elements.
        cs: usize,
        rs: usize,
    }

    impl<'a> Operand<'a> {
        fn new(tensor: &'a FloatTensor<Flex>) -> Self {
            let dims = tensor.layout().shape().to_vec();
            let [rows, cols] = dims[..] else {
                panic!("linear takes a [d_in, d_out] weight, got {dims:?}")
            };
            let strides = tensor.layout().strides();
            assert!(
                strides.iter().all(|&s| s >= 0),
                "linear: a flipped weight is not supported"
            );
            Self {
                tensor,
                rows,
                cols,
                cs: strides[1] as usize,
                rs: strides[0] as usize,
            }
        }

        /// The storage from the first element on.
        fn values(&self) -> &'a [f32] {
            &self.tensor.storage::<f32>()[self.tensor.layout().start_offset()..]
        }

        /// The matrix packed for [`product_rows`], where the CPU runs [`Panels`].
        fn panels(&self) -> Option<Panels> {
            Panels::pack((self.values(), self.cs, self.rs), [self.rows, self.cols])
        }
    }

    /// Rows per task of [`product_rows`]: about half a 577-token image's worth at
    /// ViT-S/16-384, and at least one block per core while blocks keep 48 rows. Row blocks
    /// measured faster than one GEMM split by gemm itself; halving them from one image's worth
    /// cut the cores' idle tail at the end of each product (utilisation 0.91-0.94 -> 0.95-0.97
    /// in a training step) for a little more packing of the weights, and one block per core at
    /// batch 1 (577 rows), where gemm had split its one product over the cores, made
    /// whole-model inference 4-5 % faster (`docs/benchmarks.md`, item 15). 48 rows or fewer
    /// stay one GEMM over all the cores.
    fn block_rows(rows: usize) -> usize {
        const ABOUT: usize = 300;
        let cores = rayon::current_num_threads().min(rows.div_ceil(48));
        let blocks = rows.div_ceil(ABOUT).max(cores).max(1);
        rows.div_ceil(blocks).max(1)
    }

    /// `lhs [rows, k] · rhs [k, n] (+ bias)` as a new row-major `[rows, n]`, the lhs dense and
    /// the rhs given with its (column, row) strides, and also as `panels` where the CPU prefers
    /// them ([`Panels::pack`]). Row blocks of about [`block_rows`], at least one per core, are
    /// tasks of one single-threaded product each. Without panels the tasks are `gemm` calls,
    /// the bias copied into each block just before its GEMM adds onto it.
    fn product_rows(
        (lhs, rows, k): (&[f32], usize, usize),
        (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
        n: usize,
        bias: Option<&[f32]>,
        panels: Option<&Panels>,
    ) -> Vec<f32> {
        assert!(bias.is_none_or(|b| b.len() == n));
        // An empty batch (which `flex`'s own matmul does not survive) or an empty layer.
        if rows * n == 0 {
            return Vec::new();
        }
        if k == 0 {
            return bias.map_or_else(|| vec![0f32; rows * n], |b| b.repeat(rows));
        }
        assert!(lhs.len() >= rows * k);
        let block = block_rows(rows);
        if let Some(panels) = panels {
            let fill = |out: &mut [MaybeUninit<f32>]| {
                out.par_chunks_mut(block * n)
                    .zip(lhs[..rows * k].par_chunks(block * k))
                    .for_each(|(dst, lhs)| {
                        panels.product(dst, lhs, bias);
                    })
            };
            // SAFETY: `Panels::product` writes every element of its block.
            return unsafe { written(rows * n, fill) };
        }
        let parallelism = if block == rows {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(block * n)
                .zip(lhs[..rows * k].par_chunks(block * k))
                .for_each(|(dst, lhs)| {
                    let m = dst.len() / n;
                    if let Some(bias) = bias {
                        for row in dst.chunks_exact_mut(n) {
                            row.write_copy_of_slice(bias);
                        }
                    }
                    // SAFETY: `dst` is this task's own `[m, n]` block, read only after the bias was
                    // written into it.
                    unsafe {
                        gemm_raw(
                            (dst.as_mut_ptr().cast::<f32>(), n, bias.is_some()),
                            [m, n, k],
                            (lhs, 1, k),
                            (rhs, rhs_cs, rhs_rs),
                            1.0,
                            parallelism,
                        )
                    }
                })
        };
        // SAFETY: every block is written, by the bias copy and the GEMM or by the GEMM alone.
        unsafe { written(rows * n, fill) }
    }

    /// [`super::conv2d_affine`]'s fast path: `x` `[batch, c_in, h, w]`, `weight`
    /// `[c_out, c_in, kh, kw]`, `scale` and `shift` `[c_out]`, and `[stride, dilation,
    /// padding]` (each `[along h, along w]`).
    #[backend_extension(Flex)]
    pub trait ConvAffine: Backend {
        fn conv_affine(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            scale: FloatTensor<Self>,
            shift: FloatTensor<Self>,
            geometry: [[usize; 2]; 3],
            relu: bool,
        ) -> FloatTensor<Self>;
    }

    impl ConvAffine for Flex {
        fn conv_affine(
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

    /// A contiguous, offset-free `flex` tensor (copied only when it is not) and its shape.
    fn dense(x: FloatTensor<Flex>) -> (FloatTensor<Flex>, Vec<usize>) {
        let shape = x.layout().shape().to_vec();
        let x = if x.is_contiguous() && x.layout().start_offset() == 0 {
            x
        } else {
            x.to_contiguous()
        };
        (x, shape)
    }

    /// [`dense`] for a 4-D tensor.
    fn contiguous(x: FloatTensor<Flex>) -> (FloatTensor<Flex>, [usize; 4]) {
        let (x, dims) = dense(x);
        (x, [dims[0], dims[1], dims[2], dims[3]])
    }

    /// The padding [`ConvAffine`] takes for `conv` on `x`, if it applies: `f32` on `flex`
    /// without autodiff, `groups = 1`, symmetric padding.
    pub fn im2col_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 2]> {
        use burn::nn::PaddingConfig2d;
        if conv.groups != 1 || !admits(x) || !admits(&conv.weight.val()) {
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

    /// A new `Vec` of `len` values, all written by `fill` into uninitialised memory (by the
    /// tasks of a parallel loop, typically), so that no serial zero-fill comes first.
    ///
    /// SAFETY: `fill` must initialise every element of the slice it is given.
    unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
        let mut values = Vec::with_capacity(len);
        fill(&mut values.spare_capacity_mut()[..len]);
        // SAFETY: the caller vouches that `fill` initialised all `len` elements.
        unsafe { values.set_len(len) };
        values
    }

    /// `dst[m, n] = scale * lhs[m, k] rhs[k, n]` on this thread, each operand given with its
    /// (column, row) strides in elements, so transposes cost nothing. `dst` may start
    /// uninitialised (the GEMM does not read it) and is returned initialised.
    fn matmul<'a>(
        dst: &'a mut [MaybeUninit<f32>],
        [m, n, k]: [usize; 3],
        lhs: (&[f32], usize, usize),
        rhs: (&[f32], usize, usize),
        scale: f32,
    ) -> &'a mut [f32] {
        gemm_into(dst, [m, n, k], lhs, rhs, scale, gemm::Parallelism::None)
    }

    /// [`matmul`] with the given parallelism.
    fn gemm_into<'a>(
        dst: &'a mut [MaybeUninit<f32>],
        [m, n, k]: [usize; 3],
        lhs: (&[f32], usize, usize),
        rhs: (&[f32], usize, usize),
        scale: f32,
        parallelism: gemm::Parallelism,
    ) -> &'a mut [f32] {
        assert!(dst.len() >= m * n);
        let dst = dst.as_mut_ptr().cast::<f32>();
        // SAFETY: `dst` holds `[m, n]` and is borrowed exclusively; the GEMM writes every
        // element without reading it, after which the slice is initialised.
        unsafe {
            gemm_raw((dst, n, false), [m, n, k], lhs, rhs, scale, parallelism);
            std::slice::from_raw_parts_mut(dst, m * n)
        }
    }

    /// `dst[m, n] = scale * lhs[m, k] rhs[k, n]`, or `+=` with `add`, `dst` row-major with row
    /// stride `dst_rs`.
    ///
    /// SAFETY: `dst` must be valid for reads (with `add`) and writes of the `[m, n]` matrix at
    /// that stride, initialised if `add`, and no one else may access it meanwhile.
    unsafe fn gemm_raw(
        (dst, dst_rs, add): (*mut f32, usize, bool),
        [m, n, k]: [usize; 3],
        (lhs, lhs_cs, lhs_rs): (&[f32], usize, usize),
        (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
        scale: f32,
        parallelism: gemm::Parallelism,
    ) {
        let last = |rows: usize, cols: usize, cs: usize, rs: usize| (rows - 1) * rs + (cols - 1) * cs;
        assert!(m * n * k > 0 && dst_rs >= n);
        assert!(last(m, k, lhs_cs, lhs_rs) < lhs.len() && last(k, n, rhs_cs, rhs_rs) < rhs.len());
        // SAFETY: the asserts keep every strided read inside its slice; the caller vouches
        // for `dst`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                dst_rs as isize,
                add,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                rhs_cs as isize,
                rhs_rs as isize,
                if add { 1.0 } else { 0.0 },
                scale,
                false,
                false,
                false,
                parallelism,
            );
        }
    }

    /// Whether `x` is an `f32` tensor on the `flex` device, with autodiff or without.
    pub fn on_flex<const D: usize>(x: &Tensor<D>) -> bool {
        x.dtype() == DType::F32 && x.device().inner() == Device::flex()
    }

    /// Whether `x` is an `f32` tensor on the `flex` device with no autodiff graph to extend.
    pub fn admits<const D: usize>(x: &Tensor<D>) -> bool {
        on_flex(x) && !x.is_autodiff()
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
            let Some(panels) = kept_panels(&Operand::new(&weight), pack) else {
                return eprintln!("no AVX2 + FMA: nothing is packed on this CPU");
            };
            let again = kept_panels(&Operand::new(&weight), pack).expect("packed above");
            assert!(Arc::ptr_eq(&panels, &again), "the same weight was packed twice");
            assert_eq!(Arc::strong_count(&panels), 3, "the cache holds the panels too");
            // Once the weight is dropped, the next insertion lets go of its entry.
            drop(weight);
            let other = matrix(2.0);
            kept_panels(&Operand::new(&other), pack);
            assert_eq!(Arc::strong_count(&panels), 2);
        }
    }
}

/// Softmax of one row in place, in passes that each vectorise.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = fold_lanes(row, f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    // eˣ written and summed in one pass over the row.
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *lane += *x;
        }
    }
    let tail = chunks.into_remainder().iter_mut().fold(0.0, |sum, x| {
        *x = exp(*x - max);
        sum + *x
    });
    let inv_sum = 1.0 / lanes.into_iter().fold(tail, |sum, x| sum + x);
    row.iter_mut().for_each(|x| *x *= inv_sum);
}

/// Interleaved accumulators of a reduction: two AVX2 registers or one AVX-512 register.
const LANES: usize = 16;

/// A reduction over [`LANES`] interleaved accumulators: the compiler may not reorder a float
/// fold by itself, and a single accumulator never vectorises.
#[inline(always)]
fn fold_lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |acc, &x| f(acc, x));
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = f(*lane, x);
        }
    }
    lanes.into_iter().fold(tail, &f)
}

/// `0.5 x (1 + erf(x / √2))`.
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf as the odd rational function `x P(x²) / Q(x²)` on `[-4, 4]`, where f32 erf reaches ±1
/// (coefficients of Eigen's and XLA's `erf` for float; largest error 4.2e-7, measured against
/// Python's `math.erf` on 200,001 points in `[-6, 6]`). No branches, so loops vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// eˣ by Cephes' `expf`: `x = n ln2 + r` with `|r| ≤ ln2 / 2`, a degree-6 polynomial for eʳ,
/// and `2ⁿ` written into the exponent bits (relative error about 2e-7; 0 below -87.3, where
/// f32 stops being normal). Selects instead of branches, so loops vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOWEST: f32 = -87.336_54;
    let clamped = x.clamp(LOWEST, 88.376_26);
    // Round to nearest by the 1.5 * 2^23 trick: `round()` does not vectorise everywhere.
    const ROUND: f32 = 12_582_912.0;
    let rounded = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    let er = p * r * r + r + 1.0;
    // The low mantissa bits of `rounded` hold n in two's complement (|n| < 2^22); shifting
    // n + 127 into the exponent field builds 2ⁿ with integer ops only (a float-to-int cast
    // would not vectorise). n is in [-126, 127], so the exponent is a normal one.
    let two_n = f32::from_bits(rounded.to_bits().wrapping_add(127) << 23);
    if x < LOWEST { 0.0 } else { er * two_n }
}

/// Defines `fn $name(args)` whose body is compiled three times: for AVX-512, for AVX2 + FMA,
/// and for the target's baseline, the first the CPU has being taken (checked at run time; the
/// 512-bit build cut the softmax and GELU time by about a fifth on an AVX-512 Xeon, and
/// without it that CPU ran the AVX2 build). The body's helpers must be
/// `#[inline(always)]` (so they are compiled into each copy) and called directly, not passed
/// as closures or function items, which may be compiled once, for the baseline.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU has the features `avx512` is compiled for (AVX-512F
                    // implies AVX2 and FMA).
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

mod decode;
mod panels;
#[cfg(feature = "tch")]
mod torch;
pub use decode::{ArgmaxHead, Team, attend_one, with_team};

multiversion! {
    /// `x * scale + shift` for every element, then ReLU if `relu`, in place.
    fn affine(xs: &mut [f32], scale: f32, shift: f32, relu: bool) {
        if relu {
            xs.iter_mut().for_each(|x| *x = (*x * scale + shift).max(0.0));
        } else {
            xs.iter_mut().for_each(|x| *x = *x * scale + shift);
        }
    }
}

multiversion! {
    /// [`gelu_one`] of every element, in place.
    fn gelu_slice(xs: &mut [f32]) {
        for x in xs {
            *x = gelu_one(*x);
        }
    }
}

multiversion! {
    /// [`gelu_one`] of every element of `x`, into `out` (which it need not read, so it may
    /// start uninitialised).
    fn gelu_into(out: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (out, &x) in out.iter_mut().zip(x) {
            out.write(gelu_one(x));
        }
    }
}

multiversion! {
    /// `grad *= GELU'(x) = Φ(x) + x φ(x)`, element by element.
    fn gelu_backward_slice(grad: &mut [f32], x: &[f32]) {
        for (grad, &x) in grad.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * x * x) * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
            *grad *= cdf + x * pdf;
        }
    }
}

multiversion! {
    /// `ds = p ⊙ (ds - rowsum(p ⊙ ds))` for each `keys`-long row: the softmax backward, with
    /// `ds` holding the probabilities' gradient on entry and the scores' on return.
    fn softmax_backward_rows(ds: &mut [f32], p: &[f32], keys: usize) {
        for (ds, p) in ds.chunks_exact_mut(keys).zip(p.chunks_exact(keys)) {
            let dot = dot(ds, p);
            for (ds, &p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - dot);
            }
        }
    }
}

multiversion! {
    /// [`softmax_row`] of each `keys`-long row, in place.
    fn softmax_rows(scores: &mut [f32], keys: usize) {
        for row in scores.chunks_exact_mut(keys) {
            softmax_row(row);
        }
    }
}

multiversion! {
    /// Layer norm of each `d`-long row of `x` into `out` (`d` = γ's length), keeping each
    /// row's `[mean, 1 / σ]`; two passes (mean, then the centred sum of squares) as burn and
    /// PyTorch compute it.
    fn norm_rows(out: &mut [MaybeUninit<f32>], x: &[f32], stats: &mut [[f32; 2]], gamma: &[f32], beta: &[f32], epsilon: f32) {
        let d = gamma.len();
        for ((out, x), stats) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(stats) {
            let mean = fold_lanes(x, 0.0, |sum, x| sum + x) / d as f32;
            let mut var_lanes = [0f32; 8];
            let chunks = x.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().map(|&x| (x - mean) * (x - mean)).sum();
            for chunk in chunks {
                for (lane, &x) in var_lanes.iter_mut().zip(chunk) {
                    *lane += (x - mean) * (x - mean);
                }
            }
            let var = var_lanes.into_iter().fold(tail, |sum, x| sum + x) / d as f32;
            let inv_std = 1.0 / (var + epsilon).sqrt();
            for (((out, &x), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
                out.write((x - mean) * inv_std * g + b);
            }
            *stats = [mean, inv_std];
        }
    }
}

multiversion! {
    /// [`norm_rows`]' backward for each row: `dx` from the output's gradient `grad`, and the
    /// row's `grad x̂` and `grad` added onto `dgamma` and `dbeta`.
    fn norm_backward_rows(
        dx: &mut [MaybeUninit<f32>],
        grad: &[f32],
        x: &[f32],
        stats: &[[f32; 2]],
        gamma: &[f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32]
    ) {
        let d = gamma.len();
        let rows = dx.chunks_exact_mut(d).zip(grad.chunks_exact(d)).zip(x.chunks_exact(d));
        for (((dx, grad), x), &[mean, inv_std]) in rows.zip(stats) {
            // dx holds x̂ for now.
            for (xhat, &x) in dx.iter_mut().zip(x) {
                xhat.write((x - mean) * inv_std);
            }
            // SAFETY: the loop above wrote every element of the row.
            let dx = unsafe { assume_written(dx) };
            // Σ gγ and Σ gγx̂ over eight lanes (see `fold_lanes`), then the tail.
            let (mut sum_gg, mut sum_ggx) = ([0f32; 8], [0f32; 8]);
            let lanes = grad.chunks_exact(8).zip(gamma.chunks_exact(8)).zip(dx.chunks_exact(8));
            for ((g, gm), xhat) in lanes {
                for l in 0..8 {
                    sum_gg[l] += g[l] * gm[l];
                    sum_ggx[l] += g[l] * gm[l] * xhat[l];
                }
            }
            for i in d - d % 8..d {
                sum_gg[0] += grad[i] * gamma[i];
                sum_ggx[0] += grad[i] * gamma[i] * dx[i];
            }
            let mean_gg = sum_gg.iter().sum::<f32>() / d as f32;
            let mean_ggx = sum_ggx.iter().sum::<f32>() / d as f32;
            for ((((dx, &g), &gm), dgamma), dbeta) in dx.iter_mut().zip(grad).zip(gamma).zip(dgamma.iter_mut()).zip(dbeta.iter_mut()) {
                let xhat = *dx;
                *dgamma += g * xhat;
                *dbeta += g;
                *dx = (g * gm - mean_gg - xhat * mean_ggx) * inv_std;
            }
        }
    }
}

/// `xs` as initialised values.
///
/// SAFETY: every element of `xs` must have been written.
#[inline(always)]
unsafe fn assume_written(xs: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller vouches for the values.
    unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast(), xs.len()) }
}

/// `a · b` over [`LANES`] interleaved accumulators (see [`fold_lanes`]).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *lane += x * y;
        }
    }
    lanes.into_iter().fold(tail, |sum, x| sum + x)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Gradients, TensorData, Tolerance};

    /// The `flex` device, seeded.
    pub(super) fn flex() -> Device {
        let device = Device::flex();
        device.seed(7);
        device
    }

    #[test]
    fn exp_and_erf_match_the_standard_library() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!((got - want).abs() <= 4e-7 * want, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-100.0), 0.0);
        // erf(x) = 1 - erfc(x); erfc by its continued fraction would be overkill: compare with
        // the integral's series, exact to f64 for |x| ≤ 3 and then erf is 1 to 4e-5 at most.
        for i in -300..=300 {
            let x = i as f64 * 0.01;
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let want = sum * 2.0 / std::f64::consts::PI.sqrt();
            let got = erf(x as f32) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
        }
        assert!((erf(10.0) - 1.0).abs() <= 2e-7 && (erf(-10.0) + 1.0).abs() <= 2e-7);
    }

    #[test]
    fn gelu_equals_burns_gelu() {
        let device = flex();
        let x = Tensor::<3>::random([3, 7, 1000], Distribution::Normal(0.0, 3.0), &device);
        let expected = activation::gelu(x.clone()).into_data();
        // erf's 4.2e-7 times |x| / 2 up to |x| = 4√2 (1.2e-6), plus rounding.
        gelu(x)
            .into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::absolute(2e-6));
    }

    #[test]
    fn attention_equals_burns_attention() {
        let device = flex();
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

    /// Runs `ours` and `burns` on `x` under autodiff with the loss `(f(x) * weight).sum()`,
    /// and asserts that the outputs, the gradients of `x` and those `params` reads (named)
    /// agree within `tolerance`.
    fn assert_same_gradients<const D: usize>(
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

    #[test]
    fn attention_gradients_equal_burns() {
        let device = flex().autodiff();
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
    fn gelu_gradient_equals_burns() {
        let device = flex().autodiff();
        // Wide enough for several parallel chunks, and a weighting so each gradient differs.
        let x = Tensor::<2>::random([3, 20000], Distribution::Normal(0.0, 3.0), &device);
        let w = Tensor::<2>::random([3, 20000], Distribution::Normal(0.0, 1.0), &device);
        // Φ(x) is off by erf's 4.2e-7 / 2, x φ(x) by exp's 2e-7 relative; |w| < 5 or so.
        assert_same_gradients((&x, &w), &gelu, &activation::gelu, &|_| Vec::new(), 2e-6);
        assert!(
            flex::on_flex(&x) && !flex::admits(&x),
            "autodiff tensors: GELU yes, attention no"
        );
        assert!(flex::admits(&Tensor::<2>::zeros([1, 1], &flex())));
    }

    /// A `d_in -> d_out` layer on `device`, its weight stored transposed when `transposed` (so
    /// the kernel reads it through strides).
    fn random_linear(d_in: usize, d_out: usize, transposed: bool, device: &Device) -> Linear {
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
    fn random_bias(n: usize, device: &Device) -> burn::module::Param<Tensor<1>> {
        burn::module::Param::from_tensor(Tensor::random([n], Distribution::Normal(0.0, 1.0), device))
    }

    #[test]
    fn linear_equals_burns_linear() {
        let device = flex();
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
        let device = flex();
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
        let device = flex().autodiff();
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

    /// A layer norm over `d` features with random γ and β.
    fn random_norm(d: usize, epsilon: f64, device: &Device) -> LayerNorm {
        use burn::module::Param;
        let mut norm = burn::nn::LayerNormConfig::new(d)
            .with_epsilon(epsilon)
            .init(device);
        let random = || Param::from_tensor(Tensor::random([d], Distribution::Normal(0.5, 1.0), device));
        norm.gamma = random();
        norm.beta = Some(random());
        norm
    }

    #[test]
    fn layer_norm_equals_burns() {
        let device = flex();
        // 384 features (the ViT's) and 13 (a tail past the eight lanes); an offset mean.
        for (d, epsilon) in [(384, 1e-6), (13, 1e-5)] {
            let norm = random_norm(d, epsilon, &device);
            let x = Tensor::<3>::random([3, 50, d], Distribution::Normal(2.0, 3.0), &device);
            let expected = norm.forward(x.clone()).into_data();
            layer_norm(&norm, x, epsilon)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn layer_norm_gradients_equal_burns() {
        let device = flex().autodiff();
        // Enough rows for several parallel blocks (their γ and β sums are added up).
        for (d, rows) in [(384, 200), (13, 3000)] {
            let norm = random_norm(d, 1e-6, &device);
            let x = Tensor::<2>::random([rows, d], Distribution::Normal(2.0, 3.0), &device);
            let weight = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device);
            let beta = norm.beta.as_ref().unwrap();
            // dγ and dβ sum up to 3000 rows of unit-size terms.
            assert_same_gradients(
                (&x, &weight),
                &|x| layer_norm(&norm, x, 1e-6),
                &|x| norm.forward(x),
                &|grads| {
                    vec![
                        ("dγ", norm.gamma.grad(grads).expect("γ is tracked").into_data()),
                        ("dβ", beta.grad(grads).expect("β is tracked").into_data()),
                    ]
                },
                1e-3,
            );
        }
    }

    #[test]
    fn empty_batches_pass_through() {
        // burn's own linear layer crashes on an empty batch (flex's matmul); ours returns one.
        let device = flex();
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

    #[test]
    fn axpby_equals_burns_arithmetic_in_place_or_not() {
        let device = flex();
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

    /// A `5 -> 7` convolution with a `kernel` and stride `stride`, and a bias.
    fn patch_conv(kernel: [usize; 2], stride: [usize; 2], device: &Device) -> Conv2d {
        let mut conv = burn::nn::conv::Conv2dConfig::new([5, 7], kernel)
            .with_stride(stride)
            .init(device);
        conv.bias = Some(random_bias(7, device));
        conv
    }

    #[test]
    fn patch_embed_equals_burns_convolution() {
        let device = flex();
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
        let device = flex().autodiff();
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

    #[test]
    fn conv2d_affine_equals_burns_convolution_and_affine() {
        use burn::nn::PaddingConfig2d;
        use burn::nn::conv::Conv2dConfig;
        let device = flex();
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
            conv2d_affine(&conv, x, scale, shift, relu)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }
}
