//! `gaze data convert`: the official Oxford-IIIT Pet download into the course layout.
//!
//! `trainval.txt` becomes `train/`, `test.txt` becomes `val/`, each image copied byte for byte
//! as `{CLASS-ID − 1}_{image name}.jpg` (`0_Abyssinian_100.jpg`): the course's label numbering,
//! with the official image name as the id, since the course's own ids (`26_5064`) cannot be
//! recovered from the official files. `classes.txt` lists the breeds in label order.

use std::path::Path;

use crate::layout::{Layout, read_labeled_set};
use crate::{DataError, display_name};

/// What [`pets_to_course`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub train: usize,
    pub val: usize,
    pub classes: usize,
}

/// Writes the course layout of the Pet download at `source` into `target`, which must not
/// exist or be empty. The folder appears whole or not at all.
pub fn pets_to_course(source: &Path, target: &Path) -> Result<Converted, DataError> {
    let setting = |path: &Path, reason: String| DataError::Setting {
        path: path.to_path_buf(),
        reason,
    };
    if crate::layout::detect_layout(source)? != Layout::OxfordPets || !source.is_dir() {
        return Err(setting(
            source,
            "not the Oxford-IIIT Pet download: expected images/ and annotations/ inside".into(),
        ));
    }
    if target.exists()
        && std::fs::read_dir(target)
            .map_err(|e| DataError::io(target, e))?
            .next()
            .is_some()
    {
        return Err(setting(
            target,
            "exists and is not empty; name a new folder".into(),
        ));
    }
    let canonical_source = source.canonicalize().map_err(|e| DataError::io(source, e))?;
    let target_parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let canonical_parent = target_parent
        .canonicalize()
        .map_err(|e| DataError::io(target_parent, e))?;
    if canonical_parent.starts_with(&canonical_source) {
        return Err(setting(
            target,
            "is inside the Pet folder it converts; write elsewhere".into(),
        ));
    }
    let train = read_labeled_set(source, Some("trainval"), "trainval")?;
    let val = read_labeled_set(source, Some("test"), "test")?;
    let classes = train.classes.clone().unwrap_or_default();
    if val.classes.as_ref() != Some(&classes) {
        return Err(setting(
            source,
            "trainval.txt and test.txt name the classes differently".into(),
        ));
    }
    let counts = Converted {
        train: train.images.len(),
        val: val.images.len(),
        classes: classes.len(),
    };
    crate::io::replace_dir(target, "classes.txt", |tmp| {
        for (folder, set) in [("train", &train), ("val", &val)] {
            std::fs::create_dir_all(tmp.join(folder))?;
            for image in &set.images {
                let name = format!("{}_{}", image.label, display_name(&image.path));
                std::fs::copy(&image.path, tmp.join(folder).join(name))?;
            }
        }
        let mut names = classes.join("\n");
        names.push('\n');
        std::fs::write(tmp.join("classes.txt"), names)
    })
    .map_err(|e| DataError::io(target, e))?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::read_labeled_set;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// A miniature of the official download: two cat and two dog breeds, the dogs' names in
    /// lower case, so that sorted folder order and CLASS-ID order differ.
    fn miniature(dir: &Path) {
        let rows = [
            ("Abyssinian_1", 1, 1, 1, "trainval"),
            ("Abyssinian_2", 1, 1, 1, "test"),
            ("american_bulldog_10", 2, 2, 1, "trainval"),
            ("american_bulldog_11", 2, 2, 1, "test"),
            ("Bengal_3", 3, 1, 2, "trainval"),
            ("Bengal_4", 3, 1, 2, "test"),
            ("yorkshire_terrier_5", 4, 2, 25, "trainval"),
        ];
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::create_dir_all(dir.join("annotations")).unwrap();
        let mut files: BTreeMap<&str, String> = BTreeMap::new();
        files.insert("list", "#Image CLASS-ID SPECIES BREED-ID\n".into());
        for (image, class, species, breed, split) in rows {
            let row = format!("{image} {class} {species} {breed}\n");
            files.get_mut("list").unwrap().push_str(&row);
            files.entry(split).or_default().push_str(&row);
            std::fs::write(dir.join(format!("images/{image}.jpg")), image.as_bytes()).unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.join(format!("annotations/{name}.txt")), text).unwrap();
        }
    }

    fn labels_by_image(images: &[crate::LabeledImage], strip_label: bool) -> BTreeMap<String, usize> {
        images
            .iter()
            .map(|i| {
                let name = display_name(&i.path);
                let name = if strip_label {
                    name.split_once('_').unwrap().1.to_string()
                } else {
                    name
                };
                (name, i.label)
            })
            .collect()
    }

    #[test]
    fn converted_pets_keep_every_label() {
        let dir = std::env::temp_dir().join(format!("gaze-convert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (source, target) = (dir.join("oxford-iiit-pet"), dir.join("course"));
        miniature(&source);
        let counts = pets_to_course(&source, &target).unwrap();
        assert_eq!(
            counts,
            Converted {
                train: 4,
                val: 3,
                classes: 4
            }
        );
        for (split, folder) in [("trainval", "train"), ("test", "val")] {
            let official = read_labeled_set(&source, Some(split), split).unwrap();
            let course = read_labeled_set(&target.join(folder), None, split).unwrap();
            assert_eq!(
                labels_by_image(&course.images, true),
                labels_by_image(&official.images, false),
                "{split}"
            );
        }
        let train: Vec<PathBuf> = read_labeled_set(&target.join("train"), None, "")
            .unwrap()
            .images
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(display_name(&train[0]), "0_Abyssinian_1.jpg");
        assert_eq!(std::fs::read(&train[0]).unwrap(), b"Abyssinian_1");
        assert_eq!(
            std::fs::read_to_string(target.join("classes.txt")).unwrap(),
            "Abyssinian\namerican_bulldog\nBengal\nyorkshire_terrier\n"
        );
        let again = pets_to_course(&source, &target).unwrap_err().to_string();
        assert!(again.contains("not empty"), "{again}");
        let inside = pets_to_course(&source, &source.join("course"))
            .unwrap_err()
            .to_string();
        assert!(inside.contains("inside"), "{inside}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
