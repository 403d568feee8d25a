//! Access control: an ordered list of `{path, cn}` regular expressions, each
//! matched against the *whole* string. A request is allowed when some entry
//! matches both its path and the client's CommonName; otherwise it is denied.
//!
//! An entry may also name tenants: what it allows then concerns only the
//! users `tenant/…` of those tenants. A request allowed only by such entries
//! is scoped to the union of their tenants ([`Scope::Tenants`]); one that an
//! entry without tenants also allows is unrestricted, as before.

use std::collections::BTreeSet;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};

#[derive(Debug, Clone)]
pub struct AclEntry {
    path: Regex,
    cn: Regex,
    /// `None`: every user; else only the users `tenant/…` of these.
    tenants: Option<Vec<String>>,
}

/// Whose data a request the ACL allows may concern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Any user's: an entry without tenants allows it.
    Everyone,
    /// Only the users `tenant/…` of these tenants (never empty).
    Tenants(Arc<BTreeSet<String>>),
}

impl Scope {
    /// Whether `username` is a user of one of the tenants: it starts with
    /// `tenant/`. A name with no `/` belongs to no tenant.
    pub fn covers(&self, username: &str) -> bool {
        match self {
            Scope::Everyone => true,
            Scope::Tenants(t) => username
                .split_once('/')
                .is_some_and(|(tenant, _)| t.contains(tenant)),
        }
    }
}

pub(crate) fn anchored(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

impl AclEntry {
    pub fn new(path: &str, cn: &str) -> Result<AclEntry, String> {
        Ok(AclEntry {
            path: anchored(path).map_err(|e| format!("path: {e}"))?,
            cn: anchored(cn).map_err(|e| format!("cn: {e}"))?,
            tenants: None,
        })
    }

    /// The same entry, allowing only requests about these tenants' users.
    pub fn with_tenants(mut self, tenants: Vec<String>) -> AclEntry {
        self.tenants = Some(tenants);
        self
    }

    pub fn matches(&self, path: &str, cn: &str) -> bool {
        self.path.is_match(path) && self.cn.is_match(cn)
    }
}

/// Default deny: an empty list allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

impl Acl {
    pub fn new(entries: Vec<AclEntry>) -> Acl {
        Acl { entries }
    }

    pub fn allows(&self, path: &str, cn: &str) -> bool {
        self.entries.iter().any(|e| e.matches(path, cn))
    }

    /// Whose data a request for `path` by `cn` may concern, or `None` when
    /// no entry allows it: everyone's when an entry without tenants matches,
    /// else the union of the matching entries' tenants.
    pub fn scope(&self, path: &str, cn: &str) -> Option<Scope> {
        let mut tenants: Option<BTreeSet<String>> = None;
        for e in self.entries.iter().filter(|e| e.matches(path, cn)) {
            match &e.tenants {
                None => return Some(Scope::Everyone),
                Some(t) => tenants.get_or_insert_default().extend(t.iter().cloned()),
            }
        }
        tenants
            .filter(|t| !t.is_empty())
            .map(|t| Scope::Tenants(Arc::new(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        Acl::new(vec![
            AclEntry::new("/api/(add_log|set_last_login)", "sso-server|auth-server").unwrap(),
            AclEntry::new("/api/get_.*", "accounts-panel").unwrap(),
        ])
    }

    #[test]
    fn anchored_on_both_sides_including_alternations() {
        let acl = acl();
        assert!(acl.allows("/api/add_log", "sso-server"));
        assert!(acl.allows("/api/set_last_login", "auth-server"));
        assert!(acl.allows("/api/get_user_logs", "accounts-panel"));
        // An unanchored `sso-server|auth-server` would match all of these.
        assert!(!acl.allows("/api/add_log", "sso-server.evil"));
        assert!(!acl.allows("/api/add_log", "xauth-server"));
        assert!(!acl.allows("/api/add_log", "auth-server-x"));
        assert!(!acl.allows("/api/add_logx", "sso-server"));
        assert!(!acl.allows("/x/api/add_log", "sso-server"));
        assert!(!acl.allows("/api/get_user_logs", "sso-server"));
        assert!(!acl.allows("/api/add_log", "accounts-panel"));
    }

    fn tenants(names: &[&str]) -> Scope {
        Scope::Tenants(Arc::new(names.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn tenant_entries_scope_only_what_no_other_entry_allows() {
        let acl = Acl::new(vec![
            AclEntry::new("/api/(get_.*|admin/.*)", "acme-admin")
                .unwrap()
                .with_tenants(vec!["acme".into()]),
            AclEntry::new("/api/admin/events", "acme-admin")
                .unwrap()
                .with_tenants(vec!["globex".into()]),
            AclEntry::new("/api/get_user_summary", "acme-admin|panel").unwrap(),
        ]);
        assert_eq!(
            acl.scope("/api/get_user_logs", "acme-admin"),
            Some(tenants(&["acme"]))
        );
        // Two scoped entries: the union of their tenants.
        assert_eq!(
            acl.scope("/api/admin/events", "acme-admin"),
            Some(tenants(&["acme", "globex"]))
        );
        // An entry without tenants lifts the scope.
        assert_eq!(
            acl.scope("/api/get_user_summary", "acme-admin"),
            Some(Scope::Everyone)
        );
        assert_eq!(acl.scope("/api/add_log", "acme-admin"), None);
        assert!(acl.allows("/api/get_user_logs", "acme-admin"));
        // A tenant list left empty allows nothing.
        let empty = Acl::new(vec![AclEntry::new("/api/.*", "x")
            .unwrap()
            .with_tenants(vec![])]);
        assert_eq!(empty.scope("/api/get_user_logs", "x"), None);
    }

    #[test]
    fn a_scope_covers_only_its_tenants_users() {
        let s = tenants(&["acme"]);
        assert!(s.covers("acme/alice"));
        assert!(!s.covers("acme"));
        assert!(!s.covers("acmex/alice"));
        assert!(!s.covers("globex/alice"));
        assert!(!s.covers("alice"));
        assert!(!s.covers("ACME/alice"));
        assert!(Scope::Everyone.covers("alice"));
    }

    #[test]
    fn empty_list_denies() {
        assert!(!Acl::default().allows("/api/add_log", "sso-server"));
    }

    #[test]
    fn invalid_pattern_is_an_error() {
        assert!(AclEntry::new("(", "x").is_err());
        assert!(AclEntry::new("x", "[").is_err());
    }
}
