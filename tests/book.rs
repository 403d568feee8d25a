//! Holds the manual (docs/book) to the server: the configuration reference
//! names every key the server accepts and the example file holds, and no
//! other; the API chapter names every route.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use usermetadb::config::Config;
use usermetadb::endpoint::Endpoint;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const BOGUS: &str = "zz_no_such_key";

/// One step from the top of the file to a section: a key, or every entry of
/// a list.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Each,
}

fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Each => out.push_str("[]"),
        }
    }
    out
}

/// A document that puts `leaf` at `path`.
fn document(path: &[Step], leaf: Value) -> String {
    let mut value = leaf;
    for step in path.iter().rev() {
        value = match step {
            Step::Key(k) => {
                let mut m = Mapping::new();
                m.insert(Value::String(k.clone()), value);
                Value::Mapping(m)
            }
            Step::Each => Value::Sequence(vec![value]),
        };
    }
    serde_yaml::to_string(&value).unwrap()
}

fn bogus_map() -> Value {
    let mut m = Mapping::new();
    m.insert(Value::String(BOGUS.into()), Value::Number(1.into()));
    Value::Mapping(m)
}

/// The fields of the section at `path`, from the server's own refusal of an
/// unknown one ("unknown field `x`, expected one of `a`, `b`"), or None when
/// the value there is not a section.
fn fields(path: &[Step]) -> Option<Vec<String>> {
    let message = match Config::from_yaml(&document(path, bogus_map())) {
        Ok(_) => return None,
        Err(e) => e.to_string(),
    };
    let marker = format!("unknown field `{BOGUS}`");
    let rest = &message[message.find(&marker)? + marker.len()..];
    let names = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(
        !names.is_empty() || rest.contains("there are no fields"),
        "cannot read the fields of {} from {message:?}",
        dotted(path)
    );
    Some(names)
}

/// Every key the server accepts, sections included, in the manual's
/// notation: `alerts.webhook.url`, `http_server.tls.acl[].cn`.
fn accepted_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut sections = vec![Vec::<Step>::new()];
    while let Some(section) = sections.pop() {
        let names =
            fields(&section).unwrap_or_else(|| panic!("{} is not a section", dotted(&section)));
        assert!(
            section.is_empty() || !names.is_empty(),
            "{} has no fields",
            dotted(&section)
        );
        for name in names {
            let mut path = section.clone();
            path.push(Step::Key(name));
            keys.insert(dotted(&path));
            let mut each = path.clone();
            each.push(Step::Each);
            if fields(&path).is_some() {
                sections.push(path);
            } else if fields(&each).is_some() {
                keys.insert(dotted(&each));
                sections.push(each);
            }
        }
    }
    // A list's `[]` is not a key of its own.
    keys.retain(|k| !k.ends_with("[]"));
    keys
}

/// Keys a section holds in the example file.
fn example_keys(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().expect("keys are strings");
                let key = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(key.clone());
                example_keys(v, &key, out);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                if item.is_mapping() {
                    example_keys(item, &format!("{prefix}[]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The keys named in the first column of the chapter's tables headed `key`.
fn documented_keys(chapter: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_key_table = false;
    for line in chapter.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let first = line
            .trim_start_matches('|')
            .split('|')
            .next()
            .unwrap()
            .trim();
        if first == "key" {
            in_key_table = true;
            continue;
        }
        if !in_key_table || first.starts_with("---") {
            continue;
        }
        let names = first
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert!(
            !names.is_empty(),
            "a row of a key table names no key: {line}"
        );
        keys.extend(names);
    }
    keys
}

const REFERENCE: &str = "docs/book/src/configuration.md";

fn list(keys: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    keys.into_iter()
        .map(|k| format!("\n  {}", k.as_ref()))
        .collect()
}

#[test]
fn the_configuration_reference_names_every_key_the_server_accepts_and_no_other() {
    let accepted = accepted_keys();
    // The discovery reaches every section: a few keys from each level.
    for key in [
        "db_uri",
        "db.pool_size",
        "http_server.tls.acl[].cn",
        "alerts.failure_burst.window",
        "alerts.smtp.user_to",
        "agents.tls.cert",
        "secrets.device_key_file",
    ] {
        assert!(accepted.contains(key), "{key} not found in {accepted:?}");
    }

    let documented = documented_keys(&read(REFERENCE));
    // A section is documented by its keys; it may have a row of its own.
    let sections: BTreeSet<&String> = accepted
        .iter()
        .filter(|k| {
            accepted
                .iter()
                .any(|o| o.starts_with(&format!("{k}.")) || o.starts_with(&format!("{k}[].")))
        })
        .collect();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|k| !sections.contains(k) && !documented.contains(*k))
        .collect();
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        missing.is_empty(),
        "the server accepts keys that {REFERENCE} does not name (add a row for each):{}",
        list(missing)
    );
    assert!(
        unknown.is_empty(),
        "{REFERENCE} names keys the server does not accept:{}",
        list(unknown)
    );
}

#[test]
fn the_configuration_reference_names_every_key_of_the_example_file() {
    let text = read("user-meta-server.example.yml");
    Config::from_yaml(&text).expect("the example file is a valid configuration");
    let value: Value = serde_yaml::from_str(&text).unwrap();
    let mut example = BTreeSet::new();
    example_keys(&value, "", &mut example);
    assert!(example.contains("alerts.smtp.user_to"), "{example:?}");

    let documented = documented_keys(&read(REFERENCE));
    let accepted = accepted_keys();
    let missing: Vec<&String> = example
        .iter()
        .filter(|k| !documented.contains(*k))
        // Sections the reference documents through their keys.
        .filter(|k| !documented.iter().any(|d| d.starts_with(&format!("{k}."))))
        .collect();
    assert!(
        missing.is_empty(),
        "user-meta-server.example.yml has keys that {REFERENCE} does not name:{}",
        list(missing)
    );
    let unaccepted: Vec<&String> = example.difference(&accepted).collect();
    assert!(
        unaccepted.is_empty(),
        "user-meta-server.example.yml has keys the server does not accept:{}",
        list(unaccepted)
    );
}

#[test]
fn every_key_table_of_the_book_names_only_keys_the_server_accepts() {
    let accepted = accepted_keys();
    let src = repo().join("docs/book/src");
    let mut chapters = vec![src.clone()];
    let mut unknown = Vec::new();
    while let Some(path) = chapters.pop() {
        if path.is_dir() {
            chapters.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).unwrap();
            for key in documented_keys(&text) {
                if !accepted.contains(&key) {
                    unknown.push(format!("{}: {key}", rel(&path)));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "key tables name keys the server does not accept:{}",
        list(unknown)
    );
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap().display().to_string()
}

#[test]
fn the_api_chapter_names_every_route() {
    const CHAPTER: &str = "docs/book/src/api.md";
    let chapter = read(CHAPTER);
    let missing: Vec<&str> = Endpoint::ALL
        .iter()
        .map(|e| e.path())
        .filter(|path| !chapter.contains(&format!("{path}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "{CHAPTER} does not name these routes (as `PATH` in its tables):{}",
        list(missing)
    );
}
