//! timm's training transform: `RandomResizedCropAndInterpolation(size, scale, ratio,
//! bicubic)`, `RandomHorizontalFlip`, `ColorJitter`, then `ToTensor` and `Normalize`.
//! The random draws follow torchvision's algorithms; the pixel operations follow Pillow's
//! (`ImageEnhance`), with the `Rng` of this crate rather than Python's.

use image::RgbImage;

use crate::EvalTransform;
use crate::resize::resize_rgb_bicubic;
use crate::rng::Rng;

/// Training augmentations; each can be switched off.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTransform {
    /// Output side, and normalisation, from the model's eval transform.
    pub eval: EvalTransform,
    /// Random-resized-crop area fraction range; `None` resizes and center-crops as at eval.
    pub crop_scale: Option<(f64, f64)>,
    /// Aspect-ratio range of the random crop.
    pub crop_ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Brightness, contrast and saturation jitter strength (0 disables).
    pub color_jitter: f64,
}

impl TrainTransform {
    /// timm's defaults: scale (0.08, 1), ratio (3/4, 4/3), flip 0.5, jitter 0.4.
    pub fn timm_default(eval: EvalTransform) -> Self {
        Self {
            eval,
            crop_scale: Some((0.08, 1.0)),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: 0.5,
            color_jitter: 0.4,
        }
    }

    /// The augmented model input `[3, size, size]`.
    pub fn apply(&self, image: &RgbImage, rng: &mut Rng) -> Vec<f32> {
        let size = self.eval.size;
        let mut out = match self.crop_scale {
            Some(scale) => {
                let (x, y, w, h) =
                    random_resized_crop_box(image.width(), image.height(), scale, self.crop_ratio, rng);
                let crop = image::imageops::crop_imm(image, x, y, w, h).to_image();
                resize_rgb_bicubic(&crop, size, size)
            }
            None => self.eval.resize_and_crop(image),
        };
        if rng.uniform() < self.hflip {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if self.color_jitter > 0.0 {
            color_jitter(&mut out, self.color_jitter, rng);
        }
        self.eval.to_tensor(&out)
    }
}

/// torchvision `RandomResizedCrop.get_params`: `(left, top, width, height)`.
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let (w0, h0) = (width as f64, height as f64);
    let area = w0 * h0;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(log_ratio.0, log_ratio.1).exp();
        let w = (target * aspect).sqrt().round() as i64;
        let h = (target / aspect).sqrt().round() as i64;
        if w > 0 && h > 0 && w <= width as i64 && h <= height as i64 {
            let top = rng.int(0, height as i64 - h) as u32;
            let left = rng.int(0, width as i64 - w) as u32;
            return (left, top, w as u32, h as u32);
        }
    }
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < ratio.0 {
        (width, ((w0 / ratio.0).round() as u32).min(height))
    } else if in_ratio > ratio.1 {
        (((h0 * ratio.1).round() as u32).min(width), height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// Pillow's `L` conversion (ITU-R 601-2 luma, fixed point).
fn luma(p: [u8; 3]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(degenerate, image, factor)`, per pixel.
fn blend_towards(image: &mut RgbImage, factor: f64, degenerate: impl Fn([u8; 3]) -> [u8; 3]) {
    for p in image.pixels_mut() {
        let d = degenerate(p.0);
        for (v, d) in p.0.iter_mut().zip(d) {
            let blended = d as f64 + factor * (*v as f64 - d as f64);
            *v = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// torchvision `ColorJitter(s, s, s)`: brightness, contrast and saturation factors drawn
/// from `[1 - s, 1 + s]`, applied in a random order.
pub fn color_jitter(image: &mut RgbImage, strength: f64, rng: &mut Rng) {
    let mut order = [0u8, 1, 2];
    rng.shuffle(&mut order);
    let factors = [0; 3].map(|_| rng.range((1.0 - strength).max(0.0), 1.0 + strength));
    for op in order {
        let f = factors[op as usize];
        match op {
            0 => blend_towards(image, f, |_| [0, 0, 0]),
            1 => {
                let n = (image.width() * image.height()).max(1) as f64;
                let mean = (image.pixels().map(|p| luma(p.0) as f64).sum::<f64>() / n + 0.5) as u8;
                blend_towards(image, f, |_| [mean; 3])
            }
            _ => blend_towards(image, f, |p| [luma(p); 3]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_boxes_stay_inside_and_respect_the_area_range() {
        let mut rng = Rng::new(5);
        for _ in 0..500 {
            let (x, y, w, h) = random_resized_crop_box(500, 375, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(x + w <= 500 && y + h <= 375 && w > 0 && h > 0);
        }
        // A very wide image falls back to a centred crop of the widest allowed ratio.
        let (x, y, w, h) =
            random_resized_crop_box(1000, 10, (0.99, 1.0), (0.75, 4.0 / 3.0), &mut Rng::new(1));
        assert_eq!((w, h), (13, 10));
        assert_eq!((x, y), ((1000 - 13) / 2, 0));
    }

    #[test]
    fn jitter_of_strength_zero_and_flip_off_is_the_eval_transform() {
        let img = RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 77]));
        let eval = EvalTransform::inception(32, 1.0);
        let t = TrainTransform {
            crop_scale: None,
            hflip: 0.0,
            color_jitter: 0.0,
            ..TrainTransform::timm_default(eval.clone())
        };
        assert_eq!(t.apply(&img, &mut Rng::new(0)), eval.apply(&img));
    }

    #[test]
    fn saturation_zero_gives_gray() {
        let mut img = RgbImage::from_pixel(2, 2, image::Rgb([200, 30, 90]));
        blend_towards(&mut img, 0.0, |p| [luma(p); 3]);
        let p = img.get_pixel(0, 0).0;
        assert_eq!(p, [luma([200, 30, 90]); 3]);
    }
}
