//! Cedar's diagnostics as one line of text, for wire errors and test reports.

/// An error's message, its causes and its miette help, on one line.
pub fn describe(error: &dyn miette::Diagnostic) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    if let Some(help) = error.help() {
        text = format!("{text} ({help})");
    }
    text
}
