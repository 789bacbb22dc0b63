//! Errors as one line of text, for wire errors, test reports and the CLI's messages.

/// An error's message followed by its causes', less a cause whose text the message
/// before it already holds (an error that words its source, as `"{path}:
/// {source}"` does, would show it twice).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

/// A Cedar diagnostic's message, its causes and its miette help, on one line.
pub fn describe(error: &dyn miette::Diagnostic) -> String {
    let text = with_causes(error);
    match error.help() {
        Some(help) => format!("{text} ({help})"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("audit: {source}")]
    struct Worded {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_words_is_not_repeated() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let worded = anyhow::Error::new(Worded { source: missing() });
        assert_eq!(with_causes(worded.as_ref()), "audit: no such file");
        let bare = anyhow::Error::new(missing()).context("cannot read the log");
        assert_eq!(
            with_causes(bare.as_ref()),
            "cannot read the log: no such file"
        );
    }
}
