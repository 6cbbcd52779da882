//! A synthetic captioning set: scenes of one to three coloured shapes, each caption naming the
//! objects in reading order and relating each to the next ("a red circle left of a blue square
//! above a green triangle"). The picture is a grid of [`ROWS`] x [`COLS`] cells of [`CELL`]
//! pixels with at most one object per cell, so every relation is unambiguous: the next object
//! in reading order is either in the same row ("left of") or in a lower one ("above").
//!
//! Layout under `DIR`: `vocab.txt` (BERT's layout: ids 0..=103 are `[PAD]`, `[unused*]`,
//! `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]` as in bert-base-uncased, so CATR's hard-coded `[CLS]` =
//! 101 and `[SEP]` = 102 hold; the scene words follow), and per split `{train,val}/NNNNN.png`
//! with `captions.json`: every image's caption and objects with their boxes.

use std::collections::BTreeMap;
use std::path::Path;

use image::RgbImage;

use crate::rng::Rng;
use crate::synth::{COLOURS, SHAPES, background, paint_shape};
use crate::{DataError, write_atomic};

pub const ROWS: u32 = 2;
pub const COLS: u32 = 3;
/// Side of a layout cell in pixels: images are `COLS * CELL` wide and `ROWS * CELL` high.
pub const CELL: u32 = 32;
/// Colours used in scenes: the first four of [`COLOURS`].
pub const SCENE_COLOURS: usize = 4;

/// The words of every caption, in vocabulary order after BERT's first 104 ids.
pub const WORDS: [&str; 11] = [
    "a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "left", "of", "above",
];

pub use gaze_records::{SceneObject, SceneRecord};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneSetConfig {
    pub train: usize,
    pub val: usize,
    pub seed: u64,
}

impl Default for SceneSetConfig {
    fn default() -> Self {
        Self {
            train: 4000,
            val: 200,
            seed: 0,
        }
    }
}

/// The vocabulary file's lines: bert-base-uncased's ids 0..=103, then [`WORDS`].
pub fn scene_vocab() -> Vec<String> {
    let mut tokens = vec!["[PAD]".to_string()];
    tokens.extend((0..99).map(|i| format!("[unused{i}]")));
    tokens.extend(["[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from));
    tokens.extend(WORDS.map(String::from));
    tokens
}

/// The caption of objects `(colour, shape, cell)` sorted by cell (reading order).
pub fn describe(objects: &[(usize, usize, u32)]) -> String {
    let mut words = Vec::new();
    for (i, &(colour, shape, cell)) in objects.iter().enumerate() {
        if i > 0 {
            let previous_row = objects[i - 1].2 / COLS;
            words.push(if previous_row == cell / COLS {
                "left of"
            } else {
                "above"
            });
        }
        words.extend(["a", COLOURS[colour].0, SHAPES[shape]]);
    }
    words.join(" ")
}

/// A random scene: its picture and record.
pub fn render_scene(rng: &mut Rng) -> (RgbImage, SceneRecord) {
    let count = rng.int(1, 3) as usize;
    let mut cells: Vec<u32> = (0..ROWS * COLS).collect();
    rng.shuffle(&mut cells);
    let mut cells = cells[..count].to_vec();
    cells.sort_unstable();
    let mut image = background(COLS * CELL, ROWS * CELL, rng);
    let mut parts = Vec::new();
    let mut objects = Vec::new();
    for cell in cells {
        let colour = rng.int(0, SCENE_COLOURS as i64 - 1) as usize;
        let shape = rng.int(0, SHAPES.len() as i64 - 1) as usize;
        let side = rng.int(20, 30) as u32;
        let x0 = (cell % COLS) * CELL + rng.int(0, (CELL - side) as i64) as u32;
        let y0 = (cell / COLS) * CELL + rng.int(0, (CELL - side) as i64) as u32;
        paint_shape(&mut image, shape, COLOURS[colour].1, x0, y0, side);
        parts.push((colour, shape, cell));
        objects.push(SceneObject {
            colour: COLOURS[colour].0.to_string(),
            shape: SHAPES[shape].to_string(),
            bbox: [x0, y0, x0 + side, y0 + side],
        });
    }
    let record = SceneRecord {
        caption: describe(&parts),
        objects,
    };
    (image, record)
}

/// Writes the set under `dir` (creating it). Every file is written atomically.
pub fn write_scene_set(dir: &Path, config: &SceneSetConfig) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let vocab = dir.join("vocab.txt");
    write_atomic(&vocab, (scene_vocab().join("\n") + "\n").as_bytes())
        .map_err(|e| DataError::io(&vocab, e))?;
    for (split, count, stream) in [("train", config.train, 0u64), ("val", config.val, 1)] {
        let split_dir = dir.join(split);
        std::fs::create_dir_all(&split_dir).map_err(|e| DataError::io(&split_dir, e))?;
        let mut records = BTreeMap::new();
        for i in 0..count {
            let (image, record) = render_scene(&mut Rng::derive(config.seed, &[stream, i as u64]));
            let name = format!("{i:05}.png");
            let path = split_dir.join(&name);
            let mut bytes = std::io::Cursor::new(Vec::new());
            image
                .write_to(&mut bytes, image::ImageFormat::Png)
                .map_err(|e| DataError::Decode {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            write_atomic(&path, bytes.get_ref()).map_err(|e| DataError::io(&path, e))?;
            records.insert(name, record);
        }
        let path = split_dir.join("captions.json");
        let json = serde_json::to_vec_pretty(&records).expect("records serialise");
        write_atomic(&path, &json).map_err(|e| DataError::io(&path, e))?;
    }
    Ok(())
}

/// Reads `split_dir/captions.json`: image file name → record, in file-name order.
pub fn read_captions(split_dir: &Path) -> Result<BTreeMap<String, SceneRecord>, DataError> {
    let path = split_dir.join("captions.json");
    let text = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| DataError::Decode {
        path,
        reason: format!("not a captions.json of `gaze synth --captions`: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_follow_reading_order() {
        assert_eq!(describe(&[(0, 0, 4)]), "a red circle");
        // Cells 0 and 2 share the top row; cell 5 is below.
        assert_eq!(
            describe(&[(0, 0, 0), (2, 1, 2), (1, 2, 5)]),
            "a red circle left of a blue square above a green triangle"
        );
        assert_eq!(
            describe(&[(3, 2, 1), (3, 2, 3)]),
            "a yellow triangle above a yellow triangle"
        );
        let vocab = scene_vocab();
        assert_eq!((vocab[101].as_str(), vocab[102].as_str()), ("[CLS]", "[SEP]"));
        assert_eq!(vocab[104], "a");
        assert_eq!(vocab.len(), 104 + WORDS.len());
    }

    #[test]
    fn every_word_is_in_the_vocabulary_and_objects_sit_in_their_boxes() {
        let vocab = scene_vocab();
        for i in 0..200 {
            let (image, record) = render_scene(&mut Rng::derive(7, &[i]));
            assert_eq!(image.dimensions(), (COLS * CELL, ROWS * CELL));
            assert!((1..=3).contains(&record.objects.len()));
            for word in record.caption.split(' ') {
                assert!(vocab.iter().any(|t| t == word), "{word}");
            }
            for object in &record.objects {
                let [x0, y0, x1, y1] = object.bbox;
                assert!(x1 <= COLS * CELL && y1 <= ROWS * CELL && x1 - x0 >= 20);
                let colour = COLOURS.iter().find(|(n, _)| *n == object.colour).unwrap().1;
                // The centre of every shape (a triangle's lower centre) has the object's colour.
                assert_eq!(
                    image.get_pixel((x0 + x1) / 2, (y0 + y1) / 2 + 2).0,
                    colour,
                    "{record:?}"
                );
            }
        }
    }

    #[test]
    fn writes_images_captions_and_vocab() {
        let dir = std::env::temp_dir().join(format!("gaze-scenes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = SceneSetConfig {
            train: 3,
            val: 2,
            seed: 5,
        };
        write_scene_set(&dir, &config).unwrap();
        let val = read_captions(&dir.join("val")).unwrap();
        assert_eq!(val.keys().collect::<Vec<_>>(), ["00000.png", "00001.png"]);
        let (image, record) = render_scene(&mut Rng::derive(5, &[1, 1]));
        assert_eq!(val["00001.png"], record);
        assert_eq!(crate::load_rgb(&dir.join("val/00001.png")).unwrap(), image);
        let vocab = std::fs::read_to_string(dir.join("vocab.txt")).unwrap();
        assert_eq!(vocab.lines().count(), scene_vocab().len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
