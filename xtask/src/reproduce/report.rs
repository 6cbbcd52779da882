//! `report.md` (figures linked) and a self-contained `report.html` (the same Markdown
//! rendered by pulldown-cmark, figures embedded). Strings from file names and captions go
//! through [`escape`]; raw HTML in the Markdown is shown as text, never passed through.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

/// One section of the report: a heading, its Markdown text and its figures.
pub struct Section {
    pub heading: String,
    pub markdown: String,
    pub figures: Vec<PathBuf>,
}

impl Section {
    pub fn new(heading: &str, markdown: impl Into<String>, figures: Vec<PathBuf>) -> Self {
        Self {
            heading: heading.into(),
            markdown: markdown.into(),
            figures,
        }
    }
}

/// `text` with the characters that Markdown would read as markup backslash-escaped, so that
/// it shows as written (`*`, `_`, `|` in a table, `<` of a would-be tag, `&` of an entity).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\`*_[]<>|!&#~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A Markdown table of `header` and `rows` (cells already escaped).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut md = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for row in rows {
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    md
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

/// `url` written as a percent-encoded relative link (spaces and brackets in file names
/// would end a Markdown link).
fn link(rel: &Path) -> String {
    let mut out = String::new();
    for b in rel.display().to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unlink(url: &str) -> String {
    let bytes = url.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The whole report as Markdown: `title`, the `summary` rows as a table, then `sections`
/// with their figures linked relative to `out`.
pub fn markdown(out: &Path, title: &str, summary: &[(String, String)], sections: &[Section]) -> String {
    let mut md = format!("# {}\n\n", escape(title));
    let rows: Vec<Vec<String>> = summary.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
    md.push_str(&table(&["", "result"], &rows));
    for section in sections {
        md.push_str(&format!(
            "\n## {}\n\n{}\n\n",
            escape(&section.heading),
            section.markdown
        ));
        for figure in &section.figures {
            let rel = figure.strip_prefix(out).unwrap_or(figure);
            let name = rel.display().to_string();
            md.push_str(&format!("![{}]({})\n\n", escape(&name), link(rel)));
        }
    }
    md
}

/// `md` as an HTML page: tables rendered, raw HTML shown as text, figures (links relative to
/// `out`) embedded as data URLs.
pub fn html(out: &Path, title: &str, md: &str) -> Result<String> {
    let mut events = Vec::new();
    for event in Parser::new_ext(md, Options::ENABLE_TABLES) {
        events.push(match event {
            Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                let path = out.join(unlink(&dest_url));
                let bytes =
                    std::fs::read(&path).with_context(|| format!("{}: missing figure", path.display()))?;
                let data = format!("data:image/png;base64,{}", base64(&bytes));
                Event::Start(Tag::Image {
                    link_type,
                    dest_url: CowStr::from(data),
                    title,
                    id,
                })
            }
            other => other,
        });
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events.into_iter());
    let mut page = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>");
    pulldown_cmark::html::push_html(&mut page, [Event::Text(CowStr::from(title))].into_iter());
    page.push_str(
        "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}\
         img{max-width:100%;border:1px solid #ddd;margin:.5em 0}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}\
         th{background:#f3f3f3}</style></head><body>\n",
    );
    page.push_str(&body);
    page.push_str("</body></html>\n");
    Ok(page)
}

/// Writes `out/report.md` and `out/report.html`.
pub fn write_report(
    out: &Path,
    title: &str,
    summary: &[(String, String)],
    sections: &[Section],
) -> Result<()> {
    let md = markdown(out, title, summary, sections);
    let page = html(out, title, &md)?;
    gaze_data::write_atomic(&out.join("report.md"), md.as_bytes())?;
    gaze_data::write_atomic(&out.join("report.html"), page.as_bytes())?;
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

    #[test]
    fn file_names_and_captions_are_shown_not_run() {
        let dir = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
        let figures = dir.join("figures");
        std::fs::create_dir_all(&figures).unwrap();
        let hostile = "<img src=x onerror=alert(1)>";
        let figure = figures.join(format!("{hostile} a_b*.png"));
        std::fs::write(&figure, b"png bytes").unwrap();
        let text = format!(
            "**{}**: {}\n\n<script>alert(2)</script>",
            escape(&format!("{hostile}.jpg")),
            escape("a *dog* | on <b>grass</b>")
        );
        let sections = [Section::new("Captions", text, vec![figure])];
        let summary = [("mode".to_string(), "real".to_string())];
        write_report(&dir, "gaze", &summary, &sections).unwrap();
        let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;.jpg"), "{page}");
        assert!(page.contains("a *dog* | on &lt;b&gt;grass&lt;/b&gt;"), "{page}");
        assert!(
            page.contains("<table>") && page.contains("<td>real</td>"),
            "{page}"
        );
        assert!(
            page.contains(&format!("src=\"data:image/png;base64,{}\"", base64(b"png bytes"))),
            "{page}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
