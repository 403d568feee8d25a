//! The sentences people read: in summaries, alert mails and webhooks.
//! Times are quantized in storage, so they are said at that precision.

use chrono::DateTime;

use super::{AlertDetails, AlertKind};

/// ISO 3166-1 alpha-2 codes and English short names, in code order.
const COUNTRIES: &[(&str, &str)] = &[
    ("AD", "Andorra"),
    ("AE", "United Arab Emirates"),
    ("AF", "Afghanistan"),
    ("AG", "Antigua and Barbuda"),
    ("AI", "Anguilla"),
    ("AL", "Albania"),
    ("AM", "Armenia"),
    ("AO", "Angola"),
    ("AQ", "Antarctica"),
    ("AR", "Argentina"),
    ("AS", "American Samoa"),
    ("AT", "Austria"),
    ("AU", "Australia"),
    ("AW", "Aruba"),
    ("AX", "Åland Islands"),
    ("AZ", "Azerbaijan"),
    ("BA", "Bosnia and Herzegovina"),
    ("BB", "Barbados"),
    ("BD", "Bangladesh"),
    ("BE", "Belgium"),
    ("BF", "Burkina Faso"),
    ("BG", "Bulgaria"),
    ("BH", "Bahrain"),
    ("BI", "Burundi"),
    ("BJ", "Benin"),
    ("BL", "Saint Barthélemy"),
    ("BM", "Bermuda"),
    ("BN", "Brunei"),
    ("BO", "Bolivia"),
    ("BQ", "Caribbean Netherlands"),
    ("BR", "Brazil"),
    ("BS", "Bahamas"),
    ("BT", "Bhutan"),
    ("BV", "Bouvet Island"),
    ("BW", "Botswana"),
    ("BY", "Belarus"),
    ("BZ", "Belize"),
    ("CA", "Canada"),
    ("CC", "Cocos (Keeling) Islands"),
    ("CD", "the Democratic Republic of the Congo"),
    ("CF", "the Central African Republic"),
    ("CG", "the Republic of the Congo"),
    ("CH", "Switzerland"),
    ("CI", "Côte d'Ivoire"),
    ("CK", "the Cook Islands"),
    ("CL", "Chile"),
    ("CM", "Cameroon"),
    ("CN", "China"),
    ("CO", "Colombia"),
    ("CR", "Costa Rica"),
    ("CU", "Cuba"),
    ("CV", "Cabo Verde"),
    ("CW", "Curaçao"),
    ("CX", "Christmas Island"),
    ("CY", "Cyprus"),
    ("CZ", "Czechia"),
    ("DE", "Germany"),
    ("DJ", "Djibouti"),
    ("DK", "Denmark"),
    ("DM", "Dominica"),
    ("DO", "the Dominican Republic"),
    ("DZ", "Algeria"),
    ("EC", "Ecuador"),
    ("EE", "Estonia"),
    ("EG", "Egypt"),
    ("EH", "Western Sahara"),
    ("ER", "Eritrea"),
    ("ES", "Spain"),
    ("ET", "Ethiopia"),
    ("FI", "Finland"),
    ("FJ", "Fiji"),
    ("FK", "the Falkland Islands"),
    ("FM", "Micronesia"),
    ("FO", "the Faroe Islands"),
    ("FR", "France"),
    ("GA", "Gabon"),
    ("GB", "the United Kingdom"),
    ("GD", "Grenada"),
    ("GE", "Georgia"),
    ("GF", "French Guiana"),
    ("GG", "Guernsey"),
    ("GH", "Ghana"),
    ("GI", "Gibraltar"),
    ("GL", "Greenland"),
    ("GM", "Gambia"),
    ("GN", "Guinea"),
    ("GP", "Guadeloupe"),
    ("GQ", "Equatorial Guinea"),
    ("GR", "Greece"),
    ("GS", "South Georgia and the South Sandwich Islands"),
    ("GT", "Guatemala"),
    ("GU", "Guam"),
    ("GW", "Guinea-Bissau"),
    ("GY", "Guyana"),
    ("HK", "Hong Kong"),
    ("HM", "Heard Island and McDonald Islands"),
    ("HN", "Honduras"),
    ("HR", "Croatia"),
    ("HT", "Haiti"),
    ("HU", "Hungary"),
    ("ID", "Indonesia"),
    ("IE", "Ireland"),
    ("IL", "Israel"),
    ("IM", "the Isle of Man"),
    ("IN", "India"),
    ("IO", "the British Indian Ocean Territory"),
    ("IQ", "Iraq"),
    ("IR", "Iran"),
    ("IS", "Iceland"),
    ("IT", "Italy"),
    ("JE", "Jersey"),
    ("JM", "Jamaica"),
    ("JO", "Jordan"),
    ("JP", "Japan"),
    ("KE", "Kenya"),
    ("KG", "Kyrgyzstan"),
    ("KH", "Cambodia"),
    ("KI", "Kiribati"),
    ("KM", "Comoros"),
    ("KN", "Saint Kitts and Nevis"),
    ("KP", "North Korea"),
    ("KR", "South Korea"),
    ("KW", "Kuwait"),
    ("KY", "the Cayman Islands"),
    ("KZ", "Kazakhstan"),
    ("LA", "Laos"),
    ("LB", "Lebanon"),
    ("LC", "Saint Lucia"),
    ("LI", "Liechtenstein"),
    ("LK", "Sri Lanka"),
    ("LR", "Liberia"),
    ("LS", "Lesotho"),
    ("LT", "Lithuania"),
    ("LU", "Luxembourg"),
    ("LV", "Latvia"),
    ("LY", "Libya"),
    ("MA", "Morocco"),
    ("MC", "Monaco"),
    ("MD", "Moldova"),
    ("ME", "Montenegro"),
    ("MF", "Saint Martin"),
    ("MG", "Madagascar"),
    ("MH", "the Marshall Islands"),
    ("MK", "North Macedonia"),
    ("ML", "Mali"),
    ("MM", "Myanmar"),
    ("MN", "Mongolia"),
    ("MO", "Macao"),
    ("MP", "the Northern Mariana Islands"),
    ("MQ", "Martinique"),
    ("MR", "Mauritania"),
    ("MS", "Montserrat"),
    ("MT", "Malta"),
    ("MU", "Mauritius"),
    ("MV", "the Maldives"),
    ("MW", "Malawi"),
    ("MX", "Mexico"),
    ("MY", "Malaysia"),
    ("MZ", "Mozambique"),
    ("NA", "Namibia"),
    ("NC", "New Caledonia"),
    ("NE", "Niger"),
    ("NF", "Norfolk Island"),
    ("NG", "Nigeria"),
    ("NI", "Nicaragua"),
    ("NL", "the Netherlands"),
    ("NO", "Norway"),
    ("NP", "Nepal"),
    ("NR", "Nauru"),
    ("NU", "Niue"),
    ("NZ", "New Zealand"),
    ("OM", "Oman"),
    ("PA", "Panama"),
    ("PE", "Peru"),
    ("PF", "French Polynesia"),
    ("PG", "Papua New Guinea"),
    ("PH", "the Philippines"),
    ("PK", "Pakistan"),
    ("PL", "Poland"),
    ("PM", "Saint Pierre and Miquelon"),
    ("PN", "the Pitcairn Islands"),
    ("PR", "Puerto Rico"),
    ("PS", "Palestine"),
    ("PT", "Portugal"),
    ("PW", "Palau"),
    ("PY", "Paraguay"),
    ("QA", "Qatar"),
    ("RE", "Réunion"),
    ("RO", "Romania"),
    ("RS", "Serbia"),
    ("RU", "Russia"),
    ("RW", "Rwanda"),
    ("SA", "Saudi Arabia"),
    ("SB", "the Solomon Islands"),
    ("SC", "Seychelles"),
    ("SD", "Sudan"),
    ("SE", "Sweden"),
    ("SG", "Singapore"),
    ("SH", "Saint Helena"),
    ("SI", "Slovenia"),
    ("SJ", "Svalbard and Jan Mayen"),
    ("SK", "Slovakia"),
    ("SL", "Sierra Leone"),
    ("SM", "San Marino"),
    ("SN", "Senegal"),
    ("SO", "Somalia"),
    ("SR", "Suriname"),
    ("SS", "South Sudan"),
    ("ST", "São Tomé and Príncipe"),
    ("SV", "El Salvador"),
    ("SX", "Sint Maarten"),
    ("SY", "Syria"),
    ("SZ", "Eswatini"),
    ("TC", "the Turks and Caicos Islands"),
    ("TD", "Chad"),
    ("TF", "the French Southern Territories"),
    ("TG", "Togo"),
    ("TH", "Thailand"),
    ("TJ", "Tajikistan"),
    ("TK", "Tokelau"),
    ("TL", "Timor-Leste"),
    ("TM", "Turkmenistan"),
    ("TN", "Tunisia"),
    ("TO", "Tonga"),
    ("TR", "Türkiye"),
    ("TT", "Trinidad and Tobago"),
    ("TV", "Tuvalu"),
    ("TW", "Taiwan"),
    ("TZ", "Tanzania"),
    ("UA", "Ukraine"),
    ("UG", "Uganda"),
    ("UM", "the United States Minor Outlying Islands"),
    ("US", "the United States"),
    ("UY", "Uruguay"),
    ("UZ", "Uzbekistan"),
    ("VA", "Vatican City"),
    ("VC", "Saint Vincent and the Grenadines"),
    ("VE", "Venezuela"),
    ("VG", "the British Virgin Islands"),
    ("VI", "the U.S. Virgin Islands"),
    ("VN", "Vietnam"),
    ("VU", "Vanuatu"),
    ("WF", "Wallis and Futuna"),
    ("WS", "Samoa"),
    ("XK", "Kosovo"),
    ("YE", "Yemen"),
    ("YT", "Mayotte"),
    ("ZA", "South Africa"),
    ("ZM", "Zambia"),
    ("ZW", "Zimbabwe"),
];

/// The English name of a country code; the code itself when unknown.
pub fn country_name(code: &str) -> String {
    COUNTRIES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .map(|at| COUNTRIES[at].1.to_owned())
        .unwrap_or_else(|_| code.to_owned())
}

fn known(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "unknown").then_some(s)
}

/// "Firefox on Linux", "Firefox", "a device running Linux", or nothing.
pub fn device_phrase(browser: &str, os: &str) -> Option<String> {
    match (known(browser), known(os)) {
        (Some(b), Some(o)) => Some(format!("{b} on {o}")),
        (Some(b), None) => Some(b.to_owned()),
        (None, Some(o)) => Some(format!("a device running {o}")),
        (None, None) => None,
    }
}

/// `2026-11-20`.
pub fn date(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// `Your sign-in history was viewed by support on 2026-12-05`: the latest
/// recorded read of a user's data.
pub fn access_sentence(reader: &str, day: i64) -> String {
    format!(
        "Your sign-in history was viewed by {reader} on {}",
        date(day)
    )
}

/// `2026-11-20 10:00 UTC`.
pub fn date_time(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

fn plural(n: i64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// How long ago `ts` was, at the precision stored times allow.
pub fn ago(now: i64, ts: i64) -> String {
    let secs = now.saturating_sub(ts).max(0);
    let hours = secs / 3600;
    let days = secs / 86_400;
    match () {
        _ if secs < 3600 => "less than an hour ago".into(),
        _ if hours < 48 => format!("{} ago", plural(hours, "hour")),
        _ if days < 60 => format!("{} ago", plural(days, "day")),
        _ if days < 730 => format!("{} ago", plural(days / 30, "month")),
        _ => format!("{} ago", plural(days / 365, "year")),
    }
}

/// "Last login 2 hours ago with Firefox on Linux from Italy".
pub fn last_login_sentence(now: i64, ts: i64, browser: &str, os: &str, zone: &str) -> String {
    let mut s = format!("Last login {}", ago(now, ts));
    if let Some(d) = device_phrase(browser, os) {
        s.push_str(" with ");
        s.push_str(&d);
    }
    if !zone.is_empty() {
        s.push_str(" from ");
        s.push_str(&country_name(zone));
    }
    s
}

fn security_change_what(log_type: &str) -> &'static str {
    match log_type {
        "password_change" => "Password changed",
        "password_reset" => "Password reset",
        "otp_enabled" => "Two-factor authentication enabled",
        "otp_disabled" => "Two-factor authentication disabled",
        _ => "Security setting changed",
    }
}

/// One sentence for an alert: "New device on 2026-11-20: Firefox on Linux from Italy".
pub fn alert_sentence(kind: AlertKind, ts: i64, d: &AlertDetails) -> String {
    let on = date(ts);
    let place = (!d.country.is_empty()).then(|| country_name(&d.country));
    match kind {
        AlertKind::NewDevice => {
            let mut s = format!("New device on {on}");
            match (device_phrase(&d.browser, &d.os), place) {
                (Some(dev), Some(p)) => s.push_str(&format!(": {dev} from {p}")),
                (Some(dev), None) => s.push_str(&format!(": {dev}")),
                (None, Some(p)) => s.push_str(&format!(", from {p}")),
                (None, None) => {}
            }
            s
        }
        AlertKind::NewCountry => format!(
            "First login from {} on {on}",
            place.unwrap_or_else(|| "a new country".into())
        ),
        AlertKind::DormantAccount => match d.previous_login {
            Some(prev) => format!(
                "Login on {on} after {} without one",
                plural(ts.saturating_sub(prev) / 86_400, "day")
            ),
            None => format!("Login on {on} after a long time without one"),
        },
        AlertKind::SecurityChange => format!("{} on {on}", security_change_what(&d.log_type)),
        AlertKind::LoginFailureBurst => format!(
            "{} failed logins in a short time on {on}",
            d.failures.unwrap_or(0)
        ),
    }
}

/// Subject and plain-text body of an alert mail.
pub fn mail(
    kind: AlertKind,
    ts: i64,
    d: &AlertDetails,
    username: &str,
    to_user: bool,
) -> (String, String) {
    let headline = alert_sentence(kind, ts, d);
    let subject = if to_user {
        format!("Security notice for your account: {headline}")
    } else {
        format!("[usermetadb] {} for {username}: {headline}", kind.as_str())
    };
    let mut body = String::new();
    body.push_str(if to_user {
        "Hello,\n\nWe noticed something on your account that you may want to check.\n\n"
    } else {
        "The login monitor raised an alert.\n\n"
    });
    body.push_str(&format!("  What happened: {headline}\n"));
    body.push_str(&format!("  Account:       {username}\n"));
    body.push_str(&format!(
        "  When:          {} (to the hour)\n",
        date_time(ts)
    ));
    if let Some(dev) = device_phrase(&d.browser, &d.os) {
        let mobile = if d.mobile { " (mobile)" } else { "" };
        body.push_str(&format!("  Device:        {dev}{mobile}\n"));
    }
    if !d.country.is_empty() {
        body.push_str(&format!("  Country:       {}\n", country_name(&d.country)));
    }
    if !d.service.is_empty() {
        body.push_str(&format!("  Service:       {}\n", d.service));
    }
    body.push_str("\nIf this was you, there is nothing to do.\n\n");
    body.push_str(if to_user {
        "If it was not you: change your password now, turn on two-factor \
         authentication, review the devices signed in to your account, and \
         contact the support team.\n"
    } else {
        "If the user does not recognise it: lock the account or force a password \
         reset, revoke its sessions, and review its recent activity.\n"
    });
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_names() {
        assert_eq!(country_name("IT"), "Italy");
        assert_eq!(country_name("US"), "the United States");
        assert_eq!(country_name("ZZ"), "ZZ");
        assert_eq!(country_name(""), "");
        assert_eq!(country_name("I"), "I");
    }

    #[test]
    fn sentences() {
        let now = 1_800_000_000;
        assert_eq!(
            last_login_sentence(now, now - 2 * 3600, "Firefox", "Linux", "IT"),
            "Last login 2 hours ago with Firefox on Linux from Italy"
        );
        assert_eq!(
            last_login_sentence(now, now - 600, "", "unknown", ""),
            "Last login less than an hour ago"
        );
        assert_eq!(ago(now, now - 3 * 86_400), "3 days ago");
        assert_eq!(ago(now, now - 400 * 86_400), "13 months ago");
        let d = AlertDetails {
            browser: "Firefox".into(),
            os: "Linux".into(),
            country: "IT".into(),
            ..Default::default()
        };
        let ts = 1_795_132_800; // 2026-11-20
        assert_eq!(
            alert_sentence(AlertKind::NewDevice, ts, &d),
            "New device on 2026-11-20: Firefox on Linux from Italy"
        );
        assert_eq!(
            alert_sentence(AlertKind::NewCountry, ts, &d),
            "First login from Italy on 2026-11-20"
        );
        let pw = AlertDetails {
            log_type: "password_change".into(),
            ..Default::default()
        };
        assert_eq!(
            alert_sentence(AlertKind::SecurityChange, ts, &pw),
            "Password changed on 2026-11-20"
        );
        let (subject, body) = mail(AlertKind::NewDevice, ts, &d, "alice", true);
        assert!(subject.contains("New device"));
        for part in [
            "alice",
            "2026-11-20 ",
            "Firefox on Linux",
            "Italy",
            "If it was not you",
        ] {
            assert!(body.contains(part), "{part} missing from\n{body}");
        }
    }
}
