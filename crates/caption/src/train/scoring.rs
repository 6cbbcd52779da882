//! Scoring greedy captions of the synthetic scenes: exact captions, and whether each colour
//! and shape word's attention peak lies on the object it names.

use burn::tensor::{Device, Tensor, TensorData};
use gaze_data::boxes::cell_in_box;
use gaze_records::CaptionScores;

use super::CaptionSet;
use crate::{Catr, CatrConfig};

/// Greedy captions of `set` and their [`CaptionScores`]. Word `3i + 1` (colour) and `3i + 2`
/// (shape) of a scene caption name object `i`; relation words sit between objects.
pub fn score_captions(model: &Catr, config: &CatrConfig, set: &CaptionSet, device: &Device) -> CaptionScores {
    let (h, w) = set.size;
    let stride = config.output_stride();
    let (mut exact, mut hits, mut chance, mut words) = (0usize, 0usize, 0.0f64, 0usize);
    let captioner = model.captioner();
    for i in 0..set.names.len() {
        let image = Tensor::<4>::from_data(TensorData::new(set.pixels[i].clone(), [1, 3, h, w]), device);
        let out = captioner.caption(image, config.max_position_embeddings - 1);
        if out.tokens != set.tokens[i] {
            continue;
        }
        exact += 1;
        let (gh, gw) = out.grid;
        // Scene words are whole word pieces: step k is word k.
        let objects = &set.records[i].objects;
        let mut object = 0;
        for (step, word) in set.records[i].caption.split(' ').enumerate() {
            let Some(target) = objects.get(object) else { break };
            if word != target.colour && word != target.shape {
                continue;
            }
            let bbox = target.bbox.map(|v| v as f64 * set.scale);
            let map = &out.attention[step];
            let peak = gaze_nn::argmax(map);
            hits += cell_in_box(peak / gw, peak % gw, stride, bbox) as usize;
            let inside = (0..gh * gw)
                .filter(|&c| cell_in_box(c / gw, c % gw, stride, bbox))
                .count();
            chance += inside as f64 / (gh * gw) as f64;
            words += 1;
            if word == target.shape {
                object += 1;
            }
        }
    }
    let n = set.names.len().max(1) as f64;
    let per_word = |v: f64| if words == 0 { 0.0 } else { v / words as f64 };
    CaptionScores {
        exact_match: exact as f64 / n,
        pointing_accuracy: per_word(hits as f64),
        pointing_chance: per_word(chance),
        pointed_words: words,
        images: set.names.len(),
    }
}
