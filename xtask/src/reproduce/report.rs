//! `report.md` (figures linked) and a self-contained `report.html` (figures embedded).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One section of the report: a heading, its text and its figures.
pub struct Section {
    pub heading: String,
    pub text: String,
    pub figures: Vec<PathBuf>,
}

impl Section {
    pub fn new(heading: &str, text: impl Into<String>, figures: Vec<PathBuf>) -> Self {
        Self {
            heading: heading.into(),
            text: text.into(),
            figures,
        }
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes `out/report.md` and `out/report.html`; figures are named relative to `out`.
pub fn write_report(out: &Path, title: &str, sections: &[Section]) -> Result<()> {
    let mut md = format!("# {title}\n\n");
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{max-width:100%;border:1px solid #ddd;margin:.5em 0}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body><h1>{title}</h1>\n"
    );
    for Section {
        heading,
        text,
        figures,
    } in sections
    {
        md.push_str(&format!("## {heading}\n\n{text}\n\n"));
        html.push_str(&format!(
            "<h2>{heading}</h2>\n<pre>{}</pre>\n",
            text.replace('&', "&amp;").replace('<', "&lt;")
        ));
        for image in figures {
            let rel = image.strip_prefix(out).unwrap_or(image);
            md.push_str(&format!("![{}]({})\n\n", rel.display(), rel.display()));
            let bytes =
                std::fs::read(image).with_context(|| format!("{}: missing figure", image.display()))?;
            html.push_str(&format!(
                "<img alt=\"{}\" src=\"data:image/png;base64,{}\">\n",
                rel.display(),
                base64(&bytes)
            ));
        }
    }
    html.push_str("</body></html>\n");
    gaze_data::write_atomic(&out.join("report.md"), md.as_bytes())?;
    gaze_data::write_atomic(&out.join("report.html"), html.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_answers() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
