//! The routes, parsed once from the request path.

/// Every path the server answers. Anything else is 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    AddLog,
    GetUserLogs,
    GetUserDevices,
    CheckDevice,
    SetLastLogin,
    GetLastLogin,
    GetUnusedAccounts,
    IdentifyDevice,
    ForgetUser,
    GetUserAlerts,
    GetUserSummary,
    Report,
    GetEvents,
    GetAlerts,
    RetryAlert,
    Health,
    Metrics,
    CheckLogin,
    GetThrottles,
    ClearThrottles,
    GetUserAccess,
    ExportUser,
}

impl Endpoint {
    pub const ALL: &'static [Endpoint] = &[
        Endpoint::AddLog,
        Endpoint::GetUserLogs,
        Endpoint::GetUserDevices,
        Endpoint::CheckDevice,
        Endpoint::SetLastLogin,
        Endpoint::GetLastLogin,
        Endpoint::GetUnusedAccounts,
        Endpoint::IdentifyDevice,
        Endpoint::ForgetUser,
        Endpoint::GetUserAlerts,
        Endpoint::GetUserSummary,
        Endpoint::Report,
        Endpoint::GetEvents,
        Endpoint::GetAlerts,
        Endpoint::RetryAlert,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::CheckLogin,
        Endpoint::GetThrottles,
        Endpoint::ClearThrottles,
        Endpoint::GetUserAccess,
        Endpoint::ExportUser,
    ];

    /// Exact match on the path the client sent: no decoding, no normalisation,
    /// so the ACL sees the very string the router matched.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.iter().copied().find(|e| e.path() == path)
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::AddLog => "/api/add_log",
            Endpoint::GetUserLogs => "/api/get_user_logs",
            Endpoint::GetUserDevices => "/api/get_user_devices",
            Endpoint::CheckDevice => "/api/check_device",
            Endpoint::SetLastLogin => "/api/set_last_login",
            Endpoint::GetLastLogin => "/api/get_last_login",
            Endpoint::GetUnusedAccounts => "/api/get_unused_accounts",
            Endpoint::IdentifyDevice => "/api/identify_device",
            Endpoint::ForgetUser => "/api/forget_user",
            Endpoint::GetUserAlerts => "/api/get_user_alerts",
            Endpoint::GetUserSummary => "/api/get_user_summary",
            Endpoint::Report => "/api/report",
            Endpoint::GetEvents => "/api/admin/events",
            Endpoint::GetAlerts => "/api/admin/alerts",
            Endpoint::RetryAlert => "/api/admin/retry_alert",
            Endpoint::Health => "/health",
            Endpoint::Metrics => "/metrics",
            Endpoint::CheckLogin => "/api/check_login",
            Endpoint::GetThrottles => "/api/admin/throttles",
            Endpoint::ClearThrottles => "/api/admin/clear_throttles",
            Endpoint::GetUserAccess => "/api/get_user_access",
            Endpoint::ExportUser => "/api/export_user",
        }
    }

    /// A label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::AddLog => "add_log",
            Endpoint::GetUserLogs => "get_user_logs",
            Endpoint::GetUserDevices => "get_user_devices",
            Endpoint::CheckDevice => "check_device",
            Endpoint::SetLastLogin => "set_last_login",
            Endpoint::GetLastLogin => "get_last_login",
            Endpoint::GetUnusedAccounts => "get_unused_accounts",
            Endpoint::IdentifyDevice => "identify_device",
            Endpoint::ForgetUser => "forget_user",
            Endpoint::GetUserAlerts => "get_user_alerts",
            Endpoint::GetUserSummary => "get_user_summary",
            Endpoint::Report => "report",
            Endpoint::GetEvents => "admin_events",
            Endpoint::GetAlerts => "admin_alerts",
            Endpoint::RetryAlert => "admin_retry_alert",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::CheckLogin => "check_login",
            Endpoint::GetThrottles => "admin_throttles",
            Endpoint::ClearThrottles => "admin_clear_throttles",
            Endpoint::GetUserAccess => "get_user_access",
            Endpoint::ExportUser => "export_user",
        }
    }

    /// The one method the endpoint takes.
    pub fn method(self) -> &'static hyper::Method {
        match self {
            Endpoint::Health | Endpoint::Metrics => &hyper::Method::GET,
            _ => &hyper::Method::POST,
        }
    }

    /// Endpoints whose bodies carry lists of names get the larger body limit.
    pub fn is_bulk(self) -> bool {
        matches!(self, Endpoint::GetUnusedAccounts)
    }

    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_nothing_else_routes() {
        for &e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
        for p in [
            "/api/add_log/",
            "//api/add_log",
            "/api/../api/add_log",
            "/api%2Fadd_log",
            "/API/add_log",
            "/api/add_log?x=1",
            "",
            "/",
        ] {
            assert_eq!(Endpoint::from_path(p), None, "{p}");
        }
    }
}
