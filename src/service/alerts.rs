//! The monitor's endpoints: a user's alerts, and the summary an account panel shows.

use super::{check_days, check_username, ApiError, Service};
use crate::model::{Delivery, StoredAlert, UserOverview};
use crate::monitor::text;
use crate::wire::*;

/// Alerts answered at most.
const MAX_ALERTS: i64 = 1000;
/// How far back the summary looks for alerts and failures.
const SUMMARY_DAYS: i64 = 30;
/// Alerts listed in a summary at most.
const SUMMARY_ALERTS: i64 = 10;

pub(super) fn alert_info(a: StoredAlert, deliveries: Vec<Delivery>) -> AlertInfo {
    AlertInfo {
        id: a.id,
        username: String::new(),
        kind: a.kind.as_str().to_owned(),
        timestamp: Timestamp::from_unix(a.created),
        text: text::alert_sentence(a.kind, a.created, &a.details),
        details: a.details,
        deliveries: deliveries
            .into_iter()
            .map(|d| DeliveryInfo {
                sink: d.sink,
                state: d.state,
                attempts: d.attempts,
                last_error: d.last_error,
                delivered_at: d.delivered_at.map(Timestamp::from_unix),
            })
            .collect(),
    }
}

impl Service {
    pub async fn get_user_alerts(
        &self,
        req: GetUserAlertsRequest,
        now: i64,
    ) -> Result<GetUserAlertsResponse, ApiError> {
        check_username(&req.username)?;
        check_days("max_days", req.max_days)?;
        let since = if req.max_days == 0 {
            i64::MIN
        } else {
            now - req.max_days * 86_400
        };
        let user = req.username;
        let found = self.store.user_alerts(user, since, MAX_ALERTS).await?;
        Ok(GetUserAlertsResponse {
            alerts: found.into_iter().map(|(a, d)| alert_info(a, d)).collect(),
        })
    }

    pub async fn get_alerts(
        &self,
        req: GetAlertsRequest,
        now: i64,
    ) -> Result<GetAlertsResponse, ApiError> {
        self.get_alerts_within(req, now, String::new()).await
    }

    /// The outbox of the users whose names start with `user_prefix` (a
    /// tenant's `T/`; empty: every user).
    pub async fn get_alerts_within(
        &self,
        req: GetAlertsRequest,
        now: i64,
        user_prefix: String,
    ) -> Result<GetAlertsResponse, ApiError> {
        check_days("max_days", req.max_days)?;
        if !matches!(req.state.as_str(), "" | "pending" | "failed" | "delivered") {
            return Err(super::invalid(
                "state must be pending, failed, delivered or empty",
            ));
        }
        let limit = super::check_limit(req.limit)?;
        let since = if req.max_days == 0 {
            i64::MIN
        } else {
            now - req.max_days * 86_400
        };
        let found = self
            .store
            .recent_alerts(since, req.state, user_prefix, limit)
            .await?;
        Ok(GetAlertsResponse {
            alerts: found
                .into_iter()
                .map(|(a, d)| {
                    let username = a.username.clone();
                    AlertInfo {
                        username,
                        ..alert_info(a, d)
                    }
                })
                .collect(),
        })
    }

    pub async fn retry_alert(
        &self,
        req: RetryAlertRequest,
    ) -> Result<RetryAlertResponse, ApiError> {
        if req.id <= 0 {
            return Err(super::invalid("id must be an alert's ID"));
        }
        let n = self.store.retry_alert(req.id).await?;
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(RetryAlertResponse {
            rescheduled: n as i64,
        })
    }

    pub async fn get_user_summary(
        &self,
        req: GetUserSummaryRequest,
        now: i64,
    ) -> Result<GetUserSummaryResponse, ApiError> {
        check_username(&req.username)?;
        let user = req.username.clone();
        let since = now - SUMMARY_DAYS * 86_400;
        let UserOverview {
            last_login: last,
            devices,
            services,
            failures,
            recent_alerts: recent,
        } = self
            .store
            .user_overview(user, since, SUMMARY_ALERTS)
            .await?;
        let mut facts = Vec::new();
        match last {
            Some(l) => {
                let d = l.device.unwrap_or_default();
                facts.push(SummaryFact {
                    kind: "last_login".into(),
                    timestamp: Some(Timestamp::from_unix(l.ts)),
                    text: text::last_login_sentence(now, l.ts, &d.browser, &d.os, &d.zone),
                    count: None,
                    details: Some(AlertDetails {
                        log_type: l.log_type,
                        service: l.service,
                        country: d.zone,
                        browser: d.browser,
                        os: d.os,
                        mobile: d.mobile,
                        ..Default::default()
                    }),
                });
            }
            None => facts.push(SummaryFact {
                kind: "last_login".into(),
                text: "No login recorded".into(),
                ..Default::default()
            }),
        }
        for (service, ts) in services {
            facts.push(SummaryFact {
                kind: "service_login".into(),
                timestamp: Some(Timestamp::from_unix(ts)),
                text: format!("Last used {service} on {}", text::date(ts)),
                details: Some(AlertDetails {
                    service,
                    ..Default::default()
                }),
                count: None,
            });
        }
        let n = devices.len() as i64;
        let newest = devices
            .first()
            .and_then(|d| text::device_phrase(&d.device.browser, &d.device.os));
        facts.push(SummaryFact {
            kind: "devices".into(),
            text: match (n, newest) {
                (0, _) => "No known devices".into(),
                (1, Some(p)) => format!("1 known device: {p}"),
                (1, None) => "1 known device".into(),
                (n, Some(p)) => format!("{n} known devices; the most recent is {p}"),
                (n, None) => format!("{n} known devices"),
            },
            count: Some(n),
            ..Default::default()
        });
        if failures > 0 {
            facts.push(SummaryFact {
                kind: "failed_logins".into(),
                text: if failures == 1 {
                    format!("1 failed login in the last {SUMMARY_DAYS} days")
                } else {
                    format!("{failures} failed logins in the last {SUMMARY_DAYS} days")
                },
                count: Some(failures),
                ..Default::default()
            });
        }
        for (a, _) in recent {
            facts.push(SummaryFact {
                kind: a.kind.as_str().into(),
                timestamp: Some(Timestamp::from_unix(a.created)),
                text: text::alert_sentence(a.kind, a.created, &a.details),
                count: None,
                details: Some(a.details),
            });
        }
        facts.extend(self.access_fact(&req.username).await?);
        Ok(GetUserSummaryResponse {
            username: req.username,
            facts,
        })
    }
}
