//! Untrusted text in log lines: [`Escaped`] writes control characters as
//! escapes, so a peer id, an edge id or a reason that holds a newline cannot
//! forge a log line (or an ANSI sequence recolour one).

use std::fmt::{self, Write};

/// Displays the text with control characters escaped (`\n`, `\u{1b}`).
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// An optional value in a log line or message for people: the value, or
/// `-` — never Rust's `Some(…)`.
#[derive(Clone, Copy, Debug)]
pub struct Maybe<'a, T>(pub &'a Option<T>);

impl<T: fmt::Display> fmt::Display for Maybe<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Escaped, Maybe};

    #[test]
    fn an_optional_value_is_shown_as_itself_or_a_dash() {
        assert_eq!(Maybe(&Some(7302)).to_string(), "7302");
        assert_eq!(Maybe::<u16>(&None).to_string(), "-");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let forged = "edge-1\n2026-12-06T00:00:00Z  INFO admin logged in\u{1b}[31m é";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "{shown}");
        assert_eq!(shown, "edge-1\\n2026-12-06T00:00:00Z  INFO admin logged in\\u{1b}[31m é");
    }
}
