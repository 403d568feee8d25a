//! The report queries on PostgreSQL: aggregates over a time range
//! `[from, to)`, grouped in SQL, from one read-only snapshot. Each row
//! carries the number of distinct users behind it so that the caller can
//! withhold the ones that would single someone out.

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, IsolationLevel, Row};

use super::{pg_error, PgStore};
use crate::model::{Aggregate, Aggregated, GroupRow, LoginColumn, SessionStats, SESSION_BUCKETS};
use crate::store::types::StoreError;

impl PgStore {
    pub async fn aggregate(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
    ) -> Result<Vec<Aggregated>, StoreError> {
        self.aggregate_within(queries, from, to, String::new())
            .await
    }

    /// As `aggregate`, over the users whose names start with `user_prefix`
    /// (a tenant's `T/`) when it is not empty.
    pub async fn aggregate_within(
        &self,
        queries: Vec<Aggregate>,
        from: i64,
        to: i64,
        user_prefix: String,
    ) -> Result<Vec<Aggregated>, StoreError> {
        let mut client = self.reader().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let mut out = Vec::with_capacity(queries.len());
        for q in &queries {
            out.push(
                aggregate(&*tx, q, from, to, &user_prefix)
                    .await
                    .map_err(pg_error)?,
            );
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(out)
    }
}

fn groups(rows: &[Row]) -> Vec<GroupRow> {
    rows.iter()
        .map(|r| GroupRow {
            key: r.get::<_, Option<String>>(0).unwrap_or_default(),
            count: r.get(1),
            users: r.get(2),
        })
        .collect()
}

/// Each login followed by a logout of the same user and service, as
/// `(user_id, seconds)`, as on SQLite.
const SESSIONS: &str = "
    WITH ev AS (
        SELECT user_id, ts, log_type,
               lead(log_type) OVER w AS next_type,
               lead(ts) OVER w AS next_ts
        FROM user_logs
        WHERE ts >= $1 AND ts < $2 AND log_type IN ('login', 'logout'){within}
        WINDOW w AS (PARTITION BY user_id, coalesce(service, '') ORDER BY ts, seq)
    ),
    s AS (
        SELECT user_id, next_ts - ts AS d FROM ev
        WHERE log_type = 'login' AND next_type = 'logout'
    )";

const DAY_OF: &str = "to_char(to_timestamp({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";

/// The condition keeping the rows of users whose names start with parameter
/// `$n`, or nothing when there is no prefix: the unscoped queries stay as
/// they were.
fn within(prefix: &str, n: usize) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(" AND user_id IN (SELECT id FROM users WHERE starts_with(name, ${n}))")
    }
}

async fn aggregate(
    tx: &impl GenericClient,
    q: &Aggregate,
    from: i64,
    to: i64,
    prefix: &str,
) -> Result<Aggregated, tokio_postgres::Error> {
    let day = |col: &str| DAY_OF.replace("{}", col);
    // `$1`, `$2` (and a third), then the prefix when there is one.
    let w3 = within(prefix, 3);
    let w4 = within(prefix, 4);
    let prefix_param: &(dyn ToSql + Sync) = &prefix;
    let two: Vec<&(dyn ToSql + Sync)> = if prefix.is_empty() {
        vec![&from, &to]
    } else {
        vec![&from, &to, prefix_param]
    };
    let sessions = SESSIONS.replace("{within}", &w3);
    Ok(match q {
        Aggregate::EventsPerDay(t) => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT {}, count(*), count(DISTINCT user_id) FROM user_logs
                     WHERE ts >= $1 AND ts < $2 AND log_type = $3{w4}
                     GROUP BY 1 ORDER BY 1",
                    day("ts")
                ),
                &if prefix.is_empty() {
                    vec![&from as &(dyn ToSql + Sync), &to, t]
                } else {
                    vec![&from as &(dyn ToSql + Sync), &to, t, prefix_param]
                },
            )
            .await?,
        )),
        Aggregate::LoginsBy(c) => {
            let column = match c {
                LoginColumn::Service => "service",
                LoginColumn::Zone => "zone",
                LoginColumn::Browser => "browser",
                LoginColumn::Os => "os",
            };
            Aggregated::Groups(groups(
                &tx.query(
                    &format!(
                        "SELECT coalesce({column}, '') COLLATE \"C\", count(*),
                                count(DISTINCT user_id)
                         FROM user_logs
                         WHERE ts >= $1 AND ts < $2 AND log_type = 'login'{w3}
                         GROUP BY 1 ORDER BY 2 DESC, 1"
                    ),
                    &two,
                )
                .await?,
            ))
        }
        Aggregate::EventsByType => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT log_type COLLATE \"C\", count(*), count(DISTINCT user_id)
                     FROM user_logs
                     WHERE ts >= $1 AND ts < $2{w3}
                     GROUP BY 1 ORDER BY 2 DESC, 1"
                ),
                &two,
            )
            .await?,
        )),
        Aggregate::EventsTotal => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT ''::text, count(*), count(DISTINCT user_id) FROM user_logs
                     WHERE ts >= $1 AND ts < $2{w3}"
                ),
                &two,
            )
            .await?,
        )),
        Aggregate::NewDevicesPerDay => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT {}, count(*), count(DISTINCT user_id) FROM devices
                     WHERE first_seen >= $1 AND first_seen < $2{w3}
                     GROUP BY 1 ORDER BY 1",
                    day("first_seen")
                ),
                &two,
            )
            .await?,
        )),
        Aggregate::AlertsByKind => Aggregated::Groups(groups(
            &tx.query(
                &format!(
                    "SELECT kind COLLATE \"C\", count(*), count(DISTINCT user_id) FROM alerts
                     WHERE created >= $1 AND created < $2{w3}
                     GROUP BY 1 ORDER BY 2 DESC, 1"
                ),
                &two,
            )
            .await?,
        )),
        Aggregate::SessionBuckets => {
            let mut case = String::from("CASE");
            for (i, bound) in SESSION_BUCKETS.iter().enumerate() {
                case.push_str(&format!(" WHEN d < {bound} THEN {i}"));
            }
            case.push_str(&format!(" ELSE {} END", SESSION_BUCKETS.len()));
            let rows = tx
                .query(
                    &format!(
                        "{sessions}
                         SELECT ({case})::BIGINT AS bucket, count(*), count(DISTINCT user_id)
                         FROM s GROUP BY bucket ORDER BY bucket"
                    ),
                    &two,
                )
                .await?;
            Aggregated::Buckets(
                rows.iter()
                    .map(|r| (r.get::<_, i64>(0) as usize, r.get(1), r.get(2)))
                    .collect(),
            )
        }
        Aggregate::SessionStats => {
            let r = tx
                .query_one(
                    &format!(
                        "{sessions},
                         n AS (SELECT count(*) AS c, count(DISTINCT user_id) AS u FROM s)
                         SELECT n.c, n.u,
                             (SELECT d FROM s ORDER BY d LIMIT 1
                                  OFFSET (SELECT (c - 1) / 2 FROM n)),
                             (SELECT d FROM s ORDER BY d LIMIT 1
                                  OFFSET (SELECT GREATEST(0, (c * 9 + 9) / 10 - 1) FROM n))
                         FROM n"
                    ),
                    &two,
                )
                .await?;
            Aggregated::Sessions(SessionStats {
                sessions: r.get(0),
                users: r.get(1),
                median: r.get(2),
                p90: r.get(3),
            })
        }
    })
}
