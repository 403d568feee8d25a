//! Access control: an ordered list of `{path, cn}` regular expressions, each
//! matched against the *whole* string. A request is allowed when some entry
//! matches both its path and the client's CommonName; otherwise it is denied.

use regex::{Regex, RegexBuilder};

#[derive(Debug, Clone)]
pub struct AclEntry {
    path: Regex,
    cn: Regex,
}

fn anchored(pattern: &str) -> Result<Regex, String> {
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
        })
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
