//! Finding images on disk, and the course's `{label}_{id}.jpg` naming.

use std::path::{Path, PathBuf};

use crate::DataError;

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

pub(crate) fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The file name shown in outputs (the course's CSV uses bare names).
pub fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Expands files and folders (one level, image extensions in any case) into a sorted list
/// of image paths. A missing path or a folder without images is an error.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut images = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| DataError::io(input, e))?;
        if meta.is_dir() {
            let before = images.len();
            for entry in std::fs::read_dir(input).map_err(|e| DataError::io(input, e))? {
                let path = entry.map_err(|e| DataError::io(input, e))?.path();
                if path.is_file() && is_image(&path) {
                    images.push(path);
                }
            }
            if images.len() == before {
                return Err(DataError::NoImages { path: input.clone() });
            }
        } else {
            images.push(input.clone());
        }
    }
    images.sort();
    images.dedup();
    Ok(images)
}

/// One figure name (no extension) per image: its file stem, or its whole file name where
/// stems collide (`a.png` and `a.jpg` give `a.png` and `a.jpg`, whatever the order). Two
/// images of one file name (from two folders) are refused, naming both.
pub fn figure_stems(paths: &[PathBuf]) -> Result<Vec<String>, DataError> {
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
    let mut stem_count: std::collections::BTreeMap<String, usize> = Default::default();
    for path in paths {
        *stem_count.entry(stem(path)).or_default() += 1;
    }
    let mut taken: std::collections::BTreeMap<String, &Path> = Default::default();
    let mut stems = Vec::with_capacity(paths.len());
    for path in paths {
        let chosen = match stem_count[&stem(path)] {
            1 => stem(path),
            _ => name(path),
        };
        if let Some(other) = taken.insert(chosen.clone(), path) {
            return Err(DataError::Setting {
                path: path.to_path_buf(),
                reason: format!(
                    "{} has the same name; both would be drawn as {chosen}.png: rename one or run them separately",
                    other.display()
                ),
            });
        }
        stems.push(chosen);
    }
    Ok(stems)
}

/// Decodes every image once, in parallel, and returns the ones that fail, by position, so
/// that a run can refuse bad input before it writes anything.
pub fn find_unreadable(paths: &[PathBuf]) -> Vec<(usize, DataError)> {
    use rayon::prelude::*;
    paths
        .par_iter()
        .enumerate()
        .filter_map(|(i, p)| crate::load_rgb(p).err().map(|e| (i, e)))
        .collect()
}

/// Fails with every unreadable image listed ([`unreadable`]).
pub fn ensure_readable(paths: &[PathBuf]) -> Result<(), DataError> {
    match find_unreadable(paths) {
        failures if failures.is_empty() => Ok(()),
        failures => Err(unreadable(&failures, "")),
    }
}

/// One error for the images that [`find_unreadable`] found: each one's own message (the
/// first ten), then `hint`, what the command offers beyond fixing or removing them.
pub fn unreadable(failures: &[(usize, DataError)], hint: &str) -> DataError {
    let listed: Vec<String> = failures.iter().take(10).map(|(_, e)| e.to_string()).collect();
    let message = match failures.len() {
        1 => listed.join(""),
        n => {
            let more = if n > 10 {
                format!(" and {} more", n - 10)
            } else {
                String::new()
            };
            format!("{n} unreadable images: {}{more}", listed.join("; "))
        }
    };
    DataError::Unreadable {
        message: format!("{message}{hint}"),
    }
}

/// An image whose class is known from its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImage {
    pub path: PathBuf,
    pub label: usize,
}

/// The class index of a `{label}_{id}.{jpg,jpeg,png}` file name.
pub fn parse_label(path: &Path) -> Result<usize, DataError> {
    let bad = |reason: &str| DataError::BadName {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if !is_image(path) {
        return Err(bad("extension is not .jpg, .jpeg or .png"));
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| bad("not UTF-8"))?;
    let (label, id) = stem
        .split_once('_')
        .ok_or_else(|| bad("no `_` between label and id"))?;
    if id.is_empty() {
        return Err(bad("empty id"));
    }
    label.parse().map_err(|_| bad("label is not a whole number"))
}

/// Every image in `dir` with its label, sorted by path. Fails listing **all** badly named
/// files at once, so they can be fixed in one go.
pub fn labeled_images(dir: &Path) -> Result<Vec<LabeledImage>, DataError> {
    let paths = collect_images(&[dir.to_path_buf()])?;
    let mut images = Vec::with_capacity(paths.len());
    let mut bad = Vec::new();
    for path in paths {
        match parse_label(&path) {
            Ok(label) => images.push(LabeledImage { path, label }),
            Err(e) => bad.push(e),
        }
    }
    match bad.len() {
        0 => Ok(images),
        1 => Err(bad.remove(0)),
        n => {
            let first = bad.remove(0);
            let rest: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
            Err(DataError::BadName {
                path: dir.to_path_buf(),
                reason: format!("{n} files misnamed: {first}; {}", rest.join("; ")),
            })
        }
    }
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
    }

    #[test]
    fn labels_parse_from_names() {
        assert_eq!(parse_label(Path::new("p1_data/val/26_5064.jpg")).unwrap(), 26);
        assert_eq!(parse_label(Path::new("0_1.PNG")).unwrap(), 0);
        for bad in ["cat_1.jpg", "12.jpg", "12_.jpg", "3_4.txt"] {
            let err = parse_label(Path::new(bad)).unwrap_err().to_string();
            assert!(err.starts_with(bad), "{err}");
        }
    }

    #[test]
    fn folders_expand_sorted_and_empty_folders_fail() {
        let dir = std::env::temp_dir().join(format!("gaze-data-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            collect_images(std::slice::from_ref(&dir)),
            Err(DataError::NoImages { .. })
        ));
        for name in ["2_1.jpg", "10_3.png", "notes.txt"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let found = collect_images(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["10_3.png", "2_1.jpg"]);
        let labeled = labeled_images(&dir).unwrap();
        assert_eq!(labeled.iter().map(|l| l.label).collect::<Vec<_>>(), [10, 2]);
        assert!(matches!(
            collect_images(&[dir.join("missing")]),
            Err(DataError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
