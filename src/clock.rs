//! The clock, and flooring times to a granularity. Layers that need the time
//! take `now` as a parameter (or a `fn() -> i64` for a background job); only
//! the outermost callers read it from here.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Floors `ts` (Unix seconds) to a multiple of `granularity` seconds. Never
/// later than `ts`; near `i64::MIN`, where the multiple does not exist, it
/// saturates.
pub fn quantize(ts: i64, granularity: u64) -> i64 {
    let g = i64::try_from(granularity).unwrap_or(i64::MAX).max(1);
    ts.saturating_sub(ts.rem_euclid(g))
}
