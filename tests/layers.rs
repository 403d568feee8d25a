//! The layer map of `src/lib.rs`, held against the code: the modules of
//! `src/` depend on each other only as listed below, and the list has no
//! cycle. A module depends on another when any of its non-test code names
//! `crate::<other>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may name, as `src/lib.rs` draws
/// them: top to bottom, each only calling down.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "acl",
            "clock",
            "config",
            "crypto",
            "endpoint",
            "metrics",
            "model",
            "monitor",
            "privacy",
            "reports",
            "retention",
            "service",
            "store",
            "tls",
            "wire",
        ],
    ),
    ("reports", &["config", "model", "service", "wire"]),
    (
        "transfer",
        &[
            "clock", "config", "crypto", "model", "privacy", "service", "store", "wire",
        ],
    ),
    (
        "service",
        &[
            "clock", "config", "crypto", "model", "monitor", "privacy", "store", "wire",
        ],
    ),
    (
        "monitor",
        &[
            "client", "clock", "config", "metrics", "model", "store", "wire",
        ],
    ),
    ("retention", &["config", "model", "store"]),
    ("client", &["tls", "wire"]),
    ("privacy", &["clock", "config", "crypto", "model", "wire"]),
    (
        "store",
        &["clock", "config", "metrics", "model", "tls", "wire"],
    ),
    ("config", &["acl", "model"]),
    ("model", &["clock", "wire"]),
    ("tls", &["metrics"]),
    ("metrics", &["endpoint"]),
    ("acl", &["endpoint"]),
    ("crypto", &[]),
    ("endpoint", &[]),
    ("wire", &[]),
    ("clock", &[]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests: a `#[cfg(test)]` module with
/// a body and everything after it (tests sit at the end of a file here), and
/// any other `#[cfg(test)]` item of one line; nothing for a file that is a
/// test module itself.
fn non_test_code(text: &str) -> String {
    if text.contains("#![cfg(test)]") {
        return String::new();
    }
    let mut code = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        code.push_str(&rest[..at]);
        let item = rest[at + "#[cfg(test)]".len()..].trim_start();
        let line = item.lines().next().unwrap_or("");
        if line.starts_with("mod ") && line.trim_end().ends_with('{') {
            return code;
        }
        rest = &item[line.len()..];
    }
    code.push_str(rest);
    code
}

/// The top-level modules named as `crate::<name>`, also inside
/// `crate::{a, b::c}` groups.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            let mut expecting_name = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting_name = true,
                    c if expecting_name && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                        item.push(c)
                    }
                    _ if !item.is_empty() => {
                        found.insert(std::mem::take(&mut item));
                        expecting_name = false;
                    }
                    _ => {}
                }
            }
            if !item.is_empty() {
                found.insert(item);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        rest = after;
    }
    found
}

/// `store` for `src/store/sqlite/mod.rs`, `wire` for `src/wire.rs`.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    rel.components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let modules: BTreeSet<String> = files.iter().map(|f| top_module(&src, f)).collect();
    for file in files {
        let top = top_module(&src, &file);
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for name in named_modules(&non_test_code(&text)) {
            // Macros exported at the crate's root are not modules.
            if name != top && modules.contains(&name) {
                deps.insert(name);
            }
        }
    }
    graph
}

#[test]
fn the_allowed_map_has_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Depth-first, with the path so far: a module met again on it is a cycle.
    fn visit<'a>(
        m: &'a str,
        allowed: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(!path.contains(&m), "cycle: {path:?} -> {m}");
        path.push(m);
        for d in allowed.get(m).copied().unwrap_or_default() {
            visit(d, allowed, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in allowed.keys() {
        visit(m, &allowed, &mut Vec::new(), &mut done);
    }
}

#[test]
fn no_module_calls_up() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let graph = dependencies();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!("{module} is not on the layer map"));
            continue;
        };
        for d in deps {
            if !ok.contains(d.as_str()) {
                wrong.push(format!("{module} -> {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies the layer map does not allow:\n{}",
        wrong.join("\n")
    );
    for m in allowed.keys() {
        assert!(graph.contains_key(*m), "{m} is on the map but not in src/");
    }
}

/// Inside the store, the backends import only downward: from the leaves
/// both share (`types`, `agents`, `pairs`) and from their own room, never
/// from the facade in `store/mod.rs` (which imports them).
#[test]
fn backends_import_only_downward() {
    let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut wrong = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let mut files = Vec::new();
        rust_files(&store.join(backend), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = non_test_code(&text);
            let mut rest = code.as_str();
            while let Some(at) = rest.find("crate::store::") {
                let after = &rest[at + "crate::store::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !["types", "agents", "pairs", backend].contains(&name.as_str()) {
                    let line: String = after.chars().take_while(|c| *c != '\n').collect();
                    wrong.push(format!("{}: crate::store::{line}", file.display()));
                }
                rest = after;
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a backend imports from the store's facade:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_groups_and_paths() {
    let names = named_modules(
        "use crate::{model::{A, B}, store::{self, Store}, wire};\nlet x = crate::clock::now_unix();",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["clock", "model", "store", "wire"]);
}

#[test]
fn no_sql_outside_the_backends() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let backends = src.join("store");
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&backends);
        let in_backend = rel.is_ok_and(|r| r.components().count() > 1);
        if in_backend {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [
            "rusqlite",
            "PRAGMA",
            "SELECT ",
            "INSERT INTO",
            "tokio_postgres",
        ] {
            if text.contains(needle) {
                found.push(format!("{}: {needle}", file.display()));
            }
        }
    }
    let cmd = Path::new(env!("CARGO_MANIFEST_DIR")).join("cmd");
    let mut files = Vec::new();
    rust_files(&cmd, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("rusqlite") || text.contains("PRAGMA") {
            found.push(format!("{}: SQL", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside a backend's room:\n{}",
        found.join("\n")
    );
}
