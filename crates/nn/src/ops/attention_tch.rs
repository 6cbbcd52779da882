//! [`super::attention::attention`] on the `tch` backend's CPU device, as PyTorch runs it: libtorch's
//! flash attention for the CPU forward, and its backward under autodiff.
//!
//! Without it burn differentiates attention through its composite fallback: the scores, a
//! softmax and their backward over `[batch, heads, tokens, tokens]` tensors (64 MB each at
//! ViT-S/16-384, batch 8), about ten libtorch calls each way per block.

// burn 0.22 marks its libtorch backend deprecated; gaze keeps it as a build-time choice.
#![allow(deprecated)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::libtorch::TchTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, LibTorch, backend_extension};
use burn::tensor::{DType, Device, Tensor};

/// Whether [`super::attention::attention`] can take libtorch's CPU flash attention for `qkv`.
pub fn takes_flash_attention(qkv: &Tensor<3>) -> bool {
    qkv.dtype() == DType::F32 && qkv.device().inner() == Device::libtorch() && qkv.shape().num_elements() > 0
}

/// Attention on timm's fused projection `[batch, tokens, 3 * dim]`, giving the merged
/// `[batch, tokens, dim]` context.
#[backend_extension(LibTorch, Autodiff)]
pub trait FlashAttention: Backend {
    fn flash_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// Queries, keys and values `[batch, heads, tokens, head_dim]`: views of `qkv`, no copy.
fn split(qkv: &tch::Tensor, heads: usize) -> [tch::Tensor; 3] {
    let [batch, tokens, width] = qkv.size()[..] else {
        panic!(
            "attention takes a [batch, tokens, 3 * dim] projection, got {:?}",
            qkv.size()
        )
    };
    let heads = heads as i64;
    assert!(
        heads > 0 && width % (3 * heads) == 0,
        "attention: {width} columns do not split into q, k, v of {heads} heads"
    );
    // [3, batch, heads, tokens, head_dim]
    let parts = qkv
        .view([batch, tokens, 3, heads, width / 3 / heads])
        .permute([2, 0, 3, 1, 4]);
    [parts.get(0), parts.get(1), parts.get(2)]
}

/// `[batch, heads, tokens, head_dim]` → `[batch, tokens, heads * head_dim]`.
fn merge(context: &tch::Tensor) -> tch::Tensor {
    let [batch, heads, tokens, head_dim] = context.size()[..] else {
        unreachable!("attention gives [batch, heads, tokens, head_dim]")
    };
    context.transpose(1, 2).reshape([batch, tokens, heads * head_dim])
}

/// The context `[batch, heads, tokens, head_dim]` and the log-sum-exp of each score row,
/// which the backward reuses.
fn forward(qkv: &tch::Tensor, heads: usize) -> (tch::Tensor, tch::Tensor) {
    let [q, k, v] = split(qkv, heads);
    tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
        &q,
        &k,
        &v,
        0.0,
        false,
        None::<tch::Tensor>,
        None,
    )
}

impl FlashAttention for LibTorch {
    fn flash_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        TchTensor::new(merge(&forward(&qkv.tensor, heads).0))
    }
}

impl<C: CheckpointStrategy> FlashAttention for Autodiff<LibTorch, C> {
    fn flash_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let nodes = [qkv.node()];
        let qkv = qkv.into_primitive();
        match FlashAttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (context, logsumexp) = forward(&qkv.tensor, heads);
                let out = TchTensor::new(merge(&context));
                let state = State {
                    context: TchTensor::new(context),
                    logsumexp: TchTensor::new(logsumexp),
                    qkv,
                    heads,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(LibTorch::flash_attention(qkv, heads)),
        }
    }
}

/// What the backward needs: the projection, the context and the log-sum-exps.
#[derive(Debug, Clone)]
struct State {
    qkv: TchTensor,
    context: TchTensor,
    logsumexp: TchTensor,
    heads: usize,
}

/// libtorch's flash-attention backward, `dQ`, `dK` and `dV` stacked back into `d qkv`.
#[derive(Debug)]
struct FlashAttentionBackward;

impl Backward<LibTorch, 1> for FlashAttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<LibTorch, _>(ops.parents, ops.node, grads, |grad| {
            let [batch, heads, tokens, head_dim] = state.context.tensor.size()[..] else {
                unreachable!("attention gives [batch, heads, tokens, head_dim]")
            };
            // [batch, tokens, dim] → [batch, heads, tokens, head_dim]
            let grad_context = grad
                .tensor
                .reshape([batch, tokens, heads, head_dim])
                .transpose(1, 2);
            let [q, k, v] = split(&state.qkv.tensor, state.heads);
            let (dq, dk, dv) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
                &grad_context,
                &q,
                &k,
                &v,
                &state.context.tensor,
                &state.logsumexp.tensor,
                0.0,
                false,
                None::<tch::Tensor>,
                None,
            );
            // [3, batch, heads, tokens, head_dim] → [batch, tokens, 3, heads, head_dim]
            let dqkv = tch::Tensor::stack(&[dq, dk, dv], 0).permute([1, 3, 0, 2, 4]);
            TchTensor::new(dqkv.reshape([batch, tokens, 3 * heads * head_dim]))
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::attention::{attention, burns_attention};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    #[test]
    fn flash_attention_matches_burn_forward_and_backward() {
        let device = burn::tensor::Device::libtorch().autodiff();
        let (heads, dim) = (3, 24);
        let input = Tensor::<3>::random([2, 11, 3 * dim], Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<3>::random([2, 11, dim], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let qkv = input.clone().detach().require_grad();
            assert!(super::takes_flash_attention(&qkv));
            let out = if fast {
                attention(qkv.clone(), heads)
            } else {
                burns_attention(qkv.clone(), heads)
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            (out.inner(), qkv.grad(&grads).expect("qkv has a gradient"))
        };
        let (out, grad) = run(true);
        let (want_out, want_grad) = run(false);
        out.into_data()
            .assert_approx_eq::<f32>(&want_out.clone().into_data(), Tolerance::absolute(1e-5));
        grad.into_data()
            .assert_approx_eq::<f32>(&want_grad.into_data(), Tolerance::absolute(1e-5));
        // Outside autodiff (inference) the `LibTorch` implementation runs.
        let plain = input.inner();
        assert!(super::takes_flash_attention(&plain) && !plain.is_autodiff());
        attention(plain, heads)
            .into_data()
            .assert_approx_eq::<f32>(&want_out.into_data(), Tolerance::absolute(1e-5));
    }
}
