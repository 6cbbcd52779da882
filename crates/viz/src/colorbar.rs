//! A vertical colorbar with labelled ticks.

use image::RgbImage;

use crate::Colormap;
use crate::canvas::{BLACK, fill_rect, stroke_rect};
use crate::text::{draw_text, text_size};

/// Formats a tick value compactly (`0.5`, `-1`, `0.013`).
pub fn tick_label(v: f32) -> String {
    let s = if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// Width a vertical colorbar of bar width `bar_w` and `font` px labels needs for `[vmin, vmax]`.
pub fn colorbar_width(bar_w: u32, vmin: f32, vmax: f32, ticks: usize, font: f32) -> u32 {
    let label_w = tick_values(vmin, vmax, ticks)
        .iter()
        .map(|&v| text_size(&tick_label(v), font).0)
        .max()
        .unwrap_or(0);
    bar_w + 6 + label_w
}

fn tick_values(vmin: f32, vmax: f32, ticks: usize) -> Vec<f32> {
    let n = ticks.max(2);
    (0..n)
        .map(|i| vmin + (vmax - vmin) * i as f32 / (n - 1) as f32)
        .collect()
}

/// A vertical colorbar at `(x, y)`, `h` tall, `vmax` at the top, with `ticks` labelled ticks.
#[allow(clippy::too_many_arguments)]
pub fn colorbar(
    image: &mut RgbImage,
    x: i32,
    y: i32,
    bar_w: u32,
    h: u32,
    cmap: Colormap,
    (vmin, vmax): (f32, f32),
    ticks: usize,
    font: f32,
) {
    for row in 0..h {
        let t = 1.0 - row as f32 / (h - 1).max(1) as f32;
        fill_rect(image, x, y + row as i32, bar_w, 1, cmap.rgb(t));
    }
    stroke_rect(image, x, y, bar_w, h, BLACK);
    for v in tick_values(vmin, vmax, ticks) {
        let t = if vmax > vmin {
            (v - vmin) / (vmax - vmin)
        } else {
            0.0
        };
        let ty = y + ((1.0 - t) * (h - 1) as f32).round() as i32;
        fill_rect(image, x + bar_w as i32, ty, 4, 1, BLACK);
        let (_, th) = text_size("0", font);
        draw_text(
            image,
            &tick_label(v),
            x + bar_w as i32 + 6,
            ty - th as i32 / 2,
            font,
            BLACK,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::WHITE;
    use image::Rgb;

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(tick_label(-1.0), "-1");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(0.0125), "0.013");
        assert_eq!(tick_label(-0.0), "0");
    }

    #[test]
    fn colorbar_runs_from_vmax_at_top_to_vmin_at_bottom() {
        let mut img = RgbImage::from_pixel(80, 120, Rgb(WHITE));
        colorbar(&mut img, 2, 5, 12, 100, Colormap::Viridis, (-1.0, 1.0), 5, 10.0);
        assert_eq!(img.get_pixel(8, 6).0, Colormap::Viridis.rgb(1.0 - 1.0 / 99.0));
        assert_eq!(img.get_pixel(8, 103).0, Colormap::Viridis.rgb(1.0 / 99.0));
    }
}
