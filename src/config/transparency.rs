//! `transparency:` access transparency: which clients' reads of one user's
//! data are recorded (user, reader CN, endpoint, day).

use regex::Regex;
use serde::Deserialize;

use super::Problem;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransparency {
    /// A regular expression on the client certificate's CN, anchored like
    /// the ACL's; reads by matching clients are recorded. None: nothing is.
    #[serde(default)]
    pub record: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TransparencyConfig {
    /// The anchored CN pattern, when reads are recorded.
    pub record: Option<Regex>,
}

impl TransparencyConfig {
    pub fn from_raw(raw: Option<RawTransparency>, problems: &mut Vec<Problem>) -> Self {
        let record = raw
            .and_then(|r| r.record)
            .and_then(|p| match crate::acl::anchored(&p) {
                Ok(re) => Some(re),
                Err(message) => {
                    problems.push(Problem {
                        key: "transparency.record".into(),
                        message,
                    });
                    None
                }
            });
        TransparencyConfig { record }
    }

    /// Whether the reads of a client with this CN are recorded.
    pub fn records(&self, cn: &str) -> bool {
        self.record.as_ref().is_some_and(|re| re.is_match(cn))
    }
}
