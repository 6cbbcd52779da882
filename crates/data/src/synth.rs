//! A synthetic classification set in the course's layout: `DIR/{train,val}/{label}_{id}.jpg`,
//! one coloured shape per image on a textured background, at a random position and scale.
//! Class `k` is a (colour, shape) pair: colour `k mod 6`, and shape `k mod 3` for the first six
//! classes, `(k / 6 + k) mod 3` after, so up to 18 classes are all distinct; with six or fewer
//! the colour alone tells the class, beyond that the shape must be seen too. Each split has a
//! `boxes.json` sidecar with every object's box `[x0, y0, x1, y1]` (pixels, exclusive end),
//! and `DIR/classes.txt` names the classes, one per line, in label order.

use std::collections::BTreeMap;
use std::path::Path;

use image::{Rgb, RgbImage};

use crate::rng::Rng;
use crate::{DataError, write_atomic};

pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 210, 40]),
    ("magenta", [200, 50, 200]),
    ("cyan", [40, 200, 210]),
];

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    /// Side of the square images.
    pub size: u32,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            classes: 6,
            train: 1200,
            val: 300,
            size: 96,
            seed: 0,
        }
    }
}

/// `(colour, shape)` indices of class `label`.
pub fn class_parts(label: usize) -> (usize, usize) {
    (
        label % COLOURS.len(),
        (label / COLOURS.len() + label) % SHAPES.len(),
    )
}

/// Name of class `label`: "red circle", "green square", "blue triangle", ...
pub fn class_name(label: usize) -> String {
    let (colour, shape) = class_parts(label);
    format!("{} {}", COLOURS[colour].0, SHAPES[shape])
}

fn inside(shape: usize, u: f64, v: f64) -> bool {
    // (u, v) in [-1, 1]^2 relative to the object's box.
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => u.abs() <= 0.85 && v.abs() <= 0.85,
        _ => (-0.9..=0.9).contains(&v) && u.abs() <= (v + 0.9) / 1.8,
    }
}

/// A `width x height` background: a random grey-ish tone with soft stripes and pixel noise.
pub fn background(width: u32, height: u32, rng: &mut Rng) -> RgbImage {
    let base = [
        rng.int(70, 180) as f64,
        rng.int(70, 180) as f64,
        rng.int(70, 180) as f64,
    ];
    let (fx, fy, phase) = (rng.range(0.05, 0.4), rng.range(0.05, 0.4), rng.range(0.0, 6.3));
    let mut image = RgbImage::from_fn(width, height, |x, y| {
        let stripe = (x as f64 * fx + y as f64 * fy + phase).sin() * 25.0;
        Rgb(base.map(|b| (b + stripe).clamp(0.0, 255.0) as u8))
    });
    for p in image.pixels_mut() {
        for c in p.0.iter_mut() {
            *c = (*c as i64 + rng.int(-12, 12)).clamp(0, 255) as u8;
        }
    }
    image
}

/// Paints shape `shape` (an index into [`SHAPES`]) in `colour` filling the square `[x0, y0]`
/// of side `side`, with 2x2 supersampled edges.
pub fn paint_shape(image: &mut RgbImage, shape: usize, colour: [u8; 3], x0: u32, y0: u32, side: u32) {
    let half = side as f64 / 2.0;
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            let mut cover = 0.0;
            for (dx, dy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let u = (x as f64 + dx - x0 as f64 - half) / half;
                let v = (y as f64 + dy - y0 as f64 - half) / half;
                cover += if inside(shape, u, v) { 0.25 } else { 0.0 };
            }
            if cover > 0.0 {
                let p = image.get_pixel_mut(x, y);
                for (v, c) in p.0.iter_mut().zip(colour) {
                    *v = (*v as f64 * (1.0 - cover) + c as f64 * cover).round() as u8;
                }
            }
        }
    }
}

/// One image of class `label` and its object box.
pub fn render(label: usize, size: u32, rng: &mut Rng) -> (RgbImage, [u32; 4]) {
    let (colour, shape) = class_parts(label);
    let mut image = background(size, size, rng);
    let side = (size as f64 * rng.range(0.3, 0.6)).round() as u32;
    let x0 = rng.int(0, (size - side) as i64) as u32;
    let y0 = rng.int(0, (size - side) as i64) as u32;
    paint_shape(&mut image, shape, COLOURS[colour].1, x0, y0, side);
    (image, [x0, y0, x0 + side, y0 + side])
}

/// Image sides [`write_synth`] accepts: large enough to draw a shape, small enough that a
/// typo cannot fill the memory.
pub const MIN_SIZE: u32 = 16;
pub const MAX_SIZE: u32 = 4096;

/// Writes the set under `dir` (creating it). Every file is written atomically.
pub fn write_synth(dir: &Path, config: &SynthConfig) -> Result<(), DataError> {
    let max = SHAPES.len() * COLOURS.len();
    let refuse = |reason: String| DataError::Setting {
        path: dir.to_path_buf(),
        reason,
    };
    if config.classes < 2 || config.classes > max {
        return Err(refuse(format!(
            "--classes {} is not between 2 and {max} (the colour and shape pairs there are)",
            config.classes
        )));
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&config.size) {
        return Err(refuse(format!(
            "--size {} is not between {MIN_SIZE} and {MAX_SIZE} pixels",
            config.size
        )));
    }
    for (split, count, stream) in [("train", config.train, 0u64), ("val", config.val, 1)] {
        let split_dir = dir.join(split);
        std::fs::create_dir_all(&split_dir).map_err(|e| DataError::io(&split_dir, e))?;
        let mut boxes = BTreeMap::new();
        for i in 0..count {
            let label = i % config.classes;
            let mut rng = Rng::derive(config.seed, &[stream, i as u64]);
            let (image, bbox) = render(label, config.size, &mut rng);
            let name = format!("{label}_{i:05}.jpg");
            let mut bytes = std::io::Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92)
                .encode_image(&image)
                .map_err(|e| DataError::Decode {
                    path: split_dir.join(&name),
                    reason: e.to_string(),
                })?;
            let path = split_dir.join(&name);
            write_atomic(&path, bytes.get_ref()).map_err(|e| DataError::io(&path, e))?;
            boxes.insert(name, bbox);
        }
        let json = format!(
            "{{\n{}\n}}\n",
            boxes
                .iter()
                .map(|(k, b)| format!("  \"{k}\": [{}, {}, {}, {}]", b[0], b[1], b[2], b[3]))
                .collect::<Vec<_>>()
                .join(",\n")
        );
        let path = split_dir.join("boxes.json");
        write_atomic(&path, json.as_bytes()).map_err(|e| DataError::io(&path, e))?;
    }
    let names: Vec<String> = (0..config.classes).map(class_name).collect();
    let path = dir.join("classes.txt");
    write_atomic(&path, (names.join("\n") + "\n").as_bytes()).map_err(|e| DataError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_colour_fills_its_box_centre() {
        for label in 0..18 {
            let (img, [x0, y0, x1, y1]) = render(label, 96, &mut Rng::new(label as u64));
            assert!(x1 <= 96 && y1 <= 96 && x1 - x0 >= 28);
            let centre = img.get_pixel((x0 + x1) / 2, (y0 + y1) / 2 + 2).0;
            assert_eq!(centre, COLOURS[class_parts(label).0].1, "{}", class_name(label));
        }
        assert_eq!(class_name(4), "magenta square");
        let names: std::collections::HashSet<String> = (0..18).map(class_name).collect();
        assert_eq!(names.len(), 18);
    }

    #[test]
    fn writes_the_course_layout() {
        let dir = std::env::temp_dir().join(format!("gaze-synth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_synth(
            &dir,
            &SynthConfig {
                classes: 3,
                train: 6,
                val: 3,
                size: 48,
                seed: 1,
            },
        )
        .unwrap();
        let train = crate::labeled_images(&dir.join("train")).unwrap();
        assert_eq!(
            train.iter().map(|i| i.label).collect::<Vec<_>>(),
            [0, 0, 1, 1, 2, 2]
        );
        assert!(crate::load_rgb(&train[0].path).unwrap().dimensions() == (48, 48));
        let boxes = std::fs::read_to_string(dir.join("val/boxes.json")).unwrap();
        assert!(boxes.contains("\"2_00002.jpg\": ["), "{boxes}");
        assert_eq!(
            std::fs::read_to_string(dir.join("classes.txt")).unwrap(),
            "red circle\ngreen square\nblue triangle\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
