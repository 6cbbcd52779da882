//! `cargo xtask fetch`: the published weights and vocabulary, for people with internet.
//!
//! Downloads go to `<file>.part` and resume from its length with an HTTP `Range` request
//! (a server that ignores it sends the whole file and the part is restarted). A finished
//! file whose SHA-256 is known is verified and, on a mismatch, deleted.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use sha2::{Digest, Sha256};

#[derive(Args)]
pub struct FetchArgs {
    /// Folder for the files.
    #[arg(long, default_value = "data/weights", value_name = "DIR")]
    dest: PathBuf,
}

/// One file to download.
pub struct Download {
    pub name: &'static str,
    pub url: String,
    /// Lower-case hex SHA-256, when known.
    pub sha256: Option<&'static str>,
}

/// What the reproduction needs. The checksums of these files were not available where this
/// list was written (no internet); `fetch` prints the SHA-256 of what it downloads so that
/// it can be pinned here.
fn manifest() -> Vec<Download> {
    vec![
        Download {
            name: "vit_small_patch16_384.augreg_in21k_ft_in1k.safetensors",
            url: "https://huggingface.co/timm/vit_small_patch16_384.augreg_in21k_ft_in1k/resolve/main/model.safetensors".into(),
            sha256: None,
        },
        Download {
            name: "weight493084032.pth",
            url: "https://github.com/saahiluppal/catr/releases/download/0.2/weight493084032.pth".into(),
            sha256: None,
        },
        Download {
            name: "vocab.txt",
            url: "https://huggingface.co/bert-base-uncased/resolve/main/vocab.txt".into(),
            sha256: None,
        },
    ]
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: could not read", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads `item` into `dest_dir`, resuming a `.part` file; returns the file's SHA-256.
pub fn download(item: &Download, dest_dir: &Path, show_progress: bool) -> Result<String> {
    let dest = dest_dir.join(item.name);
    if dest.exists() {
        let hash = sha256_of(&dest)?;
        match item.sha256 {
            Some(want) if want != hash => bail!(
                "{}: checksum {hash} is not the expected {want}; delete it and fetch again",
                dest.display()
            ),
            _ => return Ok(hash),
        }
    }
    let part = dest_dir.join(format!("{}.part", item.name));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(&item.url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request
        .call()
        .with_context(|| format!("{}: request failed", item.url))?;
    let resumed = response.status().as_u16() == 206;
    let start = if resumed { have } else { 0 };
    let length: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .with_context(|| format!("{}: could not write", part.display()))?;
    let bar = indicatif::ProgressBar::new(start + length.unwrap_or(0));
    if show_progress {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(item.name);
        bar.set_position(start);
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut reader = response.into_body().into_reader();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        // An interrupted transfer errors here and leaves the part to resume from.
        let n = reader
            .read(&mut buffer)
            .with_context(|| format!("{}: download interrupted; run fetch again to resume", item.url))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n])?;
        bar.inc(n as u64);
    }
    file.sync_all()?;
    drop(file);
    bar.finish_and_clear();
    let hash = sha256_of(&part)?;
    if let Some(want) = item.sha256
        && want != hash
    {
        std::fs::remove_file(&part)?;
        bail!(
            "{}: checksum {hash} is not the expected {want}; the download was removed",
            item.url
        );
    }
    gaze_data::io::move_into_place(&part, &dest)?;
    Ok(hash)
}

pub fn fetch(root: &Path, args: FetchArgs) -> Result<()> {
    let dest = root.join(&args.dest);
    std::fs::create_dir_all(&dest).with_context(|| format!("{}: could not create", dest.display()))?;
    for item in manifest() {
        let hash = download(&item, &dest, true)?;
        println!("{}  {}", hash, dest.join(item.name).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// Serves `body` on 127.0.0.1, honouring `Range: bytes=N-`; the first `cut_first`
    /// responses stop after half of what they promise, as a dropped connection would.
    fn serve(
        body: Vec<u8>,
        requests: usize,
        cut_first: usize,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file.bin", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut ranges = Vec::new();
            for i in 0..requests {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut start = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = v.trim().trim_end_matches('-').parse().unwrap();
                        ranges.push(format!("from {start}"));
                    }
                }
                let rest = &body[start..];
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                let sent = if i < cut_first {
                    &rest[..rest.len() / 2]
                } else {
                    rest
                };
                stream.write_all(sent).unwrap();
            }
            ranges
        });
        (url, handle)
    }

    fn payload() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-fetch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn hex_sha256(bytes: &[u8]) -> &'static str {
        let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        Box::leak(hex.into_boxed_str())
    }

    #[test]
    fn interrupted_download_resumes() {
        let dir = scratch("resume");
        let body = payload();
        let (url, server) = serve(body.clone(), 2, 1);
        let item = Download {
            name: "file.bin",
            url,
            sha256: Some(hex_sha256(&body)),
        };
        let first = download(&item, &dir, false);
        assert!(first.is_err(), "the cut connection must be reported");
        let kept = std::fs::metadata(dir.join("file.bin.part")).unwrap().len();
        assert!(kept > 0 && kept < body.len() as u64, "{kept}");
        download(&item, &dir, false).unwrap();
        assert_eq!(std::fs::read(dir.join("file.bin")).unwrap(), body);
        assert!(!dir.join("file.bin.part").exists());
        assert_eq!(server.join().unwrap(), [format!("from {kept}")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_checksum_is_rejected_and_removed() {
        let dir = scratch("checksum");
        let (url, server) = serve(payload(), 1, 0);
        let item = Download {
            name: "file.bin",
            url,
            sha256: Some(hex_sha256(b"something else")),
        };
        let err = download(&item, &dir, false).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(!dir.join("file.bin").exists() && !dir.join("file.bin.part").exists());
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
