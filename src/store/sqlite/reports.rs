//! The report queries: aggregates over a time range `[from, to)` (Unix
//! seconds), grouped in SQL. Each row carries the number of distinct users
//! behind it so the caller can withhold the ones that would single someone
//! out. No query here returns a username, a device ID or a per-user row.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::model::{Aggregate, Aggregated, GroupRow, LoginColumn, SessionStats, SESSION_BUCKETS};

/// Answers one aggregate, over the users whose names start with `prefix`
/// (a tenant's `T/`) when it is not empty.
pub fn aggregate(
    conn: &Connection,
    q: &Aggregate,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Aggregated, StoreError> {
    Ok(match q {
        Aggregate::EventsPerDay(t) => {
            Aggregated::Groups(events_per_day(conn, t, from, to, prefix)?)
        }
        Aggregate::LoginsBy(c) => Aggregated::Groups(logins_by(conn, *c, from, to, prefix)?),
        Aggregate::EventsByType => Aggregated::Groups(events_by_type(conn, from, to, prefix)?),
        Aggregate::EventsTotal => Aggregated::Groups(vec![events_total(conn, from, to, prefix)?]),
        Aggregate::NewDevicesPerDay => {
            Aggregated::Groups(new_devices_per_day(conn, from, to, prefix)?)
        }
        Aggregate::AlertsByKind => match alerts_by_kind(conn, from, to, prefix)? {
            Some(rows) => Aggregated::Groups(rows),
            None => Aggregated::NoAlerts,
        },
        Aggregate::SessionBuckets => Aggregated::Buckets(session_buckets(conn, from, to, prefix)?),
        Aggregate::SessionStats => Aggregated::Sessions(session_stats(conn, from, to, prefix)?),
    })
}

/// The condition keeping the rows of users whose names start with parameter
/// `?n`, or nothing when there is no prefix: the unscoped queries stay as
/// they were.
fn within(prefix: &str, n: usize) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(" AND user_id IN (SELECT id FROM users WHERE substr(name, 1, length(?{n})) = ?{n})")
    }
}

/// The parameters: `first`, then the prefix when there is one.
fn with_prefix<'a>(
    mut first: Vec<&'a dyn rusqlite::ToSql>,
    prefix: &'a &str,
) -> Vec<&'a dyn rusqlite::ToSql> {
    if !prefix.is_empty() {
        first.push(prefix);
    }
    first
}

fn grouped(
    conn: &Connection,
    sql: &str,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    let sql = sql.replace("{within}", &within(prefix, 3));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(&*with_prefix(vec![&from, &to], &prefix), |r| {
        Ok(GroupRow {
            key: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            count: r.get(1)?,
            users: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Events of one log type per UTC day.
pub fn events_per_day(
    conn: &Connection,
    log_type: &str,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT date(ts, 'unixepoch'), count(*), count(DISTINCT user_id) FROM user_logs
         WHERE ts >= ?1 AND ts < ?2 AND log_type = ?3{}
         GROUP BY 1 ORDER BY 1",
        within(prefix, 4)
    ))?;
    let params = with_prefix(vec![&from, &to, &log_type], &prefix);
    let rows = stmt.query_map(&*params, |r| {
        Ok(GroupRow {
            key: r.get(0)?,
            count: r.get(1)?,
            users: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Logins grouped by one column of the log, largest groups first.
pub fn logins_by(
    conn: &Connection,
    column: LoginColumn,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    // The column comes from a closed enum, never from the request.
    let sql = match column {
        LoginColumn::Service => {
            "SELECT ifnull(service, ''), count(*), count(DISTINCT user_id) FROM user_logs
             WHERE ts >= ?1 AND ts < ?2 AND log_type = 'login'{within}
             GROUP BY 1 ORDER BY 2 DESC, 1"
        }
        LoginColumn::Zone => {
            "SELECT ifnull(zone, ''), count(*), count(DISTINCT user_id) FROM user_logs
             WHERE ts >= ?1 AND ts < ?2 AND log_type = 'login'{within}
             GROUP BY 1 ORDER BY 2 DESC, 1"
        }
        LoginColumn::Browser => {
            "SELECT ifnull(browser, ''), count(*), count(DISTINCT user_id) FROM user_logs
             WHERE ts >= ?1 AND ts < ?2 AND log_type = 'login'{within}
             GROUP BY 1 ORDER BY 2 DESC, 1"
        }
        LoginColumn::Os => {
            "SELECT ifnull(os, ''), count(*), count(DISTINCT user_id) FROM user_logs
             WHERE ts >= ?1 AND ts < ?2 AND log_type = 'login'{within}
             GROUP BY 1 ORDER BY 2 DESC, 1"
        }
    };
    grouped(conn, sql, from, to, prefix)
}

/// Events per log type, largest first.
pub fn events_by_type(
    conn: &Connection,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    grouped(
        conn,
        "SELECT log_type, count(*), count(DISTINCT user_id) FROM user_logs
         WHERE ts >= ?1 AND ts < ?2{within}
         GROUP BY 1 ORDER BY 2 DESC, 1",
        from,
        to,
        prefix,
    )
}

/// Events of any type and distinct users with any event, keyed `""`.
pub fn events_total(
    conn: &Connection,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<GroupRow, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT count(*), count(DISTINCT user_id) FROM user_logs WHERE ts >= ?1 AND ts < ?2{}",
            within(prefix, 3)
        ))?
        .query_row(&*with_prefix(vec![&from, &to], &prefix), |r| {
            Ok(GroupRow {
                key: String::new(),
                count: r.get(0)?,
                users: r.get(1)?,
            })
        })?)
}

/// Devices first seen per UTC day.
pub fn new_devices_per_day(
    conn: &Connection,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    grouped(
        conn,
        "SELECT date(first_seen, 'unixepoch'), count(*), count(DISTINCT user_id) FROM devices
         WHERE first_seen >= ?1 AND first_seen < ?2{within}
         GROUP BY 1 ORDER BY 1",
        from,
        to,
        prefix,
    )
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Alerts raised per kind, or `None` when this database has no alerts table.
pub fn alerts_by_kind(
    conn: &Connection,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Option<Vec<GroupRow>>, StoreError> {
    if !table_exists(conn, "alerts")? {
        return Ok(None);
    }
    grouped(
        conn,
        "SELECT kind, count(*), count(DISTINCT user_id) FROM alerts
         WHERE created >= ?1 AND created < ?2{within}
         GROUP BY 1 ORDER BY 2 DESC, 1",
        from,
        to,
        prefix,
    )
    .map(Some)
}

/// Each login followed by a logout of the same user and service, with no
/// other login or logout of that user and service between them, as
/// `(user_id, seconds)`. Only pairs with both ends inside the range count.
const SESSIONS: &str = "
    WITH ev AS (
        SELECT user_id, ts, log_type,
               lead(log_type) OVER w AS next_type,
               lead(ts) OVER w AS next_ts
        FROM user_logs
        WHERE ts >= ?1 AND ts < ?2 AND log_type IN ('login', 'logout'){within}
        WINDOW w AS (PARTITION BY user_id, ifnull(service, '') ORDER BY ts, seq)
    ),
    s AS (
        SELECT user_id, next_ts - ts AS d FROM ev
        WHERE log_type = 'login' AND next_type = 'logout'
    )";

/// Login → logout pairs per length bucket: the key is the bucket's index in
/// [`SESSION_BUCKETS`] (its length means "longer than the last bound").
pub fn session_buckets(
    conn: &Connection,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Vec<(usize, i64, i64)>, StoreError> {
    let mut case = String::from("CASE");
    for (i, bound) in SESSION_BUCKETS.iter().enumerate() {
        case.push_str(&format!(" WHEN d < {bound} THEN {i}"));
    }
    case.push_str(&format!(" ELSE {} END", SESSION_BUCKETS.len()));
    let sessions = SESSIONS.replace("{within}", &within(prefix, 3));
    let sql = format!(
        "{sessions}
         SELECT {case} AS bucket, count(*), count(DISTINCT user_id) FROM s
         GROUP BY bucket ORDER BY bucket"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(&*with_prefix(vec![&from, &to], &prefix), |r| {
        Ok((r.get::<_, i64>(0)? as usize, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many pairs, how many distinct users, and the median and 90th
/// percentile length (nearest rank), all in SQL.
pub fn session_stats(
    conn: &Connection,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<SessionStats, StoreError> {
    let sessions = SESSIONS.replace("{within}", &within(prefix, 3));
    let sql = format!(
        "{sessions},
         n AS (SELECT count(*) AS c, count(DISTINCT user_id) AS u FROM s)
         SELECT n.c, n.u,
             (SELECT d FROM s ORDER BY d LIMIT 1 OFFSET (SELECT (c - 1) / 2 FROM n)),
             (SELECT d FROM s ORDER BY d LIMIT 1
                  OFFSET (SELECT max(0, (c * 9 + 9) / 10 - 1) FROM n))
         FROM n"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(&*with_prefix(vec![&from, &to], &prefix), |r| {
            Ok(SessionStats {
                sessions: r.get(0)?,
                users: r.get(1)?,
                median: r.get(2)?,
                p90: r.get(3)?,
            })
        })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogRecord;
    use crate::store::sqlite::ops::insert_log;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        c
    }

    fn log(c: &Connection, user: &str, ts: i64, log_type: &str, service: &str) {
        insert_log(
            c,
            &LogRecord {
                username: user.into(),
                ts,
                log_type: log_type.into(),
                service: service.into(),
                ..Default::default()
            },
        )
        .unwrap();
    }

    #[test]
    fn per_day_groups_count_events_and_distinct_users() {
        let c = db();
        let day = 86_400;
        log(&c, "a", 10 * day, "login", "mail");
        log(&c, "a", 10 * day + 60, "login", "mail");
        log(&c, "b", 10 * day + 3600, "login", "web");
        log(&c, "b", 11 * day, "login", "web");
        log(&c, "c", 11 * day, "login_failure", "web");
        log(&c, "c", 12 * day, "login", "web");
        let rows = events_per_day(&c, "login", 10 * day, 12 * day, "").unwrap();
        assert_eq!(
            rows,
            vec![
                GroupRow {
                    key: "1970-01-11".into(),
                    count: 3,
                    users: 2
                },
                GroupRow {
                    key: "1970-01-12".into(),
                    count: 1,
                    users: 1
                },
            ]
        );
        let by_service = logins_by(&c, LoginColumn::Service, 0, 100 * day, "").unwrap();
        assert_eq!(by_service[0].key, "web");
        assert_eq!((by_service[0].count, by_service[0].users), (3, 2));
        let total = events_total(&c, 0, 100 * day, "").unwrap();
        assert_eq!((total.count, total.users), (6, 3));
        let types = events_by_type(&c, 0, 100 * day, "").unwrap();
        assert_eq!((types[0].key.as_str(), types[0].count), ("login", 5));
    }

    #[test]
    fn sessions_pair_a_login_with_the_next_logout_of_that_service() {
        let c = db();
        let h = 3600;
        // a: one 2h session on mail, with a web login in between that does not break it.
        log(&c, "a", 0, "login", "mail");
        log(&c, "a", h, "login", "web");
        log(&c, "a", 2 * h, "logout", "mail");
        // b: a login never closed, then a 30-minute session.
        log(&c, "b", 0, "login", "mail");
        log(&c, "b", 10 * h, "login", "mail");
        log(&c, "b", 10 * h + 1800, "logout", "mail");
        // c: a logout with no login before it.
        log(&c, "c", 0, "logout", "mail");
        let buckets = session_buckets(&c, 0, 100 * h, "").unwrap();
        assert_eq!(buckets, vec![(0, 1, 1), (2, 1, 1)]);
        let stats = session_stats(&c, 0, 100 * h, "").unwrap();
        assert_eq!(
            stats,
            SessionStats {
                sessions: 2,
                users: 2,
                median: Some(1800),
                p90: Some(2 * h)
            }
        );
        let empty = session_stats(&c, 1000 * h, 2000 * h, "").unwrap();
        assert_eq!((empty.sessions, empty.median), (0, None));
    }
}
