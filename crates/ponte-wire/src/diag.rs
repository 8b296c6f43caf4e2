//! Diagnostics shared by the relay, the server and the client: an error
//! printed with its causes on one line, and where a key of a TOML config
//! file is (its dotted path and its line and column), so every config error
//! reads `FILE:LINE:COL: KEY: what is wrong`.

/// Displays an error followed by each of its causes, `error: cause:
/// cause`, for a log line or a message where `anyhow`'s `{:#}` is not at
/// hand. Errors keep their causes as `source`s; this prints the chain once.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The dotted path of the key a deserialisation error is about:
/// `listener[0].tls`, `register_limit.burst`. The inner fields of
/// `toml::Spanned` values (how the configs keep their locations) are left
/// out; empty for an error about no key.
pub fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if k.starts_with("$__serde_spanned_private") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    key
}

/// 1-based line and column of a byte offset in `text` (offsets past the
/// end count as the end).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn report_prints_each_cause_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(Report(&e).to_string(), "outer: inner");
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
        assert_eq!(line_col(text, 999), (3, 1));
    }
}
