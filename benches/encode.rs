//! get_user_logs writes each entry with `LogEntryRef::write_json`; this
//! measures it side by side with `serde_json` on the same entry, in one run:
//! `cargo bench --bench encode`.

use std::hint::black_box;
use std::time::Instant;

use usermetadb::wire::{DeviceInfoRef, LogEntryRef, Timestamp};

fn main() {
    let entry = LogEntryRef {
        timestamp: Timestamp::from_unix(1_763_820_000),
        username: "user0012345@example.org",
        log_type: "login",
        message: "",
        service: "mail",
        login_method: "password",
        login_authenticator_id: "",
        device_info: Some(DeviceInfoRef {
            id: "3f2a9c0d1e4b5a6f7c8d9e0f1a2b3c4d",
            remote_addr: "",
            remote_zone: "IT",
            user_agent: "",
            browser: "Firefox",
            os: "Linux",
            mobile: false,
        }),
    };
    let n = 2_000_000u32;
    let mut out = Vec::with_capacity(4096);
    for round in 1..=3 {
        let t = Instant::now();
        for _ in 0..n {
            out.clear();
            serde_json::to_writer(&mut out, black_box(&entry)).expect("into a Vec");
            black_box(&out);
        }
        let serde = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            out.clear();
            black_box(&entry).write_json(&mut out);
            black_box(&out);
        }
        let hand = t.elapsed();
        println!(
            "round {round}: serde_json {:.0} ns, write_json {:.0} ns per entry: {:.2}x",
            serde.as_nanos() as f64 / f64::from(n),
            hand.as_nanos() as f64 / f64::from(n),
            serde.as_secs_f64() / hand.as_secs_f64()
        );
    }
}
