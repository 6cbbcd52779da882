//! The three dataset layouts gaze reads, told apart by what is on disk:
//!
//! * the course's: one folder of `{label}_{id}.jpg` files;
//! * torchvision's `ImageFolder`: one folder per class, classes in sorted (case-sensitive)
//!   order, as `torchvision.datasets.ImageFolder` numbers them;
//! * the official Oxford-IIIT Pet download: `images/` and `annotations/{list,trainval,test}.txt`,
//!   where a row `Abyssinian_100 1 1 1` gives the image and its CLASS-ID (1-based).
//!
//! The Pet split files themselves may be given as the path (`annotations/trainval.txt`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::DataError;
use crate::dataset::{LabeledImage, collect_images, is_image, labeled_images};

/// How a dataset folder is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `{label}_{id}.jpg` in one folder.
    Course,
    /// One folder per class.
    ImageFolder,
    /// The official Oxford-IIIT Pet `images/` + `annotations/`.
    OxfordPets,
}

impl Layout {
    /// How the layout is named in logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Layout::Course => "course layout, {label}_{id}.jpg",
            Layout::ImageFolder => "ImageFolder layout, a folder per class",
            Layout::OxfordPets => "Oxford-IIIT Pet layout, images/ + annotations/",
        }
    }
}

/// The Oxford-IIIT Pet split files gaze knows, as named by `--split`.
pub const PET_SPLITS: [&str; 3] = ["trainval", "test", "list"];

/// Labelled images, and the class names when the layout has them.
#[derive(Debug, Clone)]
pub struct LabeledSet {
    pub layout: Layout,
    /// Sorted by path.
    pub images: Vec<LabeledImage>,
    /// Class names in label order (`None` for the course layout, whose labels are numbers).
    pub classes: Option<Vec<String>>,
}

impl LabeledSet {
    /// Renumbers the labels to the positions of their class names in `names` (a model's
    /// classes), so that a folder order that differs from the model's cannot mislabel. A
    /// set without names keeps its numbers. A class missing from `names` is an error.
    pub fn map_to(&mut self, names: &[String], dir: &Path) -> Result<(), DataError> {
        let Some(own) = &self.classes else {
            return Ok(());
        };
        let position: BTreeMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut new_label = Vec::with_capacity(own.len());
        for name in own {
            match position.get(name.as_str()) {
                Some(&i) => new_label.push(i),
                None if !self.images.iter().any(|img| own[img.label] == *name) => new_label.push(usize::MAX),
                None => {
                    return Err(DataError::Setting {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "class `{name}` is not one of the model's {} classes ({}); remove it or train a model that has it",
                            names.len(),
                            preview(names)
                        ),
                    });
                }
            }
        }
        for image in &mut self.images {
            image.label = new_label[image.label];
        }
        self.classes = Some(names.to_vec());
        Ok(())
    }
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = if names.len() > 5 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// Which layout `path` has: a Pet split file or a folder with `annotations/` is the Pet
/// layout; a folder with images directly inside is the course's; a folder of folders is an
/// ImageFolder.
pub fn detect_layout(path: &Path) -> Result<Layout, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_file() {
        return match pets_root_of_split(path) {
            Some(_) => Ok(Layout::OxfordPets),
            None => Err(DataError::Setting {
                path: path.to_path_buf(),
                reason: "a dataset is a folder, or an Oxford-IIIT Pet split file (annotations/trainval.txt)"
                    .into(),
            }),
        };
    }
    if path.join("annotations").is_dir() && path.join("images").is_dir() {
        return Ok(Layout::OxfordPets);
    }
    let mut has_images = false;
    let mut has_folders = false;
    for entry in std::fs::read_dir(path).map_err(|e| DataError::io(path, e))? {
        let entry = entry.map_err(|e| DataError::io(path, e))?;
        let p = entry.path();
        if p.is_dir() {
            has_folders = true;
        } else if is_image(&p) {
            has_images = true;
        }
    }
    match (has_images, has_folders) {
        (true, _) => Ok(Layout::Course),
        (false, true) => Ok(Layout::ImageFolder),
        (false, false) => Err(DataError::NoImages {
            path: path.to_path_buf(),
        }),
    }
}

/// The Pet root of a split file `ROOT/annotations/NAME.txt`, if `ROOT/images` exists.
fn pets_root_of_split(file: &Path) -> Option<PathBuf> {
    let annotations = file.parent()?;
    let root = annotations.parent()?;
    let is_split = file.extension().is_some_and(|e| e == "txt")
        && annotations.file_name().is_some_and(|n| n == "annotations")
        && root.join("images").is_dir();
    is_split.then(|| root.to_path_buf())
}

/// Reads the labelled images at `path`, whatever its layout. `split` picks the Pet split
/// file (`trainval`, `test` or `list`; `default_split` when `None`) and is refused for the
/// other layouts.
pub fn read_labeled_set(
    path: &Path,
    split: Option<&str>,
    default_split: &str,
) -> Result<LabeledSet, DataError> {
    let layout = detect_layout(path)?;
    if split.is_some() && layout != Layout::OxfordPets {
        return Err(DataError::Setting {
            path: path.to_path_buf(),
            reason: format!(
                "--split applies to the Oxford-IIIT Pet layout; this is the {}",
                layout.describe()
            ),
        });
    }
    let (images, classes) = match layout {
        Layout::Course => (labeled_images(path)?, None),
        Layout::ImageFolder => {
            let (images, classes) = image_folder(path)?;
            (images, Some(classes))
        }
        Layout::OxfordPets => {
            let split_file = if path.is_file() {
                path.to_path_buf()
            } else {
                let name = split.unwrap_or(default_split);
                if !PET_SPLITS.contains(&name) {
                    return Err(DataError::Setting {
                        path: path.to_path_buf(),
                        reason: format!(
                            "unknown split `{name}`; the Pet splits are {}",
                            PET_SPLITS.join(", ")
                        ),
                    });
                }
                path.join("annotations").join(format!("{name}.txt"))
            };
            let (images, classes) = oxford_pets(&split_file)?;
            (images, Some(classes))
        }
    };
    Ok(LabeledSet {
        layout,
        images,
        classes,
    })
}

/// One folder per class, numbered in sorted order of the folder names (byte order, as
/// Python sorts them). Image files are listed one level down; class folders may be empty.
fn image_folder(dir: &Path) -> Result<(Vec<LabeledImage>, Vec<String>), DataError> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_dir() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| DataError::Setting {
                    path: path.clone(),
                    reason: "class folder name is not UTF-8; rename it".into(),
                })?;
            classes.push(name.to_string());
        }
    }
    classes.sort();
    let mut images = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let folder = dir.join(class);
        match collect_images(std::slice::from_ref(&folder)) {
            Ok(paths) => images.extend(paths.into_iter().map(|path| LabeledImage { path, label })),
            Err(DataError::NoImages { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if images.is_empty() {
        return Err(DataError::NoImages {
            path: dir.to_path_buf(),
        });
    }
    images.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((images, classes))
}

/// One row of an Oxford-IIIT Pet annotation file: `Abyssinian_100 1 1 1` (image, CLASS-ID,
/// SPECIES, BREED-ID). Lines starting with `#` are comments.
fn pet_rows(file: &Path) -> Result<Vec<(String, usize)>, DataError> {
    let text = std::fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parsed = match (fields.next(), fields.next().map(str::parse::<usize>)) {
            (Some(image), Some(Ok(class_id))) if class_id >= 1 => Some((image.to_string(), class_id)),
            _ => None,
        };
        rows.push(parsed.ok_or_else(|| DataError::Setting {
            path: file.to_path_buf(),
            reason: format!(
                "line {} is not `IMAGE CLASS-ID SPECIES BREED-ID` (e.g. `Abyssinian_100 1 1 1`): `{line}`",
                n + 1
            ),
        })?);
    }
    Ok(rows)
}

/// The breed of a Pet image name: the name without its trailing `_NUMBER`.
fn breed(image: &str) -> &str {
    image.rsplit_once('_').map_or(image, |(b, _)| b)
}

/// The images of one Pet split file, labelled CLASS-ID − 1 (the course's numbering), and
/// the 37 breed names by CLASS-ID, taken from `list.txt` when present, else from the split.
fn oxford_pets(split_file: &Path) -> Result<(Vec<LabeledImage>, Vec<String>), DataError> {
    let root = pets_root_of_split(split_file).ok_or_else(|| DataError::Setting {
        path: split_file.to_path_buf(),
        reason: "not an Oxford-IIIT Pet split file: expected ROOT/annotations/NAME.txt beside ROOT/images"
            .into(),
    })?;
    let rows = pet_rows(split_file)?;
    let list = root.join("annotations/list.txt");
    let named_rows = if list.is_file() && list != split_file {
        pet_rows(&list)?
    } else {
        rows.clone()
    };
    let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
    for (image, class_id) in named_rows.iter().chain(&rows) {
        let name = breed(image);
        if let Some(other) = by_id.insert(*class_id, name.to_string()).filter(|o| o != name) {
            return Err(DataError::Setting {
                path: split_file.to_path_buf(),
                reason: format!("CLASS-ID {class_id} names two breeds, {other} and {name}"),
            });
        }
    }
    let count = by_id.keys().max().copied().unwrap_or(0);
    let classes: Vec<String> = (1..=count)
        .map(|id| by_id.get(&id).cloned().unwrap_or_else(|| format!("class_{id}")))
        .collect();
    let images_dir = root.join("images");
    let mut images = Vec::with_capacity(rows.len());
    let mut missing = Vec::new();
    for (image, class_id) in rows {
        match find_image(&images_dir, &image) {
            Some(path) => images.push(LabeledImage {
                path,
                label: class_id - 1,
            }),
            None => missing.push(image),
        }
    }
    if !missing.is_empty() {
        return Err(DataError::Setting {
            path: split_file.to_path_buf(),
            reason: format!(
                "{} listed images are not in {} (first: {}); restore them or remove their lines",
                missing.len(),
                images_dir.display(),
                missing[0]
            ),
        });
    }
    images.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((images, classes))
}

/// `dir/name.jpg` (or `.jpeg`/`.png`, any case).
fn find_image(dir: &Path, name: &str) -> Option<PathBuf> {
    ["jpg", "JPG", "jpeg", "JPEG", "png", "PNG", "Jpg"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gaze-layout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn image_folders_number_classes_as_torchvision_sorts_them() {
        let dir = scratch("folder");
        for file in [
            "beagle/1.jpg",
            "Abyssinian/2.JPEG",
            "Bengal/3.Jpg",
            "Bengal/4.PNG",
            "beagle/notes.txt",
        ] {
            touch(&dir.join(file));
        }
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        assert_eq!(detect_layout(&dir).unwrap(), Layout::ImageFolder);
        let set = read_labeled_set(&dir, None, "test").unwrap();
        assert_eq!(
            set.classes.as_deref().unwrap(),
            ["Abyssinian", "Bengal", "beagle", "empty"]
        );
        let labels: Vec<(String, usize)> = set
            .images
            .iter()
            .map(|i| (crate::display_name(&i.path), i.label))
            .collect();
        let want = [("2.JPEG", 0), ("3.Jpg", 1), ("4.PNG", 1), ("1.jpg", 2)];
        assert_eq!(labels, want.map(|(n, l)| (n.to_string(), l)));
        assert!(read_labeled_set(&dir, Some("test"), "test").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mapping_by_name_follows_the_model_and_refuses_unknown_classes() {
        let dir = scratch("map");
        for file in ["b/1.jpg", "c/2.jpg"] {
            touch(&dir.join(file));
        }
        let mut set = read_labeled_set(&dir, None, "test").unwrap();
        let model: Vec<String> = ["c", "a", "b"].map(String::from).to_vec();
        set.map_to(&model, &dir).unwrap();
        assert_eq!(set.images.iter().map(|i| i.label).collect::<Vec<_>>(), [2, 0]);
        let mut other = read_labeled_set(&dir, None, "test").unwrap();
        let err = other.map_to(&model[..2], &dir).unwrap_err().to_string();
        assert!(err.contains("class `b`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn course_layout_is_detected_by_its_files() {
        let dir = scratch("course");
        touch(&dir.join("3_17.jpg"));
        assert_eq!(detect_layout(&dir).unwrap(), Layout::Course);
        let set = read_labeled_set(&dir, None, "test").unwrap();
        assert_eq!((set.images[0].label, set.classes), (3, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pet_splits_label_class_id_minus_one() {
        let dir = scratch("pets");
        for name in ["Abyssinian_1", "american_bulldog_7", "Bengal_2"] {
            touch(&dir.join(format!("images/{name}.jpg")));
        }
        let list = "#Image CLASS-ID SPECIES BREED-ID\nAbyssinian_1 1 1 1\namerican_bulldog_7 2 2 1\nBengal_2 3 1 2\n";
        std::fs::create_dir_all(dir.join("annotations")).unwrap();
        std::fs::write(dir.join("annotations/list.txt"), list).unwrap();
        std::fs::write(
            dir.join("annotations/trainval.txt"),
            "Abyssinian_1 1 1 1\nBengal_2 3 1 2\n",
        )
        .unwrap();
        std::fs::write(dir.join("annotations/test.txt"), "american_bulldog_7 2 2 1\n").unwrap();
        assert_eq!(detect_layout(&dir).unwrap(), Layout::OxfordPets);
        let test = read_labeled_set(&dir, None, "test").unwrap();
        assert_eq!(
            test.classes.as_deref().unwrap(),
            ["Abyssinian", "american_bulldog", "Bengal"]
        );
        assert_eq!(test.images.len(), 1);
        assert_eq!(test.images[0].label, 1);
        let trainval = read_labeled_set(&dir.join("annotations/trainval.txt"), None, "test").unwrap();
        assert_eq!(
            trainval.images.iter().map(|i| i.label).collect::<Vec<_>>(),
            [0, 2]
        );
        assert!(
            read_labeled_set(&dir, Some("nope"), "test")
                .unwrap_err()
                .to_string()
                .contains("trainval")
        );
        std::fs::write(dir.join("annotations/test.txt"), "Sphynx_9 4 1 3\n").unwrap();
        let err = read_labeled_set(&dir, None, "test").unwrap_err().to_string();
        assert!(err.contains("Sphynx_9"), "{err}");
        std::fs::write(dir.join("annotations/test.txt"), "Sphynx_9 four\n").unwrap();
        let err = read_labeled_set(&dir, None, "test").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
