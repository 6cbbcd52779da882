//! timm's evaluation transform: `Resize(scale_size, bicubic)`, `CenterCrop(size)`,
//! `ToTensor()`, `Normalize(mean, std)`, reproduced bit for bit on 8-bit RGB input.

use image::RgbImage;

use crate::resize::resize_rgb_bicubic;

/// Resampling filter used when resizing images (timm's `interpolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Pillow `BICUBIC`: cubic kernel, a = -0.5, antialiased when shrinking.
    Bicubic,
}

/// The preprocessing that belongs to a set of weights (timm's pretrained data config).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalTransform {
    /// Side of the square crop fed to the model.
    pub size: u32,
    /// Fraction of the resized image the crop covers (timm `crop_pct`).
    pub crop_pct: f64,
    /// Resize filter.
    pub interpolation: Interpolation,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
}

impl EvalTransform {
    /// `size`, bicubic, `crop_pct`, with the "inception" normalisation mean = std = 0.5
    /// that timm's AugReg ViT weights use.
    pub fn inception(size: u32, crop_pct: f64) -> Self {
        Self {
            size,
            crop_pct,
            interpolation: Interpolation::Bicubic,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// Side the shorter edge is resized to: `floor(size / crop_pct)`.
    pub fn scale_size(&self) -> u32 {
        (self.size as f64 / self.crop_pct).floor() as u32
    }

    /// Resizes the shorter side to [`Self::scale_size`] (the picture before the crop).
    pub fn resize(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let (new_w, new_h) = shorter_side_size(w, h, self.scale_size());
        if (new_w, new_h) == (w, h) {
            return image.clone();
        }
        match self.interpolation {
            Interpolation::Bicubic => resize_rgb_bicubic(image, new_w, new_h),
        }
    }

    /// Top-left corner `(left, top)` of the center crop in a resized `w x h` image.
    pub fn crop_origin(&self, w: u32, h: u32) -> (u32, u32) {
        center_crop_origin(w, h, self.size)
    }

    /// Resizes the shorter side to [`Self::scale_size`] and center-crops to `size x size`.
    pub fn resize_and_crop(&self, image: &RgbImage) -> RgbImage {
        center_crop(&self.resize(image), self.size)
    }

    /// The model input: `[3, size, size]` row-major, normalised.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        self.to_tensor(&self.resize_and_crop(image))
    }

    /// `ToTensor` then `Normalize`, with the same float32 operations as torchvision.
    pub fn to_tensor(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                let x = px.0[c] as f32 / 255.0;
                out[c * plane + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// torchvision `Resize(int)`: the shorter side becomes `short`, the longer one keeps the
/// aspect ratio, truncated.
pub fn shorter_side_size(w: u32, h: u32, short: u32) -> (u32, u32) {
    let (s, l) = if w <= h { (w, h) } else { (h, w) };
    let long = (short as f64 * l as f64 / s as f64) as u32;
    if w <= h { (short, long) } else { (long, short) }
}

/// torchvision `CenterCrop(size)` for an image at least `size` on each side; offsets round
/// half to even like Python's `round`.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let (left, top) = center_crop_origin(image.width(), image.height(), size);
    image::imageops::crop_imm(image, left, top, size, size).to_image()
}

fn center_crop_origin(w: u32, h: u32, size: u32) -> (u32, u32) {
    assert!(w >= size && h >= size, "center crop {size} of a {w}x{h} image");
    let top = ((h - size) as f64 / 2.0).round_ties_even() as u32;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as u32;
    (left, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_sizes_match_torchvision() {
        assert_eq!(shorter_side_size(500, 375, 384), (512, 384));
        assert_eq!(shorter_side_size(375, 500, 384), (384, 512));
        assert_eq!(shorter_side_size(640, 427, 384), (575, 384));
        assert_eq!(shorter_side_size(384, 384, 384), (384, 384));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // 575 - 384 = 191, half is 95.5 -> 96 (even); 577 - 384 = 193 -> 96.5 -> 96.
        for (w, left) in [(575u32, 96u32), (577, 96), (579, 98)] {
            let img = RgbImage::from_fn(w, 384, |x, _| image::Rgb([(x % 256) as u8, (x / 256) as u8, 0]));
            let crop = center_crop(&img, 384);
            let px = crop.get_pixel(0, 0).0;
            assert_eq!(px[0] as u32 + 256 * px[1] as u32, left, "width {w}");
        }
    }

    #[test]
    fn normalisation_maps_to_minus_one_one() {
        let t = EvalTransform::inception(2, 1.0);
        let img = RgbImage::from_fn(2, 2, |x, _| image::Rgb([if x == 0 { 0 } else { 255 }, 128, 0]));
        let v = t.to_tensor(&img);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], 1.0);
        assert_eq!(v[4], (128f32 / 255.0 - 0.5) / 0.5);
    }

    #[test]
    fn crop_pct_sets_the_scale_size() {
        assert_eq!(EvalTransform::inception(224, 0.9).scale_size(), 248);
        assert_eq!(EvalTransform::inception(384, 1.0).scale_size(), 384);
    }
}
