//! Classifying image files in batches: decode and preprocess in parallel, then one forward
//! per batch.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use gaze_data::{DataError, EvalTransform, load_rgb};
use rayon::prelude::*;

use crate::VisionTransformer;

/// Decodes and preprocesses `paths` in parallel into one `[batch, 3, size, size]` tensor.
pub fn load_batch(
    paths: &[PathBuf],
    transform: &EvalTransform,
    device: &Device,
) -> Result<Tensor<4>, DataError> {
    let pixels: Vec<Vec<f32>> = paths
        .par_iter()
        .map(|p| load_rgb(p).map(|img| transform.apply(&img)))
        .collect::<Result<_, _>>()?;
    let size = transform.size as usize;
    let data: Vec<f32> = pixels.concat();
    Ok(Tensor::from_data(
        TensorData::new(data, [paths.len(), 3, size, size]),
        device,
    ))
}

/// Logits for every image in `paths`, in order. `progress` is told how many images each
/// finished batch held. The first unreadable image stops the run with its path.
pub fn classify_files(
    model: &VisionTransformer,
    transform: &EvalTransform,
    paths: &[PathBuf],
    batch_size: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>, DataError> {
    let mut logits = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch_size.max(1)) {
        let batch = load_batch(chunk, transform, device)?;
        let out = model.forward(batch);
        let [_, classes] = out.dims();
        let values = out
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 logits");
        logits.extend(values.chunks(classes).map(<[f32]>::to_vec));
        progress(chunk.len());
    }
    Ok(logits)
}
