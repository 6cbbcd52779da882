//! CATR's input: the longer side scaled to `max_dim` (299 for the published model,
//! `under_max`), Pillow bicubic, mean = std = 0.5.

use gaze_data::EvalTransform;
use gaze_data::image::RgbImage;
use gaze_data::resize::resize_rgb_bicubic;

/// `under_max`: `(size * (max_dim / max(size))).astype(int)` in float64, so with 299 some
/// sizes get 298. A side that would truncate to 0 (a 1000x1 strip) is kept at 1 pixel.
pub fn catr_size(w: u32, h: u32, max_dim: usize) -> (u32, u32) {
    let scale = max_dim as f64 / w.max(h).max(1) as f64;
    (
        ((w as f64 * scale) as u32).max(1),
        ((h as f64 * scale) as u32).max(1),
    )
}

/// The resized picture and the normalised `[3, h, w]` input.
pub fn preprocess(image: &RgbImage, max_dim: usize) -> (RgbImage, Vec<f32>) {
    let (w, h) = catr_size(image.width(), image.height(), max_dim);
    let resized = if (w, h) == image.dimensions() {
        image.clone()
    } else {
        resize_rgb_bicubic(image, w, h)
    };
    // Only ToTensor + Normalize(0.5, 0.5) of the eval transform are used here.
    let input = EvalTransform::inception(w.max(h), 1.0).to_tensor(&resized);
    (resized, input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_max_truncates_like_numpy() {
        assert_eq!(catr_size(640, 480, 299), (299, 224));
        assert_eq!(catr_size(480, 640, 299), (224, 299));
        assert_eq!(catr_size(300, 300, 299), (299, 299));
        assert_eq!(catr_size(550, 400, 299), (298, 217));
        assert_eq!(catr_size(120, 90, 299), (299, 224));
        assert_eq!(catr_size(1000, 1, 299), (299, 1));
        assert_eq!(catr_size(96, 64, 96), (96, 64));
    }
}
