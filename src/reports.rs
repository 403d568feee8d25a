//! Aggregate reports over a time range, for administrators.
//!
//! The policy: a report never singles anyone out. Every row says how many
//! distinct users it describes, and a row describing fewer than
//! `privacy.report_min_users` (k, default 5) is withheld; the report says how
//! many rows were. The range is widened to whole UTC days so that two nearby
//! ranges cannot be subtracted to isolate one hour of one person. There are no
//! per-user rows: the time between login and logout is answered as a
//! distribution and percentiles. The one exception is `time_spent` (Windows
//! agents), a workplace-monitoring report: per user only for a tenant that
//! opted in (`agents.per_user_time`), else the same k-anonymous totals.
//!
//! The store computes the groups ([`crate::model::Aggregate`]); this module
//! validates the request, applies the threshold and labels the result.

use serde::{Deserialize, Serialize};

use crate::model::{Aggregate, Aggregated, GroupRow, LoginColumn, SessionStats, SESSION_BUCKETS};
use crate::service::{ApiError, Service};
use crate::wire::{Timestamp, LOG_TYPE_LOGIN, LOG_TYPE_LOGIN_FAILURE};

/// Longest range one request may cover.
pub const MAX_RANGE_DAYS: i64 = 3_660;
const DAY: i64 = 86_400;

/// `POST /api/report`: every report over `[from, to)`, or only `kind`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportRequest {
    pub from: Timestamp,
    pub to: Timestamp,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `time_spent`: only this tenant's users (`TENANT/...`); per user when
    /// the tenant opted in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// `time_spent`, per user: one row per computer rather than per day.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub per_computer: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportResponse {
    /// The range actually covered: the request's, widened to whole UTC days.
    pub from: Timestamp,
    pub to: Timestamp,
    /// Rows about fewer distinct users than this were withheld.
    pub min_users: i64,
    pub reports: Vec<Report>,
}

/// One table: a key column, a count and the distinct users behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// One of [`Kind::name`].
    pub kind: String,
    pub title: String,
    /// What the key column holds ("day", "country", ...).
    pub key: String,
    /// What `count` counts ("logins", "devices", ...).
    pub count: String,
    /// Whether the keys are days in order (a time series).
    #[serde(default)]
    pub by_day: bool,
    pub rows: Vec<ReportRow>,
    /// Rows withheld because they describe fewer than `min_users` users.
    pub suppressed_rows: i64,
    /// Summary figures; names ending in `_seconds` are durations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stats: Vec<ReportStat>,
    /// True when the summary figures were withheld for describing too few users.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stats_suppressed: bool,
    /// Why the report is empty or partial, when it is not about suppression.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// `time_spent` per user, for a tenant that opted in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_spent: Vec<TimeSpent>,
}

/// Time a user spent at Windows computers on a day (at one computer, with
/// `per_computer`), at storage granularity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSpent {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub computer: String,
    pub seconds: i64,
    /// The first session's start and the last one's end that day.
    pub first_start: Timestamp,
    pub last_end: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub key: String,
    pub count: i64,
    pub users: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportStat {
    pub name: String,
    pub value: i64,
}

/// The reports there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LoginsPerDay,
    LoginsPerService,
    DistinctUsers,
    Countries,
    Browsers,
    OperatingSystems,
    NewDevicesPerDay,
    LoginFailuresPerDay,
    AlertsByKind,
    SessionDurations,
    TimeSpent,
}

impl Kind {
    /// The aggregates this report is made of, in the order it reads them.
    fn queries(self) -> Vec<Aggregate> {
        match self {
            Kind::LoginsPerDay => vec![Aggregate::EventsPerDay(LOG_TYPE_LOGIN.into())],
            Kind::LoginFailuresPerDay => {
                vec![Aggregate::EventsPerDay(LOG_TYPE_LOGIN_FAILURE.into())]
            }
            Kind::LoginsPerService => vec![Aggregate::LoginsBy(LoginColumn::Service)],
            Kind::Countries => vec![Aggregate::LoginsBy(LoginColumn::Zone)],
            Kind::Browsers => vec![Aggregate::LoginsBy(LoginColumn::Browser)],
            Kind::OperatingSystems => vec![Aggregate::LoginsBy(LoginColumn::Os)],
            Kind::DistinctUsers => vec![Aggregate::EventsTotal, Aggregate::EventsByType],
            Kind::NewDevicesPerDay => vec![Aggregate::NewDevicesPerDay],
            Kind::AlertsByKind => vec![Aggregate::AlertsByKind],
            Kind::SessionDurations => vec![Aggregate::SessionBuckets, Aggregate::SessionStats],
            // Read apart, from the agents' time spent.
            Kind::TimeSpent => Vec::new(),
        }
    }

    pub const ALL: [Kind; 11] = [
        Kind::LoginsPerDay,
        Kind::LoginsPerService,
        Kind::DistinctUsers,
        Kind::Countries,
        Kind::Browsers,
        Kind::OperatingSystems,
        Kind::NewDevicesPerDay,
        Kind::LoginFailuresPerDay,
        Kind::AlertsByKind,
        Kind::SessionDurations,
        Kind::TimeSpent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::LoginsPerDay => "logins_per_day",
            Kind::LoginsPerService => "logins_per_service",
            Kind::DistinctUsers => "distinct_users",
            Kind::Countries => "countries",
            Kind::Browsers => "browsers",
            Kind::OperatingSystems => "operating_systems",
            Kind::NewDevicesPerDay => "new_devices_per_day",
            Kind::LoginFailuresPerDay => "login_failures_per_day",
            Kind::AlertsByKind => "alerts_by_kind",
            Kind::SessionDurations => "session_durations",
            Kind::TimeSpent => "time_spent",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// (title, key column, count column, keys are days)
    fn labels(self) -> (&'static str, &'static str, &'static str, bool) {
        match self {
            Kind::LoginsPerDay => ("Logins per day", "day", "logins", true),
            Kind::LoginsPerService => ("Logins per service", "service", "logins", false),
            Kind::DistinctUsers => ("Events and distinct users", "log type", "events", false),
            Kind::Countries => ("Logins per country", "country", "logins", false),
            Kind::Browsers => ("Logins per browser", "browser", "logins", false),
            Kind::OperatingSystems => ("Logins per operating system", "os", "logins", false),
            Kind::NewDevicesPerDay => ("New devices per day", "day", "devices", true),
            Kind::LoginFailuresPerDay => ("Failed logins per day", "day", "failures", true),
            Kind::AlertsByKind => ("Alerts by kind", "kind", "alerts", false),
            Kind::SessionDurations => (
                "Time between login and logout",
                "duration",
                "sessions",
                false,
            ),
            Kind::TimeSpent => ("Time spent at Windows computers", "day", "seconds", true),
        }
    }

    fn empty(self) -> Report {
        let (title, key, count, by_day) = self.labels();
        Report {
            kind: self.name().into(),
            title: title.into(),
            key: key.into(),
            count: count.into(),
            by_day,
            ..Default::default()
        }
    }
}

/// Keeps the rows about at least `k` users and counts the others.
pub fn suppress(rows: Vec<GroupRow>, k: i64) -> (Vec<ReportRow>, i64) {
    let mut withheld = 0;
    let kept = rows
        .into_iter()
        .filter(|r| {
            let keep = r.users >= k;
            withheld += i64::from(!keep);
            keep
        })
        .map(|r| ReportRow {
            key: r.key,
            count: r.count,
            users: r.users,
        })
        .collect();
    (kept, withheld)
}

/// The label of session bucket `i` of [`SESSION_BUCKETS`].
pub fn session_bucket_label(i: usize) -> String {
    fn short(secs: i64) -> String {
        if secs % DAY == 0 {
            format!("{}d", secs / DAY)
        } else {
            format!("{}h", secs / 3600)
        }
    }
    match (
        i.checked_sub(1).map(|j| SESSION_BUCKETS[j]),
        SESSION_BUCKETS.get(i),
    ) {
        (None, Some(hi)) => format!("under {}", short(*hi)),
        (Some(lo), Some(hi)) => format!("{}–{}", short(lo), short(*hi)),
        (Some(lo), None) => format!("over {}", short(lo)),
        (None, None) => String::new(),
    }
}

/// Widens `[from, to)` to whole UTC days and checks it.
pub fn day_range(from: &Timestamp, to: &Timestamp) -> Result<(i64, i64), ApiError> {
    if from.is_zero() || to.is_zero() {
        return Err(ApiError::Invalid("from and to are required".into()));
    }
    let from = from.unix().div_euclid(DAY) * DAY;
    let to = to.unix().saturating_add(DAY - 1).div_euclid(DAY) * DAY;
    if to <= from {
        return Err(ApiError::Invalid("to must be after from".into()));
    }
    if to - from > MAX_RANGE_DAYS * DAY {
        return Err(ApiError::Invalid(format!(
            "the range must cover at most {MAX_RANGE_DAYS} days"
        )));
    }
    Ok((from, to))
}

fn labelled(kind: Kind, rows: Vec<GroupRow>, k: i64) -> Report {
    let (mut rows, withheld) = suppress(rows, k);
    for r in &mut rows {
        if r.key.is_empty() {
            r.key = match kind {
                Kind::Countries => "(unknown)".into(),
                _ => "(none)".into(),
            };
        }
    }
    Report {
        rows,
        suppressed_rows: withheld,
        ..kind.empty()
    }
}

fn sessions_report(buckets: Vec<(usize, i64, i64)>, stats: SessionStats, k: i64) -> Report {
    let rows = buckets
        .into_iter()
        .map(|(i, count, users)| GroupRow {
            key: session_bucket_label(i),
            count,
            users,
        })
        .collect();
    let mut report = labelled(Kind::SessionDurations, rows, k);
    if stats.users >= k {
        report.stats = vec![
            ReportStat {
                name: "sessions".into(),
                value: stats.sessions,
            },
            ReportStat {
                name: "users".into(),
                value: stats.users,
            },
        ];
        for (name, v) in [("median_seconds", stats.median), ("p90_seconds", stats.p90)] {
            if let Some(value) = v {
                report.stats.push(ReportStat {
                    name: name.into(),
                    value,
                });
            }
        }
    } else {
        report.stats_suppressed = stats.sessions > 0;
    }
    report.note =
        "a login paired with the next logout of the same user and service; times are floored to the storage granularity"
            .into();
    report
}

fn day_label(day: i64) -> String {
    chrono::DateTime::from_timestamp(day, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// `time_spent`: total time per day (and the users behind it), k-anonymous;
/// per user as well for a tenant that opted in.
async fn time_spent_report(
    svc: &Service,
    req: &ReportRequest,
    from: i64,
    to: i64,
    k: i64,
) -> Result<Report, ApiError> {
    use std::collections::{BTreeMap, BTreeSet};
    let prefix = if req.tenant.is_empty() {
        String::new()
    } else {
        format!("{}/", req.tenant)
    };
    let rows = svc.store.time_spent(prefix, from, to).await?;
    let mut days: BTreeMap<i64, (i64, BTreeSet<&str>)> = BTreeMap::new();
    for r in &rows {
        let d = days.entry(r.day).or_default();
        d.0 += r.seconds;
        d.1.insert(&r.username);
    }
    let groups = days
        .iter()
        .map(|(day, (seconds, users))| GroupRow {
            key: day_label(*day),
            count: *seconds,
            users: users.len() as i64,
        })
        .collect();
    let mut report = labelled(Kind::TimeSpent, groups, k);
    let per_user = !req.tenant.is_empty() && svc.agents.per_user_time.allows(&req.tenant);
    if !per_user {
        report.note = if req.tenant.is_empty() {
            "totals over every tenant; per user only with tenant, for a tenant in agents.per_user_time".into()
        } else {
            format!(
                "per-user time is off for tenant {} (agents.per_user_time); totals only",
                req.tenant
            )
        };
        return Ok(report);
    }
    // (day, user, computer) -> (seconds, first start, last end)
    let mut per: BTreeMap<(i64, &str, String), (i64, i64, i64)> = BTreeMap::new();
    for r in &rows {
        let computer = if req.per_computer {
            svc.privacy.open_device_id(&r.username, &r.sealed_device)
        } else {
            String::new()
        };
        let e = per
            .entry((r.day, &r.username, computer))
            .or_insert((0, i64::MAX, i64::MIN));
        e.0 += r.seconds;
        e.1 = e.1.min(r.first_start);
        e.2 = e.2.max(r.last_end);
    }
    report.time_spent = per
        .into_iter()
        .map(
            |((day, user, computer), (seconds, first, last))| TimeSpent {
                day: day_label(day),
                username: user.to_owned(),
                computer,
                seconds,
                first_start: Timestamp::from_unix(first),
                last_end: Timestamp::from_unix(last),
            },
        )
        .collect();
    report.note = format!(
        "per user: tenant {} opted in (agents.per_user_time); times at privacy.session_granularity",
        req.tenant
    );
    Ok(report)
}

/// Computes the reports asked for, each withholding its small groups.
pub async fn report(svc: &Service, req: ReportRequest) -> Result<ReportResponse, ApiError> {
    report_within(svc, req, false).await
}

/// As [`report`]; with `tenant_only`, every report (not only `time_spent`)
/// counts only the users of `req.tenant`, which must be set: what a client
/// scoped to that tenant is answered.
pub async fn report_within(
    svc: &Service,
    req: ReportRequest,
    tenant_only: bool,
) -> Result<ReportResponse, ApiError> {
    let (from, to) = day_range(&req.from, &req.to)?;
    if tenant_only && req.tenant.is_empty() {
        return Err(ApiError::Invalid("tenant: required".into()));
    }
    if !req.tenant.is_empty() && !crate::config::agents::valid_tenant(&req.tenant) {
        return Err(ApiError::Invalid(format!(
            "tenant {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
            req.tenant
        )));
    }
    let kinds: Vec<Kind> = if req.kind.is_empty() {
        Kind::ALL.to_vec()
    } else {
        vec![Kind::from_name(&req.kind).ok_or_else(|| {
            ApiError::Invalid(format!(
                "unknown report kind {:?}; known: {}",
                req.kind,
                Kind::ALL.map(Kind::name).join(", ")
            ))
        })?]
    };
    let k = i64::from(svc.privacy.config.report_min_users);
    let queries: Vec<Aggregate> = kinds.iter().flat_map(|k| k.queries()).collect();
    let prefix = if tenant_only {
        format!("{}/", req.tenant)
    } else {
        String::new()
    };
    let mut answers = svc
        .store
        .aggregate_within(queries, from, to, prefix)
        .await?
        .into_iter();
    let mut next = move || answers.next();
    let groups = |a: Option<Aggregated>| match a {
        Some(Aggregated::Groups(rows)) => rows,
        _ => Vec::new(),
    };
    let mut reports = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let report = match kind {
            Kind::DistinctUsers => {
                let mut rows = groups(next());
                for total in &mut rows {
                    total.key = "(any)".into();
                }
                rows.extend(groups(next()));
                rows.retain(|r| r.count > 0);
                labelled(kind, rows, k)
            }
            Kind::AlertsByKind => match next() {
                Some(Aggregated::NoAlerts) => Report {
                    note: "this database has no alerts".into(),
                    ..kind.empty()
                },
                other => labelled(kind, groups(other), k),
            },
            Kind::SessionDurations => {
                let buckets = match next() {
                    Some(Aggregated::Buckets(b)) => b,
                    _ => Vec::new(),
                };
                let stats = match next() {
                    Some(Aggregated::Sessions(s)) => s,
                    _ => SessionStats::default(),
                };
                sessions_report(buckets, stats, k)
            }
            Kind::TimeSpent => time_spent_report(svc, &req, from, to, k).await?,
            _ => labelled(kind, groups(next()), k),
        };
        reports.push(report);
    }
    Ok(ReportResponse {
        from: Timestamp::from_unix(from),
        to: Timestamp::from_unix(to),
        min_users: k,
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, count: i64, users: i64) -> GroupRow {
        GroupRow {
            key: key.into(),
            count,
            users,
        }
    }

    #[test]
    fn rows_about_fewer_than_k_users_are_withheld_and_counted() {
        let (kept, withheld) = suppress(
            vec![
                row("IT", 100, 40),
                row("LI", 30, 1),
                row("FR", 9, 5),
                row("VA", 2, 4),
            ],
            5,
        );
        let keys: Vec<&str> = kept.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["IT", "FR"]);
        assert_eq!(withheld, 2);
        // Many events by one user are still one user.
        let (kept, withheld) = suppress(vec![row("x", 1000, 1)], 2);
        assert!(kept.is_empty());
        assert_eq!(withheld, 1);
    }

    #[test]
    fn session_stats_are_withheld_below_k() {
        let few = SessionStats {
            sessions: 9,
            users: 4,
            median: Some(3600),
            p90: Some(7200),
        };
        let r = sessions_report(vec![(1, 9, 4)], few, 5);
        assert!(r.stats.is_empty() && r.stats_suppressed);
        assert!(r.rows.is_empty());
        assert_eq!(r.suppressed_rows, 1);
        let many = SessionStats { users: 5, ..few };
        let r = sessions_report(vec![(1, 9, 5)], many, 5);
        assert_eq!(r.rows[0].key, "1h–2h");
        assert!(r.stats.contains(&ReportStat {
            name: "median_seconds".into(),
            value: 3600
        }));
    }

    #[test]
    fn ranges_widen_to_whole_days_and_are_checked() {
        let t = |s: i64| Timestamp::from_unix(s);
        assert_eq!(
            day_range(&t(DAY + 5), &t(3 * DAY - 5)).unwrap(),
            (DAY, 3 * DAY)
        );
        assert_eq!(day_range(&t(DAY), &t(2 * DAY)).unwrap(), (DAY, 2 * DAY));
        assert!(day_range(&t(2 * DAY), &t(DAY)).is_err());
        assert!(day_range(&Timestamp::default(), &t(DAY)).is_err());
        assert!(day_range(&t(0), &t((MAX_RANGE_DAYS + 1) * DAY)).is_err());
    }

    #[test]
    fn bucket_labels_read_as_ranges() {
        let labels: Vec<String> = (0..=SESSION_BUCKETS.len())
            .map(session_bucket_label)
            .collect();
        assert_eq!(
            labels,
            ["under 1h", "1h–2h", "2h–4h", "4h–8h", "8h–1d", "1d–7d", "over 7d"]
        );
    }

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("nope"), None);
    }
}
