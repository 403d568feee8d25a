//! `user-meta-admin`: the usermetadb API from the command line, over mutual
//! TLS, for scripting and debugging; the stale-account job; reports.
//!
//! Exit codes: 0 ok, 1 usage or configuration, 2 connection or TLS, 3 denied
//! by the server's ACL (403), 4 request refused by the server (other 4xx),
//! 5 server error (5xx), 6 `unused --exec --yes`: the command failed for some
//! accounts.

mod conn;
#[path = "../common/generate.rs"]
mod generate;
mod html;
mod output;
mod report;
mod ui;
mod unused;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use usermetadb::wire::*;

use conn::{Api, Failure, Flags};
use output::{print, Format, Table};

#[derive(Parser)]
#[command(
    name = "user-meta-admin",
    version,
    about = "Administer a usermetadb server over its API (mutual TLS)",
    after_help = "Exit codes: 0 ok, 1 usage or configuration, 2 connection or TLS, \
                  3 denied by the server's ACL (403), 4 request refused (other 4xx), \
                  5 server error (5xx), 6 some --exec commands failed."
)]
struct Cli {
    /// YAML file with any of the keys server, ca, cert, key (flags override it;
    /// relative paths are relative to the file).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server, https://HOST:PORT.
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM); its CommonName is what the server's ACL sees.
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Private key of the client certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DeviceArgs {
    /// Device ID (e.g. from identify-device).
    #[arg(long, allow_hyphen_values = true)]
    device_id: Option<String>,
    /// Client address (reduced to a country by the server, then dropped).
    #[arg(long)]
    remote_addr: Option<String>,
    /// Country code, when known.
    #[arg(long)]
    zone: Option<String>,
    /// User agent (reduced to browser / OS / mobile by the server).
    #[arg(long)]
    user_agent: Option<String>,
    #[arg(long)]
    browser: Option<String>,
    #[arg(long)]
    os: Option<String>,
    #[arg(long)]
    mobile: bool,
}

impl DeviceArgs {
    fn device(&self) -> Option<DeviceInfo> {
        let any = self.device_id.is_some()
            || self.remote_addr.is_some()
            || self.zone.is_some()
            || self.user_agent.is_some()
            || self.browser.is_some()
            || self.os.is_some()
            || self.mobile;
        any.then(|| DeviceInfo {
            id: self.device_id.clone().unwrap_or_default(),
            remote_addr: self.remote_addr.clone().unwrap_or_default(),
            remote_zone: self.zone.clone().unwrap_or_default(),
            user_agent: self.user_agent.clone().unwrap_or_default(),
            browser: self.browser.clone().unwrap_or_default(),
            os: self.os.clone().unwrap_or_default(),
            mobile: self.mobile,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Record an event in a user's log (add_log).
    AddLog {
        username: String,
        /// login, logout, password_change, password_reset, otp_enabled, otp_disabled, login_failure
        #[arg(long = "type", value_name = "LOG_TYPE")]
        log_type: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        message: Option<String>,
        #[arg(long)]
        login_method: Option<String>,
        #[arg(long)]
        login_authenticator_id: Option<String>,
        /// When it happened (RFC 3339 or YYYY-MM-DD); default now.
        #[arg(long)]
        timestamp: Option<String>,
        #[command(flatten)]
        device: Box<DeviceArgs>,
    },
    /// The newest events across users (/api/admin/events).
    Events {
        /// Only this tenant's users (TENANT/...).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this log type.
        #[arg(long = "type", value_name = "LOG_TYPE")]
        log_type: Option<String>,
        /// Start (YYYY-MM-DD or RFC 3339); default 30 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive; default now.
        #[arg(long)]
        to: Option<String>,
        /// At most N (0: 100; at most 1000).
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// The alert outbox across users, with delivery states (/api/admin/alerts).
    Alerts {
        /// Only alerts with a delivery pending, failed or delivered.
        #[arg(long)]
        state: Option<String>,
        /// Only the last N days (0: all kept).
        #[arg(long, default_value_t = 30)]
        max_days: i64,
    },
    /// Make an alert's undelivered deliveries due now (/api/admin/retry_alert).
    RetryAlert { id: i64 },
    /// What the replica reached holds about a login's throttling by the
    /// auth policy (/api/admin/throttles).
    Throttles { login: String },
    /// Forget the replica's throttling of a login (/api/admin/clear_throttles).
    ClearThrottles { login: String },
    /// A user's log, newest first (get_user_logs).
    GetUserLogs {
        username: String,
        /// Only the last N days (0: everything kept).
        #[arg(long, default_value_t = 0)]
        max_days: i64,
        /// At most N entries (0: the server's default).
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// A user's devices (get_user_devices).
    GetUserDevices { username: String },
    /// Whether a user has used a device before (check_device).
    CheckDevice {
        username: String,
        /// Base64url, so it may begin with '-'.
        #[arg(allow_hyphen_values = true)]
        device_id: String,
    },
    /// Record a login to a service (set_last_login).
    SetLastLogin {
        username: String,
        service: String,
        /// When (RFC 3339 or YYYY-MM-DD); default now.
        #[arg(long)]
        timestamp: Option<String>,
    },
    /// A user's last login per service, or for one (get_last_login).
    GetLastLogin {
        username: String,
        #[arg(long)]
        service: Option<String>,
    },
    /// Print the accounts of a list with no login in the last N days; optionally
    /// run a command for each (get_unused_accounts).
    Unused {
        /// Days without a login.
        #[arg(long)]
        days: i64,
        /// One username a line; `-` or nothing for standard input.
        #[arg(value_name = "FILE|-")]
        input: Option<PathBuf>,
        /// Names per request.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// Requests in flight at once (one connection each).
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Command to run for each unused account, ended by `;` or the end of
        /// the line: the name is passed as its last argument, never through a
        /// shell. Without --yes, only says what it would do.
        #[arg(long, num_args = 1.., value_terminator = ";", allow_hyphen_values = true, value_name = "CMD")]
        exec: Vec<String>,
        /// Really run the --exec command.
        #[arg(long)]
        yes: bool,
    },
    /// The device behind a cookie, or a new device and its cookie (identify_device).
    IdentifyDevice {
        /// Base64url, so it may begin with '-'.
        #[arg(long, allow_hyphen_values = true)]
        cookie: Option<String>,
        #[arg(long)]
        remote_addr: Option<String>,
        #[arg(long)]
        user_agent: Option<String>,
    },
    /// Everything stored about a user, as one JSON document (export_user):
    /// the answer to a subject-access request.
    ExportUser { username: String },
    /// Who read a user's data (get_user_access), newest first.
    UserAccess {
        username: String,
        /// Only the last this many days (0: all).
        #[arg(long, default_value_t = 0)]
        days: i64,
    },
    /// Delete every row of a user (forget_user). Needs --yes.
    ForgetUser {
        username: String,
        #[arg(long)]
        yes: bool,
    },
    /// Aggregate reports over a time range; small groups are withheld by the server.
    Report {
        /// Start (YYYY-MM-DD or RFC 3339); default: --days before --to.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive; default now.
        #[arg(long)]
        to: Option<String>,
        /// Length of the default range.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Only this report: logins_per_day, logins_per_service, distinct_users,
        /// countries, browsers, operating_systems, new_devices_per_day,
        /// login_failures_per_day, alerts_by_kind, session_durations, time_spent.
        #[arg(long)]
        kind: Option<String>,
        /// Write a self-contained HTML page with charts to FILE instead.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// time_spent: only this tenant's users; per user if it opted in
        /// (agents.per_user_time).
        #[arg(long)]
        tenant: Option<String>,
        /// time_spent per user: a row per computer.
        #[arg(long)]
        per_computer: bool,
    },
    /// Whether the server is up (GET /health).
    Health,
    /// The dashboard: a local web app on --listen that talks to the server
    /// with this certificate (events, a user, alerts, reports, stale accounts).
    /// It prints a URL with a one-time secret: open it to start the session.
    Ui {
        /// Where the dashboard listens: HOST:PORT (keep it on loopback), or
        /// unix:PATH, a socket only you can connect to (mode 0600).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: ui::Listen,
    },
    /// Print the manual page or a shell's completion script.
    Generate {
        #[arg(value_enum)]
        what: generate::Artifact,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(conn::Exit::Usage as u8),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("user-meta-admin: starting the runtime: {e}");
            return ExitCode::from(conn::Exit::Usage as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("user-meta-admin: {}", f.message);
            ExitCode::from(f.exit as u8)
        }
    }
}

fn timestamp(flag: &str, s: &Option<String>) -> Result<Timestamp, Failure> {
    match s {
        Some(s) => report::parse_time(flag, s),
        None => Ok(Timestamp(chrono::Utc::now())),
    }
}

fn io(e: std::io::Error) -> Failure {
    Failure::usage(format!("writing the output: {e}"))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn device_cells(d: Option<&DeviceInfo>) -> Vec<String> {
    match d {
        Some(d) => vec![
            d.id.clone(),
            d.remote_zone.clone(),
            d.browser.clone(),
            d.os.clone(),
            yes_no(d.mobile),
        ],
        None => vec![String::new(); 5],
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let flags = Flags {
        config: cli.config,
        server: cli.server,
        ca: cli.ca,
        cert: cli.cert,
        key: cli.key,
    };
    let format = cli.format;
    if let Command::Generate { what } = cli.command {
        return generate::generate(Cli::command(), what).map_err(io);
    }
    // Refuse what needs no server before connecting to one.
    if let Command::ForgetUser { yes: false, .. } = &cli.command {
        return Err(Failure::usage(
            "forget-user deletes every row of the user and cannot be undone: add --yes",
        ));
    }
    let api = Api::resolve(&flags).await?;
    if let Command::Ui { listen } = cli.command {
        return ui::run(api, listen).await;
    }
    match cli.command {
        Command::Unused {
            days,
            input,
            batch,
            parallel,
            exec,
            yes,
        } => {
            let job = unused::Job {
                days,
                input,
                batch,
                parallel,
                exec,
                yes,
                format,
            };
            return unused::run(api, job).await;
        }
        Command::Report {
            from,
            to,
            days,
            kind,
            html,
            tenant,
            per_computer,
        } => {
            let args = report::Args {
                from,
                to,
                days,
                kind,
                html,
                tenant,
                per_computer,
            };
            return report::run(api, args, format, chrono::Utc::now()).await;
        }
        _ => {}
    }
    let mut c = api.connect().await?;
    match cli.command {
        Command::AddLog {
            username,
            log_type,
            service,
            message,
            login_method,
            login_authenticator_id,
            timestamp: ts,
            device,
        } => {
            let req = AddLogRequest {
                log: Some(LogEntry {
                    timestamp: timestamp("--timestamp", &ts)?,
                    username,
                    log_type,
                    message: message.unwrap_or_default(),
                    service: service.unwrap_or_default(),
                    login_method: login_method.unwrap_or_default(),
                    login_authenticator_id: login_authenticator_id.unwrap_or_default(),
                    device_info: device.device(),
                }),
            };
            let resp: EmptyResponse = api.call(&mut c, "/api/add_log", &req).await?;
            if format == Format::Json {
                print(format, &resp, Table::default).map_err(io)?;
            }
        }
        Command::Events {
            tenant,
            user,
            log_type,
            from,
            to,
            limit,
        } => {
            let opt = |t: &Option<String>, flag: &str| -> Result<Timestamp, Failure> {
                match t {
                    Some(s) => report::parse_time(flag, s),
                    None => Ok(Timestamp::default()),
                }
            };
            let req = GetEventsRequest {
                from: opt(&from, "--from")?,
                to: opt(&to, "--to")?,
                tenant: tenant.unwrap_or_default(),
                username: user.unwrap_or_default(),
                log_type: log_type.unwrap_or_default(),
                limit,
            };
            let resp: GetEventsResponse = api.call(&mut c, "/api/admin/events", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&[
                    "timestamp",
                    "username",
                    "log_type",
                    "service",
                    "device_id",
                    "country",
                    "browser",
                    "os",
                    "mobile",
                ]);
                for e in &resp.result {
                    let mut row = vec![
                        e.timestamp
                            .0
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        e.username.clone(),
                        e.log_type.clone(),
                        e.service.clone(),
                    ];
                    row.extend(device_cells(e.device_info.as_ref()));
                    t.row(row);
                }
                t
            })
            .map_err(io)?;
        }
        Command::Alerts { state, max_days } => {
            let req = GetAlertsRequest {
                max_days,
                state: state.unwrap_or_default(),
                limit: 1000,
            };
            let resp: GetAlertsResponse = api.call(&mut c, "/api/admin/alerts", &req).await?;
            print(format, &resp, || {
                let mut t =
                    Table::new(&["id", "timestamp", "username", "kind", "text", "deliveries"]);
                for a in &resp.alerts {
                    let deliveries: Vec<String> = a
                        .deliveries
                        .iter()
                        .map(|d| format!("{}: {} ({})", d.sink, d.state, d.attempts))
                        .collect();
                    t.row(vec![
                        a.id.to_string(),
                        a.timestamp
                            .0
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        a.username.clone(),
                        a.kind.clone(),
                        a.text.clone(),
                        deliveries.join("; "),
                    ]);
                }
                t
            })
            .map_err(io)?;
        }
        Command::RetryAlert { id } => {
            let resp: RetryAlertResponse = api
                .call(&mut c, "/api/admin/retry_alert", &RetryAlertRequest { id })
                .await?;
            print(format, &resp, || {
                let mut t = Table::new(&["rescheduled"]);
                t.row(vec![resp.rescheduled.to_string()]);
                t
            })
            .map_err(io)?;
        }
        Command::Throttles { login } => {
            let resp: ThrottlesResponse = api
                .call(&mut c, "/api/admin/throttles", &ThrottlesRequest { login })
                .await?;
            print(format, &resp, || {
                let mut t = Table::new(&[
                    "failing addresses",
                    "under attack",
                    "address (opaque)",
                    "failures",
                    "refused until",
                ]);
                let attack = if resp.under_attack { "yes" } else { "no" };
                if resp.pairs.is_empty() {
                    t.row(vec![
                        resp.failing_addresses.to_string(),
                        attack.into(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]);
                }
                for p in &resp.pairs {
                    t.row(vec![
                        resp.failing_addresses.to_string(),
                        attack.into(),
                        p.id.clone(),
                        p.failures.to_string(),
                        p.refused_until
                            .as_ref()
                            .map(|u| u.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_default(),
                    ]);
                }
                t
            })
            .map_err(io)?;
        }
        Command::ClearThrottles { login } => {
            let resp: ClearThrottlesResponse = api
                .call(
                    &mut c,
                    "/api/admin/clear_throttles",
                    &ThrottlesRequest { login },
                )
                .await?;
            print(format, &resp, || {
                let mut t = Table::new(&["cleared"]);
                t.row(vec![resp.cleared.to_string()]);
                t
            })
            .map_err(io)?;
        }
        Command::GetUserLogs {
            username,
            max_days,
            limit,
        } => {
            let req = GetUserLogsRequest {
                username,
                max_days,
                limit,
            };
            let resp: GetUserLogsResponse = api.call(&mut c, "/api/get_user_logs", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&[
                    "timestamp",
                    "log_type",
                    "service",
                    "login_method",
                    "device_id",
                    "country",
                    "browser",
                    "os",
                    "mobile",
                    "message",
                ]);
                for e in &resp.results {
                    let mut row = vec![
                        e.timestamp
                            .0
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        e.log_type.clone(),
                        e.service.clone(),
                        e.login_method.clone(),
                    ];
                    row.extend(device_cells(e.device_info.as_ref()));
                    row.push(e.message.clone());
                    t.row(row);
                }
                t
            })
            .map_err(io)?;
        }
        Command::GetUserDevices { username } => {
            let req = GetUserDevicesRequest { username };
            let resp: GetUserDevicesResponse =
                api.call(&mut c, "/api/get_user_devices", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&[
                    "device_id",
                    "country",
                    "browser",
                    "os",
                    "mobile",
                    "first_seen",
                    "last_seen",
                    "logins",
                ]);
                for d in &resp.devices {
                    let mut row = device_cells(d.device_info.as_ref());
                    row.push(
                        d.first_seen
                            .0
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    );
                    row.push(
                        d.last_seen
                            .0
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    );
                    row.push(d.num_logins.to_string());
                    t.row(row);
                }
                t
            })
            .map_err(io)?;
        }
        Command::CheckDevice {
            username,
            device_id,
        } => {
            let req = CheckDeviceRequest {
                username,
                device_info: Some(DeviceInfo {
                    id: device_id,
                    ..Default::default()
                }),
            };
            let resp: serde_json::Value = api.call(&mut c, "/api/check_device", &req).await?;
            let seen = resp.get("seen").and_then(|v| v.as_bool()).unwrap_or(false);
            print(format, &resp, || {
                let mut t = Table::new(&["seen"]);
                t.row(vec![yes_no(seen)]);
                t
            })
            .map_err(io)?;
        }
        Command::SetLastLogin {
            username,
            service,
            timestamp: ts,
        } => {
            let req = SetLastLoginRequest {
                last_login: Some(LastLoginEntry {
                    timestamp: timestamp("--timestamp", &ts)?,
                    username,
                    service,
                }),
            };
            let resp: EmptyResponse = api.call(&mut c, "/api/set_last_login", &req).await?;
            if format == Format::Json {
                print(format, &resp, Table::default).map_err(io)?;
            }
        }
        Command::GetLastLogin { username, service } => {
            let req = GetLastLoginRequest {
                username,
                service: service.unwrap_or_default(),
            };
            let resp: GetLastLoginResponse = api.call(&mut c, "/api/get_last_login", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&["service", "timestamp"]);
                for e in &resp.results {
                    t.row(vec![
                        e.service.clone(),
                        e.timestamp
                            .0
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ]);
                }
                t
            })
            .map_err(io)?;
        }
        Command::IdentifyDevice {
            cookie,
            remote_addr,
            user_agent,
        } => {
            let req = IdentifyDeviceRequest {
                cookie: cookie.unwrap_or_default(),
                remote_addr: remote_addr.unwrap_or_default(),
                user_agent: user_agent.unwrap_or_default(),
            };
            let resp: IdentifyDeviceResponse =
                api.call(&mut c, "/api/identify_device", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&[
                    "device_id",
                    "country",
                    "browser",
                    "os",
                    "mobile",
                    "new",
                    "cookie",
                ]);
                let mut row = device_cells(Some(&resp.device_info));
                row.push(yes_no(resp.new));
                row.push(resp.cookie.clone());
                t.row(row);
                t
            })
            .map_err(io)?;
        }
        Command::ForgetUser { username, .. } => {
            let req = ForgetUserRequest { username };
            let resp: ForgetUserResponse = api.call(&mut c, "/api/forget_user", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&["user_logs", "devices", "last_logins"]);
                let d = resp.deleted;
                t.row(vec![
                    d.user_logs.to_string(),
                    d.devices.to_string(),
                    d.last_logins.to_string(),
                ]);
                t
            })
            .map_err(io)?;
        }
        Command::ExportUser { username } => {
            let req = ExportUserRequest { username };
            let resp: serde_json::Value = api.call(&mut c, "/api/export_user", &req).await?;
            let mut text =
                serde_json::to_string_pretty(&resp).map_err(|e| io(std::io::Error::other(e)))?;
            text.push('\n');
            std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
                .map_err(io)?;
        }
        Command::UserAccess { username, days } => {
            let req = GetUserAccessRequest {
                username,
                max_days: days,
            };
            let resp: GetUserAccessResponse =
                api.call(&mut c, "/api/get_user_access", &req).await?;
            print(format, &resp, || {
                let mut t = Table::new(&["day", "reader", "endpoint"]);
                for e in &resp.result {
                    t.row(vec![e.day.clone(), e.reader.clone(), e.endpoint.clone()]);
                }
                t
            })
            .map_err(io)?;
        }
        Command::Health => {
            let resp = api.get(&mut c, "/health").await?;
            let status = resp
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_owned();
            print(format, &resp, || {
                let mut t = Table::new(&["status"]);
                t.row(vec![status]);
                t
            })
            .map_err(io)?;
        }
        Command::Unused { .. }
        | Command::Report { .. }
        | Command::Generate { .. }
        | Command::Ui { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Device IDs and cookies are base64url: one in 64 begins with '-'.
    #[test]
    fn device_ids_and_cookies_may_begin_with_a_hyphen() {
        let cli = Cli::try_parse_from(["user-meta-admin", "identify-device", "--cookie", "-vQx"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(cli.command, Command::IdentifyDevice { cookie: Some(c), .. } if c == "-vQx")
        );

        let cli = Cli::try_parse_from(["user-meta-admin", "check-device", "alice", "-Ab9"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(cli.command, Command::CheckDevice { device_id, .. } if device_id == "-Ab9")
        );

        let cli = Cli::try_parse_from([
            "user-meta-admin",
            "add-log",
            "alice",
            "--type",
            "login",
            "--device-id",
            "-x_1",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::AddLog { device, .. } = cli.command else {
            panic!("not add-log");
        };
        assert_eq!(device.device_id.as_deref(), Some("-x_1"));
    }
}
