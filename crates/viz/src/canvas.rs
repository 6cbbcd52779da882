//! Pixel-level drawing: fills, blending, panels.

use image::{Rgb, RgbImage};

pub const WHITE: [u8; 3] = [255, 255, 255];
pub const BLACK: [u8; 3] = [0, 0, 0];

/// Mixes `color` into the pixel at `(x, y)` with opacity `alpha`; off-canvas is ignored.
pub fn blend(image: &mut RgbImage, x: i32, y: i32, color: [u8; 3], alpha: f32) {
    if x < 0 || y < 0 || x as u32 >= image.width() || y as u32 >= image.height() {
        return;
    }
    let a = alpha.clamp(0.0, 1.0);
    let p = image.get_pixel_mut(x as u32, y as u32);
    for (v, c) in p.0.iter_mut().zip(color) {
        *v = (*v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
    }
}

/// Fills the rectangle `[x, x + w) x [y, y + h)`, clipped to the canvas.
pub fn fill_rect(image: &mut RgbImage, x: i32, y: i32, w: u32, h: u32, color: [u8; 3]) {
    for yy in y.max(0)..(y + h as i32).min(image.height() as i32) {
        for xx in x.max(0)..(x + w as i32).min(image.width() as i32) {
            image.put_pixel(xx as u32, yy as u32, Rgb(color));
        }
    }
}

/// One-pixel outline of a rectangle.
pub fn stroke_rect(image: &mut RgbImage, x: i32, y: i32, w: u32, h: u32, color: [u8; 3]) {
    fill_rect(image, x, y, w, 1, color);
    fill_rect(image, x, y + h as i32 - 1, w, 1, color);
    fill_rect(image, x, y, 1, h, color);
    fill_rect(image, x + w as i32 - 1, y, 1, h, color);
}

/// Copies `src` onto `dst` with its top-left corner at `(x, y)`.
pub fn paste(dst: &mut RgbImage, src: &RgbImage, x: i32, y: i32) {
    for (sx, sy, p) in src.enumerate_pixels() {
        let (dx, dy) = (x + sx as i32, y + sy as i32);
        if dx >= 0 && dy >= 0 && (dx as u32) < dst.width() && (dy as u32) < dst.height() {
            dst.put_pixel(dx as u32, dy as u32, *p);
        }
    }
}
