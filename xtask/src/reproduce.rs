//! `cargo xtask reproduce`: every result of the assignment, as a chain of `gaze` commands.
//!
//! Each step names its inputs and outputs and is skipped when every output exists and is
//! newer than every input, so an interrupted run picks up where it stopped and a second run
//! does no work. Without `--data` it runs on a synthetic set on the CPU; with the real data
//! and weights it runs the course recipe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct ReproduceArgs {
    /// Course data root holding p1_data/{train,val} and p2_data/images (omit for the
    /// built-in synthetic run).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// timm vit_small_patch16_384 weights (.safetensors or .pth), with --data.
    #[arg(long, value_name = "FILE", requires = "data")]
    vit_weights: Option<PathBuf>,
    /// CATR checkpoint, with --data.
    #[arg(long, value_name = "FILE", requires = "vocab")]
    catr_weights: Option<PathBuf>,
    /// BERT uncased vocab.txt, with --catr-weights.
    #[arg(long, value_name = "FILE")]
    vocab: Option<PathBuf>,
    /// Backend feature gaze is built with: cpu (flex), tch or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "tch", "cuda"])]
    backend: String,
    /// Python whose torch 2.9.0 the `tch` backend builds and runs against.
    #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Device for every gaze step (e.g. tch-cuda to run the tch build on a GPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder.
    #[arg(long, default_value = "runs/reproduce", value_name = "DIR")]
    out: PathBuf,
    /// Build gaze with the release profile (the default dev profile already optimises the
    /// dependencies, where the numeric work is, and reuses the test build).
    #[arg(long)]
    release: bool,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Every output exists and is newer than every input.
pub fn up_to_date(outputs: &[PathBuf], inputs: &[PathBuf]) -> bool {
    let Some(oldest_out) = outputs
        .iter()
        .map(|p| modified(p))
        .collect::<Option<Vec<_>>>()
        .and_then(|t| t.into_iter().min())
    else {
        return false;
    };
    inputs.iter().filter_map(|p| modified(p)).all(|t| t <= oldest_out)
}

struct Runner {
    gaze: PathBuf,
    /// Extra environment of every gaze run (libtorch's library path for `tch`).
    env: Vec<(String, String)>,
    device: String,
    done: usize,
    skipped: usize,
}

/// gaze commands that take `--device`.
const ON_DEVICE: [&str; 6] = [
    "train",
    "caption-train",
    "eval",
    "predict",
    "attention",
    "caption",
];

impl Runner {
    fn step(&mut self, name: &str, inputs: &[PathBuf], outputs: &[PathBuf], args: &[String]) -> Result<()> {
        if up_to_date(outputs, inputs) {
            println!("[skip] {name} (outputs are newer than inputs)");
            self.skipped += 1;
            return Ok(());
        }
        let mut args = args.to_vec();
        if args.first().is_some_and(|c| ON_DEVICE.contains(&c.as_str())) {
            args.extend(["--device".into(), self.device.clone()]);
        }
        println!("[run ] {name}: gaze {}", args.join(" "));
        let started = Instant::now();
        let status = Command::new(&self.gaze)
            .args(&args)
            .envs(self.env.iter().cloned())
            .status()
            .with_context(|| format!("could not start {}", self.gaze.display()))?;
        if !status.success() {
            bail!("step `{name}` failed ({status})");
        }
        for out in outputs {
            if !out.exists() {
                bail!("step `{name}` did not write {}", out.display());
            }
        }
        println!("[done] {name} in {:.1} s", started.elapsed().as_secs_f64());
        self.done += 1;
        Ok(())
    }

    /// `gaze compare` of one run folder: its validation curve, `dir/val_curves.png`.
    fn learning_curves(&mut self, name: &str, run: &Path, dir: &Path) -> Result<PathBuf> {
        let curves = dir.join("val_curves.png");
        self.step(
            name,
            &[run.join("summary.json")],
            std::slice::from_ref(&curves),
            &["compare".into(), s(run), "--out".into(), s(dir)],
        )?;
        Ok(curves)
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn build_gaze(root: &Path, backend: &str, release: bool, env: &[(String, String)]) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "-p", "gaze-cli"])
        .envs(env.iter().cloned());
    if release {
        cmd.arg("--release");
    }
    match backend {
        "tch" => {
            cmd.args(["--no-default-features", "--features", "tch"]);
        }
        "cuda" => {
            cmd.args(["--no-default-features", "--features", "cuda"]);
        }
        _ => {}
    }
    println!("building gaze ({backend}): {cmd:?}");
    if !cmd.status().context("could not run cargo")?.success() {
        bail!("building gaze failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("gaze"))
}

/// Share of the attention mass inside each object's box, and the box's share of the image,
/// averaged over `figures` (gaze attention JSON files) with boxes from `boxes.json`.
fn attention_in_boxes(json_dir: &Path, boxes: &Value, image_size: f64) -> Result<(f64, f64, usize)> {
    let (mut inside, mut area, mut n) = (0.0, 0.0, 0usize);
    for entry in std::fs::read_dir(json_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = format!("{}.jpg", path.file_stem().unwrap().to_string_lossy());
        let Some(b) = boxes.get(&name).and_then(|b| b.as_array()) else {
            continue;
        };
        let b: Vec<f64> = b.iter().filter_map(Value::as_f64).collect();
        let fig: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let (gh, gw) = (
            fig["grid"][0].as_u64().unwrap_or(1) as usize,
            fig["grid"][1].as_u64().unwrap_or(1) as usize,
        );
        let att: Vec<f64> = fig["cls_attention"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let total: f64 = att.iter().sum();
        let (ch, cw) = (image_size / gh as f64, image_size / gw as f64);
        let mut share = 0.0;
        for r in 0..gh {
            for c in 0..gw {
                // Fraction of cell (r, c) covered by the box.
                let ox = ((c as f64 + 1.0) * cw).min(b[2]) - (c as f64 * cw).max(b[0]);
                let oy = ((r as f64 + 1.0) * ch).min(b[3]) - (r as f64 * ch).max(b[1]);
                let cover = (ox.max(0.0) * oy.max(0.0)) / (cw * ch);
                share += att[r * gw + c] * cover;
            }
        }
        inside += share / total.max(f64::MIN_POSITIVE);
        area += (b[2] - b[0]) * (b[3] - b[1]) / (image_size * image_size);
        n += 1;
    }
    if n == 0 {
        bail!("{}: no attention JSON matched boxes.json", json_dir.display());
    }
    Ok((inside / n as f64, area / n as f64, n))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// report.md (images linked) and report.html (images embedded), from Markdown-ish sections.
fn write_report(out: &Path, title: &str, sections: &[(String, String, Vec<PathBuf>)]) -> Result<()> {
    let mut md = format!("# {title}\n\n");
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%;border:1px solid #ddd;margin:.5em 0}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body><h1>{title}</h1>\n"
    );
    for (heading, text, images) in sections {
        md.push_str(&format!("## {heading}\n\n{text}\n\n"));
        html.push_str(&format!(
            "<h2>{heading}</h2>\n<pre>{}</pre>\n",
            text.replace('&', "&amp;").replace('<', "&lt;")
        ));
        for image in images {
            let rel = image.strip_prefix(out).unwrap_or(image);
            md.push_str(&format!("![{}]({})\n\n", rel.display(), rel.display()));
            let bytes =
                std::fs::read(image).with_context(|| format!("{}: missing figure", image.display()))?;
            html.push_str(&format!(
                "<img alt=\"{}\" src=\"data:image/png;base64,{}\">\n",
                rel.display(),
                base64(&bytes)
            ));
        }
    }
    html.push_str("</body></html>\n");
    std::fs::write(out.join("report.md"), md)?;
    std::fs::write(out.join("report.html"), html)?;
    Ok(())
}

/// The caption half on synthetic scenes: generate them, train a small CATR with teacher
/// forcing, caption five held-out scenes with their attention figures, and report exact
/// match and pointing accuracy over every held-out scene.
fn synthetic_captions(
    root: &Path,
    out: &Path,
    r: &mut Runner,
    summary: &mut Value,
    sections: &mut Vec<(String, String, Vec<PathBuf>)>,
) -> Result<()> {
    let scenes = out.join("data/scenes");
    let vocab = scenes.join("vocab.txt");
    let val_dir = scenes.join("val");
    r.step(
        "synthetic caption set",
        &[],
        &[vocab.clone(), val_dir.join("captions.json")],
        &["synth".into(), "--captions".into(), "--out".into(), s(&scenes)],
    )?;
    let config = root.join("configs/caption/synth_catr.toml");
    let run = out.join("catr");
    let (weights, run_summary) = (run.join("model.safetensors"), run.join("summary.json"));
    let mut train_args = vec![
        "caption-train".into(),
        "--config".into(),
        s(&config),
        "--out".into(),
        s(&run),
        format!("data.dir=\"{}\"", scenes.display()),
    ];
    if run.join("last").exists() {
        train_args.push("--resume".into());
    }
    r.step(
        "train the captioner",
        &[config, vocab.clone(), val_dir.join("captions.json")],
        &[run_summary.clone(), weights.clone()],
        &train_args,
    )?;
    let curves = r.learning_curves("captioner learning curves", &run, &out.join("compare-caption"))?;
    let shown: Vec<PathBuf> = (0..5).map(|i| val_dir.join(format!("{i:05}.png"))).collect();
    let cap_dir = out.join("figures/captions");
    let stem = |p: &PathBuf| p.file_stem().unwrap().to_string_lossy().into_owned();
    let pngs: Vec<PathBuf> = shown
        .iter()
        .map(|p| cap_dir.join(format!("{}.png", stem(p))))
        .collect();
    let mut caption_args = vec![
        "caption".into(),
        "--weights".into(),
        s(&weights),
        "--vocab".into(),
        s(&vocab),
        "--out".into(),
        s(&cap_dir),
        "--json".into(),
        "--images".into(),
    ];
    caption_args.extend(shown.iter().map(|p| s(p)));
    r.step(
        "caption attention (5 held-out scenes)",
        std::slice::from_ref(&weights),
        &pngs,
        &caption_args,
    )?;

    let trained: Value = serde_json::from_slice(&std::fs::read(&run_summary)?)?;
    let scores = &trained["val"];
    summary["caption_exact_match"] = scores["exact_match"].clone();
    summary["pointing_accuracy"] = scores["pointing_accuracy"].clone();
    summary["pointing_chance"] = scores["pointing_chance"].clone();
    let references: Value = serde_json::from_slice(&std::fs::read(val_dir.join("captions.json"))?)?;
    let mut lines = Vec::new();
    for p in &shown {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let got: Value = serde_json::from_slice(&std::fs::read(cap_dir.join(format!("{}.json", stem(p))))?)?;
        let (got, want) = (
            got["caption"].as_str().unwrap_or(""),
            references[&name]["caption"].as_str().unwrap_or(""),
        );
        let mark = if got.eq_ignore_ascii_case(want) {
            "ok"
        } else {
            "WRONG"
        };
        lines.push(format!("{name}: \"{got}\" (reference \"{want}\", {mark})"));
    }
    sections.push((
        "Caption attention".into(),
        format!(
            "A small CATR-architecture model (configs/caption/synth_catr.toml) trained from scratch on {} synthetic scenes with teacher forcing; greedy decoding, one panel per word (last decoder layer's cross-attention, mean over heads). The curve is the teacher-forced validation token accuracy per epoch.\n\
             Held-out scenes captioned exactly: {:.1} % of {}.\n\
             Pointing check: for {} colour and shape words of exactly captioned scenes, the attention peak lies inside the named object's box {:.1} % of the time (a random cell would: {:.1} %).\n\n{}",
            trained["train_images"].as_u64().unwrap_or(0),
            100.0 * scores["exact_match"].as_f64().unwrap_or(0.0),
            scores["images"],
            scores["pointed_words"],
            100.0 * scores["pointing_accuracy"].as_f64().unwrap_or(0.0),
            100.0 * scores["pointing_chance"].as_f64().unwrap_or(0.0),
            lines.join("\n")
        ),
        [vec![curves], pngs].concat(),
    ));
    Ok(())
}

pub fn reproduce(root: &Path, args: ReproduceArgs) -> Result<()> {
    let build_started = Instant::now();
    let out = root.join(&args.out);
    std::fs::create_dir_all(&out)?;
    let env = if args.backend == "tch" {
        crate::libtorch_env(&args.python)?
    } else {
        Vec::new()
    };
    let gaze = build_gaze(root, &args.backend, args.release, &env)?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    // `seconds` is the run after the build.
    let started = Instant::now();
    let mut r = Runner {
        gaze: gaze.clone(),
        env,
        device: args.device.clone(),
        done: 0,
        skipped: 0,
    };
    let synthetic = args.data.is_none();
    let figures = out.join("figures");
    let vit = out.join("vit");
    let (data_root, config) = match &args.data {
        None => {
            let data = out.join("data/synth");
            let classes = data.join("classes.txt");
            r.step(
                "synthetic classification set",
                &[],
                std::slice::from_ref(&classes),
                &[
                    "synth".into(),
                    "--out".into(),
                    s(&data),
                    "--size".into(),
                    "64".into(),
                    "--classes".into(),
                    "6".into(),
                ],
            )?;
            (data, root.join("configs/synth_vit_tiny.toml"))
        }
        Some(d) => (d.join("p1_data"), root.join("configs/vit_s16_384_pets.toml")),
    };
    let (train_dir, val_dir) = (data_root.join("train"), data_root.join("val"));
    let best = vit.join("best.safetensors");
    let summary_path = vit.join("summary.json");
    let mut train_args = vec![
        "train".into(),
        "--config".into(),
        s(&config),
        "--data".into(),
        s(&data_root),
        "--out".into(),
        s(&vit),
    ];
    if let Some(w) = &args.vit_weights {
        train_args.extend(["--init".into(), s(w)]);
    }
    if vit.join("last").exists() {
        train_args.push("--resume".into());
    }
    r.step(
        "train the ViT",
        &[config.clone(), train_dir.clone(), val_dir.clone()],
        &[summary_path.clone(), best.clone()],
        &train_args,
    )?;
    let metrics = vit.join("eval.json");
    r.step(
        "evaluate",
        std::slice::from_ref(&best),
        std::slice::from_ref(&metrics),
        &[
            "eval".into(),
            "--weights".into(),
            s(&best),
            "--data".into(),
            s(&val_dir),
            "--json".into(),
            s(&metrics),
        ],
    )?;
    let preds = vit.join("predictions.csv");
    r.step(
        "predictions CSV",
        std::slice::from_ref(&best),
        std::slice::from_ref(&preds),
        &[
            "predict".into(),
            "--weights".into(),
            s(&best),
            "--images".into(),
            s(&val_dir),
            "--out".into(),
            s(&preds),
        ],
    )?;
    let posembed = figures.join("posembed.png");
    std::fs::create_dir_all(&figures)?;
    r.step(
        "position-embedding similarity",
        std::slice::from_ref(&best),
        std::slice::from_ref(&posembed),
        &[
            "posembed".into(),
            "--weights".into(),
            s(&best),
            "--out".into(),
            s(&posembed),
            "--npy".into(),
            s(&figures.join("posembed.npy")),
        ],
    )?;
    let curves = r.learning_curves("learning curves", &vit, &out.join("compare"))?;
    // Attention figures: three validation images (the named ones on the real data).
    let shown: Vec<PathBuf> = if synthetic {
        (0..3).map(|c| val_dir.join(format!("{c}_{c:05}.jpg"))).collect()
    } else {
        ["26_5064.jpg", "29_4718.jpg", "31_4838.jpg"]
            .iter()
            .map(|n| val_dir.join(n))
            .collect()
    };
    let att_dir = figures.join("attention");
    let att_pngs: Vec<PathBuf> = shown
        .iter()
        .map(|p| att_dir.join(format!("{}.png", p.file_stem().unwrap().to_string_lossy())))
        .collect();
    let mut att_args = vec![
        "attention".into(),
        "--weights".into(),
        s(&best),
        "--out".into(),
        s(&att_dir),
        "--json".into(),
    ];
    if synthetic {
        att_args.extend(["--class-names".into(), s(&data_root.join("classes.txt"))]);
    }
    att_args.push("--images".into());
    att_args.extend(shown.iter().map(|p| s(p)));
    r.step(
        "CLS attention figures",
        std::slice::from_ref(&best),
        &att_pngs,
        &att_args,
    )?;

    let mut summary = json!({});
    let eval: Value = serde_json::from_slice(&std::fs::read(&metrics)?)?;
    summary["vit_val_accuracy"] = eval["top1"].clone();
    let mut sections = vec![(
        "Classification".to_string(),
        format!(
            "validation top-1 {:.2} %, top-5 {:.2} % on {} images\npredictions: {}",
            100.0 * eval["top1"].as_f64().unwrap_or(0.0),
            100.0 * eval["top5"].as_f64().unwrap_or(0.0),
            eval["images"],
            preds.strip_prefix(&out).unwrap_or(&preds).display()
        ),
        vec![curves.clone()],
    )];
    sections.push((
        "Position embeddings".into(),
        "Cosine similarity of every patch position embedding with every other (ViT paper, Fig. 7).".into(),
        vec![posembed.clone()],
    ));
    let mut attention_text = "Last block, [class] query to every patch key, mean over heads.".to_string();
    if synthetic {
        // Sanity check on all validation images: does the class token look at the object?
        let check_dir = out.join("check/attention");
        let check_marker = check_dir.join(format!(
            "{}.json",
            shown[0].file_stem().unwrap().to_string_lossy()
        ));
        r.step(
            "attention on every validation image (sanity check)",
            std::slice::from_ref(&best),
            &[check_marker],
            &[
                "attention".into(),
                "--weights".into(),
                s(&best),
                "--out".into(),
                s(&check_dir),
                "--json".into(),
                "--images".into(),
                s(&val_dir),
            ],
        )?;
        let boxes: Value = serde_json::from_slice(&std::fs::read(val_dir.join("boxes.json"))?)?;
        let (inside, area, n) = attention_in_boxes(&check_dir, &boxes, 64.0)?;
        summary["attention_in_box_share"] = json!(inside);
        summary["box_area_share"] = json!(area);
        attention_text.push_str(&format!(
            "\nSanity check over {n} validation images: {:.1} % of the [class] attention falls inside the object's box, which covers {:.1} % of the image.",
            100.0 * inside,
            100.0 * area
        ));
    }
    sections.push(("Where the ViT looks".into(), attention_text, att_pngs.clone()));

    if let (Some(d), Some(weights), Some(vocab)) = (&args.data, &args.catr_weights, &args.vocab) {
        let images = d.join("p2_data/images");
        let cap_dir = figures.join("captions");
        let marker = cap_dir.join(".done");
        // One PNG per image whose names are only known after listing: a marker stands for them.
        if up_to_date(std::slice::from_ref(&marker), &[weights.clone(), vocab.clone()]) {
            println!("[skip] caption attention (outputs are newer than inputs)");
            r.skipped += 1;
        } else {
            r.step(
                "caption attention",
                &[weights.clone(), vocab.clone()],
                &[],
                &[
                    "caption".into(),
                    "--weights".into(),
                    s(weights),
                    "--vocab".into(),
                    s(vocab),
                    "--images".into(),
                    s(&images),
                    "--out".into(),
                    s(&cap_dir),
                    "--json".into(),
                ],
            )?;
            std::fs::write(&marker, b"")?;
        }
        let pngs: Vec<PathBuf> = std::fs::read_dir(&cap_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        sections.push((
            "Caption attention".into(),
            "CATR v3, greedy decoding; one panel per word.".into(),
            pngs,
        ));
    } else if synthetic {
        synthetic_captions(root, &out, &mut r, &mut summary, &mut sections)?;
    } else {
        sections.push((
            "Caption attention".into(),
            "Not run: pass --catr-weights and --vocab (see `cargo xtask fetch`).".into(),
            vec![],
        ));
    }
    summary["seconds"] = json!(started.elapsed().as_secs_f64());
    summary["build_seconds"] = json!(build_seconds);
    summary["steps_run"] = json!(r.done);
    summary["steps_skipped"] = json!(r.skipped);
    std::fs::write(out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    write_report(
        &out,
        if synthetic {
            "gaze reproduction (synthetic data)"
        } else {
            "gaze reproduction"
        },
        &sections,
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_answers() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn steps_are_skipped_only_when_outputs_are_newer() {
        let dir = std::env::temp_dir().join(format!("xtask-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("in"), dir.join("out"));
        std::fs::write(&input, "a").unwrap();
        assert!(!up_to_date(
            std::slice::from_ref(&output),
            std::slice::from_ref(&input)
        ));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&output, "b").unwrap();
        assert!(up_to_date(
            std::slice::from_ref(&output),
            std::slice::from_ref(&input)
        ));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&input, "c").unwrap();
        assert!(!up_to_date(
            std::slice::from_ref(&output),
            std::slice::from_ref(&input)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn attention_share_known_answer() {
        let dir = std::env::temp_dir().join(format!("xtask-box-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 2x2 grid over a 64 px image; all attention in the top-left cell; the box is that cell.
        std::fs::write(
            dir.join("0_00000.json"),
            r#"{"grid":[2,2],"cls_attention":[0.6,0.0,0.0,0.0]}"#,
        )
        .unwrap();
        let boxes = json!({"0_00000.jpg": [0, 0, 32, 32]});
        let (inside, area, n) = attention_in_boxes(&dir, &boxes, 64.0).unwrap();
        assert_eq!((inside, area, n), (1.0, 0.25, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
