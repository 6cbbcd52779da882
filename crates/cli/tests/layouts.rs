//! The three dataset layouts end to end: one synthetic set written as the course's
//! `{label}_{id}.jpg`, as an ImageFolder tree and as the official Oxford-IIIT Pet files,
//! trained on for one epoch and evaluated across layouts.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use gaze_records::ClassificationMetrics;

/// The synthetic classes' names: sorted folder order (Abyssinian, Bengal, beagle) and the
/// Pet CLASS-ID order (Abyssinian, beagle, Bengal) differ, as in the real breeds.
const NAMES: [&str; 3] = ["beagle", "Abyssinian", "Bengal"];
const PET_ORDER: [&str; 3] = ["Abyssinian", "beagle", "Bengal"];

/// Validation images kept per synthetic class: unequal, so that a permuted numbering changes
/// the confusion matrix even of a model that always answers the same class.
const VAL_KEPT: [usize; 3] = [8, 5, 3];

fn course_images(dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut images: Vec<(PathBuf, usize)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| {
            let label = gaze_data::parse_label(&p).unwrap();
            (p, label)
        })
        .collect();
    images.sort();
    images
}

/// The course-layout set at `course` as an ImageFolder tree and as the Pet download, the
/// validation split thinned to [`VAL_KEPT`] in all three.
fn write_layouts(course: &Path, folder: &Path, pets: &Path) {
    std::fs::create_dir_all(pets.join("images")).unwrap();
    std::fs::create_dir_all(pets.join("annotations")).unwrap();
    let mut list = String::from("#Image CLASS-ID SPECIES BREED-ID\n");
    for (split, official) in [("train", "trainval"), ("val", "test")] {
        let mut kept = [0usize; 3];
        let mut rows = String::new();
        for (path, label) in course_images(&course.join(split)) {
            if split == "val" && kept[label] == VAL_KEPT[label] {
                std::fs::remove_file(&path).unwrap();
                continue;
            }
            kept[label] += 1;
            let name = NAMES[label];
            let id = path.file_stem().unwrap().to_str().unwrap().replace('_', "");
            let class_folder = folder.join(split).join(name);
            std::fs::create_dir_all(&class_folder).unwrap();
            std::fs::copy(&path, class_folder.join(path.file_name().unwrap())).unwrap();
            let image = format!("{name}_{id}");
            std::fs::copy(&path, pets.join(format!("images/{image}.jpg"))).unwrap();
            let class_id = PET_ORDER.iter().position(|n| *n == name).unwrap() + 1;
            rows.push_str(&format!("{image} {class_id} 1 {class_id}\n"));
        }
        list.push_str(&rows);
        std::fs::write(pets.join(format!("annotations/{official}.txt")), rows).unwrap();
    }
    std::fs::write(pets.join("annotations/list.txt"), list).unwrap();
}

fn run_ok(args: &[&str]) -> String {
    let out = gaze(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "gaze {args:?}: {stderr}");
    stderr
}

fn label_names(run: &Path) -> Vec<String> {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    serde_json::from_value(config["label_names"].clone()).unwrap()
}

fn eval(weights: &Path, data: &Path, json: &Path) -> ClassificationMetrics {
    let w = weights.to_str().unwrap();
    run_ok(&[
        "eval",
        "--weights",
        w,
        "--data",
        data.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

#[test]
fn every_layout_trains_and_evaluates_with_one_numbering() {
    let dir = scratch("layouts");
    let (course, folder, pets, converted) = (
        dir.join("course"),
        dir.join("folder"),
        dir.join("oxford-iiit-pet"),
        dir.join("converted"),
    );
    let c = course.to_str().unwrap();
    run_ok(&[
        "synth",
        "--out",
        c,
        "--classes",
        "3",
        "--train",
        "48",
        "--val",
        "30",
        "--size",
        "32",
    ]);
    write_layouts(&course, &folder, &pets);
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY_VIT_CONFIG).unwrap();

    let mut runs = Vec::new();
    for (name, data, layout) in [
        ("course", &course, "course layout"),
        ("folder", &folder, "ImageFolder layout"),
        ("pets", &pets, "Oxford-IIIT Pet layout"),
    ] {
        let run = dir.join(format!("runs/{name}"));
        let (cfg, d, r) = (
            config.to_str().unwrap(),
            data.to_str().unwrap(),
            run.to_str().unwrap(),
        );
        let log = run_ok(&[
            "train",
            "--config",
            cfg,
            "--data",
            d,
            "--out",
            r,
            "schedule.epochs=1",
        ]);
        assert!(log.lines().next().unwrap().contains(layout), "{name}: {log}");
        runs.push(run);
    }
    assert_eq!(label_names(&runs[1]), ["Abyssinian", "Bengal", "beagle"]);
    assert_eq!(label_names(&runs[2]), PET_ORDER);

    let (p, v) = (pets.to_str().unwrap(), converted.to_str().unwrap());
    let log = run_ok(&["data", "convert", "--from", "pets", p, "--to", v]);
    assert!(log.contains("48 training and 16 validation images"), "{log}");

    // One model, the same validation images in every layout: labels mapped by name (ImageFolder,
    // Pet) or numbered as the Pet CLASS-IDs (the converted course layout) agree exactly.
    for run in &runs[1..] {
        let weights = run.join("best.safetensors");
        let reference = eval(&weights, &pets, &dir.join("pets.json"));
        assert_eq!(reference.images, 16);
        let by_folder = eval(&weights, &folder.join("val"), &dir.join("folder.json"));
        assert_eq!(
            by_folder,
            reference,
            "{}: ImageFolder val vs Pet test",
            run.display()
        );
        if run.ends_with("pets") {
            let by_course = eval(&weights, &converted.join("val"), &dir.join("converted.json"));
            assert_eq!(by_course, reference, "converted course val vs Pet test");
        }
        let rows: Vec<usize> = reference.confusion.iter().map(|r| r.iter().sum()).collect();
        let names = label_names(run);
        let want: Vec<usize> = names
            .iter()
            .map(|n| VAL_KEPT[NAMES.iter().position(|m| m == n).unwrap()])
            .collect();
        assert_eq!(
            rows,
            want,
            "{}: images per true class, in the model's order",
            run.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
