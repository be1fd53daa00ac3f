//! The layering of `src/`, checked: each top-level module may import only
//! the modules below it in [`LAYERS`], and no file imports a sibling that
//! imports it. A wall in the wrong place fails here, by name, the way a
//! crate boundary would fail to compile (see ARCHITECTURE.md, "Layers").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of the library and what it may import, lowest
/// first. `proto` is generated; `main.rs` is the binary, outside the library.
const LAYERS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("metrics", &[]),
    ("tls", &[]),
    ("accept", &[]),
    ("proto", &[]),
    ("store", &["model", "metrics"]),
    ("core", &["model", "store", "metrics"]),
    ("codec", &["model", "core"]),
    ("mesh", &["model", "core", "accept", "metrics"]),
    ("config", &["model", "core", "mesh"]),
    (
        "gateway",
        &[
            "model", "core", "codec", "config", "accept", "proto", "tls", "metrics",
        ],
    ),
    ("client", &["model", "core", "codec", "proto", "tls"]),
    (
        "server",
        &[
            "model", "store", "core", "codec", "mesh", "config", "gateway", "proto", "tls",
            "accept", "metrics",
        ],
    ),
    (
        "bench",
        &[
            "model", "core", "codec", "client", "config", "server", "proto", "tls",
        ],
    ),
];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests, which may reach anywhere.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a source file is readable");
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The first path segments named after `prefix` (`crate::`, `super::`):
/// `crate::core::X` gives `core`, `crate::{core::X, store}` gives both.
fn named_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            names.extend(group_heads(group));
        } else {
            names.insert(ident(rest).to_owned());
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The heads of the paths in a `{…}` group, up to its closing brace.
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut heads, mut expect_head) = (0, Vec::new(), true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if expect_head && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&group[i..]).to_owned());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level module a file under `src/` belongs to.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    source_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = top_module(&src(), file) else {
            continue;
        };
        let may = allowed
            .get(module.as_str())
            .unwrap_or_else(|| panic!("{module} is missing from LAYERS"));
        for used in named_after(&code(file), "crate::") {
            if used != module && allowed.contains_key(used.as_str()) && !may.contains(&&*used) {
                wrong.push(format!("{} imports {used}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_layers_form_no_circle() {
    for (i, (module, may)) in LAYERS.iter().enumerate() {
        for used in *may {
            let below = LAYERS[..i].iter().any(|(m, _)| m == used);
            assert!(below, "{module} may import {used}, which is not below it");
        }
    }
}

/// Files of one directory import each other one way only: a circle between
/// siblings (`a.rs` uses `super::b`, `b.rs` uses `super::a`) means a type
/// both need belongs in a third file.
#[test]
fn no_two_sibling_files_import_each_other() {
    let mut files = Vec::new();
    source_files(&src(), &mut files);
    let mut edges: BTreeSet<(PathBuf, PathBuf)> = BTreeSet::new();
    for file in &files {
        let Some(dir) = file.parent() else { continue };
        for sibling in named_after(&code(file), "super::") {
            let target = dir.join(format!("{sibling}.rs"));
            let nested = dir.join(&sibling).join("mod.rs");
            for target in [target, nested] {
                if target != *file && target.exists() {
                    edges.insert((file.clone(), target));
                }
            }
        }
    }
    let circles: Vec<String> = edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .map(|(a, b)| format!("{} <-> {}", a.display(), b.display()))
        .collect();
    assert!(
        circles.is_empty(),
        "sibling files import each other:\n{}",
        circles.join("\n")
    );
}
