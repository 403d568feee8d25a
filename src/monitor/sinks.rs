//! Where alerts go: the server log, a webhook (JSON, HMAC-SHA256 signed in
//! `X-Usermetadb-Signature: sha256=<hex>`), and e-mail over SMTP.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use sha2::Sha256;

use super::{
    text, AlertDetails, AlertsConfig, SINK_LOG, SINK_MAIL_ADMIN, SINK_MAIL_USER, SINK_WEBHOOK,
};
use crate::client::{tls_config, Connection};
use crate::config::alerts::{SmtpConfig, SmtpTls, WebhookConfig};
use crate::model::StoredAlert;
use crate::wire::Timestamp;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-usermetadb-signature";
/// The header naming the delivery, stable across retries (for de-duplication).
pub const DELIVERY_HEADER: &str = "x-usermetadb-delivery";
/// Used when a webhook names no CA of its own.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Worth retrying later.
    Transient(String),
    /// Will never succeed as configured (e.g. no valid address); kept as failed.
    Permanent(String),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Transient(e) | DeliveryError::Permanent(e) => f.write_str(e),
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; the error arm cannot happen.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The JSON body of a webhook delivery.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WebhookAlert {
    pub id: i64,
    pub kind: String,
    pub username: String,
    pub timestamp: Timestamp,
    pub text: String,
    pub details: AlertDetails,
}

impl WebhookAlert {
    pub fn from_alert(a: &StoredAlert) -> WebhookAlert {
        WebhookAlert {
            id: a.id,
            kind: a.kind.as_str().to_owned(),
            username: a.username.clone(),
            timestamp: Timestamp::from_unix(a.created),
            text: text::alert_sentence(a.kind, a.created, &a.details),
            details: a.details.clone(),
        }
    }
}

pub struct Sinks {
    webhook: Option<(WebhookConfig, Vec<u8>, Option<Arc<rustls::ClientConfig>>)>,
    mail: Option<(SmtpConfig, AsyncSmtpTransport<Tokio1Executor>)>,
}

impl Sinks {
    /// Prepares clients for the configured sinks (TLS settings, SMTP transport).
    pub fn new(cfg: &AlertsConfig) -> Result<Sinks, String> {
        let webhook = match &cfg.webhook {
            Some(w) => {
                let tls = if w.url.scheme_str() == Some("https") {
                    let ca = w.ca.clone().unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
                    let identity = w.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                    Some(tls_config(&ca, identity).map_err(|e| format!("alerts.webhook: {e}"))?)
                } else {
                    None
                };
                let secret = w
                    .secret
                    .read()
                    .map_err(|e| format!("alerts.webhook.secret: {e}"))?;
                Some((w.clone(), secret.into_bytes(), tls))
            }
            None => None,
        };
        let mail = match &cfg.smtp {
            Some(s) => Some((s.clone(), smtp_transport(s)?)),
            None => None,
        };
        Ok(Sinks { webhook, mail })
    }

    pub async fn deliver(&self, sink: &str, alert: &StoredAlert) -> Result<(), DeliveryError> {
        match sink {
            SINK_LOG => {
                // Counted, and logged at debug only: a line per alert at the
                // moment of the login would date it to the second, finer
                // than the hour the entry is floored to.
                crate::metrics::alert_raised(alert.kind.as_str());
                tracing::debug!(kind = alert.kind.as_str(), alert_id = alert.id, username = %alert.username, "alert raised");
                Ok(())
            }
            SINK_WEBHOOK => match &self.webhook {
                Some((cfg, secret, tls)) => post_webhook(cfg, secret, tls.clone(), alert).await,
                None => Err(DeliveryError::Transient(
                    "webhook no longer configured".into(),
                )),
            },
            SINK_MAIL_ADMIN | SINK_MAIL_USER => match &self.mail {
                Some((cfg, transport)) => {
                    send_mail(cfg, transport, alert, sink == SINK_MAIL_USER).await
                }
                None => Err(DeliveryError::Transient("smtp no longer configured".into())),
            },
            other => Err(DeliveryError::Permanent(format!("unknown sink {other:?}"))),
        }
    }
}

async fn post_webhook(
    cfg: &WebhookConfig,
    secret: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
    alert: &StoredAlert,
) -> Result<(), DeliveryError> {
    let transient = DeliveryError::Transient;
    let body = serde_json::to_vec(&WebhookAlert::from_alert(alert))
        .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
    let host = cfg
        .url
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = cfg
        .url
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let path = cfg
        .url
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let attempt = async {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| transient(format!("resolving {host}: {e}")))?
            .next()
            .ok_or_else(|| transient(format!("{host} has no address")))?;
        let mut conn = Connection::connect(addr, &host, tls)
            .await
            .map_err(|e| transient(e.to_string()))?;
        let headers = [
            (SIGNATURE_HEADER, signature(secret, &body)),
            (DELIVERY_HEADER, format!("{}-{}", alert.id, SINK_WEBHOOK)),
        ];
        let resp = conn
            .request_with_headers(
                hyper::Method::POST,
                &path,
                &headers,
                Some("application/json"),
                body.clone().into(),
            )
            .await
            .map_err(|e| transient(e.to_string()))?;
        if resp.status.is_success() {
            Ok(())
        } else {
            Err(transient(format!(
                "webhook answered HTTP {}",
                resp.status.as_u16()
            )))
        }
    };
    tokio::time::timeout(cfg.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(transient("webhook timed out".into())))
}

fn smtp_transport(s: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .timeout(Some(s.timeout));
    if s.tls != SmtpTls::None {
        let params = match &s.ca {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("alerts.smtp.ca: {}: {e}", ca.display()))?;
                let cert =
                    Certificate::from_pem(&pem).map_err(|e| format!("alerts.smtp.ca: {e}"))?;
                TlsParameters::builder(s.host.clone())
                    .add_root_certificate(cert)
                    .build_rustls()
            }
            None => TlsParameters::new_rustls(s.host.clone()),
        }
        .map_err(|e| format!("alerts.smtp: {e}"))?;
        builder = builder.tls(match s.tls {
            SmtpTls::Implicit => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let Some((user, pass)) = &s.credentials {
        let pass = pass
            .read()
            .map_err(|e| format!("alerts.smtp.password: {e}"))?;
        builder = builder.credentials(Credentials::new(user.clone(), pass));
    }
    Ok(builder.build())
}

async fn send_mail(
    cfg: &SmtpConfig,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    alert: &StoredAlert,
    to_user: bool,
) -> Result<(), DeliveryError> {
    let to = if to_user {
        cfg.user_to
            .as_ref()
            .map(|t| t.replace("{username}", &alert.username))
    } else {
        cfg.admin_to.clone()
    }
    .ok_or_else(|| DeliveryError::Permanent("no recipient configured".into()))?;
    let to: lettre::message::Mailbox = to
        .parse()
        .map_err(|_| DeliveryError::Permanent("recipient is not a valid address".into()))?;
    let from: lettre::message::Mailbox = cfg
        .from
        .parse()
        .map_err(|_| DeliveryError::Permanent("alerts.smtp.from is not a valid address".into()))?;
    let (subject, body) = text::mail(
        alert.kind,
        alert.created,
        &alert.details,
        &alert.username,
        to_user,
    );
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
    transport.send(message).await.map(|_| ()).map_err(|e| {
        if e.is_permanent() {
            DeliveryError::Permanent(format!("SMTP: {e}"))
        } else {
            DeliveryError::Transient(format!("SMTP: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_count_every_alert_kind_by_its_name() {
        let names: Vec<&str> = crate::model::AlertKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names, crate::metrics::ALERT_KINDS);
    }

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
