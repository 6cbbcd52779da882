//! The JSON records that gaze's commands write and other programs (`cargo xtask
//! reproduce`, tests, users' scripts) read back. One type per file format, so that a change
//! of format is a change of type that every reader sees at compile time.

use serde::{Deserialize, Serialize};

/// `gaze eval --json`: top-1/top-5 accuracy, per-class accuracy and the confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// Accuracy of each true class; `None` for classes with no images.
    pub per_class: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// `gaze predict`: one image's predicted class (`--json` adds the logits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The image's file name, without its folder.
    pub filename: String,
    pub label: usize,
    pub logits: Vec<f32>,
}

/// The course's predictions CSV: a `filename,label` header and one row per prediction, a
/// name quoted only where it holds a comma, a quote or a line break.
pub fn predictions_csv(predictions: &[Prediction]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut write = || -> csv::Result<()> {
        writer.write_record(["filename", "label"])?;
        for p in predictions {
            writer.write_record([p.filename.as_str(), &p.label.to_string()])?;
        }
        writer.flush()?;
        Ok(())
    };
    write().expect("writing to memory cannot fail");
    writer.into_inner().expect("flushed above")
}

/// `gaze attention --json`, one per image: the [class] token's attention to every patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionRecord {
    /// Patch grid `[rows, columns]`.
    pub grid: [usize; 2],
    /// One value per patch, row-major over the grid.
    pub cls_attention: Vec<f32>,
    /// Predicted class.
    pub label: usize,
    /// Its name, when class names were given.
    pub name: Option<String>,
    pub probability: f32,
}

/// One word of a caption: its text and the decoding steps of its word pieces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordRecord {
    pub text: String,
    /// Indices into `token_ids` / `attention` of this word's pieces.
    pub steps: Vec<usize>,
}

/// `gaze caption --json`, one per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRecord {
    pub caption: String,
    pub token_ids: Vec<usize>,
    /// Feature grid `[rows, columns]`.
    pub feat_grid: [usize; 2],
    /// One `[h][w]` map per generated token (row k of the last decoder layer's
    /// cross-attention at step k).
    pub attention: Vec<Vec<Vec<f32>>>,
    /// The map of the step that chose [SEP], when the caption ended before the limit.
    pub end_attention: Option<Vec<Vec<f32>>>,
    pub words: Vec<WordRecord>,
}

/// How well a captioner does on a split, by greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionScores {
    /// Share of images whose caption equals the reference, word for word.
    pub exact_match: f64,
    /// On exactly captioned images: share of colour and shape words whose attention peak (the
    /// centre of the arg-max feature cell) lies inside the box of the object the word names.
    pub pointing_accuracy: f64,
    /// The same share for a cell drawn uniformly at random (the pointing baseline).
    pub pointing_chance: f64,
    /// Colour and shape words scored.
    pub pointed_words: usize,
    pub images: usize,
}

/// `summary.json` of a `gaze caption-train` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionSummary {
    pub train_images: usize,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    /// Teacher-forced token accuracy on the validation split after the last epoch.
    pub val_token_accuracy: Option<f64>,
    pub val: CaptionScores,
}

/// One object of a synthetic scene (`captions.json` of `gaze synth --captions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub colour: String,
    pub shape: String,
    /// `[x0, y0, x1, y1]` in pixels, end exclusive.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
}

/// One image of a synthetic scene set: its caption and objects in caption order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneRecord {
    pub caption: String,
    pub objects: Vec<SceneObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_csv_quotes_only_what_needs_it_and_reads_back() {
        let names = ["26_5064.jpg", "a,b.jpg", "say \"cheese\".png", "two\nlines.jpg"];
        let predictions: Vec<Prediction> = names
            .iter()
            .enumerate()
            .map(|(label, name)| Prediction {
                filename: name.to_string(),
                label,
                logits: vec![],
            })
            .collect();
        let bytes = predictions_csv(&predictions);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("filename,label\n26_5064.jpg,0\n"), "{text}");
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        let rows: Vec<(String, usize)> = reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_string(), r[1].parse().unwrap())
            })
            .collect();
        let want: Vec<(String, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        assert_eq!(rows, want);
    }
}
