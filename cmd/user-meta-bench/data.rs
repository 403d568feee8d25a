//! The synthetic population: users, their devices (ID, country, user agent)
//! and the request bodies drawn from them. Everything about a user or a device
//! is a pure function of the seed and its index, so `seed` and a later run
//! agree on who has which device without sharing any state but the database.

use rand::Rng;
use usermetadb::wire::{
    AddLogRequest, CheckDeviceRequest, DeviceInfo, GetUnusedAccountsRequest, GetUserLogsRequest,
    LogEntry, Timestamp,
};

/// Addresses that the GeoIP test database (testdata/geoip) places in a
/// country, one per country, with the country it gives.
pub const ADDRESSES: &[(&str, &str)] = &[
    ("81.2.69.160", "GB"),
    ("216.160.83.56", "US"),
    ("89.160.20.112", "SE"),
    ("2001:218::1", "JP"),
    ("175.16.199.1", "CN"),
    ("202.196.224.1", "PH"),
    ("2a02:cf40::1", "NO"),
    ("2a02:d280::1", "CZ"),
    ("2a02:d300::1", "UA"),
    ("2001:220::1", "KR"),
    ("67.43.156.1", "BT"),
    ("217.65.48.1", "GI"),
];

/// Agents as browsers and mail clients send them; the server reduces each to
/// browser, OS and a mobile flag.
pub const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
];

pub const SERVICES: &[&str] = &["sso", "imap", "smtp", "webmail"];
const LOGIN_METHODS: &[&str] = &["password", "otp", "webauthn"];

/// Share of users whose activity stopped more than [`DORMANT_DAYS`] days ago.
pub const DORMANT_PERCENT: u64 = 20;
pub const DORMANT_DAYS: i64 = 180;

/// What one log entry is; the weights are those of a login service's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Login,
    Logout,
    PasswordChange,
    PasswordReset,
    OtpEnabled,
    OtpDisabled,
}

impl Kind {
    pub fn random(rng: &mut impl Rng) -> Kind {
        match rng.gen_range(0..1000) {
            0..=819 => Kind::Login,
            820..=979 => Kind::Logout,
            980..=989 => Kind::PasswordChange,
            990..=994 => Kind::PasswordReset,
            995..=997 => Kind::OtpEnabled,
            _ => Kind::OtpDisabled,
        }
    }

    pub fn log_type(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Logout => "logout",
            Kind::PasswordChange => "password_change",
            Kind::PasswordReset => "password_reset",
            Kind::OtpEnabled => "otp_enabled",
            Kind::OtpDisabled => "otp_disabled",
        }
    }

    /// Account changes are logged without the device that made them.
    pub fn has_device(self) -> bool {
        matches!(self, Kind::Login | Kind::Logout)
    }
}

/// SplitMix64: a cheap, well-mixed hash of an index.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct Population {
    pub users: u32,
    pub devices_per_user: u32,
    /// How many entries of [`ADDRESSES`] are in use.
    pub countries: usize,
    pub seed: u64,
}

impl Population {
    pub fn new(users: u32, devices_per_user: u32, countries: usize, seed: u64) -> Population {
        Population {
            users: users.max(1),
            devices_per_user: devices_per_user.max(1),
            countries: countries.clamp(1, ADDRESSES.len()),
            seed,
        }
    }

    fn h(&self, a: u64, b: u64, salt: u64) -> u64 {
        mix(self.seed ^ mix(a ^ mix(b ^ salt.wrapping_mul(0x5851_f42d_4c95_7f2d))))
    }

    pub fn username(&self, user: u32) -> String {
        format!("user{user:07}@example.org")
    }

    pub fn dormant(&self, user: u32) -> bool {
        self.h(u64::from(user), 0, 1) % 100 < DORMANT_PERCENT
    }

    fn home_country(&self, user: u32) -> usize {
        (self.h(u64::from(user), 0, 2) % self.countries as u64) as usize
    }

    pub fn device_id(&self, user: u32, device: u32) -> String {
        let a = self.h(u64::from(user), u64::from(device), 3);
        let b = self.h(u64::from(user), u64::from(device), 4);
        format!("{a:016x}{b:016x}")
    }

    /// Most devices are used from the user's home country, some while travelling.
    pub fn device_address(&self, user: u32, device: u32) -> &'static str {
        let r = self.h(u64::from(user), u64::from(device), 5);
        let country = if r % 100 < 85 {
            self.home_country(user)
        } else {
            ((r >> 8) % self.countries as u64) as usize
        };
        ADDRESSES[country].0
    }

    pub fn device_user_agent(&self, user: u32, device: u32) -> &'static str {
        let r = self.h(u64::from(user), u64::from(device), 6);
        USER_AGENTS[(r % USER_AGENTS.len() as u64) as usize]
    }

    /// The device as an auth service reports it: address and agent only,
    /// leaving country, browser and OS to the server.
    pub fn device_info(&self, user: u32, device: u32) -> DeviceInfo {
        DeviceInfo {
            id: self.device_id(user, device),
            remote_addr: self.device_address(user, device).to_owned(),
            user_agent: self.device_user_agent(user, device).to_owned(),
            ..Default::default()
        }
    }

    /// A device never seen before: a fresh random ID on a known address.
    pub fn new_device_info(&self, user: u32, rng: &mut impl Rng) -> DeviceInfo {
        let mut d = self.device_info(user, rng.gen_range(0..self.devices_per_user));
        d.id = format!("{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>());
        d
    }

    pub fn random_user(&self, rng: &mut impl Rng) -> u32 {
        rng.gen_range(0..self.users)
    }

    pub fn random_device(&self, rng: &mut impl Rng) -> u32 {
        rng.gen_range(0..self.devices_per_user)
    }

    /// A log entry as an auth service sends it at `now`: a random user on one
    /// of their devices, now and then a new one.
    pub fn add_log(&self, rng: &mut impl Rng, now: Timestamp, new_device_percent: u32) -> Vec<u8> {
        let user = self.random_user(rng);
        let kind = Kind::random(rng);
        let device_info = kind.has_device().then(|| {
            if rng.gen_range(0..100) < new_device_percent {
                self.new_device_info(user, rng)
            } else {
                self.device_info(user, self.random_device(rng))
            }
        });
        let entry = LogEntry {
            timestamp: now,
            username: self.username(user),
            log_type: kind.log_type().to_owned(),
            service: SERVICES[rng.gen_range(0..SERVICES.len())].to_owned(),
            login_method: if kind == Kind::Login {
                LOGIN_METHODS[rng.gen_range(0..LOGIN_METHODS.len())].to_owned()
            } else {
                String::new()
            },
            device_info,
            ..Default::default()
        };
        to_body(&AddLogRequest { log: Some(entry) })
    }

    /// Is this one of the user's devices? Mostly yes, as when a known user
    /// logs in again.
    pub fn check_device(&self, rng: &mut impl Rng, unknown_percent: u32) -> Vec<u8> {
        let user = self.random_user(rng);
        let device_info = if rng.gen_range(0..100) < unknown_percent {
            self.new_device_info(user, rng)
        } else {
            self.device_info(user, self.random_device(rng))
        };
        to_body(&CheckDeviceRequest {
            username: self.username(user),
            device_info: Some(device_info),
        })
    }

    pub fn get_user_logs(&self, rng: &mut impl Rng, limit: i64) -> Vec<u8> {
        to_body(&GetUserLogsRequest {
            username: self.username(self.random_user(rng)),
            max_days: 0,
            limit,
        })
    }

    /// `names` distinct names, mostly of known users, a few never seen.
    pub fn get_unused_accounts(&self, rng: &mut impl Rng, names: usize, days: i64) -> Vec<u8> {
        let mut picked = std::collections::HashSet::with_capacity(names);
        let mut usernames = Vec::with_capacity(names);
        let known = names.min(self.users as usize) * 95 / 100;
        while usernames.len() < known {
            let u = self.random_user(rng);
            if picked.insert(u) {
                usernames.push(self.username(u));
            }
        }
        while usernames.len() < names {
            usernames.push(format!(
                "unknown{:012x}@example.org",
                rng.gen::<u64>() >> 16
            ));
        }
        to_body(&GetUnusedAccountsRequest {
            usernames: Some(usernames),
            days,
        })
    }
}

/// The Windows agent's event types, in its spellings.
const AGENT_EVENTS: [&str; 4] = ["Sign-In", "Lock", "Unlock", "Sign-Out"];

impl Population {
    /// An event as the Windows agent posts it (the winauthmon protocol): a
    /// user on one of their computers, any of the four event types, at
    /// `now` to the second.
    pub fn agent_event(&self, rng: &mut impl Rng, now: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
        let user = self.random_user(rng);
        let device = self.random_device(rng);
        let event = serde_json::json!({
            "EventType": AGENT_EVENTS[rng.gen_range(0..AGENT_EVENTS.len())],
            "UserName": format!("user{user}"),
            "ComputerName": format!("WS-{user}-{device}"),
            "Timestamp": now.format("%Y-%m-%d %H:%M:%S").to_string(),
            "LocalIP": "10.0.0.1",
            "PublicIP": self.device_address(user, device),
            "retry": 0,
        });
        to_body(&event)
    }
}

fn to_body<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // The wire types hold only strings, numbers and booleans: encoding cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_stable_and_distinct() {
        let p = Population::new(1000, 3, ADDRESSES.len(), 7);
        assert_eq!(p.device_id(5, 1), p.device_id(5, 1));
        assert_ne!(p.device_id(5, 1), p.device_id(5, 2));
        assert_ne!(p.device_id(5, 1), p.device_id(6, 1));
        let dormant = (0..1000).filter(|u| p.dormant(*u)).count();
        assert!((100..300).contains(&dormant), "{dormant}");
    }

    #[test]
    fn bodies_decode_as_the_wire_types() {
        let p = Population::new(100, 2, 3, 1);
        let mut rng = rand::thread_rng();
        let now = Timestamp::from_unix(1_700_000_000);
        for _ in 0..50 {
            let b = p.add_log(&mut rng, now, 10);
            serde_json::from_slice::<AddLogRequest>(&b).unwrap();
        }
        let b = p.get_unused_accounts(&mut rng, 50, 180);
        let r: GetUnusedAccountsRequest = serde_json::from_slice(&b).unwrap();
        assert_eq!(r.usernames.unwrap().len(), 50);
    }
}
