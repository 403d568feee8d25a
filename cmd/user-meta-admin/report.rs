//! `user-meta-admin report`: ask the server for the aggregate reports and print
//! them as tables, CSV, JSON, or write them as an HTML page.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use usermetadb::reports::{ReportRequest, ReportResponse};
use usermetadb::wire::{parse_rfc3339, Timestamp};

use crate::conn::{Api, Failure};
use crate::output::{csv_line, day, human_duration, suppression_notes, Format, Table};

pub struct Args {
    pub from: Option<String>,
    pub to: Option<String>,
    pub days: i64,
    pub kind: Option<String>,
    pub html: Option<PathBuf>,
    pub tenant: Option<String>,
    pub per_computer: bool,
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_time(flag: &str, s: &str) -> Result<Timestamp, Failure> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Timestamp(t.and_utc()));
        }
    }
    parse_rfc3339(s).map_err(|_| {
        Failure::usage(format!(
            "{flag} {s:?}: expected a date (2026-11-20) or an RFC 3339 time"
        ))
    })
}

fn stat_text(name: &str, value: i64) -> (String, String) {
    match name.strip_suffix("_seconds") {
        Some(n) => (n.to_owned(), human_duration(value)),
        None => (name.to_owned(), value.to_string()),
    }
}

fn print_tables(resp: &ReportResponse, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "Reports for {} – {} (UTC, end exclusive); rows about fewer than {} users are withheld.",
        day(&resp.from),
        day(&resp.to),
        resp.min_users
    )?;
    for r in &resp.reports {
        writeln!(out, "\n{}", r.title)?;
        if r.rows.is_empty() {
            writeln!(out, "(no rows)")?;
        } else {
            let mut t = Table::new(&[&r.key, &r.count, "users"]);
            for row in &r.rows {
                t.row(vec![
                    row.key.clone(),
                    row.count.to_string(),
                    row.users.to_string(),
                ]);
            }
            t.write_table(out)?;
        }
        if !r.stats.is_empty() {
            let stats: Vec<String> = r
                .stats
                .iter()
                .map(|s| {
                    let (n, v) = stat_text(&s.name, s.value);
                    format!("{n}: {v}")
                })
                .collect();
            writeln!(out, "{}", stats.join(", "))?;
        }
        for note in suppression_notes(r, resp.min_users) {
            writeln!(out, "{note}")?;
        }
        if !r.time_spent.is_empty() {
            let mut t = Table::new(&["day", "user", "computer", "time", "first start", "last end"]);
            for e in &r.time_spent {
                t.row(vec![
                    e.day.clone(),
                    e.username.clone(),
                    e.computer.clone(),
                    format!("{}h{:02}", e.seconds / 3600, e.seconds % 3600 / 60),
                    e.first_start.0.format("%H:%M").to_string(),
                    e.last_end.0.format("%H:%M").to_string(),
                ]);
            }
            t.write_table(out)?;
        }
        if !r.note.is_empty() {
            writeln!(out, "Note: {}", r.note)?;
        }
    }
    Ok(())
}

/// One CSV for all reports: `report,key,count,users`. Summary figures are rows
/// of `<kind>:stats`; a withheld-rows notice is a row with empty numbers.
fn print_csv(resp: &ReportResponse, out: &mut dyn Write) -> std::io::Result<()> {
    let s = |v: &str| v.to_owned();
    writeln!(
        out,
        "{}",
        csv_line(&[s("report"), s("key"), s("count"), s("users")])
    )?;
    for r in &resp.reports {
        for row in &r.rows {
            writeln!(
                out,
                "{}",
                csv_line(&[
                    r.kind.clone(),
                    row.key.clone(),
                    row.count.to_string(),
                    row.users.to_string()
                ])
            )?;
        }
        for st in &r.stats {
            writeln!(
                out,
                "{}",
                csv_line(&[
                    format!("{}:stats", r.kind),
                    st.name.clone(),
                    st.value.to_string(),
                    String::new()
                ])
            )?;
        }
        for note in suppression_notes(r, resp.min_users) {
            writeln!(
                out,
                "{}",
                csv_line(&[
                    r.kind.clone(),
                    format!("({note})"),
                    String::new(),
                    String::new()
                ])
            )?;
        }
    }
    Ok(())
}

pub async fn run(api: Api, args: Args, format: Format, now: DateTime<Utc>) -> Result<(), Failure> {
    let to = match &args.to {
        Some(s) => parse_time("--to", s)?,
        None => Timestamp(now),
    };
    let from = match &args.from {
        Some(s) => parse_time("--from", s)?,
        None => {
            if args.days <= 0 {
                return Err(Failure::usage("--days must be at least 1"));
            }
            Timestamp(to.0 - chrono::Duration::days(args.days))
        }
    };
    let req = ReportRequest {
        from,
        to,
        kind: args.kind.unwrap_or_default(),
        tenant: args.tenant.unwrap_or_default(),
        per_computer: args.per_computer,
    };
    let mut conn = api.connect().await?;
    let resp: ReportResponse = api.call(&mut conn, "/api/report", &req).await?;
    let io = |e: std::io::Error| Failure::usage(format!("writing the output: {e}"));
    if let Some(path) = &args.html {
        let page = crate::html::page(&resp, &api.url);
        std::fs::write(path, page)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &resp)
                .map_err(|e| io(std::io::Error::from(e)))?;
            writeln!(out).map_err(io)
        }
        Format::Table => print_tables(&resp, &mut out).map_err(io),
        Format::Csv => print_csv(&resp, &mut out).map_err(io),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_dates_or_rfc3339() {
        assert_eq!(
            parse_time("--from", "2026-11-20").unwrap().unix(),
            1_795_132_800
        );
        assert_eq!(
            parse_time("--from", "2026-11-20T01:00:00+01:00")
                .unwrap()
                .unix(),
            1_795_132_800
        );
        assert!(parse_time("--from", "20/11/2026").is_err());
    }
}
