//! What following a connection's framing (`server::framing`) costs per
//! request: a typical add_log request fed whole and in two reads, beside
//! httparse's parse of the same head alone (which the HTTP library does
//! anyway), in one run: `cargo bench --bench framing`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use usermetadb::server::framing::{Ambiguity, Tracker};

fn main() {
    let body = r#"{"log":{"timestamp":"2026-12-03T10:00:00Z","username":"user0012345@example.org","log_type":"login","service":"mail","login_method":"password","device_info":{"id":"3f2a9c0d1e4b5a6f7c8d9e0f1a2b3c4d","remote_addr":"81.2.69.160","user_agent":"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}}}"#;
    let request = format!(
        "POST /api/add_log HTTP/1.1\r\nhost: localhost:5505\r\ncontent-type: application/json\r\n\
         user-agent: Go-http-client/1.1\r\naccept-encoding: gzip\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let bytes = request.as_bytes();
    let head_end = request.find("\r\n\r\n").unwrap() + 4;
    let n = 1_000_000u32;
    for round in 1..=3 {
        let mut tracker = Tracker::new(Arc::new(Ambiguity::default()));
        let t = Instant::now();
        for _ in 0..n {
            tracker.feed(black_box(bytes));
        }
        let whole = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            tracker.feed(black_box(&bytes[..100]));
            tracker.feed(black_box(&bytes[100..]));
        }
        let split = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            black_box(req.parse(black_box(&bytes[..head_end])).is_ok());
        }
        let parse = t.elapsed();
        let per = |d: std::time::Duration| d.as_nanos() as f64 / f64::from(n);
        println!(
            "round {round}: followed whole {:.0} ns, in two reads {:.0} ns, httparse alone {:.0} ns per request ({} bytes)",
            per(whole),
            per(split),
            per(parse),
            bytes.len()
        );
    }
}
