//! Decoding to RGB as `PIL.Image.open(f).convert('RGB')` does it.
//!
//! Like Pillow's `convert('RGB')`: grayscale is replicated, palettes are expanded, alpha is
//! dropped (not composited), and EXIF orientation is **not** applied. JPEG goes through
//! libjpeg-turbo's decoder (ISLOW IDCT, fancy upsampling), as in Pillow, so pixels are
//! identical; only CMYK/YCCK JPEGs take the `image` crate's decoder and may differ slightly.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use image::{ImageReader, RgbImage};

use crate::DataError;

/// The default pixel budget: images of more pixels (width × height) are refused.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PIXELS);

/// Sets the pixel budget that every decode checks from the image's header, before it
/// allocates (`gaze --max-pixels`).
pub fn set_max_pixels(pixels: u64) {
    MAX_PIXELS.store(pixels, Ordering::Relaxed);
}

/// The pixel budget in force.
pub fn max_pixels() -> u64 {
    MAX_PIXELS.load(Ordering::Relaxed)
}

/// Why bytes did not become an image.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The header's size is over the pixel budget.
    TooLarge { width: u32, height: u32, limit: u64 },
    /// Anything else, as a human-readable reason.
    Invalid(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { width, height, limit } => {
                write!(f, "{width}x{height} pixels is over the limit of {limit} pixels")
            }
            DecodeError::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl From<String> for DecodeError {
    fn from(reason: String) -> Self {
        DecodeError::Invalid(reason)
    }
}

/// Reads an image file into 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, DataError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| DataError::io(path, e))?;
    decode_rgb(&bytes).map_err(|error| match error {
        DecodeError::TooLarge { width, height, limit } => DataError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit,
        },
        DecodeError::Invalid(reason) => DataError::Decode {
            path: path.to_path_buf(),
            reason,
        },
    })
}

/// Decodes in-memory image bytes into 8-bit RGB, after checking the size its header states
/// against the pixel budget ([`set_max_pixels`]).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_within(bytes, max_pixels())
}

fn decode_within(bytes: &[u8], limit: u64) -> Result<RgbImage, DecodeError> {
    let reader = || {
        ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    if reader()?.format().is_none() {
        return Err("unknown format".to_string().into());
    }
    if is_truncated_jpeg(bytes) {
        // Pillow refuses these ("image file is truncated"); a lenient decoder would fill the
        // missing rows with grey and a prediction would silently be made on half a picture.
        return Err("JPEG data ends before its end-of-image marker (truncated file)"
            .to_string()
            .into());
    }
    let (width, height) = reader()?.into_dimensions().map_err(|e| e.to_string())?;
    let reader = reader()?;
    if width as u64 * height as u64 > limit {
        return Err(DecodeError::TooLarge { width, height, limit });
    }
    if reader.format() == Some(image::ImageFormat::Jpeg)
        && let Some(rgb) = decode_jpeg_libjpeg(bytes)?
    {
        return Ok(rgb);
    }
    let image = reader.decode().map_err(|e| e.to_string())?;
    Ok(image.into_rgb8())
}

/// Decodes with libjpeg-turbo; `Ok(None)` for colour spaces it cannot turn into RGB (CMYK).
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<Option<RgbImage>, String> {
    use mozjpeg::ColorSpace;
    // libjpeg reports fatal errors by unwinding (without running the panic hook).
    std::panic::catch_unwind(|| {
        let decompress = mozjpeg::Decompress::new_mem(bytes).map_err(|e| e.to_string())?;
        if matches!(
            decompress.color_space(),
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
        ) {
            return Ok(None);
        }
        let mut started = decompress.rgb().map_err(|e| e.to_string())?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines().map_err(|e| e.to_string())?;
        started.finish().map_err(|e| e.to_string())?;
        RgbImage::from_raw(w, h, pixels)
            .map(Some)
            .ok_or_else(|| "JPEG size does not match its data".to_string())
    })
    .unwrap_or_else(|payload| {
        let reason = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg failed".into());
        Err(reason)
    })
}

fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    if !is_jpeg {
        return false;
    }
    // Encoders may pad after EOI, so look for the marker near the end rather than at it.
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    !tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    fn encode(image: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn alpha_is_dropped_not_composited() {
        let rgba = RgbaImage::from_pixel(3, 2, Rgba([200, 100, 50, 0]));
        let png = encode(image::DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let rgb = decode_rgb(&png).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        assert!(rgb.pixels().all(|p| p.0 == [200, 100, 50]));
    }

    #[test]
    fn grayscale_is_replicated() {
        let gray = image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 10 + y) as u8]));
        let png = encode(image::DynamicImage::ImageLuma8(gray), ImageFormat::Png);
        let rgb = decode_rgb(&png).unwrap();
        assert_eq!(rgb.get_pixel(3, 2).0, [32, 32, 32]);
    }

    #[test]
    fn truncated_jpeg_and_text_are_errors() {
        let rgb = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 7]));
        let jpeg = encode(image::DynamicImage::ImageRgb8(rgb), ImageFormat::Jpeg);
        assert!(decode_rgb(&jpeg).is_ok());
        let err = decode_rgb(&jpeg[..jpeg.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(decode_rgb(b"label,filename\n1,2\n").is_err());
    }

    /// `jpeg` with the size in its start-of-frame header replaced by `width`×`height`.
    pub(crate) fn claim_size(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
        let sof = jpeg
            .windows(2)
            .position(|w| w[0] == 0xFF && (0xC0..=0xC2).contains(&w[1]))
            .expect("a start-of-frame marker");
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn the_pixel_budget_is_checked_from_the_header() {
        let rgb = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let jpeg = encode(image::DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg);
        let huge = claim_size(jpeg, 60000, 60000);
        assert_eq!(
            decode_rgb(&huge).unwrap_err(),
            DecodeError::TooLarge {
                width: 60000,
                height: 60000,
                limit: DEFAULT_MAX_PIXELS
            }
        );
        let png = encode(image::DynamicImage::ImageRgb8(rgb), ImageFormat::Png);
        // 16x16 = 256 pixels: over a budget of 255, within one of 256.
        assert!(matches!(
            decode_within(&png, 255),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(decode_within(&png, 256).is_ok());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_rgb(Path::new("/nonexistent/cat_1.jpg")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cat_1.jpg"), "{err}");
    }
}
