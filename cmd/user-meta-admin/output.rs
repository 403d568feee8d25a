//! Printing answers as an aligned table, CSV (RFC 4180) or JSON.
//!
//! Stored text is somebody else's input (a log message, an agent's computer
//! name), so what is printed cannot act on what reads it:
//! - a table shows every C0 and C1 control character (and DEL) escaped
//!   (`\x1b`, `\u{9b}`), so a message cannot retitle, clear or move the
//!   administrator's terminal;
//! - a CSV cell that a spreadsheet would read as a formula (one starting
//!   with `=`, `+`, `-`, `@`, a tab or a carriage return) is prefixed with
//!   `'`, as OWASP's guidance on CSV injection says;
//! - JSON stays exact.

use std::borrow::Cow;

use std::io::Write;

use serde::Serialize;
use usermetadb::reports::Report;
use usermetadb::wire::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Rows of text under a header.
#[derive(Debug, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Columns padded to their widest cell; numbers aligned right; control
    /// characters escaped.
    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let shown = self.shown();
        let this = &shown;
        let n = this.headers.len();
        let mut widths: Vec<usize> = this.headers.iter().map(|h| h.chars().count()).collect();
        for r in &this.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let numeric: Vec<bool> = (0..n)
            .map(|i| {
                !this.rows.is_empty()
                    && this.rows.iter().all(|r| {
                        r.get(i)
                            .is_some_and(|c| !c.is_empty() && c.parse::<f64>().is_ok())
                    })
            })
            .collect();
        let line = |cells: &[String], out: &mut dyn Write| -> std::io::Result<()> {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                if i > 0 {
                    s.push_str("  ");
                }
                if numeric[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    if i + 1 < n {
                        s.push_str(&" ".repeat(pad));
                    }
                }
            }
            writeln!(out, "{}", s.trim_end())
        };
        line(&this.headers, out)?;
        for r in &this.rows {
            line(r, out)?;
        }
        Ok(())
    }

    /// The table with every cell made safe for a terminal.
    fn shown(&self) -> Table {
        let safe = |cells: &[String]| -> Vec<String> {
            cells
                .iter()
                .map(|c| terminal_safe(c).into_owned())
                .collect()
        };
        Table {
            headers: safe(&self.headers),
            rows: self.rows.iter().map(|r| safe(r)).collect(),
        }
    }

    pub fn write_csv(&self, out: &mut dyn Write, header: bool) -> std::io::Result<()> {
        if header {
            writeln!(out, "{}", csv_line(&self.headers))?;
        }
        for r in &self.rows {
            writeln!(out, "{}", csv_line(r))?;
        }
        Ok(())
    }
}

/// One CSV record: a cell a spreadsheet would evaluate prefixed with `'`,
/// then quoted when it holds a comma, quote or line break.
pub fn csv_line(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| {
            let c = spreadsheet_safe(c);
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `cell`, prefixed with `'` when a spreadsheet would take it for a
/// formula.
pub fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// `text` with its C0 and C1 control characters and DEL escaped, so that
/// printing it cannot send a terminal a command, and its invisible and
/// direction-changing characters too, so that it cannot reorder a line.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || usermetadb::service::names::is_deceptive(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Prints `value` as JSON, or `table` as a table or CSV.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> Table,
) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
            writeln!(out)
        }
        Format::Table => table().write_table(&mut out),
        Format::Csv => table().write_csv(&mut out, true),
    }
}

/// The day of a timestamp, `YYYY-MM-DD`.
pub fn day(t: &Timestamp) -> String {
    t.0.format("%Y-%m-%d").to_string()
}

/// Sentences saying what was withheld from a report.
pub fn suppression_notes(r: &Report, min_users: i64) -> Vec<String> {
    let mut notes = Vec::new();
    if r.suppressed_rows > 0 {
        notes.push(format!(
            "{} {} withheld: fewer than {min_users} distinct users each.",
            r.suppressed_rows,
            if r.suppressed_rows == 1 {
                "row"
            } else {
                "rows"
            }
        ));
    }
    if r.stats_suppressed {
        notes.push(format!(
            "Summary withheld: fewer than {min_users} distinct users."
        ));
    }
    notes
}

/// A duration in seconds as the largest units that fit: `2h`, `1d 3h`, `45m`.
pub fn human_duration(secs: i64) -> String {
    if secs <= 0 {
        return "0s".into();
    }
    let parts = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut left = secs;
    let mut out = Vec::new();
    for (unit, name) in parts {
        if left >= unit {
            out.push(format!("{}{name}", left / unit));
            left %= unit;
        }
        if out.len() == 2 {
            break;
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        let cells: Vec<String> = ["plain", "a,b", "say \"hi\"", "two\nlines"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            csv_line(&cells),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\""
        );
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut t = Table::new(&["name", "n"]);
        t.row(vec!["alpha".into(), "5".into()]);
        t.row(vec!["b".into(), "120".into()]);
        let mut out = Vec::new();
        t.write_table(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name     n\nalpha    5\nb      120\n"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(90_000), "1d 1h");
        assert_eq!(human_duration(2_700), "45m");
    }

    #[test]
    fn formulas_are_prefixed_and_plain_cells_kept() {
        let cells: Vec<String> = [
            "=HYPERLINK(\"http://evil.example/x\",\"open\")",
            "=cmd|' /C calc'!A0",
            "+1",
            "-1",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "alice",
            "a=b",
            "",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            csv_line(&cells),
            "\"'=HYPERLINK(\"\"http://evil.example/x\"\",\"\"open\"\")\",'=cmd|' /C calc'!A0,'+1,'-1,\
             '@SUM(A1),'\tx,\"'\rx\",alice,a=b,"
        );
    }

    #[test]
    fn tables_escape_control_characters() {
        let mut t = Table::new(&["message"]);
        t.row(vec![
            "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{7f}ok\tü".into()
        ]);
        let mut out = Vec::new();
        t.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "message\n\\x1b]0;owned\\x07\\x1b[2J\\u{9b}31m\\x7fok\\tü\n"
        );
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'));
    }
}
