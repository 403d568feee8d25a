//! What the store keeps for Windows login agents, in domain terms: their API
//! keys, the keyed hashes that recognise a retried event, the open sessions
//! (an exact start, held until the session closes or a day passes) and the
//! time spent, rounded, per user, computer and day.

pub use crate::model::{AgentKey, TimeSpentRow};

/// The longest a session may stay open; an older start is forgotten.
pub const MAX_SESSION: i64 = 86_400;

/// What an agent event does to its user's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStep {
    /// Sign-in or unlock: a session of the user on the computer starts at
    /// `started` (exact, held until it closes or [`MAX_SESSION`] passes).
    Open { session: [u8; 32], started: i64 },
    /// Sign-out or lock: the open session closes at `ended` (exact, never
    /// stored); its length, rounded to `granularity`, is added to the day
    /// it started on.
    Close {
        session: [u8; 32],
        ended: i64,
        granularity: i64,
    },
}

/// One event of an agent, reduced as any log entry, with what recognises
/// its retries and what it does to sessions.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    pub rec: crate::model::LogRecord,
    /// A keyed hash of (key, event type, user, computer, exact time).
    pub dedup: [u8; 32],
    /// When `dedup` is deleted (floored to the hour).
    pub dedup_expires: i64,
    pub session: SessionStep,
}

/// What storing an agent event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOutcome {
    /// Stored, raising this many alerts.
    Stored { alerts: usize },
    /// Already stored (a retry): nothing was written.
    Duplicate,
}

/// What a closed session adds to its day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub day: i64,
    pub seconds: i64,
    pub first_start: i64,
    pub last_end: i64,
}

/// The span of a session from `started` to `ended` (exact), rounded to
/// `granularity` (half up): `None` when it ends before it starts or lasted
/// longer than [`MAX_SESSION`].
pub fn span(started: i64, ended: i64, granularity: i64) -> Option<Span> {
    let g = granularity.max(1);
    let length = ended - started;
    if !(0..=MAX_SESSION).contains(&length) {
        return None;
    }
    Some(Span {
        day: started - started.rem_euclid(86_400),
        seconds: (length + g / 2) / g * g,
        first_start: started - started.rem_euclid(g),
        last_end: ended - ended.rem_euclid(g),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_rounded_to_the_granularity_and_kept_on_the_start_day() {
        let day = 20_000 * 86_400;
        let s = span(day + 9 * 3600 + 7, day + 9 * 3600 + 7 + 1234, 300).unwrap();
        assert_eq!(s.day, day);
        assert_eq!(s.seconds, 1200); // 20.6 min -> 20 min
        assert_eq!(s.first_start, day + 9 * 3600);
        assert_eq!(s.last_end, day + 9 * 3600 + 1200);
        assert_eq!(span(day, day + 150, 300).unwrap().seconds, 300); // half up
        assert_eq!(span(day, day + 149, 300).unwrap().seconds, 0);
        // Across midnight: the day it started.
        assert_eq!(span(day - 60, day + 600, 300).unwrap().day, day - 86_400);
        assert_eq!(span(day, day - 1, 300), None);
        assert_eq!(span(day, day + MAX_SESSION + 1, 300), None);
    }
}
