//! Greedy decoding, whatever runs the decoder's steps.

use crate::model::{CLS, SEP};

/// Up to `steps` greedy steps from `[CLS]` until `[SEP]`: the tokens, each step's attention,
/// and the first step's logits.
pub(crate) fn greedy(decoder: &mut dyn Decoding, steps: usize) -> (Vec<usize>, Vec<Vec<f32>>, Vec<f32>) {
    let (mut tokens, mut attention, mut first_logits) = (Vec::new(), Vec::new(), Vec::new());
    let mut token = CLS;
    for step in 0..steps {
        let logits = (step == 0).then_some(&mut first_logits);
        let (next, weights) = decoder.step(token, step, logits);
        attention.push(weights);
        if next == SEP {
            break;
        }
        tokens.push(next);
        token = next;
    }
    (tokens, attention, first_logits)
}

/// One greedy decoding step from `token` at `position`: the next token (the argmax of the
/// logits, which go to `logits` when asked for) and the last decoder layer's cross-attention
/// averaged over heads, `[cells]`.
pub(crate) trait Decoding {
    fn step(&mut self, token: usize, position: usize, logits: Option<&mut Vec<f32>>) -> (usize, Vec<f32>);
}
