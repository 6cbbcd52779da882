//! The classification half: train the ViT, evaluate it, write the predictions CSV, and draw
//! the position-embedding similarity and the [class] attention of three validation images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use gaze_data::boxes::{attention_share_in_box, box_area_share};
use gaze_records::{AttentionRecord, ClassificationMetrics};

use super::report::{Section, escape, table};
use super::runner::{Runner, arg, read_json};
use super::{Mode, NamedImage, QUICK_IMAGES, REFERENCE_ACCURACY, REPRODUCTION_BAND, Summary};

/// The three validation images whose attention the assignment asks for.
pub const NAMED_IMAGES: [&str; 3] = ["26_5064.jpg", "29_4718.jpg", "31_4838.jpg"];

/// Where the classification half reads and writes.
pub struct Classification<'a> {
    pub root: &'a Path,
    pub out: &'a Path,
    /// The course data root (`p1_data` inside), or `None` for the synthetic set.
    pub data: Option<&'a Path>,
    pub vit_weights: Option<&'a Path>,
    /// `--set` overrides of the training config.
    pub overrides: &'a [String],
    /// `--quick`: a small synthetic set.
    pub quick: bool,
}

impl Classification<'_> {
    fn synthetic(&self) -> bool {
        self.data.is_none()
    }

    /// The folder holding `train/` and `val/`.
    pub fn data_root(&self) -> PathBuf {
        match self.data {
            Some(d) => d.join("p1_data"),
            None => self.out.join("data/synth"),
        }
    }

    /// The recipe's config: the course's, or the synthetic set's small ViT.
    pub fn config(&self) -> PathBuf {
        self.root.join(if self.synthetic() {
            "configs/synth_vit_tiny.toml"
        } else {
            "configs/vit_s16_384_pets.toml"
        })
    }

    /// `gaze train` of `config` into `run` on this reproduction's data, from `init` weights
    /// if given, with the `--set` overrides and then `extra` ones.
    pub fn train(
        &self,
        r: &mut Runner,
        name: &str,
        (config, init): (&Path, Option<&Path>),
        run: &Path,
        extra: &[String],
    ) -> Result<()> {
        let data_root = self.data_root();
        let mut args = vec![
            "train".into(),
            "--config".into(),
            arg(config),
            "--data".into(),
            arg(&data_root),
            "--out".into(),
            arg(run),
        ];
        let mut inputs = vec![
            config.to_path_buf(),
            data_root.join("train"),
            data_root.join("val"),
        ];
        if let Some(weights) = init {
            args.extend(["--init".into(), arg(weights)]);
            inputs.push(weights.to_path_buf());
        }
        args.extend(self.overrides.iter().chain(extra).cloned());
        let outputs = [run.join("summary.json"), run.join("best.safetensors")];
        r.train(name, &inputs, &outputs, &args)
    }

    /// Runs every step, fills in `summary`, appends the report's sections and returns the
    /// recipe's run folder.
    pub fn run(&self, r: &mut Runner, summary: &mut Summary, sections: &mut Vec<Section>) -> Result<PathBuf> {
        let (figures, vit) = (self.out.join("figures"), self.out.join("vit"));
        self.prepare_data(r)?;
        let data_root = self.data_root();
        let val_dir = data_root.join("val");
        let best = vit.join("best.safetensors");
        self.train(r, "train the ViT", (&self.config(), self.vit_weights), &vit, &[])?;
        let metrics = vit.join("eval.json");
        let weights = std::slice::from_ref(&best);
        r.step(
            "evaluate",
            &[best.clone(), val_dir.clone()],
            std::slice::from_ref(&metrics),
            &[
                "eval".into(),
                "--weights".into(),
                arg(&best),
                "--data".into(),
                arg(&val_dir),
                "--json".into(),
                arg(&metrics),
            ],
        )?;
        let preds = vit.join("predictions.csv");
        r.step(
            "predictions CSV",
            &[best.clone(), val_dir.clone()],
            std::slice::from_ref(&preds),
            &[
                "predict".into(),
                "--weights".into(),
                arg(&best),
                "--images".into(),
                arg(&val_dir),
                "--out".into(),
                arg(&preds),
            ],
        )?;
        let posembed = figures.join("posembed.png");
        std::fs::create_dir_all(&figures)?;
        r.step(
            "position-embedding similarity",
            weights,
            std::slice::from_ref(&posembed),
            &[
                "posembed".into(),
                "--weights".into(),
                arg(&best),
                "--out".into(),
                arg(&posembed),
                "--npy".into(),
                arg(&figures.join("posembed.npy")),
            ],
        )?;
        // Three validation images: the named ones on the real data.
        let shown: Vec<PathBuf> = if self.synthetic() {
            (0..3).map(|c| val_dir.join(format!("{c}_{c:05}.jpg"))).collect()
        } else {
            NAMED_IMAGES.iter().map(|n| val_dir.join(n)).collect()
        };
        let att_dir = figures.join("attention");
        let stems = gaze_data::figure_stems(&shown)?;
        let att_pngs: Vec<PathBuf> = stems.iter().map(|s| att_dir.join(format!("{s}.png"))).collect();
        let mut att_args = vec![
            "attention".into(),
            "--weights".into(),
            arg(&best),
            "--out".into(),
            arg(&att_dir),
            "--json".into(),
        ];
        let mut att_inputs = [weights, &shown].concat();
        if self.synthetic() {
            let names = data_root.join("classes.txt");
            att_args.extend(["--class-names".into(), arg(&names)]);
            att_inputs.push(names);
        }
        att_args.push("--images".into());
        att_args.extend(shown.iter().map(|p| arg(p)));
        r.step("CLS attention figures", &att_inputs, &att_pngs, &att_args)?;

        let (_, curves) = r.compare(
            "learning curves",
            std::slice::from_ref(&vit),
            &self.out.join("compare"),
        )?;
        let eval: ClassificationMetrics = read_json(&metrics)?;
        summary.vit_val_accuracy = Some(eval.top1);
        for (path, stem) in shown.iter().zip(&stems) {
            let record: AttentionRecord = read_json(&att_dir.join(format!("{stem}.json")))?;
            summary.named_images.push(NamedImage {
                name: gaze_data::display_name(path),
                label: gaze_data::parse_label(path)?,
                predicted: record.label,
                probability: record.probability,
            });
        }
        let band = if summary.mode == Mode::Real {
            let (low, high) = (
                REFERENCE_ACCURACY - REPRODUCTION_BAND,
                REFERENCE_ACCURACY + REPRODUCTION_BAND,
            );
            format!(
                " The course's reference is {:.2} %; a reproduction lands within ±{:.1} % of it ({:.2}–{:.2} %): this run is {}.",
                100.0 * REFERENCE_ACCURACY,
                100.0 * REPRODUCTION_BAND,
                100.0 * low,
                100.0 * high,
                if (low..=high).contains(&eval.top1) {
                    "inside"
                } else {
                    "outside"
                }
            )
        } else {
            String::new()
        };
        sections.push(Section::new(
            "Classification",
            format!(
                "Validation top-1 **{:.2} %**, top-5 {:.2} % on {} images.{band}\n\nPredictions, one `filename,label` row per validation image: {}.",
                100.0 * eval.top1,
                100.0 * eval.top5,
                eval.images,
                escape(&preds.strip_prefix(self.out).unwrap_or(&preds).display().to_string())
            ),
            vec![curves],
        ));
        sections.push(Section::new(
            "Position embeddings",
            "Cosine similarity of every patch position embedding with every other (ViT paper, Fig. 7).",
            vec![posembed],
        ));
        let rows: Vec<Vec<String>> = summary
            .named_images
            .iter()
            .map(|i| {
                vec![
                    escape(&i.name),
                    i.label.to_string(),
                    i.predicted.to_string(),
                    format!("{:.1} %", 100.0 * i.probability),
                    if i.label == i.predicted {
                        "correct"
                    } else {
                        "wrong"
                    }
                    .into(),
                ]
            })
            .collect();
        let mut attention_text = format!(
            "Last block, [class] query to every patch key, mean over heads.\n\n{}",
            table(&["image", "true label", "predicted", "probability", ""], &rows)
        );
        if self.synthetic() {
            let (inside, area, n) = self.attention_check(r, &best, &val_dir, &shown[0])?;
            summary.attention_in_box_share = Some(inside);
            summary.box_area_share = Some(area);
            attention_text.push_str(&format!(
                "\nSanity check over {n} validation images: {:.1} % of the [class] attention falls inside the object's box, which covers {:.1} % of the image.",
                100.0 * inside,
                100.0 * area
            ));
        }
        sections.push(Section::new("Where the ViT looks", attention_text, att_pngs));
        Ok(vit)
    }

    /// Generates the synthetic set when there is no real data.
    fn prepare_data(&self, r: &mut Runner) -> Result<()> {
        if !self.synthetic() {
            return Ok(());
        }
        let data = self.data_root();
        let mut args = vec![
            "synth".into(),
            "--out".into(),
            arg(&data),
            "--size".into(),
            "64".into(),
            "--classes".into(),
            "6".into(),
        ];
        if self.quick {
            args.extend(QUICK_IMAGES.map(String::from));
        }
        r.step(
            "synthetic classification set",
            &[],
            &[data.join("classes.txt")],
            &args,
        )
    }

    /// On every synthetic validation image: how much of the [class] attention falls inside
    /// the object's box, and how much of the image the box covers (means, and the count).
    fn attention_check(
        &self,
        r: &mut Runner,
        best: &Path,
        val_dir: &Path,
        first: &Path,
    ) -> Result<(f64, f64, usize)> {
        let check_dir = self.out.join("check/attention");
        r.step(
            "attention on every validation image (sanity check)",
            &[best.to_path_buf(), val_dir.to_path_buf()],
            &[check_dir.join(format!("{}.json", stem(first)))],
            &[
                "attention".into(),
                "--weights".into(),
                arg(best),
                "--out".into(),
                arg(&check_dir),
                "--json".into(),
                "--images".into(),
                arg(val_dir),
            ],
        )?;
        let boxes: BTreeMap<String, [f64; 4]> = read_json(&val_dir.join("boxes.json"))?;
        attention_in_boxes(&check_dir, &boxes, 64.0)
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The mean share of the attention inside each object's box and of the box's share of the
/// image, over the attention records in `json_dir` that `boxes` (keyed by image name) covers.
fn attention_in_boxes(
    json_dir: &Path,
    boxes: &BTreeMap<String, [f64; 4]>,
    image_size: f64,
) -> Result<(f64, f64, usize)> {
    let (mut inside, mut area, mut n) = (0.0, 0.0, 0usize);
    for entry in std::fs::read_dir(json_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(&bbox) = boxes.get(&format!("{}.jpg", stem(&path))) else {
            continue;
        };
        let record: AttentionRecord = read_json(&path)?;
        let grid = (record.grid[0], record.grid[1]);
        inside += attention_share_in_box(&record.cls_attention, grid, bbox, image_size);
        area += box_area_share(bbox, image_size);
        n += 1;
    }
    if n == 0 {
        bail!("{}: no attention JSON matched boxes.json", json_dir.display());
    }
    Ok((inside / n as f64, area / n as f64, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_share_over_records_known_answer() {
        let dir = std::env::temp_dir().join(format!("xtask-box-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 2x2 grid over a 64 px image; all attention in the top-left cell; the box is that cell.
        std::fs::write(
            dir.join("0_00000.json"),
            r#"{"grid":[2,2],"cls_attention":[0.6,0.0,0.0,0.0],"label":0,"name":null,"probability":1.0}"#,
        )
        .unwrap();
        let boxes = BTreeMap::from([("0_00000.jpg".to_string(), [0.0, 0.0, 32.0, 32.0])]);
        let (inside, area, n) = attention_in_boxes(&dir, &boxes, 64.0).unwrap();
        assert_eq!((inside, area, n), (1.0, 0.25, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
