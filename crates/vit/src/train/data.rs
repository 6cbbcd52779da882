//! Training data: the start-up scan and augmented batches.

use std::path::Path;

use gaze_data::augment::TrainTransform;
use gaze_data::rng::Rng;
use gaze_data::{
    DataError, EvalTransform, LabeledImage, find_unreadable, labeled_images, load_rgb, unreadable,
};
use rayon::prelude::*;

use super::TrainConfig;

/// The usable images of a folder.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub images: Vec<LabeledImage>,
    /// Unreadable images left out (only with `skip_bad`).
    pub skipped: usize,
}

/// Lists `dir` and decodes every image once, in parallel. Unreadable images fail the scan
/// with the full list (or are left out with `skip_bad`); labels must be below `num_classes`.
pub fn scan_images(dir: &Path, num_classes: usize, skip_bad: bool) -> Result<ScanReport, DataError> {
    let images = labeled_images(dir)?;
    if let Some(bad) = images.iter().find(|i| i.label >= num_classes) {
        return Err(DataError::BadName {
            path: bad.path.clone(),
            reason: format!("label {} but model.num_classes is {num_classes}", bad.label),
        });
    }
    let paths: Vec<std::path::PathBuf> = images.iter().map(|i| i.path.clone()).collect();
    let failures = find_unreadable(&paths);
    if failures.is_empty() {
        return Ok(ScanReport { images, skipped: 0 });
    }
    if !skip_bad {
        return Err(unreadable(&failures, "; fix or remove them, or pass --skip-bad"));
    }
    let bad: std::collections::HashSet<usize> = failures.iter().map(|(i, _)| *i).collect();
    let kept = images
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !bad.contains(i))
        .map(|(_, img)| img)
        .collect();
    Ok(ScanReport {
        images: kept,
        skipped: bad.len(),
    })
}

/// The augmentations of `config` around the model's eval transform.
pub(super) fn train_transform(config: &TrainConfig, eval: &EvalTransform) -> TrainTransform {
    let a = &config.augment;
    TrainTransform {
        eval: eval.clone(),
        crop_scale: a.random_resized_crop.then_some((a.scale[0], a.scale[1])),
        crop_ratio: (a.ratio[0], a.ratio[1]),
        hflip: a.hflip,
        color_jitter: a.color_jitter,
    }
}

/// Threads that decode and augment (`workers`; 0 means one per core).
pub(super) fn worker_pool(workers: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("gaze-data-{i}"))
        .build()
        .expect("worker threads start")
}

/// Decodes and augments `indices` of `images` in parallel; every image's randomness comes
/// from `(seed, epoch, image index)`.
pub(super) fn train_batch(
    images: &[LabeledImage],
    indices: &[usize],
    transform: &TrainTransform,
    seed: u64,
    epoch: usize,
) -> Result<(Vec<f32>, Vec<i64>), DataError> {
    let pixels: Vec<Vec<f32>> = indices
        .par_iter()
        .map(|&i| {
            let mut rng = Rng::derive(seed, &[epoch as u64, i as u64]);
            load_rgb(&images[i].path).map(|img| transform.apply(&img, &mut rng))
        })
        .collect::<Result<_, _>>()?;
    let labels = indices.iter().map(|&i| images[i].label as i64).collect();
    Ok((pixels.concat(), labels))
}
