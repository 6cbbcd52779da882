//! Text in the embedded DejaVu Sans, antialiased, on RGB images.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::RgbImage;

use crate::canvas::blend;

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(dejavu::sans::regular()).expect("embedded DejaVu Sans parses")
    })
}

/// Width and height in pixels of `text` at `size` px.
pub fn text_size(text: &str, size: f32) -> (u32, u32) {
    let font = font().as_scaled(PxScale::from(size));
    let mut width = 0.0;
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            width += font.kern(p, id);
        }
        width += font.h_advance(id);
        previous = Some(id);
    }
    (
        width.ceil() as u32,
        (font.ascent() - font.descent()).ceil() as u32,
    )
}

/// Draws `text` with its top-left corner at `(x, y)`.
pub fn draw_text(image: &mut RgbImage, text: &str, x: i32, y: i32, size: f32, color: [u8; 3]) {
    let font = font().as_scaled(PxScale::from(size));
    let mut caret = x as f32;
    let baseline = y as f32 + font.ascent();
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            caret += font.kern(p, id);
        }
        let glyph = id.with_scale_and_position(PxScale::from(size), point(caret, baseline));
        caret += font.h_advance(id);
        previous = Some(id);
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i32 + gx as i32;
                let py = bounds.min.y as i32 + gy as i32;
                blend(image, px, py, color, coverage);
            });
        }
    }
}

/// Draws `text` centred horizontally on `cx`, top at `y`.
pub fn draw_text_centered(image: &mut RgbImage, text: &str, cx: i32, y: i32, size: f32, color: [u8; 3]) {
    let (w, _) = text_size(text, size);
    draw_text(image, text, cx - w as i32 / 2, y, size, color);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_leaves_ink_inside_its_box() {
        let mut img = RgbImage::from_pixel(200, 40, image::Rgb([255, 255, 255]));
        draw_text(&mut img, "Attention 0.93", 5, 5, 16.0, [0, 0, 0]);
        let (w, h) = text_size("Attention 0.93", 16.0);
        assert!(w > 60 && w < 190 && h >= 16, "{w}x{h}");
        let dark: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[0] < 128)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(dark.len() > 100);
        assert!(
            dark.iter()
                .all(|&(x, y)| x >= 5 && x <= 5 + w && y >= 5 && y <= 5 + h)
        );
    }
}
