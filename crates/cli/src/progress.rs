use indicatif::{ProgressBar, ProgressStyle};

/// A bar on stderr counting `unit`s; indicatif hides it when stderr is not a terminal.
pub fn bar(len: usize, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}
