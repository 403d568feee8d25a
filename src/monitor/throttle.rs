//! Login throttling that never holds an address in a form anyone can read.
//!
//! The policy, checked in this order for each attempt (a login from an
//! address, before the password is checked):
//!
//! 1. **Spraying.** An address from which `spray_logins` distinct logins
//!    failed within the window, or an IPv4 /24 or IPv6 /64 from which
//!    `spray_net_logins` did, is refused; but a login that succeeded from
//!    that very address within the window is not, so an attacker behind a
//!    user's NAT cannot lock that user out.
//! 2. **Guessing one password.** A login and an address with `delay_after`
//!    distinct wrong passwords within the window are delayed, the delay
//!    doubling with each further one up to `max_delay`; with
//!    `refuse_after` they are refused until `cooldown` has passed since the
//!    last failure. The same wrong password sent again (a phone holding an
//!    old one) counts once. A success clears the pair.
//! 3. **Distributed guessing.** A login that failed from `guess_addresses`
//!    distinct addresses within the window is under attack: an attempt
//!    from a device or a country new to the user is delayed or refused
//!    (`guess_action`), while the user's known client from a known country
//!    gets in. Knowing the user's devices and countries is the caller's
//!    part ([`Verdict::AskHistory`]).
//!
//! **What is held.** Every key is a keyed hash (SipHash under a random key
//! made in memory and never written down). Addresses are hashed with the
//! key of the current generation; a generation lasts the longer of the
//! window and the cool-down, then the older one is dropped with its key,
//! so nothing of an address outlives two generations, and even the process
//! cannot tell which address a hash stands for. An item touched while it
//! is in the older generation moves to the current one, so no item is
//! counted twice. Logins and password hashes are hashed with a key that
//! lives as long as the process. At most `max_keys` keys are held; beyond
//! that the oldest are evicted (and counted). The state lives in one
//! replica's memory: with several replicas each throttles on its own.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::policy::{GuessAction, PolicyConfig};

/// Why an attempt was delayed or refused (or `None`: allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    Failures,
    Cooldown,
    Spray,
    SprayNet,
    Guessing,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::None,
        Reason::Failures,
        Reason::Cooldown,
        Reason::Spray,
        Reason::SprayNet,
        Reason::Guessing,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::Failures => "failures",
            Reason::Cooldown => "cooldown",
            Reason::Spray => "spray",
            Reason::SprayNet => "spray_net",
            Reason::Guessing => "guessing",
        }
    }
}

/// What to answer an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Delay the answer by this many seconds.
    Delay(u32),
    Refuse,
}

/// The throttle's verdict on an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Decided(Decision, Reason),
    /// The login is under distributed attack: allow when the user knows
    /// the device and the country, otherwise [`Throttle::under_attack`].
    AskHistory,
}

/// The throttle's settings (from `policy:`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window: i64,
    pub generation: i64,
    pub delay_after: u32,
    pub delay: u32,
    pub max_delay: u32,
    pub refuse_after: u32,
    pub cooldown: i64,
    pub spray_logins: u32,
    pub spray_net_logins: u32,
    pub guess_addresses: u32,
    pub guess_action: GuessAction,
    pub max_keys: usize,
}

impl Limits {
    pub fn of(cfg: &PolicyConfig) -> Limits {
        let secs = |d: std::time::Duration| d.as_secs().max(1) as i64;
        Limits {
            window: secs(cfg.window),
            generation: secs(cfg.window).max(secs(cfg.cooldown)),
            delay_after: cfg.delay_after,
            delay: secs(cfg.delay) as u32,
            max_delay: secs(cfg.max_delay) as u32,
            refuse_after: cfg.refuse_after,
            cooldown: secs(cfg.cooldown),
            spray_logins: cfg.spray_logins,
            spray_net_logins: cfg.spray_net_logins,
            guess_addresses: cfg.guess_addresses,
            guess_action: cfg.guess_action,
            max_keys: cfg.max_keys,
        }
    }
}

/// Recent items, each with the time it was last seen: at most `cap`, the
/// oldest dropped first.
#[derive(Debug, Default, Clone)]
struct Recent(Vec<(u64, i64)>);

impl Recent {
    fn add(&mut self, item: u64, now: i64, cap: usize) {
        if let Some(e) = self.0.iter_mut().find(|(i, _)| *i == item) {
            e.1 = now;
        } else {
            if self.0.len() >= cap {
                if let Some(oldest) = (0..self.0.len()).min_by_key(|i| self.0[*i].1) {
                    self.0.swap_remove(oldest);
                }
            }
            self.0.push((item, now));
        }
    }

    fn count_since(&self, since: i64) -> u32 {
        self.0.iter().filter(|(_, t)| *t > since).count() as u32
    }

    fn remove(&mut self, item: u64) -> Option<i64> {
        let i = self.0.iter().position(|(x, _)| *x == item)?;
        Some(self.0.swap_remove(i).1)
    }
}

/// A login and an address: the wrong passwords, a refusal in force, and
/// the last success.
#[derive(Debug, Default, Clone)]
struct Pair {
    passwords: Recent,
    refused_until: i64,
    succeeded: i64,
}

/// One generation of keys: its hashing key and its tables.
struct Generation {
    key: RandomState,
    started: i64,
    /// (login, address) → the pair.
    pairs: HashMap<u64, Pair>,
    /// Login → the addresses (hashed) it failed from.
    logins: HashMap<u64, Recent>,
    /// Address, or its network → the logins (hashed) that failed from it.
    addrs: HashMap<u64, Recent>,
    /// Keys in the order they were made, for eviction.
    order: VecDeque<(Table, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Pairs,
    Logins,
    Addrs,
}

impl Generation {
    fn new(started: i64) -> Generation {
        Generation {
            key: RandomState::new(),
            started,
            pairs: HashMap::new(),
            logins: HashMap::new(),
            addrs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        self.pairs.len() + self.logins.len() + self.addrs.len()
    }

    fn remove(&mut self, table: Table, key: u64) -> bool {
        match table {
            Table::Pairs => self.pairs.remove(&key).is_some(),
            Table::Logins => self.logins.remove(&key).is_some(),
            Table::Addrs => self.addrs.remove(&key).is_some(),
        }
    }

    /// Evicts the oldest key still held; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((table, key)) = self.order.pop_front() {
            if self.remove(table, key) {
                return true;
            }
        }
        false
    }
}

/// The hashed forms of one attempt's login and address, under one
/// generation's key.
#[derive(Debug, Clone, Copy)]
struct Keys {
    pair: u64,
    login: u64,
    addr: u64,
    net: u64,
}

struct State {
    current: Generation,
    previous: Generation,
    evictions: u64,
}

/// The throttling state of one replica.
pub struct Throttle {
    limits: Limits,
    /// Hashes logins and password hashes for as long as the process lives.
    stable: RandomState,
    state: Mutex<State>,
}

/// What an administrator sees of a login's throttling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginThrottles {
    /// Distinct addresses the login failed from within the window.
    pub failing_addresses: u32,
    pub under_attack: bool,
    /// Per address (shown only as an opaque number): distinct wrong
    /// passwords within the window, and the refusal in force.
    pub pairs: Vec<PairThrottle>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairThrottle {
    pub id: String,
    pub failures: u32,
    pub refused_until: Option<i64>,
}

/// An IPv4 /24 or IPv6 /64 as bytes, tagged apart from addresses.
fn network(ip: IpAddr) -> [u8; 9] {
    let mut out = [0u8; 9];
    match ip {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..4].copy_from_slice(&v4.octets()[..3]);
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..9].copy_from_slice(&v6.octets()[..8]);
        }
    }
    out
}

/// An address with IPv4-mapped IPv6 folded to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

impl Throttle {
    pub fn new(limits: Limits, now: i64) -> Throttle {
        Throttle {
            limits,
            stable: RandomState::new(),
            state: Mutex::new(State {
                current: Generation::new(now),
                previous: Generation::new(now),
                evictions: 0,
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn login_tag(&self, login: &str) -> u64 {
        self.stable.hash_one((b'l', login))
    }

    fn password_tag(&self, login: &str, pwhash: &str) -> u64 {
        self.stable.hash_one((b'p', login, pwhash))
    }

    fn keys(g: &Generation, login: &str, ip: IpAddr) -> Keys {
        let login = g.key.hash_one((b'L', login));
        let addr = g.key.hash_one((b'A', ip_bytes(ip)));
        Keys {
            pair: Self::pair_key(g, login, addr),
            login,
            addr,
            net: g.key.hash_one((b'N', network(ip))),
        }
    }

    /// A pair's key, from its login's and address's keys: so that a login's
    /// list of addresses leads to its pairs.
    fn pair_key(g: &Generation, login: u64, addr: u64) -> u64 {
        g.key.hash_one((b'Q', login, addr))
    }

    /// Starts a new generation when the current one has lasted its time;
    /// the previous one is dropped with its key.
    fn rotate(&self, s: &mut State, now: i64) {
        if now - s.current.started < self.limits.generation {
            return;
        }
        let fresh = Generation::new(now);
        s.previous = std::mem::replace(&mut s.current, fresh);
        if now - s.previous.started >= 2 * self.limits.generation {
            // Nothing came for a whole generation: the previous one is
            // older than anything the limits look at.
            s.previous = Generation::new(now);
        }
    }

    /// Moves the entry under `prev_key` of `table` in the previous
    /// generation to `key` in the current one, merged with what is there.
    /// Items older than the window are left behind.
    fn migrate(&self, s: &mut State, table: Table, prev_key: u64, key: u64, now: i64) {
        let since = now - self.limits.window;
        match table {
            Table::Pairs => {
                if let Some(mut old) = s.previous.pairs.remove(&prev_key) {
                    old.passwords.0.retain(|(_, t)| *t > since);
                    if old.passwords.0.is_empty()
                        && old.refused_until <= now
                        && old.succeeded <= since
                    {
                        return;
                    }
                    let cap = self.limits.refuse_after as usize + 1;
                    let fresh = self.entry_pair(s, key);
                    for (pw, t) in old.passwords.0 {
                        fresh.passwords.add(pw, t, cap);
                    }
                    fresh.refused_until = fresh.refused_until.max(old.refused_until);
                    fresh.succeeded = fresh.succeeded.max(old.succeeded);
                }
            }
            Table::Logins => {}
            Table::Addrs => {
                if let Some(mut old) = s.previous.addrs.remove(&prev_key) {
                    old.0.retain(|(_, t)| *t > since);
                    if old.0.is_empty() {
                        return;
                    }
                    let cap = self.cap(table);
                    let fresh = self.entry_set(s, table, key);
                    for (item, t) in old.0 {
                        fresh.add(item, t, cap);
                    }
                }
            }
        }
    }

    fn cap(&self, table: Table) -> usize {
        let l = &self.limits;
        match table {
            Table::Pairs => l.refuse_after as usize + 1,
            Table::Logins => l.guess_addresses as usize + 1,
            Table::Addrs => l.spray_logins.max(l.spray_net_logins) as usize + 1,
        }
    }

    /// Makes room for one more key, evicting the oldest. The eviction order
    /// also holds keys removed since (a success, a clear); it is compacted
    /// when they outnumber the keys held.
    fn make_room(&self, s: &mut State) {
        for g in [&mut s.current, &mut s.previous] {
            if g.order.len() > 2 * g.len() + 1024 {
                let Generation {
                    order,
                    pairs,
                    logins,
                    addrs,
                    ..
                } = g;
                order.retain(|(table, key)| match table {
                    Table::Pairs => pairs.contains_key(key),
                    Table::Logins => logins.contains_key(key),
                    Table::Addrs => addrs.contains_key(key),
                });
            }
        }
        while s.current.len() + s.previous.len() >= self.limits.max_keys {
            if !(s.previous.evict_oldest() || s.current.evict_oldest()) {
                break;
            }
            s.evictions += 1;
        }
    }

    fn entry_pair<'a>(&self, s: &'a mut State, key: u64) -> &'a mut Pair {
        if !s.current.pairs.contains_key(&key) {
            self.make_room(s);
            s.current.order.push_back((Table::Pairs, key));
        }
        s.current.pairs.entry(key).or_default()
    }

    fn entry_set<'a>(&self, s: &'a mut State, table: Table, key: u64) -> &'a mut Recent {
        let present = match table {
            Table::Logins => s.current.logins.contains_key(&key),
            _ => s.current.addrs.contains_key(&key),
        };
        if !present {
            self.make_room(s);
            s.current.order.push_back((table, key));
        }
        match table {
            Table::Logins => s.current.logins.entry(key).or_default(),
            _ => s.current.addrs.entry(key).or_default(),
        }
    }

    /// Brings what the previous generation holds of this attempt into the
    /// current one; returns the current generation's keys.
    fn touch(&self, s: &mut State, login: &str, ip: IpAddr, now: i64) -> Keys {
        self.rotate(s, now);
        let cur = Self::keys(&s.current, login, ip);
        let prev = Self::keys(&s.previous, login, ip);
        self.migrate(s, Table::Pairs, prev.pair, cur.pair, now);
        self.migrate(s, Table::Addrs, prev.addr, cur.addr, now);
        self.migrate(s, Table::Addrs, prev.net, cur.net, now);
        // A login's list of addresses holds each generation's own address
        // keys (they lead to that generation's pairs): this address moves
        // from the previous list to the current one with its pair.
        let moved = s
            .previous
            .logins
            .get_mut(&prev.login)
            .and_then(|list| list.remove(prev.addr));
        if let Some(t) = moved {
            if s.previous
                .logins
                .get(&prev.login)
                .is_some_and(|l| l.0.is_empty())
            {
                s.previous.logins.remove(&prev.login);
            }
            let cap = self.cap(Table::Logins);
            self.entry_set(s, Table::Logins, cur.login)
                .add(cur.addr, t, cap);
        }
        cur
    }

    /// Distinct addresses `login` failed from since `since`, in both
    /// generations (an address is in one of them only).
    fn failing_addresses(s: &State, login: &str, since: i64) -> u32 {
        [&s.current, &s.previous]
            .iter()
            .map(|g| {
                let key = g.key.hash_one((b'L', login));
                g.logins.get(&key).map_or(0, |r| r.count_since(since))
            })
            .sum()
    }

    /// The verdict on an attempt of `login` from `ip` at `now`.
    pub fn check(&self, login: &str, ip: IpAddr, now: i64) -> Verdict {
        let ip = canonical(ip);
        let l = self.limits;
        let since = now - l.window;
        let mut s = self.lock();
        let keys = self.touch(&mut s, login, ip, now);
        let g = &s.current;
        let trusted = g.pairs.get(&keys.pair).is_some_and(|p| p.succeeded > since);
        if !trusted {
            if g.addrs
                .get(&keys.addr)
                .is_some_and(|r| r.count_since(since) >= l.spray_logins)
            {
                return Verdict::Decided(Decision::Refuse, Reason::Spray);
            }
            if g.addrs
                .get(&keys.net)
                .is_some_and(|r| r.count_since(since) >= l.spray_net_logins)
            {
                return Verdict::Decided(Decision::Refuse, Reason::SprayNet);
            }
        }
        if let Some(pair) = g.pairs.get(&keys.pair) {
            if pair.refused_until > now {
                return Verdict::Decided(Decision::Refuse, Reason::Cooldown);
            }
            let wrong = pair.passwords.count_since(since);
            if wrong >= l.refuse_after {
                return Verdict::Decided(Decision::Refuse, Reason::Failures);
            }
            if wrong >= l.delay_after {
                let doublings = (wrong - l.delay_after).min(30);
                let delay = l.delay.saturating_mul(1 << doublings).min(l.max_delay);
                return Verdict::Decided(Decision::Delay(delay.max(1)), Reason::Failures);
            }
        }
        if Self::failing_addresses(&s, login, since) >= l.guess_addresses {
            return Verdict::AskHistory;
        }
        Verdict::Decided(Decision::Allow, Reason::None)
    }

    /// What an attempt from a device or country new to a login under
    /// distributed attack gets.
    pub fn under_attack(&self) -> Decision {
        match self.limits.guess_action {
            GuessAction::Delay => Decision::Delay(self.limits.max_delay.max(1)),
            GuessAction::Refuse => Decision::Refuse,
        }
    }

    /// Records the outcome of an attempt. A failure counts once per
    /// distinct `pwhash` for the login and address; a success clears them.
    pub fn report(&self, login: &str, ip: IpAddr, pwhash: &str, success: bool, now: i64) {
        let ip = canonical(ip);
        let l = self.limits;
        let mut s = self.lock();
        let keys = self.touch(&mut s, login, ip, now);
        if success {
            // The wrong passwords are forgiven; the success is remembered,
            // so that a spray from the same address does not lock this
            // login out.
            let pair = self.entry_pair(&mut s, keys.pair);
            *pair = Pair {
                succeeded: now,
                ..Pair::default()
            };
            return;
        }
        let password = self.password_tag(login, pwhash);
        let login_tag = self.login_tag(login);
        let pair = self.entry_pair(&mut s, keys.pair);
        pair.passwords
            .add(password, now, l.refuse_after as usize + 1);
        if pair.passwords.count_since(now - l.window) >= l.refuse_after {
            pair.refused_until = pair.refused_until.max(now + l.cooldown);
        }
        self.entry_set(&mut s, Table::Logins, keys.login).add(
            keys.addr,
            now,
            self.cap(Table::Logins),
        );
        let cap = self.cap(Table::Addrs);
        self.entry_set(&mut s, Table::Addrs, keys.addr)
            .add(login_tag, now, cap);
        self.entry_set(&mut s, Table::Addrs, keys.net)
            .add(login_tag, now, cap);
    }

    /// What is held about `login` (both generations).
    pub fn login_throttles(&self, login: &str, now: i64) -> LoginThrottles {
        let since = now - self.limits.window;
        let s = self.lock();
        let failing = Self::failing_addresses(&s, login, since);
        let mut pairs = Vec::new();
        for g in [&s.current, &s.previous] {
            let login_key = g.key.hash_one((b'L', login));
            let Some(list) = g.logins.get(&login_key) else {
                continue;
            };
            for (addr, _) in &list.0 {
                let pair_key = Self::pair_key(g, login_key, *addr);
                if let Some(p) = g.pairs.get(&pair_key) {
                    pairs.push(PairThrottle {
                        id: format!("{pair_key:016x}"),
                        failures: p.passwords.count_since(since),
                        refused_until: (p.refused_until > now).then_some(p.refused_until),
                    });
                }
            }
        }
        LoginThrottles {
            failing_addresses: failing,
            under_attack: failing >= self.limits.guess_addresses,
            pairs,
        }
    }

    /// Forgets everything held about `login`: its pairs, its list of
    /// addresses, and its place in the addresses' lists of logins.
    /// Returns how many keys were removed.
    pub fn clear_login(&self, login: &str) -> usize {
        let tag = self.login_tag(login);
        let mut s = self.lock();
        let s = &mut *s;
        let mut removed = 0;
        for g in [&mut s.current, &mut s.previous] {
            let login_key = g.key.hash_one((b'L', login));
            if let Some(index) = g.logins.remove(&login_key) {
                removed += 1;
                for (addr, _) in index.0 {
                    let pair_key = Self::pair_key(g, login_key, addr);
                    removed += usize::from(g.pairs.remove(&pair_key).is_some());
                }
            }
            for list in g.addrs.values_mut() {
                list.remove(tag);
            }
            g.addrs.retain(|_, r| !r.0.is_empty());
        }
        removed
    }

    /// Keys held, and keys evicted since the start.
    pub fn stats(&self) -> (usize, u64) {
        let s = self.lock();
        (s.current.len() + s.previous.len(), s.evictions)
    }

    /// Starts a new generation when one is due, even with no attempt coming:
    /// called every minute, so that no key outlives two generations.
    pub fn expire(&self, now: i64) {
        let mut s = self.lock();
        self.rotate(&mut s, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_count_every_reason_by_its_name() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(names, crate::metrics::POLICY_REASONS);
    }

    const NOW: i64 = 1_800_000_000;

    fn limits() -> Limits {
        Limits::of(&PolicyConfig::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn decided(v: Verdict) -> (Decision, Reason) {
        match v {
            Verdict::Decided(d, r) => (d, r),
            Verdict::AskHistory => panic!("asks for the history"),
        }
    }

    #[test]
    fn wrong_passwords_are_delayed_then_refused_for_the_cooldown() {
        let t = Throttle::new(limits(), NOW);
        let a = ip("81.2.69.160");
        let mut seen = Vec::new();
        for i in 0..10 {
            seen.push(decided(t.check("alice", a, NOW + i)).0);
            t.report("alice", a, &format!("pw{i}"), false, NOW + i);
        }
        assert_eq!(
            seen,
            [
                Decision::Allow,
                Decision::Allow,
                Decision::Allow,
                Decision::Delay(1),
                Decision::Delay(2),
                Decision::Delay(4),
                Decision::Delay(8),
                Decision::Delay(15),
                Decision::Delay(15),
                Decision::Delay(15),
            ]
        );
        assert_eq!(
            decided(t.check("alice", a, NOW + 11)),
            (Decision::Refuse, Reason::Cooldown)
        );
        // Another login from the same address, and the same login from
        // another address, are not slowed.
        assert_eq!(decided(t.check("bob", a, NOW + 11)).0, Decision::Allow);
        assert_eq!(
            decided(t.check("alice", ip("89.160.20.112"), NOW + 11)).0,
            Decision::Allow
        );
        // The refusal outlasts the window (the cool-down runs from the
        // last failure), then ends.
        assert_eq!(
            decided(t.check("alice", a, NOW + 9 + 899)).0,
            Decision::Refuse
        );
        assert_eq!(
            decided(t.check("alice", a, NOW + 9 + 901)).0,
            Decision::Allow
        );
    }

    #[test]
    fn the_same_wrong_password_counts_once_and_a_success_clears() {
        let t = Throttle::new(limits(), NOW);
        let a = ip("81.2.69.160");
        for i in 0..50 {
            t.report("phone", a, "0639", false, NOW + i);
        }
        assert_eq!(decided(t.check("phone", a, NOW + 60)).0, Decision::Allow);
        for i in 0..5 {
            t.report("alice", a, &format!("{i}"), false, NOW + i);
        }
        assert_eq!(decided(t.check("alice", a, NOW + 6)).0, Decision::Delay(4));
        t.report("alice", a, "right", true, NOW + 7);
        assert_eq!(decided(t.check("alice", a, NOW + 8)).0, Decision::Allow);
    }

    #[test]
    fn a_spray_does_not_lock_out_a_login_that_succeeded_from_the_address() {
        let t = Throttle::new(limits(), NOW);
        let nat = ip("81.2.69.160");
        t.report("alice", nat, "right", true, NOW);
        for i in 0..10 {
            t.report(&format!("victim{i}"), nat, "x", false, NOW + 1);
        }
        assert_eq!(decided(t.check("mallory", nat, NOW + 2)).1, Reason::Spray);
        assert_eq!(decided(t.check("alice", nat, NOW + 2)).0, Decision::Allow);
        // Once the success is older than the window, alice is sprayed too.
        for i in 0..10 {
            t.report(&format!("victim{i}"), nat, "y", false, NOW + 950);
        }
        assert_eq!(decided(t.check("alice", nat, NOW + 951)).1, Reason::Spray);
    }

    #[test]
    fn one_address_against_many_logins_is_refused_and_so_is_its_network() {
        let t = Throttle::new(limits(), NOW);
        let a = ip("81.2.69.160");
        for i in 0..10 {
            t.report(&format!("user{i}"), a, "x", false, NOW);
        }
        assert_eq!(
            decided(t.check("someone", a, NOW + 1)),
            (Decision::Refuse, Reason::Spray)
        );
        // Its neighbours in the /24 are not refused until 30 logins failed
        // across the network.
        assert_eq!(
            decided(t.check("someone", ip("81.2.69.161"), NOW + 1)).0,
            Decision::Allow
        );
        for i in 10..30 {
            t.report(
                &format!("user{i}"),
                ip(&format!("81.2.69.{}", 100 + i)),
                "x",
                false,
                NOW,
            );
        }
        assert_eq!(
            decided(t.check("someone", ip("81.2.69.7"), NOW + 1)),
            (Decision::Refuse, Reason::SprayNet)
        );
        assert_eq!(
            decided(t.check("someone", ip("81.2.70.7"), NOW + 1)).0,
            Decision::Allow
        );
        // IPv6: a /64.
        for i in 0..30 {
            t.report(
                &format!("v6-{i}"),
                ip(&format!("2001:db8:1:2::{i:x}")),
                "x",
                false,
                NOW,
            );
        }
        assert_eq!(
            decided(t.check("someone", ip("2001:db8:1:2::ffff"), NOW + 1)).1,
            Reason::SprayNet
        );
        assert_eq!(
            decided(t.check("someone", ip("2001:db8:1:3::1"), NOW + 1)).0,
            Decision::Allow
        );
    }

    #[test]
    fn one_login_from_many_addresses_asks_for_the_users_history() {
        let t = Throttle::new(limits(), NOW);
        for i in 0..9 {
            t.report("target", ip(&format!("198.51.{i}.1")), "x", false, NOW);
        }
        assert_eq!(
            decided(t.check("target", ip("81.2.69.160"), NOW)).0,
            Decision::Allow
        );
        t.report("target", ip("198.51.9.1"), "x", false, NOW);
        assert_eq!(
            t.check("target", ip("81.2.69.160"), NOW),
            Verdict::AskHistory
        );
        assert_eq!(t.under_attack(), Decision::Delay(15));
        let seen = t.login_throttles("target", NOW);
        assert_eq!(seen.failing_addresses, 10);
        assert!(seen.under_attack);
        assert_eq!(seen.pairs.len(), 10);
        assert!(seen
            .pairs
            .iter()
            .all(|p| p.failures == 1 && p.refused_until.is_none()));
        // An administrator clears it.
        assert_eq!(t.clear_login("target"), 11);
        assert_eq!(
            decided(t.check("target", ip("81.2.69.160"), NOW)).0,
            Decision::Allow
        );
        assert_eq!(t.login_throttles("target", NOW).pairs, vec![]);
    }

    #[test]
    fn a_new_generation_keeps_counting_once_and_drops_the_old_key() {
        let t = Throttle::new(limits(), NOW);
        let a = ip("81.2.69.160");
        // Failures on both sides of a rotation count once each.
        for i in 0..3 {
            t.report("alice", a, &format!("{i}"), false, NOW + 890 + i);
        }
        for i in 3..5 {
            t.report("alice", a, &format!("{i}"), false, NOW + 900 + i);
        }
        assert_eq!(
            decided(t.check("alice", a, NOW + 906)).0,
            Decision::Delay(4)
        );
        let view = t.login_throttles("alice", NOW + 906);
        assert_eq!((view.failing_addresses, view.pairs.len()), (1, 1));
        // Two generations later nothing is left.
        assert_eq!(decided(t.check("bob", a, NOW + 2000)).0, Decision::Allow);
        assert_eq!(decided(t.check("bob", a, NOW + 3000)).0, Decision::Allow);
        assert_eq!(t.login_throttles("alice", NOW + 3000).pairs, vec![]);
        assert_eq!(t.stats().0, 0);
    }

    #[test]
    fn the_keys_held_are_bounded_and_evictions_counted() {
        let l = Limits {
            max_keys: 100,
            ..limits()
        };
        let t = Throttle::new(l, NOW);
        for i in 0..1000u32 {
            let a = IpAddr::from((0x5100_0000 + i * 256).to_be_bytes());
            t.report(&format!("u{i}"), a, "x", false, NOW);
        }
        let (held, evicted) = t.stats();
        assert!(held <= 100, "{held}");
        assert!(evicted >= 3900, "{evicted}");
    }
}
