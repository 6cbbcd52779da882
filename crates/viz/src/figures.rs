//! Finished figures: panel grids with a title and a shared colorbar.

use gaze_data::resize::resize_plane_bicubic;
use image::{Rgb, RgbImage};
use ndarray::{Array2, ArrayView2};

use crate::Colormap;
use crate::canvas::{BLACK, WHITE, blend, fill_rect, paste, stroke_rect};
use crate::colorbar::{colorbar, colorbar_width};
use crate::text::{draw_text, draw_text_centered, text_size};

const TITLE_PX: f32 = 22.0;
const LABEL_PX: f32 = 15.0;
const TICK_PX: f32 = 13.0;
const MARGIN: u32 = 16;
const GAP: u32 = 12;
const BAR_W: u32 = 16;

/// Bicubic upsampling (antialiased filter, as PyTorch's `interpolate(..., antialias=True)`)
/// of a `[gh, gw]` map to `[h, w]`.
pub fn upsample_map(map: ArrayView2<f32>, (h, w): (usize, usize)) -> Array2<f32> {
    let plane: Vec<f64> = map.iter().map(|&v| v as f64).collect();
    let values = resize_plane_bicubic(&plane, 1, map.dim(), (h, w))
        .into_iter()
        .map(|v| v as f32)
        .collect();
    Array2::from_shape_vec((h, w), values).expect("the resize fills h x w")
}

/// Where the model's square input lies in the displayed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Region {
    pub fn whole(image: &RgbImage) -> Self {
        Region {
            x: 0,
            y: 0,
            width: image.width(),
            height: image.height(),
        }
    }
}

/// `base` with the coarse `map` (`[rows, cols]` of patches) upsampled over `region` and coloured by
/// `cmap` at opacity `alpha`; values are placed on `range` (low, high). Outside `region`,
/// where the model saw nothing, the image is dimmed. `region` may overhang the image.
pub fn overlay(
    base: &RgbImage,
    map: ArrayView2<f32>,
    region: Region,
    range: (f32, f32),
    cmap: Colormap,
    alpha: f32,
) -> RgbImage {
    let mut out = base.clone();
    let heat = upsample_map(map, (region.height as usize, region.width as usize));
    let span = (range.1 - range.0).max(f32::MIN_POSITIVE);
    for (x, y, _) in base.enumerate_pixels() {
        let inside =
            x >= region.x && y >= region.y && x < region.x + region.width && y < region.y + region.height;
        if inside {
            let v = heat[[(y - region.y) as usize, (x - region.x) as usize]];
            blend(
                &mut out,
                x as i32,
                y as i32,
                cmap.rgb((v - range.0) / span),
                alpha,
            );
        } else {
            blend(&mut out, x as i32, y as i32, BLACK, 0.55);
        }
    }
    if region != Region::whole(base) {
        stroke_rect(
            &mut out,
            region.x as i32,
            region.y as i32,
            region.width,
            region.height,
            WHITE,
        );
    }
    out
}

/// One picture in a grid, with its label drawn underneath.
#[derive(Debug, Clone)]
pub struct Panel {
    pub image: RgbImage,
    pub label: String,
}

/// Panels laid out `columns` wide under `title`, with an optional shared colorbar on the
/// right labelled `colorbar.2`.
pub fn panel_grid(
    panels: &[Panel],
    columns: usize,
    title: &str,
    colorbar_spec: Option<(Colormap, (f32, f32), &str)>,
) -> RgbImage {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns);
    let widest_label = panels
        .iter()
        .map(|p| text_size(&p.label, LABEL_PX).0 + 8)
        .max()
        .unwrap_or(0);
    let cell_w = panels
        .iter()
        .map(|p| p.image.width())
        .max()
        .unwrap_or(1)
        .max(widest_label);
    let cell_h = panels.iter().map(|p| p.image.height()).max().unwrap_or(1);
    let (_, label_h) = text_size("Ag", LABEL_PX);
    let (_, title_h) = text_size("Ag", TITLE_PX);
    let grid_w = columns as u32 * cell_w + (columns as u32 - 1) * GAP;
    let grid_h = rows as u32 * (cell_h + label_h + 6) + (rows as u32 - 1) * GAP;
    let bar_w = colorbar_spec.map_or(0, |(_, (lo, hi), name)| {
        GAP + colorbar_width(BAR_W, lo, hi, 5, TICK_PX).max(text_size(name, TICK_PX).0)
    });
    let title_w = text_size(title, TITLE_PX).0;
    let width = (2 * MARGIN + grid_w + bar_w).max(title_w + 2 * MARGIN);
    let top = MARGIN + title_h + GAP;
    let height = top + grid_h + MARGIN;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb(WHITE));
    draw_text_centered(
        &mut canvas,
        title,
        (width / 2) as i32,
        MARGIN as i32,
        TITLE_PX,
        BLACK,
    );
    for (i, panel) in panels.iter().enumerate() {
        let (r, c) = ((i / columns) as u32, (i % columns) as u32);
        let x = MARGIN + c * (cell_w + GAP) + (cell_w - panel.image.width()) / 2;
        let y = top + r * (cell_h + label_h + 6 + GAP);
        paste(&mut canvas, &panel.image, x as i32, y as i32);
        let cx = MARGIN + c * (cell_w + GAP) + cell_w / 2;
        draw_text_centered(
            &mut canvas,
            &panel.label,
            cx as i32,
            (y + panel.image.height() + 3) as i32,
            LABEL_PX,
            BLACK,
        );
    }
    if let Some((cmap, range, name)) = colorbar_spec {
        let x = (MARGIN + grid_w + GAP) as i32;
        let (_, name_h) = text_size(name, TICK_PX);
        draw_text(&mut canvas, name, x, top as i32, TICK_PX, BLACK);
        let bar_top = top as i32 + name_h as i32 + 8;
        let bar_h = (cell_h.min(grid_h)).saturating_sub(name_h + 16).max(40);
        colorbar(&mut canvas, x, bar_top, BAR_W, bar_h, cmap, range, 5, TICK_PX);
    }
    canvas
}

/// The ViT paper's Figure 7: for each patch position `(r, c)` of a `gh x gw` grid, the
/// cosine similarity of its position embedding with every position's, as a small map at
/// row `r`, column `c`. `similarity` is the `[N, N]` matrix, `N = gh * gw`.
pub fn posembed_figure(similarity: ArrayView2<f32>, (gh, gw): (usize, usize), cmap: Colormap) -> RgbImage {
    let n = gh * gw;
    assert_eq!(similarity.dim(), (n, n), "similarity must be [gh*gw, gh*gw]");
    let scale = (72 / gh.max(gw)).max(1) as u32;
    let (map_w, map_h) = (gw as u32 * scale, gh as u32 * scale);
    let gap = 3u32;
    let (label_w, label_h) = text_size(&format!("{}", gh.max(gw)), TICK_PX);
    let (_, title_h) = text_size("Ag", TITLE_PX);
    let left = MARGIN + label_h + 8 + label_w + 6;
    let top = MARGIN + title_h + GAP + label_h + 8 + label_h + 4;
    let grid_w = gw as u32 * (map_w + gap) - gap;
    let grid_h = gh as u32 * (map_h + gap) - gap;
    let bar_total =
        GAP + colorbar_width(BAR_W, -1.0, 1.0, 5, TICK_PX).max(text_size("Cosine similarity", TICK_PX).0);
    let width = left + grid_w + bar_total + MARGIN;
    let height = top + grid_h + MARGIN;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb(WHITE));
    let title = "Position embedding similarity";
    draw_text_centered(
        &mut canvas,
        title,
        (left + grid_w / 2) as i32,
        MARGIN as i32,
        TITLE_PX,
        BLACK,
    );
    let axis_y = MARGIN + title_h + GAP;
    draw_text_centered(
        &mut canvas,
        "Input patch column",
        (left + grid_w / 2) as i32,
        axis_y as i32,
        LABEL_PX,
        BLACK,
    );
    draw_text(
        &mut canvas,
        "Input",
        MARGIN as i32,
        (top + grid_h / 2) as i32 - label_h as i32,
        TICK_PX,
        BLACK,
    );
    draw_text(
        &mut canvas,
        "patch",
        MARGIN as i32,
        (top + grid_h / 2) as i32,
        TICK_PX,
        BLACK,
    );
    draw_text(
        &mut canvas,
        "row",
        MARGIN as i32,
        (top + grid_h / 2) as i32 + label_h as i32,
        TICK_PX,
        BLACK,
    );
    let every = if gh.max(gw) > 12 { 2 } else { 1 };
    for c in 0..gw {
        if c % every == 0 || c + 1 == gw {
            let cx = left + c as u32 * (map_w + gap) + map_w / 2;
            draw_text_centered(
                &mut canvas,
                &(c + 1).to_string(),
                cx as i32,
                (top - label_h - 4) as i32,
                TICK_PX,
                BLACK,
            );
        }
    }
    for r in 0..gh {
        if r % every == 0 || r + 1 == gh {
            let text = (r + 1).to_string();
            let cy = top + r as u32 * (map_h + gap) + map_h / 2;
            let tw = text_size(&text, TICK_PX).0;
            draw_text(
                &mut canvas,
                &text,
                (left - 6 - tw) as i32,
                cy as i32 - label_h as i32 / 2,
                TICK_PX,
                BLACK,
            );
        }
    }
    for r in 0..gh {
        for c in 0..gw {
            let row = similarity.row(r * gw + c);
            let (x0, y0) = (left + c as u32 * (map_w + gap), top + r as u32 * (map_h + gap));
            for (k, &v) in row.iter().enumerate() {
                let (kr, kc) = ((k / gw) as u32, (k % gw) as u32);
                fill_rect(
                    &mut canvas,
                    (x0 + kc * scale) as i32,
                    (y0 + kr * scale) as i32,
                    scale,
                    scale,
                    cmap.rgb((v + 1.0) / 2.0),
                );
            }
        }
    }
    let bx = (left + grid_w + GAP) as i32;
    draw_text(&mut canvas, "Cosine similarity", bx, top as i32, TICK_PX, BLACK);
    let bar_h = (grid_h / 2).max(60);
    colorbar(
        &mut canvas,
        bx,
        top as i32 + label_h as i32 + 10,
        BAR_W,
        bar_h,
        cmap,
        (-1.0, 1.0),
        5,
        TICK_PX,
    );
    canvas
}

/// The image as displayed, then one overlay per `(label, map)` (each `[rows, cols]` of
/// patches) over `region`, all on one colour scale (the maps' joint min..max), titled `title`.
pub fn attention_figure(
    view: &RgbImage,
    region: Region,
    maps: &[(String, Array2<f32>)],
    title: &str,
    cmap: Colormap,
    columns: usize,
) -> RgbImage {
    // Small pictures (a 64 px synthetic image) are enlarged so the panels stay legible.
    let short = view.width().min(view.height()).max(1);
    let zoom = 256u32.div_ceil(short).max(1);
    let enlarged;
    let (view, region) = if zoom > 1 {
        enlarged = gaze_data::resize::resize_rgb_bicubic(view, view.width() * zoom, view.height() * zoom);
        let r = Region {
            x: region.x * zoom,
            y: region.y * zoom,
            width: region.width * zoom,
            height: region.height * zoom,
        };
        (&enlarged, r)
    } else {
        (view, region)
    };
    let lo = maps
        .iter()
        .flat_map(|(_, m)| m.iter().cloned())
        .fold(f32::INFINITY, f32::min);
    let hi = maps
        .iter()
        .flat_map(|(_, m)| m.iter().cloned())
        .fold(f32::NEG_INFINITY, f32::max);
    let range = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let mut framed = view.clone();
    if region != Region::whole(view) {
        stroke_rect(
            &mut framed,
            region.x as i32,
            region.y as i32,
            region.width,
            region.height,
            WHITE,
        );
    }
    let mut panels = vec![Panel {
        image: framed,
        label: "input".into(),
    }];
    for (label, map) in maps {
        panels.push(Panel {
            image: overlay(view, map.view(), region, range, cmap, 0.55),
            label: label.clone(),
        });
    }
    panel_grid(&panels, columns, title, Some((cmap, range, "attention")))
}

/// matplotlib's `tab10` colours, for lines.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

fn draw_segment(canvas: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        fill_rect(canvas, x.round() as i32 - 1, y.round() as i32 - 1, 3, 3, color);
    }
}

/// Round tick values (steps of 1, 2 or 5 times a power of ten) covering `[lo, hi]`, and
/// the widened range they span.
pub fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64, f64) {
    let raw = (hi - lo).max(f64::MIN_POSITIVE) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let (first, last) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let count = ((last - first) / step).round() as usize;
    (
        (0..=count).map(|i| first + step * i as f64).collect(),
        first,
        last,
    )
}

/// A line chart of `series` (label, points), with axes, ticks and a legend.
pub fn line_chart(
    series: &[(String, Vec<(f64, f64)>)],
    title: &str,
    x_label: &str,
    y_label: &str,
) -> RgbImage {
    let (width, height) = (900u32, 560u32);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb(WHITE));
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x_lo, x_hi, y_lo, y_hi) = (x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y));
    }
    if !x_lo.is_finite() {
        (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    if x_hi <= x_lo {
        x_hi = x_lo + 1.0;
    }
    if y_hi <= y_lo {
        y_hi = y_lo + 1.0;
    }
    let pad = (y_hi - y_lo) * 0.05;
    let (y_ticks, y_lo, y_hi) = nice_ticks(y_lo - pad, y_hi + pad);
    let (x_ticks, x_lo, x_hi) = nice_ticks(x_lo, x_hi);
    let (left, right, top, bottom) = (80.0, width as f64 - 220.0, 60.0, height as f64 - 70.0);
    let sx = |x: f64| left + (x - x_lo) / (x_hi - x_lo) * (right - left);
    let sy = |y: f64| bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top);
    draw_text_centered(
        &mut canvas,
        title,
        ((left + right) / 2.0) as i32,
        16,
        TITLE_PX,
        BLACK,
    );
    stroke_rect(
        &mut canvas,
        left as i32,
        top as i32,
        (right - left) as u32,
        (bottom - top) as u32,
        BLACK,
    );
    for xv in x_ticks {
        let px = sx(xv) as i32;
        fill_rect(&mut canvas, px, bottom as i32, 1, 5, BLACK);
        draw_text_centered(
            &mut canvas,
            &crate::colorbar::tick_label(xv as f32),
            px,
            bottom as i32 + 8,
            TICK_PX,
            BLACK,
        );
    }
    for yv in y_ticks {
        let py = sy(yv) as i32;
        fill_rect(&mut canvas, left as i32 - 5, py, 5, 1, BLACK);
        let label = crate::colorbar::tick_label(yv as f32);
        let (tw, th) = text_size(&label, TICK_PX);
        draw_text(
            &mut canvas,
            &label,
            left as i32 - 8 - tw as i32,
            py - th as i32 / 2,
            TICK_PX,
            BLACK,
        );
    }
    draw_text_centered(
        &mut canvas,
        x_label,
        ((left + right) / 2.0) as i32,
        bottom as i32 + 32,
        LABEL_PX,
        BLACK,
    );
    draw_text(&mut canvas, y_label, 8, top as i32 - 28, LABEL_PX, BLACK);
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for w in pts.windows(2) {
            draw_segment(
                &mut canvas,
                (sx(w[0].0), sy(w[0].1)),
                (sx(w[1].0), sy(w[1].1)),
                color,
            );
        }
        for &(x, y) in pts {
            fill_rect(&mut canvas, sx(x) as i32 - 3, sy(y) as i32 - 3, 7, 7, color);
        }
        let ly = top as i32 + 10 + 24 * i as i32;
        fill_rect(&mut canvas, right as i32 + 16, ly + 6, 24, 4, color);
        draw_text(&mut canvas, label, right as i32 + 46, ly, LABEL_PX, BLACK);
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_keeps_the_aspect_ratio_and_colours_the_peak() {
        let base = RgbImage::from_pixel(575, 384, Rgb([128, 128, 128]));
        let region = Region {
            x: 96,
            y: 0,
            width: 384,
            height: 384,
        };
        let mut map = Array2::zeros((24, 24));
        map[[12, 12]] = 1.0;
        let out = overlay(&base, map.view(), region, (0.0, 1.0), Colormap::Viridis, 1.0);
        assert_eq!(out.dimensions(), (575, 384));
        // Peak cell (12, 12) covers pixels 192..208 of the region.
        let peak = out.get_pixel(96 + 200, 200).0;
        let far = out.get_pixel(96 + 20, 20).0;
        assert_eq!(far, Colormap::Viridis.rgb(0.0));
        assert!(peak[1] > far[1] + 100, "{peak:?} vs {far:?}");
        // Outside the model's crop the picture is dimmed, not coloured.
        assert_eq!(out.get_pixel(10, 10).0, [58, 58, 58]);
    }

    #[test]
    fn nice_ticks_are_round() {
        let (ticks, lo, hi) = nice_ticks(18.45, 104.0);
        assert_eq!(ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]);
        assert_eq!((lo, hi), (0.0, 120.0));
        assert_eq!(nice_ticks(1.0, 8.0).0, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
    }

    #[test]
    fn line_chart_puts_points_in_order() {
        let series = vec![("a".to_string(), vec![(1.0, 0.2), (2.0, 0.9)])];
        let chart = line_chart(&series, "val", "epoch", "accuracy");
        let blue: Vec<(u32, u32)> = chart
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 == PALETTE[0])
            .map(|(x, y, _)| (x, y))
            .collect();
        // The higher point (epoch 2) is to the right of and above the lower one.
        let low = blue.iter().filter(|(x, _)| *x < 200).map(|p| p.1).max().unwrap();
        let high = blue
            .iter()
            .filter(|(x, _)| *x > 600 && *x < 700)
            .map(|p| p.1)
            .min()
            .unwrap();
        assert!(high < low, "{high} {low}");
    }

    #[test]
    fn posembed_figure_draws_each_map_where_it_belongs() {
        // 2x3 grid; similarity 1 on the diagonal, -1 elsewhere.
        let n = 6;
        let sim = Array2::from_shape_fn((n, n), |(i, j)| if i == j { 1.0 } else { -1.0 });
        let fig = posembed_figure(sim.view(), (2, 3), Colormap::Viridis);
        let hot = Colormap::Viridis.rgb(1.0);
        let hot_pixels = fig.pixels().filter(|p| p.0 == hot).count();
        let scale = (72 / 3) as usize;
        // One hot cell per map (6 maps), plus the top of the colorbar.
        assert!(hot_pixels >= 6 * scale * scale, "{hot_pixels}");
        assert!(hot_pixels < 6 * scale * scale + 200, "{hot_pixels}");
    }
}
