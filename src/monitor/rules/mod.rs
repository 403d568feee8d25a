//! The detections. Each module states its rule in its first sentence.

pub mod dormant_account;
pub mod login_failure_burst;
pub mod new_country;
pub mod new_device;
pub mod security_change;

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::monitor::Event;

    pub const NOW: i64 = 1_800_000_000;

    pub fn login() -> Event {
        Event {
            ts: NOW,
            log_type: "login".into(),
            service: "mail".into(),
            has_device: true,
            zone: "IT".into(),
            browser: "Firefox".into(),
            os: "Linux".into(),
            mobile: false,
        }
    }
}
