//! Text from outside made safe to show on a terminal: a webhook's `pusher.login`, an operator's
//! reason, a commit message or a build's output may carry escape sequences (ESC, OSC, CSI, a
//! carriage return, a bidirectional override) that move the cursor, retitle the window, hide a
//! line or forge a log line. Every CLI output, `watch` and the text logs pass such text through
//! here, where each control character becomes a visible escape (`\u{1b}`).
//!
//! It never changes printable text, and never touches JSON output (JSON escapes its own control
//! characters, and scripts need the exact value).

use std::borrow::Cow;
use std::io::Write;

/// Whether `c` must not reach a terminal as it is: C0 controls and DEL, C1 controls (8-bit CSI,
/// OSC …), and the bidirectional embeddings, overrides and isolates that reorder what is shown.
fn hazardous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escaped(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| hazardous(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hazardous(c) && !keep(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line (a table cell, a name, a reason): every control character escaped, newlines and
/// tabs too.
pub fn printable(s: &str) -> Cow<'_, str> {
    escaped(s, |_| false)
}

/// Several lines (a build's output): newlines and tabs kept, every other control escaped.
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    escaped(s, |c| c == '\n' || c == '\t')
}

/// The text logs' writer: each event arrives whole (tracing's formatter writes one buffer per
/// event), ending in a newline. The formatter already escapes ESC and C1 in field values; this
/// escapes what it lets through, so that nobody's text can start a forged log line or rewrite
/// the current one: carriage returns, newlines inside the event, the other C0 controls and
/// bidirectional overrides. ESC itself passes: in the formatter's output it is its own colour.
pub struct LogWriter<W>(pub W);

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let clean = escaped(body, |c| c == '\x1b' || c == '\t');
        self.0.write_all(clean.as_bytes())?;
        self.0.write_all(end.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible_and_plain_text_is_untouched() {
        assert!(matches!(printable("ann – main ✓"), Cow::Borrowed(_)));
        // OSC 52 (write the clipboard), a CSI clear screen, an 8-bit CSI, a carriage return
        let hostile = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\u{9b}31m\rok\u{202e}txt";
        let shown = printable(hostile);
        assert!(!shown.chars().any(hazardous), "{shown:?}");
        assert_eq!(
            shown,
            "\\u{1b}]52;c;ZXZpbA==\\u{7}\\u{1b}[2J\\u{9b}31m\\u{d}ok\\u{202e}txt"
        );
        assert_eq!(printable("a\nb\tc"), "a\\u{a}b\\u{9}c");
        assert_eq!(printable_lines("a\nb\tc\x1b[1m"), "a\nb\tc\\u{1b}[1m");
    }

    #[test]
    fn a_log_line_cannot_be_split_or_rewritten_but_keeps_its_colours() {
        let mut w = LogWriter(Vec::new());
        w.write_all(b"\x1b[32mINFO\x1b[0m who=mallory\n2026-12-07 INFO forged\rX\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "\x1b[32mINFO\x1b[0m who=mallory\\u{a}2026-12-07 INFO forged\\u{d}X\n"
        );
    }
}
