//! What every command does before any work: it registers its inputs, so that no write can
//! replace one, and checks the outputs it plans against them and against each other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Protects `inputs` (files; the images of folders are passed one by one) and refuses any
/// of `outputs` that is one of them, or two outputs that are one file, naming both paths.
pub fn claim<'a>(inputs: impl IntoIterator<Item = &'a Path>, outputs: &[PathBuf]) -> Result<()> {
    gaze_data::protect_inputs(inputs);
    gaze_data::refuse_inputs(outputs)?;
    Ok(())
}

/// Refuses an output file whose folder does not exist.
pub fn check_writable_parent(path: &Path) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{}: folder {} does not exist; create it first",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// One figure name (no extension) per image: its file stem, or its whole file name where
/// stems collide (`a.png` and `a.jpg` give `a.png` and `a.jpg`, whatever the order). Two
/// images of one file name (from two folders) are refused, naming both.
pub fn figure_stems(paths: &[PathBuf]) -> Result<Vec<String>> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let name = |p: &Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut stem_count: BTreeMap<String, usize> = BTreeMap::new();
    for path in paths {
        *stem_count.entry(stem(path)).or_default() += 1;
    }
    let mut taken: BTreeMap<String, &Path> = BTreeMap::new();
    let mut stems = Vec::with_capacity(paths.len());
    for path in paths {
        let chosen = match stem_count[&stem(path)] {
            1 => stem(path),
            _ => name(path),
        };
        if let Some(other) = taken.insert(chosen.clone(), path) {
            bail!(
                "{} and {} would both be drawn as {chosen}.png; rename one or run them separately",
                other.display(),
                path.display()
            );
        }
        stems.push(chosen);
    }
    Ok(stems)
}

/// The files a figure command writes for `stems` into `dir`: `<stem>.png`, and
/// `<stem>.json` with `json`.
pub fn figure_files(dir: &Path, stems: &[String], json: bool) -> Vec<PathBuf> {
    let extensions: &[&str] = if json { &["png", "json"] } else { &["png"] };
    stems
        .iter()
        .flat_map(|stem| {
            extensions
                .iter()
                .map(move |ext| dir.join(format!("{stem}.{ext}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_names_stay_unique() {
        let paths: Vec<PathBuf> = ["d/a.png", "d/a.jpg", "d/b.jpg"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(figure_stems(&paths).unwrap(), ["a.png", "a.jpg", "b"]);
        let twice: Vec<PathBuf> = ["d/x.png", "e/x.png"].iter().map(PathBuf::from).collect();
        let err = figure_stems(&twice).unwrap_err().to_string();
        assert!(err.contains("d/x.png") && err.contains("e/x.png"), "{err}");
        let files = figure_files(Path::new("out"), &["a".into()], true);
        assert_eq!(files, [PathBuf::from("out/a.png"), PathBuf::from("out/a.json")]);
    }
}
