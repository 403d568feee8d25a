//! Printing answers as an aligned table, CSV (RFC 4180) or JSON.

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

    /// Columns padded to their widest cell; numbers aligned right.
    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let numeric: Vec<bool> = (0..n)
            .map(|i| {
                !self.rows.is_empty()
                    && self.rows.iter().all(|r| {
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
        line(&self.headers, out)?;
        for r in &self.rows {
            line(r, out)?;
        }
        Ok(())
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

/// One CSV record: fields quoted when they hold a comma, quote or line break.
pub fn csv_line(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
}
