//! Text that came from a client (or from the database, where clients put
//! it) made safe to print on one line of a log or a terminal table.
//!
//! [`escape_control`] rewrites every character that could end a line, move
//! the cursor, recolour the terminal or reorder the text around it: C0 and
//! C1 controls (newline, carriage return, ESC, NUL, …), DEL, the Unicode
//! line and paragraph separators and the bidirectional formatting marks.
//! Everything else is kept as is (a backslash too: a client may send the
//! two characters `\n`, which reads like an escape but cannot start a line),
//! so ordinary text, and values already escaped by `Debug`, read unchanged.

use std::borrow::Cow;
use std::fmt::Write;

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// True for a character [`escape_control`] rewrites.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` with control characters written as `\n`, `\r`, `\t` or `\u{1b}`;
/// borrowed when nothing needed escaping.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "checkout.step-2 Ünïcödé 名前 \"quoted\"";
        assert!(matches!(escape_control(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn controls_are_escaped_onto_one_line() {
        let forged = "x\n2026-01-01T00:00:00Z  INFO forged\r\x1b[31mred\x1b[0m\t\0\u{7f}\u{85}";
        let escaped = escape_control(forged);
        assert_eq!(
            escaped,
            "x\\n2026-01-01T00:00:00Z  INFO forged\\r\\u{1b}[31mred\\u{1b}[0m\\t\\u{0}\\u{7f}\\u{85}"
        );
        assert!(!escaped.chars().any(char::is_control));
    }

    #[test]
    fn separators_and_bidi_marks_are_escaped() {
        assert_eq!(
            escape_control("a\u{2028}b\u{202e}c\u{2066}d"),
            "a\\u{2028}b\\u{202e}c\\u{2066}d"
        );
    }
}
