//! The privacy transforms applied on the write path, before anything is stored:
//! timestamps floored to a granularity, addresses reduced to a country and
//! dropped, user agents reduced to browser / OS / mobile and dropped, device IDs
//! sealed under the server key.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use serde::Deserialize;

use crate::config::PrivacyConfig;
use crate::crypto::DeviceKey;
use crate::model::DeviceRecord;
use crate::wire::DeviceInfo;

/// User agents are cut to this many bytes before parsing.
pub const MAX_USER_AGENT: usize = 1024;

pub use crate::clock::quantize;

/// A country database, reloadable while requests use it.
pub struct GeoIp {
    path: PathBuf,
    reader: RwLock<Arc<maxminddb::Reader<Vec<u8>>>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

/// The fields of both layouts: MaxMind's and the flat `country_code` one.
#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<GeoIp, String> {
        let reader = Self::read(path)?;
        Ok(GeoIp {
            path: path.to_owned(),
            reader: RwLock::new(Arc::new(reader)),
        })
    }

    fn read(path: &Path) -> Result<maxminddb::Reader<Vec<u8>>, String> {
        maxminddb::Reader::open_readfile(path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Re-reads the file; on failure the database in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(Self::read(&self.path)?);
        if let Ok(mut r) = self.reader.write() {
            *r = fresh;
        }
        Ok(())
    }

    /// The ISO country code of an address, or an empty string for private,
    /// loopback, unknown or malformed addresses.
    pub fn country(&self, addr: &str) -> String {
        let Some(ip) = parse_public_ip(addr) else {
            return String::new();
        };
        let reader = match self.reader.read() {
            Ok(r) => r.clone(),
            Err(_) => return String::new(),
        };
        let Ok(found) = reader.lookup(ip) else {
            return String::new();
        };
        let Ok(Some(rec)) = found.decode::<CountryRecord>() else {
            return String::new();
        };
        rec.country
            .and_then(|c| c.iso_code)
            .or(rec.registered_country.and_then(|c| c.iso_code))
            .or(rec.country_code)
            .filter(|c| c.len() <= 8 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

/// Parses an address as clients send it (bare, `[v6]`, with a port, or
/// IPv4-mapped IPv6) and keeps it only if it is globally routable.
fn parse_public_ip(addr: &str) -> Option<IpAddr> {
    let a = addr.trim();
    let ip: IpAddr = a
        .parse()
        .ok()
        .or_else(|| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            a.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })?;
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let private = match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
        }
    };
    (!private).then_some(ip)
}

/// Browser, OS and whether the device is mobile, from a user agent string.
pub fn parse_user_agent(ua: &str) -> (String, String, bool) {
    let ua = truncate(ua, MAX_USER_AGENT);
    // An auth service sees the same few agents again and again, and parsing
    // is the dearest step of the write path: remember recent answers, keyed
    // by a keyed hash so that the agents themselves are not kept.
    static CACHE: LazyLock<Mutex<(RandomState, HashMap<u64, Parsed>)>> =
        LazyLock::new(|| Mutex::new((RandomState::new(), HashMap::new())));
    let key = match CACHE.lock() {
        Ok(cache) => {
            let key = cache.0.hash_one(ua);
            if let Some(hit) = cache.1.get(&key) {
                return hit.clone();
            }
            Some(key)
        }
        Err(_) => None,
    };
    let parsed = parse_user_agent_uncached(ua);
    if let (Some(key), Ok(mut cache)) = (key, CACHE.lock()) {
        if cache.1.len() >= UA_CACHE_ENTRIES {
            cache.1.clear();
        }
        cache.1.insert(key, parsed.clone());
    }
    parsed
}

/// Browser, OS, mobile.
type Parsed = (String, String, bool);

/// Distinct user agents remembered by [`parse_user_agent`].
const UA_CACHE_ENTRIES: usize = 4096;

fn parse_user_agent_uncached(ua: &str) -> (String, String, bool) {
    static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);
    match PARSER.parse(ua) {
        Some(r) => {
            let known = |s: &str| {
                if s.is_empty() || s == "UNKNOWN" {
                    "unknown".to_owned()
                } else {
                    s.to_owned()
                }
            };
            let mobile = matches!(r.category, "smartphone" | "mobilephone");
            (known(r.name), known(r.os), mobile)
        }
        None => ("unknown".into(), "unknown".into(), false),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Everything the write path needs to reduce what clients send.
pub struct Privacy {
    pub config: PrivacyConfig,
    pub key: DeviceKey,
    pub geoip: Option<GeoIp>,
}

impl Privacy {
    pub fn new(config: PrivacyConfig, key: DeviceKey, geoip: Option<GeoIp>) -> Privacy {
        Privacy { config, key, geoip }
    }

    pub fn quantize_log(&self, ts: i64) -> i64 {
        quantize(ts, self.config.timestamp_granularity.as_secs())
    }

    pub fn quantize_last_login(&self, ts: i64) -> i64 {
        quantize(ts, self.config.last_login_granularity.as_secs())
    }

    /// The zone, browser, OS and mobile flag a device is stored with: the
    /// client's values where given, else derived from the address and agent.
    fn reduce(&self, d: &DeviceInfo) -> (String, String, String, bool, String) {
        let zone = if d.remote_zone.is_empty() {
            self.geoip
                .as_ref()
                .map(|g| g.country(&d.remote_addr))
                .unwrap_or_default()
        } else {
            d.remote_zone.clone()
        };
        let (mut browser, mut os, mut mobile) = (d.browser.clone(), d.os.clone(), d.mobile);
        if (browser.is_empty() || os.is_empty()) && !d.user_agent.is_empty() {
            let (b, o, m) = parse_user_agent(&d.user_agent);
            if browser.is_empty() {
                browser = b;
            }
            if os.is_empty() {
                os = o;
            }
            mobile = mobile || m;
        }
        let user_agent = if self.config.keep_user_agent {
            truncate(&d.user_agent, MAX_USER_AGENT).to_owned()
        } else {
            String::new()
        };
        (zone, browser, os, mobile, user_agent)
    }

    /// What is stored of a device of `user`; the address is gone.
    pub fn reduce_device(&self, user: &str, d: &DeviceInfo) -> DeviceRecord {
        let (zone, browser, os, mobile, user_agent) = self.reduce(d);
        DeviceRecord {
            sealed_id: self.key.seal_id(user, &d.id),
            zone,
            browser,
            os,
            mobile,
            user_agent,
        }
    }

    /// The privacy-reduced `DeviceInfo` for an ID the caller already knows.
    pub fn reduce_info(&self, id: String, d: &DeviceInfo) -> DeviceInfo {
        let (remote_zone, browser, os, mobile, user_agent) = self.reduce(d);
        DeviceInfo {
            id,
            remote_addr: String::new(),
            remote_zone,
            user_agent,
            browser,
            os,
            mobile,
        }
    }

    /// A stored device ID in clear; one that does not open (another key) is
    /// answered empty rather than as ciphertext.
    pub fn open_device_id(&self, user: &str, sealed: &[u8]) -> String {
        self.key.open_id(user, sealed).unwrap_or_default()
    }

    /// The wire form of a stored device; an ID that does not open (another
    /// key) is answered empty rather than as ciphertext.
    pub fn restore_device(&self, user: &str, rec: DeviceRecord) -> DeviceInfo {
        DeviceInfo {
            id: self.open_device_id(user, &rec.sealed_id),
            remote_addr: String::new(),
            remote_zone: rec.zone,
            user_agent: rec.user_agent,
            browser: rec.browser,
            os: rec.os,
            mobile: rec.mobile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_floors_and_never_moves_forward() {
        assert_eq!(quantize(3599, 3600), 0);
        assert_eq!(quantize(3600, 3600), 3600);
        assert_eq!(quantize(-1, 3600), -3600);
        assert_eq!(quantize(1_700_000_123, 86_400), 1_699_920_000);
    }

    #[test]
    fn private_and_malformed_addresses_have_no_country() {
        for a in [
            "10.1.2.3",
            "192.168.0.1",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "100.64.0.1",
            "not an ip",
            "",
            "::ffff:10.0.0.1",
        ] {
            assert!(parse_public_ip(a).is_none(), "{a}");
        }
        assert_eq!(
            parse_public_ip("::ffff:81.2.69.160"),
            Some("81.2.69.160".parse().unwrap())
        );
        assert_eq!(
            parse_public_ip("[2001:218::1]:443"),
            Some("2001:218::1".parse().unwrap())
        );
        assert_eq!(
            parse_public_ip("81.2.69.160:1234"),
            Some("81.2.69.160".parse().unwrap())
        );
    }

    #[test]
    fn user_agents() {
        let (b, o, m) = parse_user_agent(
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        );
        assert_eq!((b.as_str(), o.as_str(), m), ("Firefox", "Linux", false));
        let (_, o, m) = parse_user_agent(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
        );
        assert_eq!((o.as_str(), m), ("iPhone", true));
        assert_eq!(parse_user_agent("zzz").0, "unknown");
        let long = "é".repeat(5000);
        assert!(truncate(&long, MAX_USER_AGENT).len() <= MAX_USER_AGENT);
        parse_user_agent(&long);
        // Cached answers are the same as fresh ones.
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        assert_eq!(parse_user_agent(ua), parse_user_agent_uncached(ua));
        assert_eq!(parse_user_agent(ua), parse_user_agent_uncached(ua));
    }
}
