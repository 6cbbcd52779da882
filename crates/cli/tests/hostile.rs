//! Hostile and damaged input, command by command: each is refused with exit status 1 and
//! one line on stderr that names the file, before it can take the machine's memory, and no
//! input is ever replaced by an output.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// An address-space limit for the memory tests: a command that allocates from a hostile
/// header dies here in a moment instead of taking the machine down.
const ADDRESS_SPACE_KIB: u64 = 2 << 20;

/// `gaze ARGS` under [`ADDRESS_SPACE_KIB`].
fn gaze_within_2_gib(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_gaze"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts exit status 1 and a single `error:` line on stderr that contains every `needle`.
fn refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A small JPEG whose header claims `width`×`height` pixels.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let image = gaze_data::image::RgbImage::from_fn(16, 16, |x, y| {
        gaze_data::image::Rgb([x as u8 * 9, y as u8 * 9, 40])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, gaze_data::image::ImageFormat::Jpeg)
        .unwrap();
    let mut jpeg = bytes.into_inner();
    let sof = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && w[1] == 0xC0)
        .unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// A safetensors file's header as JSON, and its data.
fn split_safetensors(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + len]).unwrap(),
        bytes[8 + len..].to_vec(),
    )
}

fn join_safetensors(path: &Path, header: &serde_json::Value, data: &[u8]) {
    let text = serde_json::to_vec(header).unwrap();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// A copy of the gaze-saved `weights` whose stored architecture has `field` set to `value`.
fn with_architecture(weights: &Path, out: &Path, field: &str, value: serde_json::Value) -> PathBuf {
    let (mut header, data) = split_safetensors(weights);
    let stored = header["__metadata__"]["gaze.config"].as_str().unwrap();
    let mut config: serde_json::Value = serde_json::from_str(stored).unwrap();
    config[field] = value;
    header["__metadata__"]["gaze.config"] = config.to_string().into();
    join_safetensors(out, &header, &data);
    out.to_path_buf()
}

#[test]
fn hostile_headers_are_refused_before_anything_is_allocated() {
    let dir = scratch("hostile-memory");
    let weights = reduced_gaze_weights(&dir);
    let huge = dir.join("huge.jpg");
    std::fs::write(&huge, jpeg_claiming(60000, 60000)).unwrap();
    assert!(std::fs::metadata(&huge).unwrap().len() < 5000);
    let csv = dir.join("p.csv");
    // A 5 KB JPEG claiming 60000x60000 pixels.
    let out = gaze_within_2_gib(&[
        "predict",
        "--weights",
        s(&weights),
        "--images",
        s(&huge),
        "--out",
        s(&csv),
    ]);
    refused(&out, &["huge.jpg", "60000x60000", "--max-pixels"]);
    for figure in ["attention"] {
        let out = gaze_within_2_gib(&[
            figure,
            "--weights",
            s(&weights),
            "--images",
            s(&huge),
            "--out",
            s(&dir),
        ]);
        refused(&out, &["huge.jpg", "60000x60000"]);
    }
    // Architectures whose tensors would not fit in memory: refused from the metadata.
    for (field, value) in [
        ("img_size", serde_json::json!([100000, 100000])),
        ("depth", serde_json::json!(100000)),
        ("patch_size", serde_json::json!(0)),
        ("num_heads", serde_json::json!(7)),
    ] {
        let hostile = with_architecture(&weights, &dir.join(format!("{field}.safetensors")), field, value);
        for command in ["predict", "posembed"] {
            let mut args = vec![command, "--weights", s(&hostile), "--out", s(&csv)];
            if command == "predict" {
                args.extend(["--images", s(&huge)]);
            }
            let out = gaze_within_2_gib(&args);
            refused(&out, &[&format!("{field}.safetensors")]);
        }
    }
    let out = gaze_within_2_gib(&["synth", "--out", s(&dir.join("synth")), "--size", "100000"]);
    refused(&out, &["--size 100000"]);
    assert!(!dir.join("synth").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_skips_over_budget_images_and_refuses_nonsense_settings() {
    let dir = scratch("hostile-train");
    let data = dir.join("synth");
    let out = gaze(&[
        "synth",
        "--out",
        s(&data),
        "--classes",
        "3",
        "--train",
        "12",
        "--val",
        "6",
        "--size",
        "32",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(data.join("train/1_99999.jpg"), jpeg_claiming(16000, 16000)).unwrap();
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY_VIT_CONFIG).unwrap();
    let train = |run: &str, extra: &[&str]| {
        let run = dir.join(run);
        let mut args = vec![
            "train",
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--out",
            s(&run),
            "data.batch_size=8",
            "schedule.epochs=1",
        ];
        args.extend(extra);
        gaze_within_2_gib(&args)
    };
    let out = train("skipping", &["--skip-bad"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("skipping/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_images"], 1);
    // Output files get the usual mode, the model's among them.
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Umask:")
                .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        })
        .unwrap();
    for file in ["best.safetensors", "metrics.csv", "config.toml", "summary.json"] {
        let mode = std::fs::metadata(dir.join("skipping").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666 & !umask, "{file}");
    }
    let out = train("refusing", &[]);
    refused(&out, &["1_99999.jpg", "16000x16000", "--skip-bad"]);
    assert!(!dir.join("refusing").exists(), "a failed run leaves no folder");

    // Weights that are not numbers make a loss that is not one: the run stops, naming it.
    let weights = reduced_gaze_weights(&dir);
    let (header, data) = split_safetensors(&weights);
    let nan: Vec<u8> = data
        .chunks_exact(4)
        .flat_map(|_| f32::NAN.to_le_bytes())
        .collect();
    let nan_weights = dir.join("nan.safetensors");
    join_safetensors(&nan_weights, &header, &nan);
    let reduced = ["model.img_size=64", "model.patch_size=16"];
    let out = train(
        "diverging",
        &[&["--skip-bad", "--init", s(&nan_weights)][..], &reduced].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("epoch 1, batch 1, step 1: the loss is NaN"),
        "{stderr}"
    );

    for (setting, needle) in [
        ("optim.lr=inf", "optim.lr = inf"),
        ("optim.lr=1e30", "optim.lr = 1e30"),
        ("augment.hflip=7", "augment.hflip = 7"),
        ("augment.scale=[1.5, 0.2]", "augment.scale[0] = 1.5"),
        ("optim.weight_decay=-0.1", "optim.weight_decay = -0.1"),
        ("model.patch_size=0", "patch_size is 0"),
        ("model.num_heads=7", "num_heads 7"),
    ] {
        let out = train("nonsense", &[setting]);
        refused(&out, &["tiny.toml", needle]);
        assert!(!dir.join("nonsense").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_checkpoints_and_images_are_one_line_each() {
    let dir = scratch("hostile-files");
    let good = reduced_gaze_weights(&dir);
    let image = fixtures().join("images/rgb_384x384.png");
    let csv = dir.join("p.csv");
    let bytes = std::fs::read(&good).unwrap();
    let (header, data) = split_safetensors(&good);
    let mut not_float = header.clone();
    not_float["pos_embed"]["dtype"] = "I32".into();
    let nan_data: Vec<u8> = data
        .chunks_exact(4)
        .flat_map(|_| f32::NAN.to_le_bytes())
        .collect();
    let files: Vec<(&str, Box<dyn Fn(&Path)>, &str)> = vec![
        (
            "empty.safetensors",
            Box::new(|p| std::fs::write(p, b"").unwrap()),
            "empty.safetensors",
        ),
        (
            "text.pth",
            Box::new(|p| std::fs::write(p, b"label,filename\n").unwrap()),
            "neither",
        ),
        (
            "long_header.safetensors",
            Box::new(|p| {
                let mut b = (1u64 << 63).to_le_bytes().to_vec();
                b.extend(b"{}");
                std::fs::write(p, b).unwrap()
            }),
            "header",
        ),
        (
            "cut.safetensors",
            Box::new(|p| std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap()),
            "cut.safetensors",
        ),
        (
            "not_float.safetensors",
            Box::new(|p| join_safetensors(p, &not_float, &data)),
            "pos_embed is I32",
        ),
        (
            "nan.safetensors",
            Box::new(|p| join_safetensors(p, &header, &nan_data)),
            "not finite",
        ),
    ];
    for (name, write, needle) in &files {
        let path = dir.join(name);
        write(&path);
        let out = gaze(&[
            "predict",
            "--weights",
            s(&path),
            "--images",
            s(&image),
            "--out",
            s(&csv),
        ]);
        refused(&out, &[name, needle]);
        assert!(!csv.exists(), "{name}: partial output");
        if *name != "nan.safetensors" {
            let out = gaze(&["posembed", "--weights", s(&path), "--out", s(&dir.join("p.png"))]);
            refused(&out, &[name]);
        }
    }

    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let jpeg = std::fs::read(fixtures().join("images/rgb_384x384.jpg")).unwrap();
    for (name, contents) in [
        ("cut.jpg", jpeg[..jpeg.len() / 2].to_vec()),
        ("text.jpg", b"label,filename\n".to_vec()),
        ("empty.png", Vec::new()),
    ] {
        let path = images.join(name);
        std::fs::write(&path, contents).unwrap();
        let out = gaze(&[
            "predict",
            "--weights",
            s(&good),
            "--images",
            s(&path),
            "--out",
            s(&csv),
        ]);
        refused(&out, &[name]);
    }
    let looped = images.join("loop.jpg");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let out = gaze(&[
        "predict",
        "--weights",
        s(&good),
        "--images",
        s(&looped),
        "--out",
        s(&csv),
    ]);
    refused(&out, &["loop.jpg", "symbolic links"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("symbolic links").count(), 1, "{stderr}");

    // A ViT checkpoint given to `gaze caption` is named as the problem, not the vocabulary.
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../caption/tests/fixtures/vocab.txt");
    let out = gaze(&[
        "caption",
        "--weights",
        s(&good),
        "--vocab",
        s(&vocab),
        "--images",
        s(&image),
        "--out",
        s(&dir.join("c")),
    ]);
    refused(&out, &["reduced_gaze.safetensors", "not a CATR checkpoint"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("vocab.txt"));

    let out = gaze(&["synth", "--out", s(&dir.join("synth")), "--classes", "1"]);
    refused(&out, &["--classes 1"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("rename"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_output_replaces_an_input() {
    let dir = scratch("hostile-outputs");
    let weights = reduced_gaze_weights(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for name in ["a.jpg", "good.png"] {
        let from = if name.ends_with("jpg") {
            "rgb_384x384.jpg"
        } else {
            "rgb_384x384.png"
        };
        std::fs::copy(fixtures().join("images").join(from), images.join(name)).unwrap();
        std::fs::set_permissions(images.join(name), std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let (a, good) = (images.join("a.jpg"), images.join("good.png"));
    let snapshot = || [&a, &good, &weights].map(|p| std::fs::read(p).unwrap()).to_vec();
    let before = snapshot();
    let predict = |out: &Path, json: Option<&Path>| {
        let mut args = vec![
            "predict",
            "--weights",
            s(&weights),
            "--images",
            s(&images),
            "--out",
            s(out),
        ];
        if let Some(json) = json {
            args.extend(["--json", s(json)]);
        }
        gaze(&args)
    };
    refused(&predict(&a, None), &["a.jpg", "would replace an input"]);
    refused(
        &predict(&weights, None),
        &["reduced_gaze.safetensors", "would replace an input"],
    );
    refused(
        &predict(&dir.join("p.csv"), Some(&good)),
        &["good.png", "would replace an input"],
    );
    refused(
        &predict(&dir.join("p.csv"), Some(&dir.join("p.csv"))),
        &["p.csv", "two outputs"],
    );
    assert!(!dir.join("p.csv").exists());
    let out = gaze(&["posembed", "--weights", s(&weights), "--out", s(&weights)]);
    refused(&out, &["would replace an input"]);
    let out = gaze(&[
        "attention",
        "--weights",
        s(&weights),
        "--images",
        s(&good),
        "--out",
        s(&images),
    ]);
    refused(&out, &["good.png", "would replace an input"]);
    let catr = Path::new(env!("CARGO_MANIFEST_DIR")).join("../caption/tests/fixtures");
    let out = gaze(&[
        "caption",
        "--weights",
        s(&catr.join("catr_small.pth")),
        "--vocab",
        s(&catr.join("vocab.txt")),
        "--images",
        s(&good),
        "--out",
        s(&images),
    ]);
    refused(&out, &["good.png", "would replace an input"]);
    assert_eq!(snapshot(), before, "an input changed");

    // One figure per input: a.png and a.jpg give a.png.png and a.jpg.png; x.png in two
    // folders is refused.
    std::fs::copy(&good, images.join("a.png")).unwrap();
    let figures = dir.join("figures");
    let out = gaze(&[
        "attention",
        "--weights",
        s(&weights),
        "--images",
        s(&images),
        "--out",
        s(&figures),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut written: Vec<String> = std::fs::read_dir(&figures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["a.jpg.png", "a.png.png", "good.png"]);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&good, other.join("good.png")).unwrap();
    let out = gaze(&[
        "attention",
        "--weights",
        s(&weights),
        "--images",
        s(&good),
        s(&other.join("good.png")),
        "--out",
        s(&dir.join("twice")),
    ]);
    refused(&out, &["both would be drawn as good.png"]);
    assert!(!dir.join("twice").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
