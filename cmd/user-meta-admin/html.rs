//! The report as one self-contained HTML page: inline CSS and inline SVG
//! charts, no script, and a Content-Security-Policy that forbids loading
//! anything, so it reads the same offline as online.

use std::fmt::Write;

use usermetadb::reports::{Report, ReportResponse};

use crate::output::human_duration;

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2330; margin: 2em auto; max-width: 60em; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin: 1.8em 0 0.4em; border-bottom: 1px solid #d7dbe3; }
.meta, .note, .suppressed, .empty { color: #5a6272; }
.suppressed { font-style: italic; }
svg.chart { display: block; margin: 0.6em 0; max-width: 100%; height: auto; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #3b4252; }
svg.chart .bar { fill: #3f6fb5; }
svg.chart .axis { stroke: #8a93a5; stroke-width: 1; }
svg.chart .grid { stroke: #e4e7ee; stroke-width: 1; }
table { border-collapse: collapse; margin: 0.4em 0; }
th, td { padding: 0.15em 0.9em 0.15em 0; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { border-bottom: 1px solid #d7dbe3; }
dl.stats { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; }
dl.stats dt { color: #5a6272; }
dl.stats dd { margin: 0; }
";

/// Escapes text for HTML and SVG content and attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round tick step (1, 2 or 5 times a power of ten) and the axis top, for
/// about four ticks above zero.
fn axis(max: i64) -> (i64, i64) {
    let want = (max.max(1) + 3) / 4;
    let mut p = 1i64;
    loop {
        for m in [1, 2, 5] {
            let step = p.saturating_mul(m);
            if step >= want {
                let top = (max.max(1) + step - 1) / step * step;
                return (step, top);
            }
        }
        p = p.saturating_mul(10);
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Vertical bars in key order: a time series, or ordered buckets.
fn column_chart(r: &Report) -> String {
    let (w, h) = (760.0, 260.0);
    let (left, right, top, bottom) = (48.0, 12.0, 12.0, 46.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let (step, max) = axis(r.rows.iter().map(|x| x.count).max().unwrap_or(0));
    let n = r.rows.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.8).clamp(1.0, 80.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        esc(&r.title)
    );
    for v in (0..=max).step_by(step as usize) {
        let y = top + plot_h - plot_h * (v as f64) / (max as f64);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"#,
            w - right,
            left - 6.0,
            y + 4.0
        );
    }
    let label_every = ((r.rows.len() as f64) / 12.0).ceil().max(1.0) as usize;
    for (i, row) in r.rows.iter().enumerate() {
        let bh = plot_h * (row.count as f64) / (max as f64);
        let x = left + slot * i as f64 + (slot - bar_w) / 2.0;
        let y = top + plot_h - bh;
        let _ = write!(
            s,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{bh:.1}"><title>{}: {} {}, {} users</title></rect>"#,
            esc(&row.key),
            row.count,
            esc(&r.count),
            row.users
        );
        if i % label_every == 0 {
            let cx = left + slot * i as f64 + slot / 2.0;
            let ly = top + plot_h + 14.0;
            let _ = write!(
                s,
                r#"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle">{}</text>"#,
                esc(&shorten(&row.key, 12))
            );
        }
    }
    let base = top + plot_h;
    let _ = write!(
        s,
        r#"<line class="axis" x1="{left}" x2="{}" y1="{base}" y2="{base}"/><text x="{}" y="{}" text-anchor="middle">{}</text></svg>"#,
        w - right,
        left + plot_w / 2.0,
        h - 8.0,
        esc(&r.key)
    );
    s
}

/// Horizontal bars, largest first: categories.
fn bar_chart(r: &Report) -> String {
    let row_h = 22.0;
    let (w, left, right, top) = (760.0, 170.0, 70.0, 6.0);
    let h = top * 2.0 + row_h * r.rows.len() as f64;
    let plot_w = w - left - right;
    let max = r.rows.iter().map(|x| x.count).max().unwrap_or(0).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        esc(&r.title)
    );
    for (i, row) in r.rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let bw = (plot_w * (row.count as f64) / (max as f64)).max(1.0);
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text><rect class="bar" x="{left}" y="{:.1}" width="{bw:.1}" height="{:.1}"><title>{}: {} {}, {} users</title></rect><text x="{:.1}" y="{:.1}">{}</text>"#,
            left - 8.0,
            y + row_h * 0.68,
            esc(&shorten(&row.key, 26)),
            y + 3.0,
            row_h - 6.0,
            esc(&row.key),
            row.count,
            esc(&r.count),
            row.users,
            left + bw + 6.0,
            y + row_h * 0.68,
            row.count
        );
    }
    let _ = write!(
        s,
        r#"<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{:.1}"/></svg>"#,
        h - top
    );
    s
}

fn section(r: &Report, min_users: i64) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<section id="{}"><h2>{}</h2>"#,
        esc(&r.kind),
        esc(&r.title)
    );
    if r.rows.is_empty() {
        s.push_str(r#"<p class="empty">No rows to show.</p>"#);
    } else if r.by_day || r.kind == "session_durations" {
        s.push_str(&column_chart(r));
    } else {
        s.push_str(&bar_chart(r));
    }
    if !r.stats.is_empty() {
        s.push_str(r#"<dl class="stats">"#);
        for st in &r.stats {
            let (name, value) = match st.name.strip_suffix("_seconds") {
                Some(n) => (n.to_owned(), human_duration(st.value)),
                None => (st.name.clone(), st.value.to_string()),
            };
            let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", esc(&name), esc(&value));
        }
        s.push_str("</dl>");
    }
    if !r.rows.is_empty() {
        let _ = write!(
            s,
            "<table><thead><tr><th>{}</th><th>{}</th><th>users</th></tr></thead><tbody>",
            esc(&r.key),
            esc(&r.count)
        );
        for row in &r.rows {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                esc(&row.key),
                row.count,
                row.users
            );
        }
        s.push_str("</tbody></table>");
    }
    for line in crate::output::suppression_notes(r, min_users) {
        let _ = write!(s, r#"<p class="suppressed">{}</p>"#, esc(&line));
    }
    if !r.note.is_empty() {
        let _ = write!(s, r#"<p class="note">{}</p>"#, esc(&r.note));
    }
    s.push_str("</section>");
    s
}

/// The whole page.
pub fn page(resp: &ReportResponse, server: &str) -> String {
    let range = format!(
        "{} – {}",
        crate::output::day(&resp.from),
        crate::output::day(&resp.to)
    );
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>usermetadb report {}</title>
<style>{STYLE}</style></head>
<body><h1>usermetadb report</h1>
<p class="meta">{} (UTC, end exclusive) from {}. Rows that describe fewer than {} distinct users are withheld.</p>
"#,
        esc(&range),
        esc(&range),
        esc(server),
        resp.min_users
    );
    for r in &resp.reports {
        s.push_str(&section(r, resp.min_users));
        s.push('\n');
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use usermetadb::reports::ReportRow;

    #[test]
    fn text_from_the_data_is_escaped() {
        let r = Report {
            kind: "browsers".into(),
            title: "Logins per browser".into(),
            key: "browser".into(),
            count: "logins".into(),
            rows: vec![ReportRow {
                key: "<script>alert(1)</script>".into(),
                count: 7,
                users: 6,
            }],
            ..Default::default()
        };
        let html = section(&r, 5);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn axis_ticks_are_round() {
        assert_eq!(axis(0), (1, 1));
        assert_eq!(axis(5), (2, 6));
        assert_eq!(axis(13), (5, 15));
        assert_eq!(axis(20), (5, 20));
        assert_eq!(axis(480), (200, 600));
        assert_eq!(axis(1000), (500, 1000));
    }
}
