//! What every command does before any work: it registers its inputs, so that no write can
//! replace one, and checks the outputs it plans against them and against each other.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Protects `inputs` (files; the images of folders are passed one by one) and refuses any
/// of `outputs` that is one of them, or two outputs that are one file, naming both paths.
pub fn claim<'a>(inputs: impl IntoIterator<Item = &'a Path>, outputs: &[PathBuf]) -> Result<()> {
    gaze_data::protect_inputs(inputs);
    gaze_data::refuse_inputs(outputs)?;
    Ok(())
}

/// [`claim`] for output files named on the command line, whose folders must exist.
pub fn claim_files<'a>(inputs: impl IntoIterator<Item = &'a Path>, outputs: &[PathBuf]) -> Result<()> {
    for output in outputs {
        check_writable_parent(output)?;
    }
    claim(inputs, outputs)
}

/// Refuses an output file whose folder does not exist.
fn check_writable_parent(path: &Path) -> Result<()> {
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

/// The files a figure command writes for `stems` ([`gaze_data::figure_stems`]) into `dir`: `<stem>.png`, and
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
    fn figure_files_are_named_by_stem() {
        let files = figure_files(Path::new("out"), &["a".into()], true);
        assert_eq!(files, [PathBuf::from("out/a.png"), PathBuf::from("out/a.json")]);
    }
}
