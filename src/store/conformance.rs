//! The storage interface's behaviour, written once as functions of a backend
//! and run on every backend: each backend's tests call
//! [`storage_conformance!`](crate::storage_conformance) with a function that
//! opens a fresh, empty database of that backend.
//!
//! Each case states one promise of [`Store`] and checks it through the
//! interface alone: what is written reads back, a failed write leaves nothing
//! behind, the history a detection sees is the one before its entry, the
//! outbox hands out each delivery at least once and not twice under a lease,
//! retention and erasure delete exactly what they should.

#![cfg(test)]

use std::sync::{Arc, Mutex};

use crate::config::DbConfig;
use crate::model::{
    Aggregate, Aggregated, AlertDraft, AlertKind, DeviceRecord, GroupRow, History, LogRecord,
    LoginColumn, Record,
};
use crate::store::{self, Detections, Store};

/// A fresh database of one backend, and what keeps it alive.
pub struct Subject {
    pub store: Store,
    pub db: DbConfig,
    /// A second, empty database of the same backend, not opened.
    pub another: DbConfig,
    pub keep: Box<dyn std::any::Any + Send>,
}

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
/// A time well inside any retention window of the cases.
const T0: i64 = 1_800_000_000 - 1_800_000_000 % DAY;

fn device(id: &str, zone: &str) -> DeviceRecord {
    DeviceRecord {
        sealed_id: id.as_bytes().to_vec(),
        zone: zone.into(),
        browser: "Firefox".into(),
        os: "Linux".into(),
        mobile: false,
        user_agent: String::new(),
    }
}

fn entry(user: &str, ts: i64, log_type: &str, dev: Option<DeviceRecord>) -> LogRecord {
    LogRecord {
        username: user.into(),
        ts,
        log_type: log_type.into(),
        service: "mail".into(),
        device: dev,
        ..Default::default()
    }
}

/// Detections that note the history they were shown and raise one
/// `new_device` alert when the entry's device is new to a user who logged
/// in before (the monitor's rule, reduced to what the store must supply).
fn noting(seen: &Arc<Mutex<Vec<History>>>, sinks: &[&'static str]) -> Detections {
    let seen = seen.clone();
    Detections {
        burst_window: HOUR,
        sinks: Arc::new(sinks.to_vec()),
        rules: Box::new(move |h, e| {
            seen.lock().unwrap().push(h.clone());
            if e.has_device && !h.device_known && h.last_login.is_some() {
                vec![AlertDraft::new(AlertKind::NewDevice, e)]
            } else {
                Vec::new()
            }
        }),
    }
}

/// Log entries, devices and last logins read back as written.
pub async fn writes_read_back(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    let d1 = device("d1", "IT");
    for (ts, t) in [
        (T0, "login"),
        (T0 + 2 * HOUR, "login"),
        (T0 + HOUR, "logout"),
    ] {
        store
            .record_log(entry("u", ts, t, Some(d1.clone())), None)
            .await
            .unwrap();
    }
    store
        .record_log(entry("u", T0 + 3 * HOUR, "password_change", None), None)
        .await
        .unwrap();

    let logs = store.user_logs("u".into(), i64::MIN, 10).await.unwrap();
    let times: Vec<i64> = logs.iter().map(|l| l.ts).collect();
    assert_eq!(times, [T0 + 3 * HOUR, T0 + 2 * HOUR, T0 + HOUR, T0]);
    assert_eq!(
        logs[1],
        entry("u", T0 + 2 * HOUR, "login", Some(d1.clone()))
    );
    assert_eq!(logs[0].device, None);
    assert_eq!(
        store
            .user_logs("u".into(), T0 + HOUR, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .user_logs("u".into(), T0 + HOUR, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    let logins = store
        .fold_logs(
            "u".into(),
            i64::MIN,
            Some("login".into()),
            10,
            0,
            |n, row| {
                assert_eq!(row.log_type, "login");
                *n += 1;
                Ok(())
            },
        )
        .await
        .unwrap();
    assert_eq!(logins, 2);
    assert!(store
        .user_logs("nobody".into(), i64::MIN, 10)
        .await
        .unwrap()
        .is_empty());

    let devices = store.user_devices("u".into()).await.unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(
        (d.first_seen, d.last_seen, d.num_logins),
        (T0, T0 + 2 * HOUR, 2)
    );
    assert_eq!(d.device, d1);
    assert!(store
        .device_known("u".into(), b"d1".to_vec())
        .await
        .unwrap());
    assert!(!store
        .device_known("u".into(), b"d2".to_vec())
        .await
        .unwrap());
    assert!(!store
        .device_known("v".into(), b"d1".to_vec())
        .await
        .unwrap());

    store
        .set_last_login("u".into(), "mail".into(), T0)
        .await
        .unwrap();
    store
        .set_last_login("u".into(), "mail".into(), T0 - DAY)
        .await
        .unwrap();
    store
        .set_last_login("u".into(), "web".into(), T0 - 2 * DAY)
        .await
        .unwrap();
    assert_eq!(
        store.last_logins("u".into(), None).await.unwrap(),
        [("mail".to_string(), T0), ("web".to_string(), T0 - 2 * DAY)],
        "an older time never replaces a newer one"
    );
    assert_eq!(
        store
            .last_logins("u".into(), Some("web".into()))
            .await
            .unwrap(),
        [("web".to_string(), T0 - 2 * DAY)]
    );
}

/// The detections see the user's history before their entry: a user's first
/// login has no earlier login and no known device (so it is not a "new
/// device" for a known user), the next from the same device knows both.
pub async fn detections_see_the_history_before_the_entry(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sinks = ["log"];
    let d1 = || Some(device("d1", "IT"));
    for (ts, dev, raised) in [
        (T0, d1(), 0),
        (T0 + HOUR, d1(), 0),
        (T0 + 2 * HOUR, Some(device("d2", "FR")), 1),
    ] {
        let rec = entry("u", ts, "login", dev);
        let n = store
            .record_log(rec, Some(noting(&seen, &sinks)))
            .await
            .unwrap();
        assert_eq!(n, raised, "alerts raised at {ts}");
    }
    for _ in 0..3 {
        store
            .record_log(
                entry("u", T0 + 3 * HOUR, "login_failure", None),
                Some(noting(&seen, &sinks)),
            )
            .await
            .unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], History::default(), "the first login knows nothing");
    assert_eq!(
        seen[1],
        History {
            last_login: Some(T0),
            device_known: true,
            country_known: true,
            ..Default::default()
        }
    );
    assert_eq!(
        seen[2],
        History {
            last_login: Some(T0 + HOUR),
            device_known: false,
            country_known: false,
            ..Default::default()
        }
    );
    let failures: Vec<u64> = seen[3..].iter().map(|h| h.failures_in_window).collect();
    assert_eq!(failures, [0, 1, 2], "failures inside the burst window");
    let alerts = store.user_alerts("u".into(), i64::MIN, 10).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].0.kind, AlertKind::NewDevice);
    assert_eq!(alerts[0].0.username, "u");
    assert_eq!(alerts[0].0.details.country, "FR");
}

/// A write that fails changes nothing, and takes no other write of its
/// group down with it.
pub async fn a_failed_write_leaves_nothing(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    store
        .record_log(entry("u", T0, "login", Some(device("d1", "IT"))), None)
        .await
        .unwrap();
    // The same sink twice: the second delivery row collides with the first,
    // after the entry, its device, its country and the alert were written.
    let mut writes = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let bad = i == 7;
        let d = if bad { "bad" } else { "good" };
        let sinks: &[&'static str] = if bad { &["log", "log"] } else { &["log"] };
        let detect = noting(&seen, sinks);
        let user = if bad {
            "u".to_string()
        } else {
            format!("g{i}")
        };
        writes.push(tokio::spawn(async move {
            let rec = entry(&user, T0 + HOUR, "login", Some(device(d, "NZ")));
            (bad, store.record_log(rec, Some(detect)).await)
        }));
    }
    for w in writes {
        let (bad, result) = w.await.unwrap();
        assert_eq!(result.is_err(), bad, "{result:?}");
    }
    assert_eq!(
        store
            .user_logs("u".into(), i64::MIN, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.user_devices("u".into()).await.unwrap().len(), 1);
    assert!(!store
        .device_known("u".into(), b"bad".to_vec())
        .await
        .unwrap());
    assert!(store
        .user_alerts("u".into(), i64::MIN, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.claim_due(T0, 60, 100).await.unwrap().len(), 0);
    for i in (0..16).filter(|i| *i != 7) {
        assert_eq!(
            store
                .user_logs(format!("g{i}"), i64::MIN, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    // The country of the failed entry was not kept either: the next entry
    // from there is still in a new country.
    let seen_before = seen.lock().unwrap().len();
    store
        .record_log(
            entry("u", T0 + 2 * HOUR, "login", Some(device("d1", "NZ"))),
            Some(noting(&seen, &["log"])),
        )
        .await
        .unwrap();
    assert!(!seen.lock().unwrap()[seen_before].country_known);
}

/// Concurrent entries of one new user from one new device: one user, one
/// device with every login counted.
pub async fn concurrent_first_logins_make_one_device(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    let mut writes = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        writes.push(tokio::spawn(async move {
            let rec = entry("new", T0 + i, "login", Some(device("d", "IT")));
            store.record_log(rec, None).await
        }));
    }
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let devices = store.user_devices("new".into()).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].num_logins, 20);
    assert_eq!(
        store
            .user_logs("new".into(), i64::MIN, 100)
            .await
            .unwrap()
            .len(),
        20
    );
}

/// A user's login from a new device, stored twice at the same moment (two
/// replicas, two connections): the detections of one see the other's entry,
/// and one alert is raised, not two.
pub async fn concurrent_logins_from_a_new_device_raise_one_alert(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    store
        .record_log(entry("u", T0, "login", Some(device("old", "IT"))), None)
        .await
        .unwrap();
    for round in 0..5 {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut writes = Vec::new();
        for _ in 0..4 {
            let (store, seen) = (store.clone(), seen.clone());
            let dev = format!("new{round}");
            writes.push(tokio::spawn(async move {
                let rec = entry("u", T0 + HOUR, "login", Some(device(&dev, "IT")));
                store.record_log(rec, Some(noting(&seen, &["log"]))).await
            }));
        }
        let mut raised = 0;
        for w in writes {
            raised += w.await.unwrap().unwrap();
        }
        assert_eq!(raised, 1, "round {round}");
    }
    assert_eq!(
        store
            .user_alerts("u".into(), i64::MIN, 100)
            .await
            .unwrap()
            .len(),
        5
    );
}

/// Many writers at once, several per user: every entry stored once, each
/// device's count and each user's alerts as if the entries had come one at
/// a time (every detection saw every earlier entry of its user).
pub async fn concurrent_writers_store_each_entry_once(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    const USERS: usize = 6;
    const PER_USER: usize = 12;
    for u in 0..USERS {
        store
            .record_log(
                entry(&format!("u{u}"), T0, "login", Some(device("old", "IT"))),
                None,
            )
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut writes = Vec::new();
    for k in 0..PER_USER {
        for u in 0..USERS {
            let (store, seen) = (store.clone(), seen.clone());
            writes.push(tokio::spawn(async move {
                // Every user: two new devices, each used PER_USER / 2 times.
                let rec = entry(
                    &format!("u{u}"),
                    T0 + HOUR,
                    "login",
                    Some(device(&format!("new{}", k % 2), "IT")),
                );
                store.record_log(rec, Some(noting(&seen, &["log"]))).await
            }));
        }
    }
    let mut raised = 0;
    for w in writes {
        raised += w.await.unwrap().unwrap();
    }
    assert_eq!(
        raised,
        2 * USERS,
        "one new_device alert per user and new device"
    );
    for u in 0..USERS {
        let name = format!("u{u}");
        let logs = store.user_logs(name.clone(), i64::MIN, 1000).await.unwrap();
        assert_eq!(logs.len(), 1 + PER_USER, "{name}");
        let mut devices: Vec<(Vec<u8>, i64)> = store
            .user_devices(name.clone())
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.device.sealed_id, d.num_logins))
            .collect();
        devices.sort();
        assert_eq!(
            devices,
            [
                (b"new0".to_vec(), (PER_USER / 2) as i64),
                (b"new1".to_vec(), (PER_USER / 2) as i64),
                (b"old".to_vec(), 1),
            ],
            "{name}"
        );
        let alerts = store
            .user_alerts(name.clone(), i64::MIN, 100)
            .await
            .unwrap();
        assert_eq!(alerts.len(), 2, "{name}");
    }
}

/// Each delivery is handed out at least once per sink: a claim leases it,
/// an unrecorded claim comes back after its lease, a recorded one does not.
pub async fn the_outbox_delivers_at_least_once(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sinks = ["log", "webhook"];
    store
        .record_log(entry("u", T0, "login", Some(device("d1", "IT"))), None)
        .await
        .unwrap();
    assert_eq!(store.next_due().await.unwrap(), None);
    let raised = store
        .record_log(
            entry("u", T0 + HOUR, "login", Some(device("d2", "IT"))),
            Some(noting(&seen, &sinks)),
        )
        .await
        .unwrap();
    assert_eq!(raised, 1);
    let now = T0 + 2 * HOUR;
    let lease = 60;
    assert!(store.next_due().await.unwrap().unwrap() <= now);

    let first = store.claim_due(now, lease, 10).await.unwrap();
    let mut claimed: Vec<&str> = first.iter().map(|d| d.sink.as_str()).collect();
    claimed.sort();
    assert_eq!(claimed, ["log", "webhook"]);
    assert!(first
        .iter()
        .all(|d| d.attempts == 0 && d.alert.username == "u"));
    assert!(
        store.claim_due(now, lease, 10).await.unwrap().is_empty(),
        "a leased delivery is not handed out twice"
    );
    let id = first[0].alert.id;
    store
        .mark_delivered(vec![(id, "log".into())], now - now % HOUR)
        .await
        .unwrap();
    // A claim given back is due at once, with its attempts unchanged; a
    // delivered one cannot be given back.
    store.release(id, "log".into(), now).await.unwrap();
    store.release(id, "webhook".into(), now).await.unwrap();
    let back = store.claim_due(now, lease, 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].sink.as_str(), back[0].attempts), ("webhook", 0));

    // The claimer of the webhook delivery died: after the lease it is due again.
    let again = store.claim_due(now + lease, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].sink, "webhook");
    store
        .mark_failed(
            id,
            "webhook".into(),
            "refused".into(),
            Some(now + 10 * lease),
        )
        .await
        .unwrap();
    assert!(store
        .claim_due(now + 2 * lease, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due().await.unwrap(), Some(now + 10 * lease));
    let retry = store.claim_due(now + 10 * lease, lease, 10).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempts, 1);
    store
        .mark_failed(id, "webhook".into(), "gone".into(), None)
        .await
        .unwrap();
    assert!(store
        .claim_due(i64::MAX / 2, lease, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.next_due().await.unwrap(), None);

    let alerts = store.user_alerts("u".into(), i64::MIN, 10).await.unwrap();
    let mut states: Vec<(String, String, i64, Option<String>)> = alerts[0]
        .1
        .iter()
        .map(|d| {
            (
                d.sink.clone(),
                d.state.clone(),
                d.attempts,
                d.last_error.clone(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("log".into(), "delivered".into(), 1, None),
            ("webhook".into(), "failed".into(), 2, Some("gone".into())),
        ]
    );
}

/// Retention deletes what is strictly older than its bounds, then the users
/// left with nothing.
pub async fn retention_deletes_strictly_before_its_bounds(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let logs_before = T0;
    let devices_before = T0 - 10 * DAY;
    // "old": everything just before the bounds; "edge": everything exactly at them.
    store
        .record_log(
            entry(
                "old",
                devices_before - HOUR,
                "login",
                Some(device("o", "IT")),
            ),
            None,
        )
        .await
        .unwrap();
    store
        .record_log(
            entry("old", logs_before - HOUR, "login", Some(device("o2", "IT"))),
            Some(noting(&seen, &["log"])),
        )
        .await
        .unwrap();
    store
        .record_log(
            entry("edge", devices_before, "login", Some(device("e", "IT"))),
            None,
        )
        .await
        .unwrap();
    store
        .record_log(entry("edge", logs_before, "login", None), None)
        .await
        .unwrap();
    store
        .set_last_login("keep".into(), "mail".into(), T0 - 400 * DAY)
        .await
        .unwrap();

    let d = store.prune(logs_before, devices_before).await.unwrap();
    assert_eq!(d.user_logs, 3, "{d:?}");
    assert_eq!(d.devices, 1, "{d:?}");
    assert_eq!(d.alerts, 1, "{d:?}");
    assert_eq!(d.users, 0, "old still has a device: {d:?}");
    assert_eq!(
        store
            .user_logs("edge".into(), i64::MIN, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.user_devices("edge".into()).await.unwrap().len(), 1);
    assert_eq!(store.user_devices("old".into()).await.unwrap().len(), 1);
    assert!(store
        .user_alerts("old".into(), i64::MIN, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .prune(logs_before, devices_before)
            .await
            .unwrap()
            .total(),
        0
    );

    // Later, the last device goes and its user with it; last logins stay.
    let d = store.prune(logs_before, logs_before).await.unwrap();
    assert_eq!((d.user_logs, d.devices, d.users), (0, 2, 1), "{d:?}");
    assert!(!store
        .device_known("old".into(), b"o2".to_vec())
        .await
        .unwrap());
    assert_eq!(
        store.last_logins("keep".into(), None).await.unwrap().len(),
        1
    );
}

/// Erasure deletes every row of one user, and only of that user.
pub async fn erasure_deletes_one_user_entirely(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for user in ["a", "b"] {
        store
            .record_log(entry(user, T0, "login", Some(device("d", "IT"))), None)
            .await
            .unwrap();
        store
            .record_log(
                entry(user, T0 + HOUR, "login", Some(device("d2", "IT"))),
                Some(noting(&seen, &["log"])),
            )
            .await
            .unwrap();
        store
            .set_last_login(user.into(), "mail".into(), T0)
            .await
            .unwrap();
    }
    let d = store.forget_user("a".into()).await.unwrap();
    assert_eq!(
        (d.user_logs, d.devices, d.last_logins, d.alerts, d.users),
        (2, 2, 1, 1, 1)
    );
    assert_eq!(store.forget_user("a".into()).await.unwrap().total(), 0);
    assert!(store
        .user_logs("a".into(), i64::MIN, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.user_devices("a".into()).await.unwrap().is_empty());
    assert!(!store.device_known("a".into(), b"d".to_vec()).await.unwrap());
    assert!(store
        .last_logins("a".into(), None)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .user_alerts("a".into(), i64::MIN, 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.claim_due(T0 + DAY, 60, 10).await.unwrap();
    assert!(due.iter().all(|d| d.alert.username == "b"));
    assert_eq!(due.len(), 1);
    // The user comes back as new: no history.
    seen.lock().unwrap().clear();
    store
        .record_log(
            entry("a", T0 + 2 * HOUR, "login", Some(device("d", "IT"))),
            Some(noting(&seen, &["log"])),
        )
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0], History::default());
    assert_eq!(
        store
            .user_logs("b".into(), i64::MIN, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.user_devices("b".into()).await.unwrap().len(), 2);
}

/// Unused accounts: request order, duplicates once, names never seen
/// included, a last login at the cutoff counts as use.
pub async fn unused_accounts_by_set(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    store
        .set_last_login("active".into(), "mail".into(), T0)
        .await
        .unwrap();
    store
        .set_last_login("stale".into(), "mail".into(), T0 - 100 * DAY)
        .await
        .unwrap();
    store
        .set_last_login("stale".into(), "web".into(), T0 - 50 * DAY)
        .await
        .unwrap();
    let names: Vec<String> = ["stale", "active", "never", "stale", "never"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        store
            .unused_accounts(names.clone(), T0 - 10 * DAY)
            .await
            .unwrap(),
        ["stale", "never"]
    );
    assert_eq!(
        store.unused_accounts(names, T0 - 50 * DAY).await.unwrap(),
        ["never"]
    );
    assert!(store
        .unused_accounts(Vec::new(), T0)
        .await
        .unwrap()
        .is_empty());
    let many: Vec<String> = (0..10_000).map(|i| format!("user{i}")).collect();
    assert_eq!(store.unused_accounts(many, T0).await.unwrap().len(), 10_000);
}

/// The summary's facts come from one read.
pub async fn the_overview_gathers_a_user(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    store
        .record_log(entry("u", T0, "login", Some(device("d1", "IT"))), None)
        .await
        .unwrap();
    store
        .record_log(
            entry("u", T0 + HOUR, "login", Some(device("d2", "FR"))),
            Some(noting(&seen, &["log"])),
        )
        .await
        .unwrap();
    store
        .record_log(entry("u", T0 + 2 * HOUR, "login_failure", None), None)
        .await
        .unwrap();
    store
        .set_last_login("u".into(), "mail".into(), T0)
        .await
        .unwrap();
    let o = store.user_overview("u".into(), T0, 10).await.unwrap();
    assert_eq!(o.last_login.unwrap().ts, T0 + HOUR);
    assert_eq!(o.devices.len(), 2);
    assert_eq!(o.devices[0].device.sealed_id, b"d2");
    assert_eq!(o.services, [("mail".to_string(), T0)]);
    assert_eq!(o.failures, 1);
    assert_eq!(o.recent_alerts.len(), 1);
    let none = store.user_overview("x".into(), T0, 10).await.unwrap();
    assert!(none.last_login.is_none() && none.devices.is_empty() && none.failures == 0);
}

/// Aggregates count events and distinct users, per group.
pub async fn aggregates_count_events_and_users(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    for (user, ts, zone) in [
        ("a", T0, "IT"),
        ("a", T0 + HOUR, "IT"),
        ("b", T0, "FR"),
        ("b", T0 + DAY, "IT"),
    ] {
        store
            .record_log(entry(user, ts, "login", Some(device(user, zone))), None)
            .await
            .unwrap();
    }
    store
        .record_log(entry("b", T0 + 2 * HOUR, "logout", None), None)
        .await
        .unwrap();
    // One alert, for a's new device; and an entry outside the range.
    let seen = Arc::new(Mutex::new(Vec::new()));
    store
        .record_log(
            entry("a", T0 + 3 * HOUR, "login", Some(device("a2", "IT"))),
            Some(noting(&seen, &["log"])),
        )
        .await
        .unwrap();
    store
        .record_log(entry("c", T0 + 3 * DAY, "login", None), None)
        .await
        .unwrap();
    let answers = store
        .aggregate(
            vec![
                Aggregate::EventsPerDay("login".into()),
                Aggregate::LoginsBy(LoginColumn::Zone),
                Aggregate::EventsTotal,
                Aggregate::SessionStats,
                Aggregate::EventsByType,
                Aggregate::NewDevicesPerDay,
                Aggregate::AlertsByKind,
                Aggregate::SessionBuckets,
                Aggregate::LoginsBy(LoginColumn::Browser),
            ],
            T0,
            T0 + 2 * DAY,
        )
        .await
        .unwrap();
    let day = |d: i64| {
        chrono::DateTime::from_timestamp(T0 + d * DAY, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string()
    };
    let g = |key: &str, count, users| GroupRow {
        key: key.into(),
        count,
        users,
    };
    assert_eq!(
        answers[0],
        Aggregated::Groups(vec![g(&day(0), 4, 2), g(&day(1), 1, 1)])
    );
    assert_eq!(
        answers[1],
        Aggregated::Groups(vec![g("IT", 4, 2), g("FR", 1, 1)])
    );
    assert_eq!(answers[2], Aggregated::Groups(vec![g("", 6, 2)]));
    match &answers[3] {
        Aggregated::Sessions(s) => {
            assert_eq!((s.sessions, s.users, s.median), (1, 1, Some(2 * HOUR)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        answers[4],
        Aggregated::Groups(vec![g("login", 5, 2), g("logout", 1, 1)])
    );
    assert_eq!(answers[5], Aggregated::Groups(vec![g(&day(0), 3, 2)]));
    assert_eq!(answers[6], Aggregated::Groups(vec![g("new_device", 1, 1)]));
    // The one pair lasted two hours: the bucket "under 4 hours".
    assert_eq!(answers[7], Aggregated::Buckets(vec![(2, 1, 1)]));
    assert_eq!(answers[8], Aggregated::Groups(vec![g("Firefox", 5, 2)]));
}

/// A bulk load stores entries as the live path does (device list, countries
/// seen), keeps the newest last login, and the size counts what is there.
pub async fn a_bulk_load_is_stored_as_the_server_stores(
    store: &Store,
    db: &DbConfig,
    _another: &DbConfig,
) {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut records = vec![
            Record::Log(entry("u", T0, "login", Some(device("d1", "IT")))),
            Record::Log(entry("u", T0 + HOUR, "login", Some(device("d1", "IT")))),
            Record::Log(entry("v", T0, "logout", None)),
            Record::LastLogin {
                username: "u".into(),
                service: "mail".into(),
                ts: T0,
            },
            Record::LastLogin {
                username: "u".into(),
                service: "mail".into(),
                ts: T0 - DAY,
            },
        ]
        .into_iter();
        let counts = store::bulk_load(&db, &mut records).unwrap();
        assert_eq!((counts.logs, counts.last_logins), (3, 2));
        let size = store::storage_size(&db).unwrap();
        assert_eq!((size.log_entries, size.users, size.devices), (3, 2, 1));
        assert!(size.total_bytes > 0 && size.user_logs_bytes > 0);
        let mut device = vec![Record::Device {
            username: "u".into(),
            row: crate::model::DeviceRow {
                device: device("d2", "IT"),
                first_seen: T0,
                last_seen: T0,
                num_logins: 1,
            },
        }]
        .into_iter();
        assert!(matches!(
            store::bulk_load(&db, &mut device),
            Err(store::BulkError::Unsupported(_))
        ));
    })
    .await
    .unwrap();
    let devices = store.user_devices("u".into()).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (
            devices[0].first_seen,
            devices[0].last_seen,
            devices[0].num_logins
        ),
        (T0, T0 + HOUR, 2)
    );
    assert_eq!(
        store.last_logins("u".into(), None).await.unwrap(),
        [("mail".to_string(), T0)]
    );
    // The countries seen came with the entries: the next login from there
    // is in a known country.
    let seen = Arc::new(Mutex::new(Vec::new()));
    store
        .record_log(
            entry("u", T0 + 2 * HOUR, "login", Some(device("d1", "IT"))),
            Some(noting(&seen, &["log"])),
        )
        .await
        .unwrap();
    let h = seen.lock().unwrap()[0].clone();
    assert!(h.country_known && h.device_known, "{h:?}");
}

/// Export gives every record in a data-only order; import into an empty
/// database gives the same export; import refuses a database with data.
pub async fn export_and_import_round_trip(store: &Store, db: &DbConfig, another: &DbConfig) {
    for (user, ts, dev) in [("b", T0, "d1"), ("a", T0 + HOUR, "d2"), ("a", T0, "d3")] {
        store
            .record_log(entry(user, ts, "login", Some(device(dev, "IT"))), None)
            .await
            .unwrap();
    }
    store
        .set_last_login("a".into(), "mail".into(), T0)
        .await
        .unwrap();
    // An agent key (disabled) and a day of time spent go along.
    let key = store
        .agent_key_add("acme".into(), "hq".into(), [7; 32], T0)
        .await
        .unwrap();
    store.agent_key_disable(key.id).await.unwrap();
    let open = store::SessionStep::Open {
        session: [1; 32],
        started: T0 + 100,
    };
    let close = store::SessionStep::Close {
        session: [1; 32],
        ended: T0 + 1300,
        granularity: 300,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    for (i, step) in [open, close].into_iter().enumerate() {
        let ev = store::AgentEvent {
            rec: entry("acme/x", T0, "login", Some(device("PC", "IT"))),
            dedup: [i as u8; 32],
            dedup_expires: T0 + DAY,
            session: step,
        };
        store
            .record_agent_event(ev, noting(&seen, &["log"]))
            .await
            .unwrap();
    }
    let (db, target) = (db.clone(), another.clone());
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        let counts = store::export(&db, &mut |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            (
                counts.logs,
                counts.devices,
                counts.last_logins,
                counts.agent_keys,
                counts.time_spent
            ),
            (5, 4, 1, 1, 1)
        );
        let users: Vec<&str> = records
            .iter()
            .map(|r| match r {
                Record::Log(l) => l.username.as_str(),
                Record::Device { username, .. } | Record::LastLogin { username, .. } => username,
                Record::AgentKey { key, .. } => key.tenant.as_str(),
                Record::TimeSpent(t) => t.username.as_str(),
                Record::AccessRead(a) => a.username.as_str(),
            })
            .collect();
        assert_eq!(
            users,
            ["a", "a", "acme/x", "acme/x", "b", "a", "a", "acme/x", "b", "a", "acme", "acme/x"]
        );
        match &records[records.len() - 2] {
            Record::AgentKey { key: k, key_hash } => {
                assert_eq!((k.disabled, key_hash.as_slice()), (true, &[7u8; 32][..]))
            }
            other => panic!("{other:?}"),
        }
        match &records[records.len() - 1] {
            Record::TimeSpent(t) => assert_eq!((t.day, t.seconds), (T0, 1200)),
            other => panic!("{other:?}"),
        }
        match &records[0] {
            Record::Log(l) => assert_eq!(l.ts, T0),
            other => panic!("{other:?}"),
        }
        let mut again = records.clone().into_iter();
        assert!(matches!(
            store::import(&db, &mut || again.next().map(Ok)),
            Err(store::BulkError::NotEmpty)
        ));

        let mut source = records.clone().into_iter();
        store::import(&target, &mut || source.next().map(Ok)).unwrap();
        let mut copied = Vec::new();
        store::export(&target, &mut |r| {
            copied.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(copied, records);
    })
    .await
    .unwrap();
}

fn agent_event(
    user: &str,
    computer: &str,
    ts: i64,
    tag: u8,
    step: store::SessionStep,
) -> store::AgentEvent {
    store::AgentEvent {
        rec: entry(user, ts - ts % HOUR, "login", Some(device(computer, "GB"))),
        dedup: [tag; 32],
        dedup_expires: ts + 7 * DAY,
        session: step,
    }
}

/// Agent keys: stored by hash, found by hash, listed, disabled for good.
pub async fn agent_keys_are_found_by_hash_and_disabled(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    let a = store
        .agent_key_add("acme".into(), "hq".into(), [1; 32], T0)
        .await
        .unwrap();
    let b = store
        .agent_key_add("globex".into(), "lab".into(), [2; 32], T0)
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!(
        store.agent_key_by_hash([1; 32]).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.agent_key_by_hash([3; 32]).await.unwrap(), None);
    // The same hash twice is refused, and changes nothing.
    assert!(store
        .agent_key_add("acme".into(), "hq".into(), [1; 32], T0)
        .await
        .is_err());
    assert!(store.agent_key_disable(b.id).await.unwrap());
    assert!(!store.agent_key_disable(b.id + 100).await.unwrap());
    let keys = store.agent_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].id, keys[0].disabled), (a.id, false));
    assert_eq!((keys[1].id, keys[1].disabled), (b.id, true));
}

/// An agent event is stored once however often it is retried, runs the
/// detections, and its sessions add up to time spent by day, rounded; an
/// unmatched close adds nothing; erasure and expiry delete what they should.
pub async fn agent_events_are_stored_once_and_sessions_add_up(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    use store::{AgentOutcome, SessionStep};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let open = |started| SessionStep::Open {
        session: [9; 32],
        started,
    };
    let close = |ended| SessionStep::Close {
        session: [9; 32],
        ended,
        granularity: 300,
    };
    let t = T0 + 9 * HOUR + 17;
    let first = agent_event("acme/john", "PC1", t, 1, open(t));
    assert_eq!(
        store
            .record_agent_event(first.clone(), noting(&seen, &["log"]))
            .await
            .unwrap(),
        AgentOutcome::Stored { alerts: 0 }
    );
    assert_eq!(
        store
            .record_agent_event(first, noting(&seen, &["log"]))
            .await
            .unwrap(),
        AgentOutcome::Duplicate
    );
    // 50 min 10 s later: 50 min at 5-minute granularity.
    let end = t + 3010;
    let lock = agent_event("acme/john", "PC1", end, 2, close(end));
    assert!(matches!(
        store
            .record_agent_event(lock.clone(), noting(&seen, &["log"]))
            .await
            .unwrap(),
        AgentOutcome::Stored { .. }
    ));
    assert_eq!(
        store
            .record_agent_event(lock, noting(&seen, &["log"]))
            .await
            .unwrap(),
        AgentOutcome::Duplicate
    );
    // A second session the same day, from another computer: a new device.
    let t2 = T0 + 14 * HOUR;
    let mut other = agent_event("acme/john", "PC2", t2, 3, open(t2));
    other.session = SessionStep::Open {
        session: [8; 32],
        started: t2,
    };
    assert_eq!(
        store
            .record_agent_event(other, noting(&seen, &["log"]))
            .await
            .unwrap(),
        AgentOutcome::Stored { alerts: 1 }
    );
    let mut end2 = agent_event("acme/john", "PC2", t2 + 600, 4, close(t2 + 600));
    end2.session = SessionStep::Close {
        session: [8; 32],
        ended: t2 + 600,
        granularity: 300,
    };
    store
        .record_agent_event(end2, noting(&seen, &["log"]))
        .await
        .unwrap();
    // A close with no open session adds nothing.
    let stray = agent_event("acme/john", "PC1", t2 + 900, 5, close(t2 + 900));
    store
        .record_agent_event(stray, noting(&seen, &["log"]))
        .await
        .unwrap();
    // Another tenant's user of the same name.
    let g = T0 + 10 * HOUR;
    let mut theirs = agent_event("globex/john", "PC1", g, 6, open(g));
    theirs.session = SessionStep::Open {
        session: [7; 32],
        started: g,
    };
    store
        .record_agent_event(theirs, noting(&seen, &["log"]))
        .await
        .unwrap();
    let mut theirs_end = agent_event("globex/john", "PC1", g + 1200, 7, close(g + 1200));
    theirs_end.session = SessionStep::Close {
        session: [7; 32],
        ended: g + 1200,
        granularity: 300,
    };
    store
        .record_agent_event(theirs_end, noting(&seen, &["log"]))
        .await
        .unwrap();

    let rows = store
        .time_spent("acme/".into(), T0, T0 + DAY)
        .await
        .unwrap();
    let row = |device: &[u8], seconds, first_start, last_end| store::TimeSpentRow {
        username: "acme/john".into(),
        sealed_device: device.to_vec(),
        day: T0,
        seconds,
        first_start,
        last_end,
    };
    assert_eq!(
        rows,
        vec![
            row(b"PC1", 3000, T0 + 9 * HOUR, T0 + 9 * HOUR + 3000),
            row(b"PC2", 600, t2, t2 + 600),
        ]
    );
    let all = store.time_spent(String::new(), T0, T0 + DAY).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(store
        .time_spent("acme/".into(), T0 + DAY, T0 + 2 * DAY)
        .await
        .unwrap()
        .is_empty());
    // Five distinct events stored for acme/john, each once.
    let logs = store.user_logs("acme/john".into(), 0, 100).await.unwrap();
    assert_eq!(logs.len(), 5);

    // An open session is held only until it expires.
    let late = T0 + 20 * HOUR;
    let mut dangling = agent_event("acme/jane", "PC9", late, 10, open(late));
    dangling.session = SessionStep::Open {
        session: [6; 32],
        started: late,
    };
    store
        .record_agent_event(dangling, noting(&seen, &["log"]))
        .await
        .unwrap();
    assert!(store.expire_agent_state(late + 86_400).await.unwrap() >= 1);
    let mut closes = agent_event("acme/jane", "PC9", late + 60, 11, close(late + 60));
    closes.session = SessionStep::Close {
        session: [6; 32],
        ended: late + 60,
        granularity: 300,
    };
    store
        .record_agent_event(closes, noting(&seen, &["log"]))
        .await
        .unwrap();
    assert!(store
        .time_spent("acme/jane".into(), T0, T0 + DAY)
        .await
        .unwrap()
        .is_empty());
    // Expired retry hashes are gone: the same event is stored again.
    store.expire_agent_state(t + 8 * DAY).await.unwrap();
    let again = agent_event("acme/john", "PC1", t, 1, open(t));
    assert!(matches!(
        store
            .record_agent_event(again, noting(&seen, &["log"]))
            .await
            .unwrap(),
        AgentOutcome::Stored { .. }
    ));

    // Erasure takes the user's time spent and sessions with it.
    store.forget_user("acme/john".into()).await.unwrap();
    let left = store.time_spent(String::new(), T0, T0 + DAY).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].username, "globex/john");
    // Retention takes time spent with the logs.
    store.prune(T0 + DAY, 0).await.unwrap();
    assert!(store
        .time_spent(String::new(), T0, T0 + DAY)
        .await
        .unwrap()
        .is_empty());
}

/// An administrator browses the newest entries and alerts across users,
/// filtered, and makes an alert's undelivered deliveries due again.
pub async fn browsing_across_users(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for (i, (user, kind)) in [
        ("acme/ann", "login"),
        ("acme/bob", "lock"),
        ("globex/cy", "login"),
        ("acme/ann", "logout"),
        ("dan", "login"),
    ]
    .iter()
    .enumerate()
    {
        let ts = T0 + i as i64 * HOUR;
        store
            .record_log(
                entry(user, ts, kind, Some(device(&format!("d{i}"), "IT"))),
                None,
            )
            .await
            .unwrap();
    }
    let all = |f: store::EventFilter| async move {
        store
            .recent_logs(f)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.username, r.log_type))
            .collect::<Vec<_>>()
    };
    let base = store::EventFilter {
        from: T0,
        to: T0 + DAY,
        limit: 100,
        ..Default::default()
    };
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        all(base.clone()).await,
        vec![
            s("dan", "login"),
            s("acme/ann", "logout"),
            s("globex/cy", "login"),
            s("acme/bob", "lock"),
            s("acme/ann", "login")
        ]
    );
    let acme = store::EventFilter {
        user_prefix: "acme/".into(),
        ..base.clone()
    };
    assert_eq!(all(acme.clone()).await.len(), 3);
    let ann_logins = store::EventFilter {
        username: "acme/ann".into(),
        log_type: "login".into(),
        ..acme.clone()
    };
    assert_eq!(all(ann_logins).await, vec![s("acme/ann", "login")]);
    let window = store::EventFilter {
        from: T0 + HOUR,
        to: T0 + 3 * HOUR,
        ..base.clone()
    };
    assert_eq!(all(window).await.len(), 2);
    let one = store::EventFilter { limit: 1, ..base };
    assert_eq!(all(one).await, vec![s("dan", "login")]);

    // Alerts across users, by delivery state; retry makes them due again.
    for (i, user) in ["acme/ann", "globex/cy"].iter().enumerate() {
        let ts = T0 + (10 + i as i64) * HOUR;
        store
            .record_log(
                entry(user, ts, "login", Some(device("new", "FR"))),
                Some(noting(&seen, &["webhook"])),
            )
            .await
            .unwrap();
    }
    let alerts = store
        .recent_alerts(T0, String::new(), String::new(), 10)
        .await
        .unwrap();
    let users: Vec<&str> = alerts.iter().map(|(a, _)| a.username.as_str()).collect();
    assert_eq!(users, ["globex/cy", "acme/ann"]);
    let id = alerts[1].0.id;
    store
        .mark_failed(id, "webhook".into(), "refused".into(), None)
        .await
        .unwrap();
    let failed = store
        .recent_alerts(T0, "failed".into(), String::new(), 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0.id, id);
    assert_eq!(failed[0].1[0].state, "failed");
    assert_eq!(store.retry_alert(id).await.unwrap(), 1);
    assert!(store
        .recent_alerts(T0, "failed".into(), String::new(), 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.claim_due(T0 + DAY, 60, 10).await.unwrap();
    assert!(due.iter().any(|d| d.alert.id == id), "due again at once");
    assert_eq!(store.retry_alert(id + 1000).await.unwrap(), 0);
    // One tenant's alerts: `acme/` is a prefix of no other tenant's names.
    let acme = store
        .recent_alerts(T0, String::new(), "acme/".into(), 10)
        .await
        .unwrap();
    let users: Vec<&str> = acme.iter().map(|(a, _)| a.username.as_str()).collect();
    assert_eq!(users, ["acme/ann"]);
    assert!(store
        .recent_alerts(T0, String::new(), "initech/".into(), 10)
        .await
        .unwrap()
        .is_empty());
}

/// Aggregates over one tenant's users count only theirs; without a prefix
/// they count everyone, as before.
pub async fn aggregates_within_a_tenant(store: &Store, _db: &DbConfig, _another: &DbConfig) {
    for (user, ts, log_type) in [
        ("acme/ann", T0, "login"),
        ("acme/ann", T0 + HOUR, "logout"),
        ("acme/bob", T0 + HOUR, "login"),
        ("globex/cy", T0, "login"),
        ("globex/cy", T0 + 2 * HOUR, "logout"),
        ("dan", T0, "login"),
        ("acmex/eve", T0, "login"),
    ] {
        let device = (log_type == "login").then(|| device(user, "IT"));
        store
            .record_log(entry(user, ts, log_type, device), None)
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    for user in ["acme/bob", "globex/cy"] {
        store
            .record_log(
                entry(user, T0 + 3 * HOUR, "login", Some(device("new", "FR"))),
                Some(noting(&seen, &["log"])),
            )
            .await
            .unwrap();
    }
    let queries = vec![
        Aggregate::EventsTotal,
        Aggregate::EventsPerDay("login".into()),
        Aggregate::LoginsBy(LoginColumn::Zone),
        Aggregate::EventsByType,
        Aggregate::NewDevicesPerDay,
        Aggregate::AlertsByKind,
        Aggregate::SessionBuckets,
        Aggregate::SessionStats,
    ];
    let within =
        |prefix: &str| store.aggregate_within(queries.clone(), T0, T0 + DAY, prefix.to_owned());
    let users = |a: &Aggregated| match a {
        Aggregated::Groups(g) => g.iter().map(|r| (r.count, r.users)).collect::<Vec<_>>(),
        Aggregated::Buckets(b) => b.iter().map(|r| (r.1, r.2)).collect(),
        Aggregated::Sessions(s) => vec![(s.sessions, s.users)],
        Aggregated::NoAlerts => vec![],
    };
    let acme = within("acme/").await.unwrap();
    // ann: login, logout, login (new device); bob: login, login.
    assert_eq!(users(&acme[0]), [(4, 2)]);
    assert_eq!(users(&acme[1]), [(3, 2)]);
    assert_eq!(users(&acme[2]), [(2, 2), (1, 1)]);
    assert_eq!(users(&acme[4]), [(3, 2)]);
    assert_eq!(users(&acme[5]), [(1, 1)]);
    assert_eq!(users(&acme[6]), [(1, 1)]);
    assert_eq!(users(&acme[7]), [(1, 1)]);
    let everyone = store
        .aggregate(queries.clone(), T0, T0 + DAY)
        .await
        .unwrap();
    assert_eq!(users(&everyone[0]), [(9, 5)]);
    assert_eq!(everyone, within("").await.unwrap());
    assert_eq!(users(&everyone[7]), [(2, 2)]);
    let none = within("initech/").await.unwrap();
    assert_eq!(users(&none[0]), [(0, 0)]);
}

/// Coarsening with age: after a run, no stored time older than a cut is finer
/// than its granularity (logs, devices, time spent); no entry is lost or
/// merged, entries keep their order, entries landing on the time of an
/// entry already stored do not collide with it, time spent meeting on one
/// floored day is added up, and a second run changes nothing.
pub async fn decay_floors_old_times_and_keeps_every_entry(
    store: &Store,
    _db: &DbConfig,
    _another: &DbConfig,
) {
    use store::types::DecayCut;
    use store::{AgentEvent, SessionStep};
    let now = T0 + 400 * DAY;
    let cuts = vec![
        DecayCut {
            before: now - 30 * DAY,
            granularity: DAY,
        },
        DecayCut {
            before: now - 365 * DAY,
            granularity: 30 * DAY,
        },
    ];
    // An entry every 4 hours over 450 days (past both cuts), the types in
    // turn so that order can be checked; more than one batch.
    let mut written = Vec::new();
    let mut t = now - 450 * DAY + 7;
    let mut i = 0;
    while t < now {
        let kind = ["login", "logout", "login_failure"][i % 3];
        let mut e = entry("u", t, kind, Some(device("d-recent", "IT")));
        e.message = format!("m{i}");
        store.record_log(e, None).await.unwrap();
        written.push(t);
        t += 4 * HOUR;
        i += 1;
    }
    // Already on the day another entry floors to, for "u" and for another user.
    let day = now - 100 * DAY - (now - 100 * DAY) % DAY;
    for user in ["u", "v"] {
        let mut e = entry(user, day, "login", None);
        e.message = "on the day".into();
        store.record_log(e, None).await.unwrap();
    }
    for (h, m) in [(3, "later a"), (5, "later b")] {
        let mut e = entry("u", day + h * HOUR, "login", None);
        e.message = m.into();
        store.record_log(e, None).await.unwrap();
    }
    // A device first seen long ago, last seen recently; one seen only long ago.
    store
        .record_log(
            entry(
                "w",
                now - 400 * DAY + 5 * HOUR,
                "login",
                Some(device("d1", "IT")),
            ),
            None,
        )
        .await
        .unwrap();
    store
        .record_log(
            entry("w", now - 2 * HOUR, "login", Some(device("d1", "IT"))),
            None,
        )
        .await
        .unwrap();
    store
        .record_log(
            entry(
                "w",
                now - 50 * DAY + 7 * HOUR,
                "login",
                Some(device("d2", "IT")),
            ),
            None,
        )
        .await
        .unwrap();
    // Time spent on two days of one 30-day period, older than a year.
    let period = now - 390 * DAY - (now - 390 * DAY) % (30 * DAY);
    for (n, d) in [(1u8, period + 2 * DAY), (2, period + 3 * DAY)] {
        let start = d + 9 * HOUR;
        for (tag, step) in [
            (
                n * 2,
                SessionStep::Open {
                    session: [n; 32],
                    started: start,
                },
            ),
            (
                n * 2 + 1,
                SessionStep::Close {
                    session: [n; 32],
                    ended: start + 1800,
                    granularity: 300,
                },
            ),
        ] {
            let ev = AgentEvent {
                rec: entry("acme/t", start, "login", Some(device("PC1", "GB"))),
                dedup: [tag; 32],
                dedup_expires: now + 7 * DAY,
                session: step,
            };
            store
                .record_agent_event(ev, noting(&Arc::new(Mutex::new(Vec::new())), &[]))
                .await
                .unwrap();
        }
    }

    let before: Vec<LogRecord> = store.user_logs("u".into(), 0, 100_000).await.unwrap();
    let c = store.decay(cuts.clone()).await.unwrap();
    assert!(c.user_logs > 2_000, "{c:?}");
    assert!(c.devices >= 2, "{c:?}");
    assert_eq!(c.time_spent, 2, "{c:?}");

    let coarse_enough = |t: i64| cuts.iter().all(|c| t >= c.before || t % c.granularity == 0);
    let after: Vec<LogRecord> = store.user_logs("u".into(), 0, 100_000).await.unwrap();
    assert_eq!(after.len(), before.len(), "no entry is lost or merged");
    for e in &after {
        assert!(coarse_enough(e.ts), "entry at {} finer than its step", e.ts);
    }
    // The same entries in the same order (newest first), each at its floor.
    let floor = |t: i64| {
        let g = cuts
            .iter()
            .rev()
            .find(|c| t < c.before)
            .map_or(1, |c| c.granularity);
        t - t % g
    };
    let expect: Vec<(i64, String)> = before
        .iter()
        .map(|e| (floor(e.ts), e.message.clone()))
        .collect();
    let got: Vec<(i64, String)> = after.iter().map(|e| (e.ts, e.message.clone())).collect();
    let mut sorted = expect.clone();
    sorted.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        sorted.iter().map(|g| g.0).collect::<Vec<_>>()
    );
    let mut a = got.clone();
    let mut b = expect.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // On the shared day: the entry already there first, then the moved ones
    // in their order.
    let on_day: Vec<&str> = after
        .iter()
        .filter(|e| e.ts == day && !e.message.starts_with('m'))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(on_day, ["later b", "later a", "on the day"]);
    assert_eq!(store.user_logs("v".into(), 0, 10).await.unwrap()[0].ts, day);

    let devices = store.user_devices("w".into()).await.unwrap();
    for d in &devices {
        assert!(
            coarse_enough(d.first_seen) && coarse_enough(d.last_seen),
            "{d:?}"
        );
    }
    let d1 = devices
        .iter()
        .find(|d| d.device.sealed_id == b"d1")
        .unwrap();
    assert_eq!(d1.first_seen, floor(now - 400 * DAY + 5 * HOUR));
    assert_eq!(
        d1.last_seen,
        now - 2 * HOUR,
        "a recent time is left as it was"
    );
    assert_eq!(d1.num_logins, 2);
    // The countries seen: kept to the day, then floored like the devices.
    assert!(c.user_countries >= 2, "{c:?}");
    let day_of = |t: i64| t - t % DAY;
    let countries = store.user_countries("w".into()).await.unwrap();
    assert_eq!(countries.len(), 1, "{countries:?}");
    assert_eq!(countries[0].zone, "IT");
    assert_eq!(countries[0].first_seen, floor(now - 400 * DAY + 5 * HOUR));
    assert_eq!(countries[0].last_seen, day_of(now - 2 * HOUR));
    let countries = store.user_countries("u".into()).await.unwrap();
    assert_eq!(countries[0].first_seen, floor(now - 450 * DAY + 7));
    for c in &countries {
        assert!(coarse_enough(c.first_seen) && coarse_enough(c.last_seen));
    }
    let spent = store.time_spent(String::new(), 0, now).await.unwrap();
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!((spent[0].day, spent[0].seconds), (period, 3600));
    assert!(coarse_enough(spent[0].first_start) && coarse_enough(spent[0].last_end));

    assert_eq!(
        store.decay(cuts).await.unwrap().total(),
        0,
        "a second run changes nothing"
    );
}

/// Decay walks the countries seen page by page (more than one batch of
/// rows) and floors every one; a second run changes nothing.
pub async fn decay_floors_every_country_across_pages(
    store: &Store,
    db: &DbConfig,
    _another: &DbConfig,
) {
    use store::types::DecayCut;
    const USERS: usize = 2_300;
    let now = T0 + 400 * DAY;
    let old = now - 200 * DAY + 5 * HOUR;
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut records = (0..USERS).flat_map(|i| {
            let user = format!("c{i:05}");
            [
                Record::Log(entry(&user, old, "login", Some(device("d", "IT")))),
                Record::Log(entry(&user, old + DAY, "login", Some(device("d", "FR")))),
            ]
        });
        store::bulk_load(&db, &mut records).unwrap();
    })
    .await
    .unwrap();
    let cuts = vec![DecayCut {
        before: now - 30 * DAY,
        granularity: 30 * DAY,
    }];
    let c = store.decay(cuts.clone()).await.unwrap();
    assert_eq!(c.user_countries, 2 * USERS as u64, "{c:?}");
    for i in (0..USERS).step_by(97).chain([USERS - 1]) {
        let seen = store.user_countries(format!("c{i:05}")).await.unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for s in &seen {
            assert_eq!(s.first_seen % (30 * DAY), 0, "{s:?}");
            assert_eq!(s.last_seen % (30 * DAY), 0, "{s:?}");
        }
    }
    assert_eq!(
        store.decay(cuts).await.unwrap().user_countries,
        0,
        "a second run changes nothing"
    );
}

/// Reads of a user's data are recorded once per user, day, reader and
/// endpoint, answered newest day first, erased with the user, aged out by
/// day, and carried by export and import.
pub async fn access_reads_are_recorded_once_and_kept_like_data(
    store: &Store,
    db: &DbConfig,
    another: &DbConfig,
) {
    use crate::model::AccessRead;
    let read = |user: &str, reader: &str, endpoint: &str, day: i64| AccessRead {
        username: user.into(),
        reader: reader.into(),
        endpoint: endpoint.into(),
        day,
    };
    for r in [
        read("a", "support", "get_user_logs", T0 - 2 * DAY),
        read("a", "support", "get_user_logs", T0 - 2 * DAY),
        read("a", "admin", "export_user", T0),
        read("a", "support", "get_user_logs", T0),
        read("a", "support", "get_user_devices", T0),
        read("b", "support", "get_user_logs", T0),
    ] {
        store
            .record_access(std::sync::Arc::new(vec![r]))
            .await
            .unwrap();
    }
    let a = store.user_access("a".into(), i64::MIN).await.unwrap();
    assert_eq!(
        a,
        [
            read("a", "admin", "export_user", T0),
            read("a", "support", "get_user_devices", T0),
            read("a", "support", "get_user_logs", T0),
            read("a", "support", "get_user_logs", T0 - 2 * DAY),
        ]
    );
    assert_eq!(store.user_access("a".into(), T0).await.unwrap().len(), 3);
    assert!(store
        .user_access("c".into(), i64::MIN)
        .await
        .unwrap()
        .is_empty());

    // Export and import carry them.
    let (db, another) = (db.clone(), another.clone());
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        let counts = store::export(&db, &mut |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(counts.access_reads, 5);
        let reads: Vec<&AccessRead> = records
            .iter()
            .filter_map(|r| match r {
                Record::AccessRead(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(
            reads[0],
            &read("a", "support", "get_user_logs", T0 - 2 * DAY)
        );
        assert_eq!(reads[4], &read("b", "support", "get_user_logs", T0));
        let mut it = records.clone().into_iter().map(Ok);
        let imported = store::import(&another, &mut || it.next()).unwrap();
        assert_eq!(imported.access_reads, 5);
        let mut again = Vec::new();
        store::export(&another, &mut |r| {
            again.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(again, records);
    })
    .await
    .unwrap();

    // Retention, by day; erasure, of one user only.
    assert_eq!(store.prune_access(T0 - DAY).await.unwrap(), 1);
    assert_eq!(
        store.user_access("a".into(), i64::MIN).await.unwrap().len(),
        3
    );
    assert_eq!(store.forget_access("a".into()).await.unwrap(), 3);
    assert!(store
        .user_access("a".into(), i64::MIN)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.user_access("b".into(), i64::MIN).await.unwrap().len(),
        1
    );
    assert_eq!(store.forget_access("a".into()).await.unwrap(), 0);

    // Retention over more reads than one transaction looks at: users and
    // days interleaved in key order.
    let many: Vec<AccessRead> = (0..2_500)
        .flat_map(|i| {
            let user = format!("m{i:04}");
            [
                read(&user, "support", "get_user_logs", T0 - 3 * DAY),
                read(&user, "support", "get_user_logs", T0),
            ]
        })
        .collect();
    store
        .record_access(std::sync::Arc::new(many))
        .await
        .unwrap();
    assert_eq!(store.prune_access(T0 - DAY).await.unwrap(), 2_500);
    for user in ["m0000", "m1999", "m2000", "m2499"] {
        assert_eq!(
            store.user_access(user.into(), i64::MIN).await.unwrap(),
            [read(user, "support", "get_user_logs", T0)]
        );
    }
    assert_eq!(store.prune_access(T0 - DAY).await.unwrap(), 0);
}

/// Runs every case of the suite as a test of its own, each on a fresh
/// database from `$open` (a future giving a [`Subject`], or `None` when the
/// backend cannot run here and its tests say so and pass).
#[macro_export]
macro_rules! storage_conformance {
    ($open:expr) => {
        $crate::storage_conformance!(@cases $open;
            writes_read_back,
            detections_see_the_history_before_the_entry,
            a_failed_write_leaves_nothing,
            concurrent_first_logins_make_one_device,
            concurrent_logins_from_a_new_device_raise_one_alert,
            concurrent_writers_store_each_entry_once,
            the_outbox_delivers_at_least_once,
            retention_deletes_strictly_before_its_bounds,
            erasure_deletes_one_user_entirely,
            unused_accounts_by_set,
            the_overview_gathers_a_user,
            aggregates_count_events_and_users,
            aggregates_within_a_tenant,
            export_and_import_round_trip,
            a_bulk_load_is_stored_as_the_server_stores,
            agent_keys_are_found_by_hash_and_disabled,
            agent_events_are_stored_once_and_sessions_add_up,
            browsing_across_users,
            decay_floors_old_times_and_keeps_every_entry,
            decay_floors_every_country_across_pages,
            access_reads_are_recorded_once_and_kept_like_data
        );
    };
    (@cases $open:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let subject: Option<$crate::store::conformance::Subject> = $open.await;
                let Some(subject) = subject else { return };
                $crate::store::conformance::$case(&subject.store, &subject.db, &subject.another)
                    .await;
                subject.store.close();
                drop(subject.keep);
            }
        )*
    };
}
