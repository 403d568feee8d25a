//! The monitoring kit in `contrib/`: the Grafana dashboard and the
//! Prometheus rules query only metrics the server exports. (The rules' own
//! behaviour is checked by `promtool test rules` in `.ci/run`.)

use std::collections::BTreeSet;

use crate::common::*;

/// The metric names a PromQL text mentions.
fn queried(text: &str) -> BTreeSet<String> {
    regex::Regex::new(r"usermetadb_[a-z_]+")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// Every series name `/metrics` can carry: each family, and a histogram's
/// `_bucket`, `_sum` and `_count`.
async fn exported(ts: &TestServer) -> BTreeSet<String> {
    let mut c = client_at(ts.addr, "admin").await;
    let r =
        c.0.request(hyper::Method::GET, "/metrics", None, bytes::Bytes::new())
            .await
            .unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn contrib(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[tokio::test]
async fn the_dashboard_and_the_rules_query_only_exported_metrics() {
    let ts = TestServer::start().await;
    let exported = exported(&ts).await;
    assert!(
        exported.contains("usermetadb_requests_total"),
        "{exported:?}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&contrib("grafana/usermetadb.json")).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel without a query: {panel}");
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let in_dashboard = queried(&exprs);
    assert!(in_dashboard.len() >= 15, "{in_dashboard:?}");
    let missing: Vec<_> = in_dashboard.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not exported"
    );

    let in_rules = queried(&contrib("prometheus/usermetadb.rules.yml"));
    assert!(in_rules.len() >= 8, "{in_rules:?}");
    let missing: Vec<_> = in_rules.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the rules query {missing:?}, not exported"
    );

    // And the other way: every family the server exports is on the dashboard.
    let families: BTreeSet<String> = exported
        .iter()
        .filter(|n| !["_bucket", "_sum", "_count"].iter().any(|s| n.ends_with(s)))
        .cloned()
        .collect();
    let undrawn: Vec<_> = families
        .iter()
        .filter(|f| {
            !in_dashboard.iter().any(|q| {
                q == *f
                    || q.strip_prefix(f.as_str())
                        .is_some_and(|s| s.starts_with('_'))
            })
        })
        .collect();
    assert!(
        undrawn.is_empty(),
        "exported but not on the dashboard: {undrawn:?}"
    );
}

fn spec() -> serde_yaml::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The OpenAPI description names exactly the server's routes, each with its
/// method.
#[test]
fn the_api_description_names_every_route_and_no_other() {
    use usermetadb::endpoint::Endpoint;
    let spec = spec();
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in ops.as_mapping().unwrap() {
            documented.insert((
                method.as_str().unwrap().to_uppercase(),
                path.as_str().unwrap().to_owned(),
            ));
        }
    }
    let served: BTreeSet<(String, String)> = Endpoint::ALL
        .iter()
        .map(|e| (e.method().as_str().to_owned(), e.path().to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes the spec lacks: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented routes the server lacks: {unserved:?}"
    );
}

/// Follows a local `$ref`.
fn resolve<'a>(spec: &'a serde_yaml::Value, v: &'a serde_yaml::Value) -> &'a serde_yaml::Value {
    match v.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let mut at = spec;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            resolve(spec, at)
        }
        None => v,
    }
}

/// Every documented request example is answered 200 by a real server, with
/// every property the documented answer requires; every documented answer
/// example has the same keys as the real answer.
#[tokio::test]
async fn every_documented_example_round_trips() {
    let spec = spec();
    let ts = TestServer::start().await;
    let mut c = client_at(ts.addr, "admin").await;
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        let Some(op) = ops.get("post") else { continue };
        let media = &op["requestBody"]["content"]["application/json"];
        let example = &media["examples"]["example"]["value"];
        let body: serde_json::Value = serde_json::to_value(example).unwrap();
        let (status, answer) = c.post(path, body.clone()).await;
        assert_eq!(status, 200, "{path} {body}: {answer}");
        let ok = &op["responses"]["200"]["content"]["application/json"];
        let schema = resolve(&spec, &ok["schema"]);
        if let Some(required) = schema.get("required").and_then(|r| r.as_sequence()) {
            for key in required {
                let key = key.as_str().unwrap();
                assert!(
                    answer.get(key).is_some(),
                    "{path}: answer {answer} lacks {key}"
                );
            }
        }
        if let Some(documented) = ok.get("examples") {
            let documented: serde_json::Value =
                serde_json::to_value(&documented["example"]["value"]).unwrap();
            let keys = |v: &serde_json::Value| -> BTreeSet<String> {
                v.as_object().unwrap().keys().cloned().collect()
            };
            assert_eq!(keys(&documented), keys(&answer), "{path}: {answer}");
        }
        checked += 1;
    }
    assert_eq!(checked, 20);
}

/// Under systemd's `Type=notify`, the server says READY=1 once it answers
/// (listener bound, database open and migrated), RELOADING=1 and READY=1
/// around a SIGHUP reload, and STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_notifies_systemd_of_readiness_reload_and_stop() {
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.yml");
    std::fs::write(&config, config_yaml(dir.path(), "")).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let recv = |socket: &UnixDatagram| -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_user-meta-server"))
        .arg("--config")
        .arg(&config)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = recv(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains("STATUS=listening on https://127.0.0.1:"),
        "{ready:?}"
    );
    // Ready means answering, at once.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = client_at(addr, "admin").await;
    let r =
        c.0.request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
            .await
            .unwrap();
    assert_eq!(r.status, 200);

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = recv(&socket);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(recv(&socket), "READY=1");

    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(recv(&socket), "STOPPING=1");
    assert!(child.wait().unwrap().success());
}
