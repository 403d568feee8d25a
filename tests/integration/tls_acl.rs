//! Certificate failure cases and the ACL, over real mutual TLS.

use serde_json::json;
use usermetadb::client::{tls_config, Connection};

use crate::common::*;

/// True when a client presenting `name` cannot get any answer: the handshake
/// or the first request fails.
async fn refused(ts: &TestServer, name: &str) -> bool {
    match ts.client_cert(name).await {
        Err(_) => true,
        Ok(mut c) => c.0.post_raw("/api/add_log", "{}".into()).await.is_err(),
    }
}

#[tokio::test]
async fn certificates_that_do_not_verify_are_refused_at_the_tls_layer() {
    let ts = TestServer::start().await;
    for name in [
        "bad-untrusted",
        "bad-expired",
        "bad-notyet",
        "bad-server-eku",
    ] {
        assert!(refused(&ts, name).await, "{name} was not refused");
    }
    // No certificate at all.
    let tls = tls_config(&cert("ca.pem"), None).unwrap();
    let outcome = match Connection::connect(ts.addr, "localhost", Some(tls)).await {
        Err(_) => true,
        Ok(mut c) => c.post_raw("/api/add_log", "{}".into()).await.is_err(),
    };
    assert!(outcome, "a client without a certificate got an answer");
    // The good one still works, and nothing was written by the others.
    assert!(!refused(&ts, "client-sso-server").await);
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn certificates_without_exactly_one_cn_are_denied_everything() {
    let ts = TestServer::start().await;
    for name in ["bad-no-cn", "bad-two-cn"] {
        let mut c = ts.client_cert(name).await.unwrap();
        let (status, _) = c.post("/api/add_log", login("u", "d", 60)).await;
        assert_eq!(status, 403, "{name}");
        let r =
            c.0.request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
                .await
                .unwrap();
        assert_eq!(r.status, 403, "{name} /health");
    }
    assert_eq!(ts.counts(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn acl_allows_and_denies_on_the_whole_path_and_cn() {
    let ts = TestServer::start().await;
    let entry = login("u", "d", 60);
    let read = json!({"username": "u"});
    let mut sso = ts.client("sso-server").await;
    let mut auth = ts.client("auth-server").await;
    let mut panel = ts.client("accounts-panel").await;
    let mut evil = ts.client("sso-server.evil").await;
    let mut xauth = ts.client("xauth-server").await;
    let mut prom = ts.client("prometheus").await;

    assert_eq!(sso.post("/api/add_log", entry.clone()).await.0, 200);
    assert_eq!(auth.post("/api/add_log", entry.clone()).await.0, 200);
    assert_eq!(sso.post("/api/get_user_logs", read.clone()).await.0, 403);
    assert_eq!(sso.post("/api/get_user_devices", read.clone()).await.0, 403);
    assert_eq!(panel.post("/api/get_user_logs", read.clone()).await.0, 200);
    assert_eq!(panel.post("/api/add_log", entry.clone()).await.0, 403);
    // Anchoring: neither a longer CN nor a CN ending in an allowed one passes.
    assert_eq!(evil.post("/api/add_log", entry.clone()).await.0, 403);
    assert_eq!(xauth.post("/api/add_log", entry.clone()).await.0, 403);
    assert_eq!(prom.post("/api/add_log", entry.clone()).await.0, 403);
    let health = prom
        .0
        .request(hyper::Method::GET, "/health", None, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    // Denials wrote nothing: only the two allowed entries are there.
    assert_eq!(ts.counts()[1], 2);
    // A denied request is answered 403 before anything about its body.
    let r = evil.post_bytes("/api/add_log", "not json").await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn tls12_clients_are_served() {
    let ts = TestServer::start().await;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(usermetadb::server::tls::root_store(&cert("ca.pem")).unwrap())
        .with_client_auth_cert(
            usermetadb::server::tls::load_certs(&cert("client-sso-server.pem")).unwrap(),
            usermetadb::server::tls::load_key(&cert("client-sso-server.key")).unwrap(),
        )
        .unwrap();
    let mut c = Connection::connect(ts.addr, "localhost", Some(std::sync::Arc::new(cfg)))
        .await
        .unwrap();
    let r = c
        .post_raw("/api/add_log", login("u", "d", 60).to_string().into())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}
