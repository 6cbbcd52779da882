//! Training data: the start-up scan and augmented batches.

use std::path::Path;

use gaze_data::augment::TrainTransform;
use gaze_data::rng::Rng;
use gaze_data::{
    DataError, EvalTransform, LabeledImage, LabeledSet, Layout, find_unreadable, load_rgb, read_labeled_set,
    unreadable,
};
use rayon::prelude::*;

use super::TrainConfig;

/// The usable images of a dataset, in any of the [`Layout`]s.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub layout: Layout,
    pub images: Vec<LabeledImage>,
    /// The set's class names in label order, if its layout has names.
    pub classes: Option<Vec<String>>,
    /// Unreadable images left out (only with `skip_bad`).
    pub skipped: usize,
}

/// Lists the dataset at `path` (`default_split` picks the Oxford-IIIT Pet split file when
/// `path` is the Pet folder) and decodes every image once, in parallel. Unreadable images
/// fail the scan with the full list (or are left out with `skip_bad`). With `classes` (the
/// model's class names), labels are mapped by name.
pub fn scan_images(
    path: &Path,
    default_split: &str,
    classes: Option<&[String]>,
    skip_bad: bool,
) -> Result<ScanReport, DataError> {
    let mut set = read_labeled_set(path, None, default_split)?;
    if let Some(names) = classes {
        set.map_to(names, path)?;
    }
    let LabeledSet {
        layout,
        images,
        classes,
    } = set;
    let paths: Vec<std::path::PathBuf> = images.iter().map(|i| i.path.clone()).collect();
    let failures = find_unreadable(&paths);
    if failures.is_empty() {
        return Ok(ScanReport {
            layout,
            images,
            classes,
            skipped: 0,
        });
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
        layout,
        images: kept,
        classes,
        skipped: bad.len(),
    })
}

/// Refuses labels at or above `num_classes`, naming the first such image.
pub fn check_labels(scan: &ScanReport, num_classes: usize) -> Result<(), DataError> {
    match scan.images.iter().find(|i| i.label >= num_classes) {
        Some(bad) => Err(DataError::Setting {
            path: bad.path.clone(),
            reason: format!("label {} but model.num_classes is {num_classes}", bad.label),
        }),
        None => Ok(()),
    }
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
