//! Property tests: request decoding and validation, RFC 3339 parsing,
//! timestamp quantization, device cookies, ACL matching and config loading
//! never panic on any input, and their invariants hold.

use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;
use serde_json::json;

use usermetadb::acl::{Acl, AclEntry};
use usermetadb::config::{parse_duration, Config};
use usermetadb::crypto::DeviceKey;
use usermetadb::privacy::quantize;
use usermetadb::server::handler::decode;
use usermetadb::service::{check_username, MAX_FUTURE_SECS, MAX_USERNAME};
use usermetadb::wire::*;

fn config(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    }
}

/// Text that looks like JSON often enough to reach deep into the parser.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"log\"".to_string()),
        Just("\"username\"".to_string()),
        Just("\"usernames\"".to_string()),
        Just("\"timestamp\"".to_string()),
        Just("\"device_info\"".to_string()),
        Just("\"limit\"".to_string()),
        Just("\"days\"".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("9223372036854775808".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"2026-11-20T10:00:00Z\"".to_string()),
        "\"[^\"\\\\]{0,8}\"",
        "[ \t\r\n]{0,2}",
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

/// Decodes `body` as every request type.
fn decode_all(body: &[u8]) {
    let _ = decode::<AddLogRequest>(body);
    let _ = decode::<GetUserLogsRequest>(body);
    let _ = decode::<GetUserDevicesRequest>(body);
    let _ = decode::<CheckDeviceRequest>(body);
    let _ = decode::<SetLastLoginRequest>(body);
    let _ = decode::<GetLastLoginRequest>(body);
    let _ = decode::<GetUnusedAccountsRequest>(body);
    let _ = decode::<IdentifyDeviceRequest>(body);
    let _ = decode::<ForgetUserRequest>(body);
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,20}",
        "[a-z0-9._@-]{1,12}",
        proptest::collection::vec(any::<char>(), 0..300).prop_map(|c| c.into_iter().collect()),
        Just(String::new()),
        Just("u".repeat(256)),
        Just("u".repeat(257)),
    ]
}

fn device() -> impl Strategy<Value = DeviceInfo> {
    (
        any_text(),
        any_text(),
        any_text(),
        any_text(),
        any::<bool>(),
    )
        .prop_map(
            |(id, remote_addr, user_agent, browser, mobile)| DeviceInfo {
                id,
                remote_addr,
                remote_zone: String::new(),
                user_agent,
                browser,
                os: String::new(),
                mobile,
            },
        )
}

const NOW: i64 = 1_795_000_000;

fn log_entry() -> impl Strategy<Value = LogEntry> {
    (
        any_text(),
        prop_oneof![Just("login".to_string()), "[a-z_]{0,10}", any_text()],
        (NOW - 400 * 86_400)..(NOW + 3 * 86_400),
        any_text(),
        proptest::option::of(device()),
    )
        .prop_map(|(username, log_type, ts, service, device_info)| LogEntry {
            timestamp: Timestamp::from_unix(ts),
            username,
            log_type,
            service,
            device_info,
            ..Default::default()
        })
}

/// A service with the default privacy and retention settings, on a throwaway database.
fn service() -> (tempfile::TempDir, std::sync::Arc<usermetadb::server::State>) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("db_uri: {}\n", dir.path().join("p.db").display());
    let config = Config::from_yaml(&yaml).unwrap();
    let (state, _store, _privacy) = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(usermetadb::server::build_state(&config))
        .unwrap();
    (dir, state)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decoding_any_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&body);
    }

    #[test]
    fn decoding_json_like_text_never_panics_and_accepts_only_objects(body in jsonish()) {
        decode_all(body.as_bytes());
        if decode::<GetUserLogsRequest>(body.as_bytes()).is_ok() {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            prop_assert!(v.is_object());
        }
    }

    #[test]
    fn usernames_are_accepted_exactly_by_the_rule(name in any_text()) {
        let ok = !name.is_empty()
            && name.len() <= MAX_USERNAME
            && !name.chars().any(char::is_control);
        prop_assert_eq!(check_username(&name).is_ok(), ok, "{:?}", name);
    }

    #[test]
    fn quantized_times_are_never_later_and_less_than_one_step_earlier(
        ts in any::<i64>(),
        g in prop_oneof![1u64..=7 * 86_400, any::<u64>()],
    ) {
        let q = quantize(ts, g);
        prop_assert!(q <= ts);
        let step = i64::try_from(g).unwrap_or(i64::MAX).max(1);
        if ts.checked_sub(step).is_some() {
            prop_assert!(ts - q < step, "ts {} g {} q {}", ts, g, q);
            prop_assert_eq!(q.rem_euclid(step), 0);
        }
        // Quantizing twice changes nothing.
        prop_assert_eq!(quantize(q, g), q);
    }

    #[test]
    fn rfc3339_parsing_never_panics(s in ".{0,40}") {
        let _ = parse_rfc3339(&s);
    }

    #[test]
    fn rfc3339_round_trips(
        secs in -62_135_596_800i64..253_402_300_799,
        nanos in 0u32..1_000_000_000,
        offset_min in -1439i32..=1439,
        digits in 0usize..=9,
    ) {
        let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
        let off = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
        let mut text = t.with_timezone(&off).format("%Y-%m-%dT%H:%M:%S").to_string();
        if digits > 0 {
            let frac = format!("{nanos:09}");
            text.push('.');
            text.push_str(&frac[..digits]);
        }
        text.push_str(&t.with_timezone(&off).format("%:z").to_string());
        let parsed = parse_rfc3339(&text);
        prop_assert!(parsed.is_ok(), "{}", text);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.unix(), secs);
        let again = serde_json::to_string(&parsed).unwrap();
        let back: Timestamp = serde_json::from_str(&again).unwrap();
        prop_assert_eq!(back, parsed);
    }

    #[test]
    fn config_durations_never_panic(s in ".{0,24}") {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= std::time::Duration::from_secs(100 * 365 * 86_400));
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn requests_round_trip_through_the_decoder(e in log_entry(), limit in any::<i64>(), names in proptest::collection::vec(any_text(), 0..5)) {
        let body = serde_json::to_vec(&json!({"log": e})).unwrap();
        let back: AddLogRequest = decode(&body).unwrap();
        prop_assert_eq!(back.log.as_ref(), Some(&e));
        let body = serde_json::to_vec(&json!({"username": e.username, "limit": limit})).unwrap();
        let back: GetUserLogsRequest = decode(&body).unwrap();
        prop_assert_eq!(back.limit, limit);
        let body = serde_json::to_vec(&json!({"usernames": names, "days": 1})).unwrap();
        let back: GetUnusedAccountsRequest = decode(&body).unwrap();
        prop_assert_eq!(back.usernames, Some(names));
    }

    #[test]
    fn device_cookies_open_only_as_sealed(
        key in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        junk in ".{0,80}",
        id in "[A-Za-z0-9_-]{1,40}",
        pos in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_-]",
    ) {
        let k = DeviceKey::from_bytes(&key);
        prop_assert_eq!(k.open_cookie(&junk), None);
        let cookie = k.seal_cookie(&id);
        prop_assert_eq!(k.open_cookie(&cookie), Some(id.clone()));
        let (minted, c2) = k.mint_cookie();
        prop_assert_eq!(k.open_cookie(&c2), Some(minted));
        // One character changed: tampered.
        let i = pos.index(cookie.len());
        let mut chars: Vec<char> = cookie.chars().collect();
        let r = replacement.chars().next().unwrap();
        if chars[i] != r {
            chars[i] = r;
            let tampered: String = chars.into_iter().collect();
            prop_assert_eq!(k.open_cookie(&tampered), None, "{} -> {}", cookie, tampered);
        }
        // Cut short: truncated.
        prop_assert_eq!(k.open_cookie(&cookie[..pos.index(cookie.len())]), None);
        // Sealed under another key: foreign.
        if key != other {
            prop_assert_eq!(DeviceKey::from_bytes(&other).open_cookie(&cookie), None);
        }
    }

    #[test]
    fn anchored_acls_never_match_a_longer_cn_or_path(
        cn in "[a-zA-Z0-9.*+?()|\\[\\]-]{1,20}",
        other in "[a-z-]{1,12}",
        path in "/[a-z_/.]{1,20}",
        extra in "[a-zA-Z0-9./_-]{1,8}",
    ) {
        // Names are quoted as literals, and alternatives are anchored too.
        let pattern = format!("{}|{}", regex::escape(&cn), regex::escape(&other));
        let acl = Acl::new(vec![AclEntry::new(&regex::escape(&path), &pattern).unwrap()]);
        prop_assert!(acl.allows(&path, &cn));
        prop_assert!(acl.allows(&path, &other));
        for longer in [format!("{cn}{extra}"), format!("{extra}{cn}"), format!("{other}{extra}"), format!("{extra}{other}"), format!("{cn}|{other}")] {
            if longer != cn && longer != other {
                prop_assert!(!acl.allows(&path, &longer), "{} allowed by {}", longer, pattern);
            }
        }
        let longer_path = format!("{path}{extra}");
        prop_assert!(!acl.allows(&longer_path, &cn));
        let prefixed_path = format!("/x{path}");
        prop_assert!(!acl.allows(&prefixed_path, &cn));
        prop_assert!(!Acl::default().allows(&path, &cn));
    }

    #[test]
    fn acl_patterns_of_any_text_never_panic(p in ".{0,30}", c in ".{0,30}", path in ".{0,30}", cn in ".{0,30}") {
        if let Ok(e) = AclEntry::new(&p, &c) {
            let _ = Acl::new(vec![e]).allows(&path, &cn);
        }
    }

    #[test]
    fn config_loading_never_panics_on_any_text(text in ".{0,200}") {
        let _ = Config::from_yaml(&text);
    }

    #[test]
    fn config_loading_never_panics_on_plausible_yaml_and_validates(
        entries in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "db_uri", "db.readers", "db.max_batch", "db.synchronous",
                    "http_server.max_inflight_requests", "http_server.request_timeout",
                    "http_server.max_connections", "http_server.handshake_timeout",
                    "http_server.header_timeout", "http_server.idle_timeout",
                    "http_server.max_body_bytes", "http_server.max_bulk_names",
                    "privacy.timestamp_granularity", "privacy.last_login_granularity",
                    "privacy.keep_user_agent", "retention.user_logs", "retention.devices",
                    "retention.interval", "geoip.db", "secrets.device_key_file", "bogus.key",
                ]),
                prop_oneof![
                    Just("0".to_string()), Just("-1".to_string()), Just("1".to_string()),
                    Just("18446744073709551616".to_string()), Just("90s".to_string()),
                    Just("1h".to_string()), Just("365d".to_string()), Just("8d".to_string()),
                    Just("0s".to_string()), Just("1.5h".to_string()), Just("true".to_string()),
                    Just("full".to_string()), Just("normal".to_string()), Just("x.db".to_string()),
                    Just("''".to_string()), Just("[1, 2]".to_string()), Just("{a: 1}".to_string()),
                    Just("~".to_string()), "[a-z0-9]{0,6}",
                ],
            ),
            0..10,
        )
    ) {
        let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        let mut top = Vec::new();
        for (key, value) in &entries {
            match key.split_once('.') {
                Some((section, k)) => sections.entry(section).or_default().push(format!("  {k}: {value}")),
                None => top.push(format!("{key}: {value}")),
            }
        }
        let mut yaml = top.join("\n");
        for (section, lines) in sections {
            yaml.push_str(&format!("\n{section}:\n{}", lines.join("\n")));
        }
        if let Ok(c) = Config::from_yaml(&yaml) {
            prop_assert!(!c.db.path.as_os_str().is_empty(), "{}", yaml);
            prop_assert!(c.http.max_inflight_requests > 0 && c.http.max_connections > 0);
            prop_assert!((1..=64).contains(&c.db.readers));
            for g in [c.privacy.timestamp_granularity, c.privacy.last_login_granularity] {
                prop_assert!(!g.is_zero() && g <= std::time::Duration::from_secs(7 * 86_400));
            }
            for d in [c.http.request_timeout, c.http.idle_timeout, c.retention.user_logs, c.retention.interval] {
                prop_assert!(!d.is_zero());
            }
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Validation never panics, and what it accepts obeys every rule: a
    /// username by the rule, a time inside the window, floored and never later.
    #[test]
    fn log_validation_never_panics_and_accepts_only_valid_entries(entries in proptest::collection::vec(log_entry(), 1..8)) {
        let (_dir, state) = service();
        let svc = &state.service;
        for e in entries {
            if let Ok(rec) = svc.log_record(&e, NOW) {
                prop_assert!(check_username(&e.username).is_ok());
                prop_assert_eq!(&rec.username, &e.username);
                let ts = e.timestamp.unix();
                prop_assert!(ts <= NOW + MAX_FUTURE_SECS);
                prop_assert!(ts >= NOW - 365 * 86_400);
                prop_assert!(rec.ts <= ts && ts - rec.ts < 3600, "{} -> {}", ts, rec.ts);
                prop_assert_eq!(rec.ts % 3600, 0);
                prop_assert!(!rec.log_type.is_empty());
                if let Some(d) = &rec.device {
                    prop_assert!(d.user_agent.is_empty(), "raw user agent kept");
                }
            }
        }
    }
}
