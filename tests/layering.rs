//! The layering of `src/` (the crate docs' "Layout"): each top-level module imports only from
//! modules on floors below its own, never above and never a sibling on its own floor, so
//! there is no import cycle. Read from the source: every `crate::<module>` path outside
//! comments, single or in a `crate::{…}` group, in every file under `src/<module>/` or
//! `src/<module>.rs`.
//!
//! Not read: `super::` paths (they stay inside a module tree by this codebase's convention;
//! crossing modules is written `crate::`), doc-comment links, and `main.rs`, which sits above
//! everything and imports the library as `media_relay::`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The floors, bottom first. A module may import from any floor strictly below its own.
const FLOORS: &[&[&str]] = &[
    &["obs", "flags"],
    &["auth"],
    &["wire", "audio"],
    &["carrier", "agent"],
    &["call"],
    &["http"],
    &["config"],
];

/// Macros exported at the crate root (`#[macro_export]`), by the module that defines them.
const ROOT_MACROS: &[(&str, &str)] = &[("label_enum", "obs")];

/// The module a `crate::<name>` path reaches.
fn owner(name: &str) -> &str {
    ROOT_MACROS
        .iter()
        .find(|(m, _)| *m == name)
        .map_or(name, |(_, owner)| owner)
}

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

/// The text with `//` comments removed (line by line; a `//` inside a string cuts the rest
/// of that line, which can only hide a path, never invent one).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules named by `crate::` paths in `text`, with the 1-based line of each.
fn crate_imports(text: &str) -> Vec<(String, usize)> {
    let text = without_comments(text);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        // `crate::` as a whole path segment (not `my_crate::`).
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        let rest = &text[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b, c::{D, E}}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident_at(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            out.push((name.to_owned(), line));
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.push((name.to_owned(), line));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs` and `main.rs`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).expect("a file under src/");
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    if rel.components().count() == 1 {
        let name = first.strip_suffix(".rs")?;
        return (name != "lib" && name != "main").then(|| name.to_owned());
    }
    Some(first)
}

#[test]
fn every_import_points_to_a_lower_floor() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(floor) = floor_of(&module) else {
            panic!(
                "src/{module} is on no floor of tests/layering.rs (FLOORS): place it, and \
                 describe it in the crate docs' Layout"
            );
        };
        seen.insert(module.clone());
        let text = std::fs::read_to_string(file).expect("readable source file");
        for (name, line) in crate_imports(&text) {
            let target = owner(&name);
            if target == module {
                continue;
            }
            let shown = file.strip_prefix(src()).unwrap_or(file).display();
            match floor_of(target) {
                Some(f) if f < floor => {}
                Some(f) => wrong.push(format!(
                    "src/{shown}:{line}: {module} (floor {floor}) imports {target} (floor {f})"
                )),
                None => wrong.push(format!(
                    "src/{shown}:{line}: {module} imports crate::{target}, on no floor"
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down:\n  {}",
        wrong.join("\n  ")
    );
    // The check read every module that exists (a typo in FLOORS would make it vacuous).
    for module in [
        "obs", "auth", "wire", "audio", "carrier", "agent", "call", "http", "config",
    ] {
        assert!(
            seen.contains(module),
            "no source file of src/{module} was read"
        );
    }
}

#[test]
fn the_crate_docs_layout_names_every_module_top_down() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let layout = lib
        .split("# Layout")
        .nth(1)
        .expect("a Layout section in the crate docs");
    let order = [
        "config", "http", "call", "carrier", "agent", "wire", "audio", "auth", "obs",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|m| {
            layout
                .find(&format!("[`{m}`]"))
                .unwrap_or_else(|| panic!("the Layout section does not name [`{m}`]"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "the Layout section does not list the modules top-down: {order:?}"
    );
    // Its floors agree with FLOORS: each module listed lower in the docs is on a floor no
    // higher than one listed above it.
    let floors: Vec<usize> = order
        .iter()
        .map(|m| floor_of(m).expect("on a floor"))
        .collect();
    assert!(
        floors.windows(2).all(|w| w[0] >= w[1]),
        "the Layout section's order disagrees with FLOORS: {floors:?}"
    );
}

#[test]
fn crate_paths_are_read_single_grouped_and_nested() {
    let text = "use crate::obs::Registry;\n\
                use crate::{wire::b64, audio, self as me,\n    call::{A, B}};\n\
                // use crate::http::Nope;\n\
                let x = my_crate::http::Nope; let y = crate::label_enum!(X);\n";
    let got = crate_imports(text);
    assert_eq!(
        got,
        [
            ("obs".to_owned(), 1),
            ("wire".to_owned(), 2),
            ("audio".to_owned(), 2),
            ("call".to_owned(), 2),
            ("label_enum".to_owned(), 5),
        ]
    );
}

#[test]
fn call_mod_only_declares_and_re_exports() {
    let text = std::fs::read_to_string(src().join("call/mod.rs")).expect("src/call/mod.rs");
    for item in without_comments(&text).split(';') {
        let item = item.trim();
        assert!(
            item.is_empty()
                || item.starts_with("pub mod ")
                || item.starts_with("mod ")
                || item.starts_with("pub use "),
            "src/call/mod.rs has more than module declarations and re-exports: {item:?}"
        );
    }
}
