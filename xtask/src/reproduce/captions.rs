//! The caption half: CATR's captions with one attention panel per word, on the course's
//! images with the published checkpoint, or on synthetic scenes with a small model trained
//! here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use gaze_records::{CaptionRecord, CaptionSummary, SceneRecord};

use super::report::{Section, escape};
use super::runner::{Runner, arg, read_json};
use super::{Captioned, QUICK_SCENES, QUICK_SCHEDULE, Summary};

/// A CATR checkpoint, its vocabulary, and its architecture when it is not v3's.
pub struct Model<'a> {
    pub weights: &'a Path,
    pub vocab: &'a Path,
    pub arch: Option<&'a Path>,
}

/// Captions every image of `images` with `model`: one figure per image, named after it.
pub fn published(
    r: &mut Runner,
    out: &Path,
    images: &Path,
    model: &Model,
    summary: &mut Summary,
) -> Result<Section> {
    let cap_dir = out.join("figures/captions");
    let files = gaze_data::collect_images(&[images.to_path_buf()])?;
    let stems = gaze_data::figure_stems(&files)?;
    let pngs: Vec<PathBuf> = stems.iter().map(|s| cap_dir.join(format!("{s}.png"))).collect();
    let mut inputs = vec![
        model.weights.to_path_buf(),
        model.vocab.to_path_buf(),
        images.to_path_buf(),
    ];
    let mut args = vec![
        "caption".into(),
        "--weights".into(),
        arg(model.weights),
        "--vocab".into(),
        arg(model.vocab),
    ];
    if let Some(arch) = model.arch {
        args.extend(["--arch".into(), arg(arch)]);
        inputs.push(arch.to_path_buf());
    }
    args.extend([
        "--images".into(),
        arg(images),
        "--out".into(),
        arg(&cap_dir),
        "--json".into(),
    ]);
    r.step("caption attention", &inputs, &pngs, &args)?;
    let mut lines = Vec::new();
    for (file, stem) in files.iter().zip(&stems) {
        let record: CaptionRecord = read_json(&cap_dir.join(format!("{stem}.json")))?;
        let name = gaze_data::display_name(file);
        lines.push(format!("- **{}**: {}", escape(&name), escape(&record.caption)));
        summary.captions.push(Captioned {
            file: name,
            caption: record.caption,
        });
    }
    Ok(Section::new(
        "Caption attention",
        format!(
            "CATR, greedy decoding; per image the picture, then one panel per word (last decoder layer's cross-attention, mean over heads) and one for the end token.\n\n{}",
            lines.join("\n")
        ),
        pngs,
    ))
}

/// Generates synthetic scenes, trains a small CATR on them with teacher forcing, captions
/// five held-out scenes with their attention figures, and reports exact match and pointing
/// accuracy over every held-out scene. `quick`: 64 + 8 scenes and one epoch.
pub fn synthetic(
    root: &Path,
    out: &Path,
    quick: bool,
    r: &mut Runner,
    summary: &mut Summary,
) -> Result<Section> {
    let scenes = out.join("data/scenes");
    let vocab = scenes.join("vocab.txt");
    let val_dir = scenes.join("val");
    let mut synth_args = vec!["synth".into(), "--captions".into(), "--out".into(), arg(&scenes)];
    if quick {
        synth_args.extend(QUICK_SCENES.map(String::from));
    }
    r.step(
        "synthetic caption set",
        &[],
        &[vocab.clone(), val_dir.join("captions.json")],
        &synth_args,
    )?;
    let config = root.join("configs/caption/synth_catr.toml");
    let run = out.join("catr");
    let (weights, run_summary) = (run.join("model.safetensors"), run.join("summary.json"));
    let mut train_args = vec![
        "caption-train".into(),
        "--config".into(),
        arg(&config),
        "--out".into(),
        arg(&run),
        format!("data.dir=\"{}\"", scenes.display()),
    ];
    if quick {
        train_args.extend(QUICK_SCHEDULE.map(String::from));
    }
    r.train(
        "train the captioner",
        &[config, scenes.join("train"), val_dir.clone()],
        &[run_summary.clone(), weights.clone()],
        &train_args,
    )?;
    let (_, curves) = r.compare(
        "captioner learning curves",
        std::slice::from_ref(&run),
        &out.join("compare-caption"),
    )?;
    let shown: Vec<String> = (0..5).map(|i| format!("{i:05}")).collect();
    let cap_dir = out.join("figures/captions");
    let pngs: Vec<PathBuf> = shown.iter().map(|s| cap_dir.join(format!("{s}.png"))).collect();
    let images: Vec<PathBuf> = shown.iter().map(|s| val_dir.join(format!("{s}.png"))).collect();
    let mut caption_args = vec![
        "caption".into(),
        "--weights".into(),
        arg(&weights),
        "--vocab".into(),
        arg(&vocab),
        "--out".into(),
        arg(&cap_dir),
        "--json".into(),
        "--images".into(),
    ];
    caption_args.extend(images.iter().map(|p| arg(p)));
    let inputs = [vec![weights.clone(), vocab.clone()], images].concat();
    r.step(
        "caption attention (5 held-out scenes)",
        &inputs,
        &pngs,
        &caption_args,
    )?;

    let trained: CaptionSummary = read_json(&run_summary)?;
    let scores = &trained.val;
    summary.caption_exact_match = Some(scores.exact_match);
    summary.pointing_accuracy = Some(scores.pointing_accuracy);
    summary.pointing_chance = Some(scores.pointing_chance);
    let references: BTreeMap<String, SceneRecord> = read_json(&val_dir.join("captions.json"))?;
    let mut lines = Vec::new();
    for s in &shown {
        let name = format!("{s}.png");
        let got: CaptionRecord = read_json(&cap_dir.join(format!("{s}.json")))?;
        let want = references.get(&name).map_or("", |r| r.caption.as_str());
        let mark = if got.caption.eq_ignore_ascii_case(want) {
            "right"
        } else {
            "WRONG"
        };
        lines.push(format!(
            "- **{name}**: {} (reference: {}; {mark})",
            escape(&got.caption),
            escape(want)
        ));
        summary.captions.push(Captioned {
            file: name,
            caption: got.caption,
        });
    }
    Ok(Section::new(
        "Caption attention",
        format!(
            "A small CATR-architecture model (`configs/caption/synth_catr.toml`) trained from scratch on {} synthetic scenes with teacher forcing; greedy decoding, one panel per word (last decoder layer's cross-attention, mean over heads). The curve is the teacher-forced validation token accuracy per epoch.\n\n\
             Held-out scenes captioned exactly: **{:.1} %** of {}. Pointing check: for {} colour and shape words of exactly captioned scenes, the attention peak lies inside the named object's box {:.1} % of the time (a random cell would: {:.1} %).\n\n{}",
            trained.train_images,
            100.0 * scores.exact_match,
            scores.images,
            scores.pointed_words,
            100.0 * scores.pointing_accuracy,
            100.0 * scores.pointing_chance,
            lines.join("\n")
        ),
        [vec![curves], pngs].concat(),
    ))
}
