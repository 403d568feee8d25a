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
