//! Identifiers that mean what they show: a username, service, device ID or
//! computer name that a new write brings in may not hold a character a
//! screen shows as something else or as nothing, and case folding may not
//! turn a non-ASCII letter into an ASCII one.
//!
//! - **Refused characters.** The invisible characters (Unicode's
//!   default-ignorable code points: zero-width spaces and joiners,
//!   direction marks, embeddings, overrides and isolates, word joiners, the
//!   byte order mark, the soft hyphen, fillers, variation selectors, tags)
//!   and the line and paragraph separators let two names that look alike
//!   be different accounts, or make `PC\u{202e}EXE.TXT`
//!   display reversed; the noncharacters (U+FDD0–U+FDEF and every code
//!   point ending in FFFE or FFFF) are not text at all, and U+FFFF breaks
//!   the XML of a spreadsheet export.
//! - **Case folding.** Windows account and computer names are
//!   case-insensitive, so the agents' names are folded with Unicode's full
//!   case mapping (`JÖRG` and `jörg` stay one user, as they were). A name
//!   in which folding would change a non-ASCII character into ASCII (the
//!   Kelvin sign U+212A into `k`, the long s U+017F into `S`, the dotless ı
//!   into `I`) is refused rather than merged into another account's history.
//!
//! The checks apply to what is written from now on (`add_log`,
//! `set_last_login`, the agents' events). Reads, erasure and imports take a
//! name as it is, so a name stored before these rules keeps working.

use super::{invalid, ApiError};

/// Whether `c` is a noncharacter (Unicode §23.7).
fn is_noncharacter(c: char) -> bool {
    let u = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&u) || u & 0xFFFE == 0xFFFE
}

/// Whether `c` displays as something other than itself, or as nothing:
/// Unicode's default-ignorable code points (format characters, fillers,
/// variation selectors, tags), the line and paragraph separators, the
/// interlinear annotation marks, and the noncharacters.
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                        // soft hyphen
            | '\u{034F}'                  // combining grapheme joiner
            | '\u{061C}'                  // Arabic letter mark
            | '\u{115F}'..='\u{1160}'     // Hangul fillers
            | '\u{17B4}'..='\u{17B5}'     // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}'     // Mongolian selectors and separator
            | '\u{200B}'..='\u{200F}'     // zero-width space, joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}'     // line and paragraph separators, embeddings, overrides
            | '\u{2060}'..='\u{206F}'     // word joiner, invisible operators, isolates, deprecated formats
            | '\u{3164}'                  // Hangul filler
            | '\u{FE00}'..='\u{FE0F}'     // variation selectors
            | '\u{FEFF}'                  // byte order mark, zero-width no-break space
            | '\u{FFA0}'                  // halfwidth Hangul filler
            | '\u{FFF0}'..='\u{FFFB}'     // unassigned specials, interlinear annotation
            | '\u{1BCA0}'..='\u{1BCA3}'   // shorthand format controls
            | '\u{1D173}'..='\u{1D17A}'   // musical format controls
            | '\u{E0000}'..='\u{E0FFF}' // tags, variation selectors supplement
    ) || is_noncharacter(c)
}

/// Refuses `v` when it holds a deceptive character, naming it.
pub fn check_shown(field: &str, v: &str) -> Result<(), ApiError> {
    match v.chars().find(|c| is_deceptive(*c)) {
        Some(c) => Err(invalid(format!(
            "{field} contains U+{:04X}, an invisible, direction-changing or non-character \
             code point",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// Folds `v` with `fold` (Unicode's full case mapping), refusing a name in
/// which a non-ASCII character would become ASCII.
fn fold_case(field: &str, v: &str, fold: impl Fn(char) -> Vec<char>) -> Result<String, ApiError> {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_ascii() {
            out.extend(fold(c));
            continue;
        }
        let folded = fold(c);
        if folded.iter().any(char::is_ascii) {
            return Err(invalid(format!(
                "{field} contains U+{:04X}, which case folding would turn into ASCII `{}`",
                u32::from(c),
                folded.iter().collect::<String>()
            )));
        }
        out.extend(folded);
    }
    Ok(out)
}

/// `v` lowercased, or refused (see the module's documentation).
pub fn lowercase(field: &str, v: &str) -> Result<String, ApiError> {
    fold_case(field, v, |c| c.to_lowercase().collect())
}

/// `v` uppercased, or refused (see the module's documentation).
pub fn uppercase(field: &str, v: &str) -> Result<String, ApiError> {
    fold_case(field, v, |c| c.to_uppercase().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_characters_and_noncharacters_are_refused_by_name() {
        for c in [
            '\u{200B}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{FFFF}',
            '\u{FFFE}',
            '\u{FDD0}',
            '\u{1FFFF}',
            '\u{10FFFE}',
            '\u{00AD}',
            '\u{034F}',
            '\u{115F}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{FE0F}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{206A}',
            '\u{2028}',
            '\u{17B4}',
        ] {
            let name = format!("acme/a{c}b");
            let err = check_shown("username", &name).unwrap_err().to_string();
            assert!(err.contains(&format!("U+{:04X}", u32::from(c))), "{err}");
        }
        for ok in [
            "alice",
            "acme/jörg",
            "Zoë",
            "用户",
            "a.b-c_d@example.org",
            "\u{FFFD}",
        ] {
            check_shown("username", ok).unwrap();
        }
    }

    #[test]
    fn folding_never_makes_a_non_ascii_letter_ascii() {
        assert_eq!(lowercase("UserName", "JÖRG").unwrap(), "jörg");
        assert_eq!(
            uppercase("ComputerName", "pc-straße")
                .unwrap_err()
                .to_string(),
            "ComputerName contains U+00DF, which case folding would turn into ASCII `SS`"
        );
        for (v, c) in [("\u{212A}elvin", "U+212A"), ("\u{0130}stanbul", "U+0130")] {
            let err = lowercase("UserName", v).unwrap_err().to_string();
            assert!(err.contains(c), "{err}");
        }
        for v in ["\u{017F}ecret", "\u{0131}t"] {
            assert!(uppercase("ComputerName", v).is_err(), "{v}");
        }
        assert_eq!(uppercase("ComputerName", "pc-7").unwrap(), "PC-7");
        assert_eq!(lowercase("UserName", "Ärger").unwrap(), "ärger");
    }
}
