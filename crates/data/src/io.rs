//! Output files appear whole or not at all, never replace an input, and get the usual mode.
//!
//! Every file gaze writes goes through [`write_atomic_with`]: it refuses a path that names a
//! file registered with [`protect_inputs`], writes a private (0600) temporary sibling, syncs
//! it, gives it the mode a plain `create` would (0666 less the umask) and renames it into
//! place. Each rename and removal here is one numbered step: with `GAZE_FAULT_AT=N` in the
//! environment the process aborts just before step `N`, as a kill would, so that tests can
//! interrupt a run at every step.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Files the running command reads: no output may replace them.
static INPUTS: Mutex<Vec<Input>> = Mutex::new(Vec::new());

#[derive(Debug, Clone)]
struct Input {
    path: PathBuf,
    id: FileId,
}

/// What makes two paths the same file: device and inode, so that links and `..` agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileId(meta.dev(), meta.ino()))
}

/// Registers the files among `paths` (folders are skipped: their images are registered one by
/// one as they are listed) as inputs of this command.
pub fn protect_inputs<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    let mut inputs = INPUTS.lock().unwrap_or_else(|e| e.into_inner());
    for path in paths {
        if std::fs::metadata(path).is_ok_and(|m| m.is_file())
            && let Some(id) = file_id(path)
        {
            inputs.push(Input {
                path: path.to_path_buf(),
                id,
            });
        }
    }
}

/// The error for an output at `path` that is the input file `input`.
fn names_an_input(path: &Path, input: &Path) -> std::io::Error {
    let same = if path == input {
        String::new()
    } else {
        format!(" (the input {})", input.display())
    };
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{}: this output would replace an input file{same}; choose another output path",
            path.display()
        ),
    )
}

/// Checks, before any work starts, that no path in `outputs` is a registered input and that
/// no two of them are the same file; the error names both paths.
pub fn refuse_inputs(outputs: &[PathBuf]) -> std::io::Result<()> {
    for (i, path) in outputs.iter().enumerate() {
        refuse_input(path)?;
        if let Some(other) = outputs[..i].iter().find(|o| same_path(o, path)) {
            let also = if other == path {
                String::new()
            } else {
                format!(" (also named {})", other.display())
            };
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{}: two outputs would be written to this file{also}; give them different names",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `a` and `b` name the same file, existing or not (compared through their folders).
fn same_path(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        dir.canonicalize()
            .map(|d| d.join(p.file_name().unwrap_or_default()))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    a == b || resolve(a) == resolve(b)
}

fn refuse_input(path: &Path) -> std::io::Result<()> {
    let Some(id) = file_id(path) else {
        return Ok(());
    };
    let inputs = INPUTS.lock().unwrap_or_else(|e| e.into_inner());
    match inputs.iter().find(|input| input.id == id) {
        Some(input) => Err(names_an_input(path, &input.path)),
        None => Ok(()),
    }
}

/// Counts renames and removals for fault injection (see the module docs).
static STEPS: AtomicUsize = AtomicUsize::new(0);

fn step(what: &str, path: &Path) {
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    static FAULT_AT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let fault_at = FAULT_AT.get_or_init(|| std::env::var("GAZE_FAULT_AT").ok()?.parse().ok());
    if *fault_at == Some(n) {
        eprintln!(
            "GAZE_FAULT_AT: aborting before step {n} ({what} {})",
            path.display()
        );
        std::process::abort();
    }
}

fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    step("rename", to);
    std::fs::rename(from, to)
}

fn remove_file(path: &Path) -> std::io::Result<()> {
    step("remove", path);
    std::fs::remove_file(path)
}

/// The mode `File::create` would give a new file: 0666 less the process's umask.
fn default_mode() -> u32 {
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022);
    0o666 & !umask
}

/// Writes `bytes` to `path` through [`write_atomic_with`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |tmp| {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(tmp)?
            .write_all(bytes)
    })
}

/// Has `write` fill a temporary sibling of `path` (created empty, mode 0600), syncs it, then
/// renames it into place, so a crash or error never leaves a half-written `path` behind
/// (burn's stores, for one, write where they are told). Refuses a `path` that is an input
/// ([`protect_inputs`]). The temporary file is removed on error.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    refuse_input(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        write(&tmp)?;
        let file = std::fs::File::open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(default_mode()))?;
        file.sync_all()?;
        rename(&tmp, path)?;
        // The rename itself lasts once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Moves `written`, a finished and synced file that was filled elsewhere under another name
/// (a resumable download's partial file), into place at `path`, replacing what was there
/// unless that is an input.
pub fn move_into_place(written: &Path, path: &Path) -> std::io::Result<()> {
    refuse_input(path)?;
    rename(written, path)
}

/// Removes the temporary files that writers killed in `dir` left (`.NAME.PID.tmp`); call it
/// only while no other process writes there (a run folder's lock is held).
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && entry.file_type()?.is_file() {
            remove_file(&entry.path())?;
        }
    }
    Ok(())
}

/// Replaces the folder `dir` with one that `fill` writes, so that a reader finds either the
/// old folder or the new one whole. `fill` writes `dir.tmp` and must write the file `marker`
/// last; then `dir` becomes `dir.old`, `dir.tmp` becomes `dir`, and `dir.old` is removed.
/// A folder is removed marker first, so a half-removed one never looks complete.
/// [`replaced_dir`] finds the newest complete folder after a kill at any step.
pub fn replace_dir(
    dir: &Path,
    marker: &str,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let [tmp, old] = siblings(dir);
    remove_dir(&tmp, marker)?;
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    if !tmp.join(marker).exists() {
        return Err(std::io::Error::other(format!(
            "{}: {marker} was not written",
            tmp.display()
        )));
    }
    remove_dir(&old, marker)?;
    if dir.exists() {
        rename(dir, &old)?;
    }
    rename(&tmp, dir)?;
    remove_dir(&old, marker)
}

/// Removes the folder `dir`, if any, its `marker` file first.
fn remove_dir(dir: &Path, marker: &str) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let marked = dir.join(marker);
    if marked.exists() {
        remove_file(&marked)?;
    }
    step("remove", dir);
    std::fs::remove_dir_all(dir)
}

/// The newest folder that [`replace_dir`] completed for `dir`, recognised by its file
/// `marker`: `dir`, else `dir.tmp` (filled, not yet renamed), else `dir.old`; `None` if none
/// has it.
pub fn replaced_dir(dir: &Path, marker: &str) -> Option<PathBuf> {
    let [tmp, old] = siblings(dir);
    [dir.to_path_buf(), tmp, old]
        .into_iter()
        .find(|d| d.join(marker).exists())
}

/// Leaves `dir` the only one of [`replace_dir`]'s folders: the newest complete one
/// ([`replaced_dir`]) becomes `dir` and the others are removed, each step safe to kill.
/// Returns whether a complete folder was found.
pub fn settle_dir(dir: &Path, marker: &str) -> std::io::Result<bool> {
    let Some(newest) = replaced_dir(dir, marker) else {
        return Ok(false);
    };
    let [tmp, old] = siblings(dir);
    for other in [dir, &tmp, &old] {
        if *other != newest {
            remove_dir(other, marker)?;
        }
    }
    if newest != dir {
        rename(&newest, dir)?;
    }
    Ok(true)
}

/// `dir.tmp` and `dir.old`.
fn siblings(dir: &Path) -> [PathBuf; 2] {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [
        dir.with_file_name(format!("{name}.tmp")),
        dir.with_file_name(format!("{name}.old")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gaze-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = scratch("replace");
        let path = dir.join("out.csv");
        write_atomic(&path, b"first version, longer").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(write_atomic(&dir.join("missing/out.csv"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outputs_get_the_umask_mode_and_temps_are_private() {
        let dir = scratch("mode");
        let path = dir.join("out.json");
        let mut temp_mode = 0;
        write_atomic_with(&path, |tmp| {
            temp_mode = std::fs::metadata(tmp)?.permissions().mode() & 0o777;
            std::fs::write(tmp, b"{}")
        })
        .unwrap();
        assert_eq!(temp_mode, 0o600);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, default_mode());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_input_is_never_replaced_even_read_only() {
        let dir = scratch("inputs");
        let input = dir.join("a.jpg");
        std::fs::write(&input, b"jpeg bytes").unwrap();
        std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o444)).unwrap();
        protect_inputs([input.as_path()]);
        // Named directly, through `..`, or through a link: refused, naming the path.
        let indirect = dir.join("sub/../a.jpg");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let link = dir.join("link.jpg");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        for path in [&input, &indirect, &link] {
            let err = write_atomic(path, b"csv").unwrap_err();
            assert!(err.to_string().contains("would replace an input"), "{err}");
            assert!(refuse_inputs(std::slice::from_ref(path)).is_err());
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"jpeg bytes");
        // Other outputs, and earlier outputs, may be written and replaced.
        write_atomic(&dir.join("b.csv"), b"1").unwrap();
        write_atomic(&dir.join("b.csv"), b"2").unwrap();
        // Two outputs that are one file are refused.
        let twice = [dir.join("b.csv"), dir.join("sub/../b.csv")];
        assert!(
            refuse_inputs(&twice)
                .unwrap_err()
                .to_string()
                .contains("two outputs")
        );
        // The folder stays: the registry lives as long as the process, and a freed inode can
        // come back as another test's output file, which would then be refused.
    }

    #[test]
    fn a_half_removed_or_unrenamed_folder_is_told_apart() {
        let dir = scratch("dirs");
        let last = dir.join("last");
        let fill = |n: &'static str| {
            move |tmp: &Path| {
                std::fs::write(tmp.join("data"), n)?;
                std::fs::write(tmp.join("state"), n)
            }
        };
        replace_dir(&last, "state", fill("1")).unwrap();
        replace_dir(&last, "state", fill("2")).unwrap();
        assert_eq!(replaced_dir(&last, "state"), Some(last.clone()));
        assert!(!dir.join("last.old").exists() && !dir.join("last.tmp").exists());
        // Killed after filling `last.tmp` and moving `last` aside: the newer `last.tmp` wins.
        std::fs::rename(&last, dir.join("last.old")).unwrap();
        std::fs::create_dir(dir.join("last.tmp")).unwrap();
        fill("3")(&dir.join("last.tmp")).unwrap();
        assert_eq!(replaced_dir(&last, "state"), Some(dir.join("last.tmp")));
        // A folder whose marker is gone is being removed: never chosen.
        std::fs::remove_file(dir.join("last.tmp/state")).unwrap();
        assert_eq!(replaced_dir(&last, "state"), Some(dir.join("last.old")));
        assert!(settle_dir(&last, "state").unwrap());
        assert_eq!(std::fs::read_to_string(last.join("data")).unwrap(), "2");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        replace_dir(&last, "state", fill("4")).unwrap();
        assert_eq!(std::fs::read_to_string(last.join("data")).unwrap(), "4");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_are_removed() {
        let dir = scratch("stale");
        std::fs::write(dir.join(".metrics.csv.123.tmp"), b"x").unwrap();
        std::fs::write(dir.join("metrics.csv"), b"x").unwrap();
        remove_stale_temps(&dir).unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("metrics.csv")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Writes `array` as a float32 `.npy` (numpy's format, through `ndarray-npy`), atomically.
pub fn write_npy<D: ndarray::Dimension>(
    path: &Path,
    array: ndarray::ArrayView<f32, D>,
) -> std::io::Result<()> {
    use ndarray_npy::WriteNpyExt;
    write_atomic_with(path, |tmp| {
        let file = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        array.write_npy(file).map_err(std::io::Error::other)
    })
}

/// Reads a float32 `.npy` of `D` dimensions (numpy's format, C or Fortran order); a file that
/// is not one is an error naming `path`.
pub fn read_npy<D: ndarray::Dimension>(path: &Path) -> std::io::Result<ndarray::Array<f32, D>> {
    use ndarray_npy::ReadNpyExt;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    ndarray::Array::<f32, D>::read_npy(file).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: not a float32 .npy of {} dimensions ({e})",
                path.display(),
                D::NDIM.unwrap_or(0)
            ),
        )
    })
}

#[cfg(test)]
mod npy_tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("gaze-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let data = ndarray::Array2::from_shape_fn((2, 3), |(i, j)| i as f32 * 0.5 - j as f32);
        write_npy(&path, data.view()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x93NUMPY"));
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "numpy aligns the data");
        assert_eq!(read_npy::<ndarray::Ix2>(&path).unwrap(), data);
        assert!(read_npy::<ndarray::Ix3>(&path).is_err(), "wrong dimensions");
        // A version-2 header cut short, and a file that is not .npy at all.
        for (name, bytes) in [
            ("short_v2.npy", b"\x93NUMPY\x02\x00\xff\xff".to_vec()),
            ("text.npy", b"not numpy".to_vec()),
        ] {
            let bad = dir.join(name);
            std::fs::write(&bad, bytes).unwrap();
            let err = read_npy::<ndarray::Ix2>(&bad).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
