//! Where attention over a grid of cells falls relative to an object's box, for the synthetic
//! sets whose boxes are known. Boxes are `[x0, y0, x1, y1]` in pixels, end exclusive.

/// Whether the centre of cell `(y, x)` of a grid with `stride`-pixel cells lies inside
/// `bbox` (in the same pixels).
pub fn cell_in_box(y: usize, x: usize, stride: usize, bbox: [f64; 4]) -> bool {
    let (cx, cy) = ((x as f64 + 0.5) * stride as f64, (y as f64 + 0.5) * stride as f64);
    cx >= bbox[0] && cx < bbox[2] && cy >= bbox[1] && cy < bbox[3]
}

/// The share of `attention` (row-major over a `grid` of cells tiling a square image of
/// `image_size` pixels) that falls inside `bbox`, each cell counted by the fraction of it the
/// box covers.
pub fn attention_share_in_box(
    attention: &[f32],
    (rows, cols): (usize, usize),
    bbox: [f64; 4],
    image_size: f64,
) -> f64 {
    let total: f64 = attention.iter().map(|&a| a as f64).sum();
    let (ch, cw) = (image_size / rows as f64, image_size / cols as f64);
    let mut share = 0.0;
    for r in 0..rows {
        for c in 0..cols {
            let ox = ((c as f64 + 1.0) * cw).min(bbox[2]) - (c as f64 * cw).max(bbox[0]);
            let oy = ((r as f64 + 1.0) * ch).min(bbox[3]) - (r as f64 * ch).max(bbox[1]);
            let cover = (ox.max(0.0) * oy.max(0.0)) / (cw * ch);
            share += attention[r * cols + c] as f64 * cover;
        }
    }
    share / total.max(f64::MIN_POSITIVE)
}

/// The share of a square image of `image_size` pixels that `bbox` covers.
pub fn box_area_share(bbox: [f64; 4], image_size: f64) -> f64 {
    (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) / (image_size * image_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_centres_decide_pointing() {
        // Cell (1, 2) of a 16-pixel grid has its centre at (40, 24).
        assert!(cell_in_box(1, 2, 16, [30.0, 20.0, 50.0, 30.0]));
        assert!(!cell_in_box(1, 2, 16, [41.0, 20.0, 50.0, 30.0]));
        assert!(!cell_in_box(1, 2, 16, [30.0, 10.0, 50.0, 24.0]));
    }

    #[test]
    fn attention_share_known_answer() {
        // 2x2 grid over a 64 px image; all attention in the top-left cell; the box is that cell.
        let bbox = [0.0, 0.0, 32.0, 32.0];
        assert_eq!(
            attention_share_in_box(&[0.6, 0.0, 0.0, 0.0], (2, 2), bbox, 64.0),
            1.0
        );
        assert_eq!(box_area_share(bbox, 64.0), 0.25);
        // Half of each attended cell: a box over the left half of the top row.
        let half = [0.0, 0.0, 16.0, 32.0];
        assert_eq!(
            attention_share_in_box(&[0.5, 0.5, 0.0, 0.0], (2, 2), half, 64.0),
            0.25
        );
    }
}
