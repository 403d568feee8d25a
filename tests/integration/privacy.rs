//! The privacy layer seen from outside: GeoIP countries, parsed user agents,
//! sealed device IDs, device cookies, erasure, retention, and an audit of the
//! raw database bytes and the server's log output.

use serde_json::{json, Value};

use crate::common::*;
use crate::mmdb;

fn geoip_config(path: &std::path::Path) -> String {
    format!("geoip:\n  db: {}\n", path.display())
}

async fn zone_of(c: &mut Client, user: &str, addr: &str) -> String {
    c.ok(
        "/api/add_log",
        json!({"log": {"timestamp": ago(60), "username": user, "log_type": "login",
                       "device_info": {"id": format!("dev-{addr}"), "remote_addr": addr}}}),
    )
    .await;
    let logs = c
        .ok("/api/get_user_logs", json!({"username": user, "limit": 1}))
        .await;
    let d = &logs["result"][0]["device_info"];
    assert_eq!(d["remote_addr"], "", "the address must not come back");
    d["remote_zone"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn countries_come_from_the_maxmind_layout() {
    let ts = TestServer::start_with(&geoip_config(&shared_geoip("GeoIP2-Country-Test.mmdb"))).await;
    let mut c = ts.client("admin").await;
    // Expected answers derived from the source data of the test database.
    let source: Value = serde_json::from_slice(
        &std::fs::read(repo().join("../shared/testdata/geoip/GeoIP2-Country-Test.json"))
            .unwrap_or_else(|_| b"[]".to_vec()),
    )
    .unwrap();
    let expect_jp = source
        .as_array()
        .and_then(|a| a.iter().find_map(|e| e.get("2001:218::/32")))
        .map(|v| v["country"]["iso_code"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| "JP".into());
    for (i, (addr, want)) in [
        ("81.2.69.160", "GB"),
        ("::ffff:81.2.69.160", "GB"),
        ("89.160.20.112", "SE"),
        ("2001:218::1", expect_jp.as_str()),
        ("8.8.8.8", ""),
        ("10.0.0.1", ""),
        ("127.0.0.1", ""),
        ("::1", ""),
        ("not-an-address", ""),
        ("", ""),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            zone_of(&mut c, &format!("g{i}"), addr).await,
            want,
            "{addr}"
        );
    }
    // A zone the client sends wins over the lookup.
    c.ok(
        "/api/add_log",
        json!({"log": {"timestamp": ago(60), "username": "z", "log_type": "login",
                       "device_info": {"id": "d", "remote_addr": "81.2.69.160", "remote_zone": "IT"}}}),
    )
    .await;
    let d = c
        .ok("/api/get_user_devices", json!({"username": "z"}))
        .await;
    assert_eq!(d["devices"][0]["device_info"]["remote_zone"], "IT");
}

#[tokio::test]
async fn countries_come_from_the_flat_layout_and_registered_country() {
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("flat.mmdb");
    std::fs::write(&flat, mmdb::flat_fixture()).unwrap();
    let ts = TestServer::start_with(&geoip_config(&flat)).await;
    let mut c = ts.client("admin").await;
    assert_eq!(zone_of(&mut c, "f1", "81.2.69.7").await, "NL");
    assert_eq!(zone_of(&mut c, "f2", "::ffff:5.5.5.5").await, "BR");
    assert_eq!(zone_of(&mut c, "f3", "9.9.9.9").await, "");
    assert_eq!(zone_of(&mut c, "f4", "2001:db8::1").await, "");

    let reg = dir.path().join("registered.mmdb");
    std::fs::write(&reg, mmdb::registered_only_fixture()).unwrap();
    let ts = TestServer::start_with(&geoip_config(&reg)).await;
    let mut c = ts.client("admin").await;
    assert_eq!(zone_of(&mut c, "r1", "6.6.6.6").await, "FR");
}

#[tokio::test]
async fn user_agents_become_browser_os_and_mobile_and_are_dropped() {
    let ts = TestServer::start().await;
    let mut c = ts.client("admin").await;
    let ua_iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    for (user, ua) in [
        ("ua1", ua_iphone),
        ("ua2", "zzqq-unheard-of/0.0"),
        ("ua3", &"x".repeat(5000)),
    ] {
        c.ok(
            "/api/add_log",
            json!({"log": {"timestamp": ago(60), "username": user, "log_type": "login",
                           "device_info": {"id": "d", "user_agent": ua}}}),
        )
        .await;
    }
    let d = c
        .ok("/api/get_user_devices", json!({"username": "ua1"}))
        .await;
    let info = &d["devices"][0]["device_info"];
    assert_eq!(info["browser"], "Safari");
    assert_eq!(info["os"], "iPhone");
    assert_eq!(info["mobile"], true);
    assert_eq!(info["user_agent"], "", "raw agent dropped by default");
    let d = c
        .ok("/api/get_user_devices", json!({"username": "ua2"}))
        .await;
    assert_eq!(d["devices"][0]["device_info"]["browser"], "unknown");
    assert_eq!(d["devices"][0]["device_info"]["os"], "unknown");

    let ts = TestServer::start_with("privacy:\n  keep_user_agent: true\n").await;
    let mut c = ts.client("admin").await;
    let long = format!("{ua_iphone}{}", "x".repeat(3000));
    c.ok(
        "/api/add_log",
        json!({"log": {"timestamp": ago(60), "username": "k", "log_type": "login",
                       "device_info": {"id": "d", "user_agent": long}}}),
    )
    .await;
    let d = c
        .ok("/api/get_user_devices", json!({"username": "k"}))
        .await;
    let kept = d["devices"][0]["device_info"]["user_agent"]
        .as_str()
        .unwrap();
    assert!(kept.starts_with("Mozilla/5.0 (iPhone"));
    assert_eq!(kept.len(), 1024, "kept agents are cut to 1 KiB");
}

#[tokio::test]
async fn device_cookies_are_minted_reopened_and_never_an_error() {
    let ts = TestServer::start_with(&geoip_config(&shared_geoip("GeoIP2-Country-Test.mmdb"))).await;
    let mut c = ts.client("sso-server").await;
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
    let first = c
        .ok(
            "/api/identify_device",
            json!({"remote_addr": "81.2.69.160", "user_agent": ua}),
        )
        .await;
    assert_eq!(first["new"], true);
    let id = first["device_info"]["id"].as_str().unwrap().to_owned();
    let cookie = first["cookie"].as_str().unwrap().to_owned();
    assert!(
        !id.is_empty() && !cookie.contains(&id),
        "the cookie must not show the ID"
    );
    assert_eq!(first["device_info"]["remote_zone"], "GB");
    assert_eq!(first["device_info"]["browser"], "Firefox");
    assert_eq!(first["device_info"]["remote_addr"], "");
    assert_eq!(first["device_info"]["user_agent"], "");

    let again = c
        .ok(
            "/api/identify_device",
            json!({"cookie": cookie, "user_agent": ua}),
        )
        .await;
    assert_eq!(again["new"], false);
    assert_eq!(again["device_info"]["id"], id.as_str());
    assert_eq!(again["cookie"], cookie.as_str());

    let mut tampered = cookie.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let other = TestServer::start().await;
    let foreign = other
        .client("sso-server")
        .await
        .ok("/api/identify_device", json!({}))
        .await["cookie"]
        .as_str()
        .unwrap()
        .to_owned();
    for bad in [
        String::from_utf8(tampered).unwrap(),
        cookie[..cookie.len() / 2].to_owned(),
        "A".repeat(4000),
        "%%%not-base64%%%".into(),
        foreign,
    ] {
        let r = c.ok("/api/identify_device", json!({"cookie": bad})).await;
        assert_eq!(r["new"], true);
        assert_ne!(r["device_info"]["id"], id.as_str());
    }
}

#[tokio::test]
async fn forget_user_deletes_every_row_and_says_how_many() {
    let ts = TestServer::start().await;
    let mut c = ts.client("admin").await;
    for i in 0..3 {
        c.ok(
            "/api/add_log",
            login("gone", &format!("d{i}"), 3600 * (i + 1)),
        )
        .await;
    }
    c.ok("/api/add_log", login("stays", "d", 60)).await;
    c.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(60), "username": "gone", "service": "mail"}}),
    )
    .await;
    let r = c.ok("/api/forget_user", json!({"username": "gone"})).await;
    assert_eq!(
        r,
        json!({"deleted": {"user_logs": 3, "devices": 3, "last_logins": 1, "alerts": 2}})
    );
    assert_eq!(ts.counts(), [1, 1, 1, 0]);
    let r = c.ok("/api/forget_user", json!({"username": "gone"})).await;
    assert_eq!(
        r,
        json!({"deleted": {"user_logs": 0, "devices": 0, "last_logins": 0, "alerts": 0}})
    );
    let mut sso = ts.client("sso-server").await;
    assert_eq!(
        sso.post("/api/forget_user", json!({"username": "stays"}))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn an_erased_user_leaves_no_trace_in_the_database_files() {
    let ts = TestServer::start_sqlite_in(tempfile::tempdir().unwrap(), "").await;
    let mut c = ts.client("admin").await;
    let canary = "erased-user-7c1f0a";
    for i in 0..20 {
        c.ok(
            "/api/add_log",
            login(canary, &format!("dev-{i}"), 3600 * (i + 1)),
        )
        .await;
    }
    c.ok(
        "/api/set_last_login",
        json!({"last_login": {"timestamp": ago(60), "username": canary, "service": "mail"}}),
    )
    .await;
    c.ok("/api/add_log", login("someone-else", "d", 60)).await;
    assert!(contains(&database_bytes(ts.dir.path()), canary.as_bytes()));
    c.ok("/api/forget_user", json!({"username": canary})).await;
    let bytes = database_bytes(ts.dir.path());
    assert!(
        !contains(&bytes, canary.as_bytes()),
        "the erased username is still on disk"
    );
    assert!(contains(&bytes, b"someone-else"));
}

/// Every file of the database, concatenated.
pub fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("usermeta.db") {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    all
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn audit_no_canary_reaches_the_disk_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config_yaml(
        dir.path(),
        &geoip_config(&shared_geoip("GeoIP2-Country-Test.mmdb")),
    );
    let path = dir.path().to_owned();
    audit(&dir, yaml, move || database_bytes(&path)).await;
}

#[tokio::test]
async fn audit_no_canary_reaches_postgresql_or_the_log() {
    let Some(cluster) = pg_cluster() else { return };
    cluster.create_database("canary_audit").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, "22".repeat(32)).unwrap();
    // The SQLite configuration with the database swapped for PostgreSQL.
    let yaml = config_yaml(
        dir.path(),
        &format!(
            "{}secrets:\n  device_key_file: {}\n",
            geoip_config(&shared_geoip("GeoIP2-Country-Test.mmdb")),
            key.display()
        ),
    );
    let sqlite = format!("db_uri: {}\n", dir.path().join("usermeta.db").display());
    let yaml = yaml.replacen(
        &sqlite,
        &format!("db_uri: \"{}\"\n", cluster.uri("canary_audit")),
        1,
    );
    // What an attacker with a dump of the database reads.
    audit(&dir, yaml, move || {
        cluster
            .tool("pg_dump", &["-U", "postgres", "-d", "canary_audit"])
            .unwrap()
    })
    .await;
}

/// Sends canaries (addresses, a user agent, a device ID, an exact time)
/// through every write endpoint of a server started on `yaml`, then looks
/// for them in what `stored` reads and in the server's log.
async fn audit(dir: &tempfile::TempDir, yaml: String, stored: impl Fn() -> Vec<u8>) {
    let config = dir.path().join("config.yml");
    std::fs::write(&config, yaml).unwrap();
    let (mut child, addr, log) = spawn_binary(&config, "debug");
    let mut c = client_at(addr, "admin").await;

    let ipv4 = "81.2.69.161";
    let ipv6 = "2001:218:0:0:0:0:0:9a7c";
    let ua =
        "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 CanaryAgent/7.31.9";
    let device = "canary-device-5f0e3d9b";
    // An exact time, with seconds, an hour back.
    let exact = chrono::Utc::now() - chrono::Duration::seconds(3600);
    let exact = exact.with_nanosecond_zeroed(37);
    let ts_text = exact.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (user, addr_canary) in [("audit-a", ipv4), ("audit-b", ipv6)] {
        c.ok(
            "/api/add_log",
            json!({"log": {"timestamp": ts_text, "username": user, "log_type": "login",
                           "device_info": {"id": device, "remote_addr": addr_canary, "user_agent": ua}}}),
        )
        .await;
        c.ok(
            "/api/check_device",
            json!({"username": user, "device_info": {"id": device}}),
        )
        .await;
        c.ok(
            "/api/set_last_login",
            json!({"last_login": {"timestamp": ts_text, "username": user, "service": "mail"}}),
        )
        .await;
        c.ok(
            "/api/identify_device",
            json!({"remote_addr": addr_canary, "user_agent": ua}),
        )
        .await;
        let devices = c
            .ok("/api/get_user_devices", json!({"username": user}))
            .await;
        assert_eq!(devices["devices"][0]["device_info"]["id"], device);
    }
    // Every write was answered, so committed: read the database as an
    // attacker would.
    let bytes = stored();
    let log_text = log.lock().unwrap().clone();
    let exact_secs = exact.timestamp();
    let hhmmss = &ts_text[11..19];
    for (what, canary) in [
        ("IPv4 address", ipv4.as_bytes().to_vec()),
        ("IPv6 address", ipv6.as_bytes().to_vec()),
        ("IPv6 address, short form", b"2001:218::9a7c".to_vec()),
        ("IPv4 address, binary", vec![81, 2, 69, 161]),
        ("user agent", b"CanaryAgent".to_vec()),
        ("device id", device.as_bytes().to_vec()),
        ("exact timestamp text", ts_text.as_bytes().to_vec()),
        ("exact time of day", hhmmss.as_bytes().to_vec()),
        (
            "exact timestamp, big-endian",
            exact_secs.to_be_bytes()[4..].to_vec(),
        ),
        (
            "exact timestamp, decimal",
            exact_secs.to_string().into_bytes(),
        ),
    ] {
        assert!(
            !contains(&bytes, &canary),
            "{what} found in the database files"
        );
        assert!(
            !contains(log_text.as_bytes(), &canary),
            "{what} found in the server log:\n{log_text}"
        );
    }
    // What should be there is there: the country, the browser and OS.
    for kept in ["GB", "JP", "Firefox", "Linux"] {
        assert!(contains(&bytes, kept.as_bytes()), "{kept} not stored");
    }
    // Usernames appear only in debug lines.
    for line in log_text.lines().filter(|l| l.contains("audit-a")) {
        assert!(
            line.contains("DEBUG") || line.contains("TRACE"),
            "username above debug: {line}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

trait ZeroNanos {
    fn with_nanosecond_zeroed(self, second: u32) -> Self;
}

impl ZeroNanos for chrono::DateTime<chrono::Utc> {
    fn with_nanosecond_zeroed(self, second: u32) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0)
            .unwrap()
            .with_second(second)
            .unwrap()
    }
}

#[tokio::test]
async fn sighup_reloads_the_geoip_database_without_dropping_requests() {
    let dir = tempfile::tempdir().unwrap();
    let geo = dir.path().join("country.mmdb");
    std::fs::copy(shared_geoip("GeoIP2-Country-Test.mmdb"), &geo).unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), &geoip_config(&geo))).unwrap();
    let (mut child, addr, _log) = spawn_binary(&config, "info");
    let mut c = client_at(addr, "admin").await;
    assert_eq!(zone_of(&mut c, "h1", "81.2.69.160").await, "GB");

    let load = tokio::spawn(async move {
        let mut c = client_at(addr, "sso-server").await;
        for i in 0..200 {
            let r = c
                .post_bytes("/api/add_log", login(&format!("l{i}"), "d", 60).to_string())
                .await;
            assert_eq!(r.status, 200);
        }
    });
    let tmp = dir.path().join("country.mmdb.new");
    std::fs::write(&tmp, mmdb::flat_fixture()).unwrap();
    std::fs::rename(&tmp, &geo).unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    load.await.unwrap();
    let mut zone = String::new();
    for i in 0..50 {
        zone = zone_of(&mut c, &format!("h2-{i}"), "81.2.69.160").await;
        if zone == "NL" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(zone, "NL", "the new database was not loaded");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn db_prune_deletes_expired_rows_offline() {
    let dir = tempfile::tempdir().unwrap();
    // `db prune` on the SQLite file the server wrote.
    let ts = TestServer::start_sqlite_in(dir, "retention:\n  user_logs: 3650d\n").await;
    let mut c = ts.client("admin").await;
    c.ok("/api/add_log", login("old", "d1", 100 * 86_400)).await;
    c.ok("/api/add_log", login("new", "d2", 3600)).await;
    drop(c);
    let dir = ts.stop().await;
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        config_yaml(dir.path(), "retention:\n  user_logs: 30d\n  devices: 60d\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .args(["db", "prune", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deleted 1 log entries, 1 devices, 1 users"),
        "{text}"
    );
    assert_eq!(db_counts(&dir.path().join("usermeta.db")), [1, 1, 1, 0]);
}

/// `db prune` with `privacy.decay` floors the stored times older than each
/// step to its granularity: the database file's own rows hold none finer,
/// every entry is still there, the report says how many rows were coarsened,
/// and a second run coarsens nothing.
#[tokio::test]
async fn db_prune_coarsens_old_history_in_the_file() {
    const DAY: i64 = 86_400;
    let dir = tempfile::tempdir().unwrap();
    let ts = TestServer::start_sqlite_in(dir, "retention:\n  user_logs: 3650d\n").await;
    let mut c = ts.client("admin").await;
    for (user, device, age) in [
        ("u", "d1", DAY + 12 * 3600),
        ("u", "d2", 200 * DAY + 5 * 3600),
        ("u", "d3", 400 * DAY + 7 * 3600),
        ("u", "d3", 400 * DAY + 2 * 3600),
        ("w", "d4", 190 * DAY + 3 * 3600),
    ] {
        c.ok("/api/add_log", login(user, device, age)).await;
    }
    drop(c);
    let dir = ts.stop().await;
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        config_yaml(
            dir.path(),
            "retention:\n  user_logs: 3650d\nprivacy:\n  decay:\n    - { after: 180d, granularity: 1d }\n    - { after: 365d, granularity: 30d }\n",
        ),
    )
    .unwrap();
    let prune = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
            .args(["db", "prune", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = prune();
    assert!(text.contains("coarsened "), "{text}");
    assert!(!text.contains("coarsened 0 log entries"), "{text}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let coarse_enough = |t: i64| {
        let age = now - t;
        (age <= 180 * DAY || t % DAY == 0) && (age <= 365 * DAY || t % (30 * DAY) == 0)
    };
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("usermeta.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let times = |sql: &str| -> Vec<i64> {
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let logs = times("SELECT ts FROM user_logs");
    assert_eq!(logs.len(), 5, "no entry is merged or lost");
    let seen = times(
        "SELECT first_seen FROM devices UNION ALL SELECT last_seen FROM devices
         UNION ALL SELECT first_seen FROM user_countries
         UNION ALL SELECT last_seen FROM user_countries",
    );
    assert!(seen.len() > 8, "{seen:?}");
    for t in logs.iter().chain(&seen) {
        assert!(
            coarse_enough(*t),
            "{t} is finer than its step ({} days old)",
            (now - t) / DAY
        );
    }
    // The recent entry is left as it was: within its hour.
    assert!(logs.iter().any(|t| (0..2 * DAY).contains(&(now - t))));
    drop(db);
    let again = prune();
    assert!(
        again.contains("coarsened 0 log entries, 0 devices, 0 time-spent rows, 0 countries seen"),
        "{again}"
    );
}
