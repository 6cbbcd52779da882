//! Pillow's bicubic resampling, and the same filter for floating-point grids.
//!
//! Pillow (`Image.resize(size, BICUBIC)`) and PyTorch (`F.interpolate(mode='bicubic',
//! antialias=True)`) share one separable filter: the cubic convolution kernel with a = -0.5,
//! stretched by the downscale factor so that shrinking averages instead of aliasing, and
//! renormalised at the borders. Pillow then quantises the weights to 22-bit fixed point and
//! rounds to `u8` after each pass (horizontal first); [`resize_rgb_bicubic`] does exactly that,
//! while [`resize_plane_bicubic`] keeps everything in floating point like PyTorch.

use image::RgbImage;

/// The input span and normalised weights that make one output sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Taps {
    /// First input index read.
    pub start: usize,
    /// One weight per input index from `start`; they sum to 1.
    pub weights: Vec<f64>,
}

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The antialiased bicubic taps for resampling `in_size` samples to `out_size`.
pub fn bicubic_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    assert!(in_size > 0 && out_size > 0, "cannot resample an empty axis");
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // C's truncating casts, as in Pillow's precompute_coeffs.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f64> = (start..end)
                .map(|j| cubic((j as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { start, weights }
        })
        .collect()
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Taps quantised as Pillow's `normalize_coeffs_8bpc` does.
fn fixed_point_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    bicubic_taps(in_size, out_size)
        .into_iter()
        .map(|t| {
            let k = t
                .weights
                .iter()
                .map(|&w| {
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            (t.start, k)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// How an image buffer is walked in one axis pass: `step` bytes between neighbouring samples
/// along the axis, `line` bytes between the starts of neighbouring lines.
#[derive(Clone, Copy)]
struct Walk {
    step: usize,
    line: usize,
}

impl Walk {
    /// Along the rows of an RGB image `width` pixels wide: a row is a line.
    fn along_rows(width: usize) -> Self {
        Self {
            step: 3,
            line: 3 * width,
        }
    }

    /// Down the columns of an RGB image `width` pixels wide: a column is a line.
    fn along_columns(width: usize) -> Self {
        Self {
            step: 3 * width,
            line: 3,
        }
    }
}

/// Resizes one interleaved 8-bit axis pass over `lines` lines, each output sample `o` from
/// the input samples `taps[o]` covers.
fn pass_u8(
    (src, from): (&[u8], Walk),
    (dst, to): (&mut [u8], Walk),
    taps: &[(usize, Vec<i32>)],
    lines: usize,
) {
    for line in 0..lines {
        for (o, (start, k)) in taps.iter().enumerate() {
            for c in 0..3 {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (j, &kj) in k.iter().enumerate() {
                    acc += src[line * from.line + (start + j) * from.step + c] as i32 * kj;
                }
                dst[line * to.line + o * to.step + c] = clip8(acc);
            }
        }
    }
}

/// `Image.resize((width, height), Image.BICUBIC)` on an RGB image, bit-exact with Pillow.
pub fn resize_rgb_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = (image.width() as usize, image.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    let mut data = image.as_raw().clone();
    let mut w = w0;
    if w1 != w0 {
        let mut out = vec![0u8; w1 * h0 * 3];
        pass_u8(
            (&data, Walk::along_rows(w0)),
            (&mut out, Walk::along_rows(w1)),
            &fixed_point_taps(w0, w1),
            h0,
        );
        data = out;
        w = w1;
    }
    if h1 != h0 {
        let mut out = vec![0u8; w * h1 * 3];
        pass_u8(
            (&data, Walk::along_columns(w)),
            (&mut out, Walk::along_columns(w)),
            &fixed_point_taps(h0, h1),
            w,
        );
        data = out;
    }
    RgbImage::from_raw(width, height, data).expect("buffer sized for the output")
}

/// Resamples a row-major `[channels, h0, w0]` grid to `[channels, h1, w1]` in f64 with the
/// antialiased bicubic filter: `F.interpolate(mode='bicubic', antialias=True,
/// align_corners=False)`.
pub fn resize_plane_bicubic(
    data: &[f64],
    channels: usize,
    (h0, w0): (usize, usize),
    (h1, w1): (usize, usize),
) -> Vec<f64> {
    assert_eq!(
        data.len(),
        channels * h0 * w0,
        "grid size does not match its data"
    );
    let (tx, ty) = (bicubic_taps(w0, w1), bicubic_taps(h0, h1));
    let mut wide = vec![0.0; channels * h0 * w1];
    for c in 0..channels {
        for y in 0..h0 {
            let row = &data[(c * h0 + y) * w0..][..w0];
            for (x, t) in tx.iter().enumerate() {
                wide[(c * h0 + y) * w1 + x] = t
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * row[t.start + j])
                    .sum();
            }
        }
    }
    let mut out = vec![0.0; channels * h1 * w1];
    for c in 0..channels {
        for (y, t) in ty.iter().enumerate() {
            for x in 0..w1 {
                out[(c * h1 + y) * w1 + x] = t
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(j, w)| w * wide[(c * h0 + t.start + j) * w1 + x])
                    .sum();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_and_stay_in_bounds() {
        for (a, b) in [(500, 384), (384, 512), (7, 3), (3, 7), (24, 32)] {
            for t in bicubic_taps(a, b) {
                assert!((t.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                assert!(t.start + t.weights.len() <= a);
            }
        }
    }

    #[test]
    fn identity_size_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 9]));
        assert_eq!(resize_rgb_bicubic(&img, 5, 4), img);
        let plane: Vec<f64> = (0..12).map(f64::from).collect();
        assert_eq!(resize_plane_bicubic(&plane, 1, (3, 4), (3, 4)), plane);
    }

    #[test]
    fn constant_image_stays_constant() {
        // Renormalised weights keep flat regions flat even at the borders.
        let img = RgbImage::from_pixel(37, 23, image::Rgb([17, 128, 250]));
        let out = resize_rgb_bicubic(&img, 11, 50);
        assert!(out.pixels().all(|p| p.0 == [17, 128, 250]));
    }

    #[test]
    fn known_upsample_weights() {
        // 2 -> 4: centres at 0.25, 0.75, 1.25, 1.75 of the input; by symmetry the
        // first output leans on input 0 exactly as the last leans on input 1.
        let taps = bicubic_taps(2, 4);
        assert_eq!(taps[0].start, 0);
        assert_eq!(taps[0].weights.len(), 2);
        let (a, b) = (taps[0].weights[0], taps[0].weights[1]);
        assert!((taps[3].weights[1] - a).abs() < 1e-15 && (taps[3].weights[0] - b).abs() < 1e-15);
        // Sample offsets from the centre are 0.25 and 1.25 input pixels.
        let (c0, c1) = (cubic(0.25), cubic(1.25));
        assert!((a - c0 / (c0 + c1)).abs() < 1e-15);
    }
}
