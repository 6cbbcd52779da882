//! `cargo xtask reproduce` on the real path, with stand-ins for the course data and weights:
//! the course recipe from a full-size ViT-S/16-384 checkpoint in timm's layout (one epoch),
//! the CATR `.pth`, and every output of the assignment. Run through xtask's library with the
//! gaze binary cargo built, into a temporary root.

mod common;

use std::path::Path;

use common::*;
use gaze_data::image::{ImageFormat, Rgb, RgbImage};

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A `width`×`height` JPEG whose colours depend on `seed`.
fn write_jpeg(path: &Path, (width, height): (u32, u32), seed: u32) {
    let image = RgbImage::from_fn(width, height, |x, y| {
        let v = |k: u32| ((x * (3 + k) + y * (5 + seed) + 37 * seed * k) % 256) as u8;
        Rgb([v(1), v(2), v(3)])
    });
    image.save_with_format(path, ImageFormat::Jpeg).unwrap();
}

/// `p1_data/{train,val}` with 16 training and 6 validation images of several sizes and
/// classes, the three named ones among them, and `p2_data/images` with the course's five
/// caption images and one whose name is HTML.
fn course_data(root: &Path) -> (Vec<String>, Vec<String>) {
    let sizes = [(500, 375), (375, 500), (384, 384), (640, 427)];
    let train: Vec<String> = (0..16)
        .map(|i| format!("{}_{}.jpg", (i * 7) % 37, 1000 + i))
        .collect();
    let val: Vec<String> = [
        "26_5064.jpg",
        "29_4718.jpg",
        "31_4838.jpg",
        "0_17.jpg",
        "5_23.jpg",
        "36_99.jpg",
    ]
    .map(String::from)
    .to_vec();
    for (split, names) in [("train", &train), ("val", &val)] {
        let dir = root.join("p1_data").join(split);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, name) in names.iter().enumerate() {
            write_jpeg(&dir.join(name), sizes[i % sizes.len()], i as u32);
        }
    }
    let images = root.join("p2_data/images");
    std::fs::create_dir_all(&images).unwrap();
    let captioned: Vec<String> = [
        "bike",
        "girl",
        "sheep",
        "ski",
        "umbrella",
        "<img src=x onerror=alert(1)>",
    ]
    .map(String::from)
    .to_vec();
    for (i, stem) in captioned.iter().enumerate() {
        write_jpeg(
            &images.join(format!("{stem}.jpg")),
            sizes[i % sizes.len()],
            40 + i as u32,
        );
    }
    (val, captioned)
}

#[test]
fn the_real_path_writes_every_result_of_the_assignment() {
    let dir = scratch("reproduce");
    let data = dir.join("data");
    let (val, captioned) = course_data(&data);
    let vit = dir.join("vit_small_patch16_384.safetensors");
    write_formula_vit_small(&vit);
    let arch = dir.join("catr_small.json");
    std::fs::write(&arch, CATR_SMALL_ARCH).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = dir.join("runs");
    let catr = catr_fixtures();
    let (catr_weights, vocab) = (catr.join("catr_small.pth"), catr.join("vocab.txt"));
    let reproduce = |extra: &[&str]| {
        let mut argv = vec![
            "--data",
            s(&data),
            "--vit-weights",
            s(&vit),
            "--catr-weights",
            s(&catr_weights),
            "--vocab",
            s(&vocab),
            "--catr-arch",
            s(&arch),
            "--set",
            "schedule.epochs=1",
            "--set",
            "schedule.warmup_steps=1",
            "--out",
            s(&out),
            "--gaze",
            env!("CARGO_BIN_EXE_gaze"),
        ];
        argv.extend(extra);
        xtask::reproduce::reproduce_from(&root, &argv)
    };
    reproduce(&[]).unwrap();

    let real = out.join("real");
    let csv = std::fs::read_to_string(real.join("vit/predictions.csv")).unwrap();
    let mut rows: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    rows.sort();
    let mut want: Vec<&str> = val.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(rows, want, "{csv}");
    for name in ["26_5064", "29_4718", "31_4838"] {
        assert!(
            real.join(format!("figures/attention/{name}.png")).exists(),
            "{name}"
        );
    }
    for stem in &captioned {
        assert!(
            real.join(format!("figures/captions/{stem}.png")).exists(),
            "{stem}"
        );
    }
    assert!(real.join("figures/posembed.png").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["mode"], "real");
    let accuracy = summary["vit_val_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let named = summary["named_images"].as_array().unwrap();
    let names: Vec<&str> = named.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["26_5064.jpg", "29_4718.jpg", "31_4838.jpg"]);
    assert_eq!(named[0]["label"], 26);
    assert!(
        named
            .iter()
            .all(|n| n["predicted"].as_u64().unwrap() < 37 && n["probability"].as_f64().unwrap() > 0.0)
    );
    let captions = summary["captions"].as_array().unwrap();
    assert_eq!(captions.len(), captioned.len());
    assert!(captions.iter().any(|c| c["file"] == "bike.jpg"), "{summary}");
    let page = std::fs::read_to_string(real.join("report.html")).unwrap();
    assert!(
        page.contains("<table>") && page.contains("26_5064.jpg"),
        "no tables"
    );
    assert!(!page.contains("<img src=x"), "a file name became HTML");
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;.jpg"));

    // The same command again runs no step.
    reproduce(&[]).unwrap();
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again["steps_run"], 0, "{again}");
    // Another training setting refuses without --fresh, naming what changed.
    let err = format!("{:#}", reproduce(&["--set", "optim.lr=1e-3"]).unwrap_err());
    assert!(err.contains("train the ViT") && err.contains("--fresh"), "{err}");
    // A missing input is an error that names it.
    let moved = dir.join("moved.safetensors");
    std::fs::rename(&vit, &moved).unwrap();
    let err = format!("{:#}", reproduce(&[]).unwrap_err());
    assert!(err.contains("vit_small_patch16_384.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_quick_synthetic_run_writes_every_figure_into_its_own_folder() {
    let dir = scratch("reproduce-quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = dir.join("runs");
    let argv = ["--quick", "--out", s(&out), "--gaze", env!("CARGO_BIN_EXE_gaze")];
    xtask::reproduce::reproduce_from(&root, &argv).unwrap();

    let quick = out.join("synthetic-quick");
    assert!(!out.join("synthetic").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(quick.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (&summary["mode"], &summary["quick"]),
        (&"synthetic".into(), &true.into())
    );
    let csv = std::fs::read_to_string(quick.join("vit/predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 24, "{csv}");
    // One epoch per training, on the small sets.
    for run in ["vit", "ablations/lr_x10", "catr"] {
        let trained: serde_json::Value =
            serde_json::from_slice(&std::fs::read(quick.join(run).join("summary.json")).unwrap()).unwrap();
        assert_eq!(trained["epochs"], 1, "{run}: {trained}");
    }
    assert_eq!(summary["named_images"].as_array().unwrap().len(), 3);
    assert_eq!(summary["captions"].as_array().unwrap().len(), 5);
    let figures = quick.join("figures");
    assert!(figures.join("posembed.png").exists());
    assert_eq!(
        std::fs::read_dir(figures.join("captions"))
            .unwrap()
            .filter(|e| { e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png") })
            .count(),
        5
    );
    let page = std::fs::read_to_string(quick.join("report.html")).unwrap();
    assert!(
        page.contains("quick check"),
        "the report does not say it is a quick run"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
