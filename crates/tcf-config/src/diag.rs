//! Error messages that point into the config file, rustc style: file, line, column, the line
//! itself with a caret under the offending text, and a hint that says what to do.

use std::fmt::Write;
use std::ops::Range;
use std::path::Path;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub span: Option<Range<usize>>,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic {
            message: message.into(),
            span,
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Render diagnostics as text for a terminal or a log.
pub fn render(path: &Path, source: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "error: {}", d.message);
        match &d.span {
            Some(span) => {
                let (line, col) = line_col(source, span.start);
                let _ = writeln!(out, "  --> {}:{}:{}", path.display(), line, col);
                let text = source.lines().nth(line - 1).unwrap_or("");
                let width = line.to_string().len();
                let pad = " ".repeat(width);
                let span_text = &source[floor_char_boundary(source, span.start)
                    ..floor_char_boundary(source, span.end.min(source.len()))];
                let first_line_len = span_text.split('\n').next().unwrap_or("").chars().count();
                let carets = "^".repeat(first_line_len.max(1));
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{line} | {text}");
                let _ = writeln!(out, "{pad} | {}{carets}", " ".repeat(col - 1));
                if let Some(h) = &d.hint {
                    let _ = writeln!(out, "{pad} = hint: {h}");
                }
            }
            None => {
                let _ = writeln!(out, "  --> {}", path.display());
                if let Some(h) = &d.hint {
                    let _ = writeln!(out, "   = hint: {h}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
    }
}
