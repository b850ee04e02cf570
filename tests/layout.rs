//! The code's map matches the code: every module of `src/` has its entry in `src/lib.rs`'s
//! code map and in the README's layout, in an order where each imports only those above
//! it (so no two modules import each other), and no doc comment names a missing file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules `src/lib.rs` declares.
fn declared_modules() -> BTreeSet<String> {
    read(&root().join("src/lib.rs"))
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(';').to_string())
        .collect()
}

/// The modules of the code map, in its order: `//! - [`name`]` or `//! - `name``.
fn code_map() -> Vec<String> {
    read(&root().join("src/lib.rs"))
        .lines()
        .filter_map(|line| line.strip_prefix("//! - "))
        .filter_map(|entry| {
            let entry = entry.strip_prefix('[').unwrap_or(entry);
            let name = entry.strip_prefix('`')?.split('`').next()?;
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
                .then(|| name.to_string())
        })
        .collect()
}

/// The files of a top-level module: its own file, or every file in its folder.
fn module_files(name: &str) -> Vec<PathBuf> {
    let file = root().join("src").join(format!("{name}.rs"));
    if file.is_file() {
        vec![file]
    } else {
        rust_files(&root().join("src").join(name))
    }
}

/// The top-level modules a module's files name as `crate::other`.
fn imports(name: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for file in module_files(name) {
        let text = read(&file);
        for (position, _) in text.match_indices("crate::") {
            let rest = &text[position + "crate::".len()..];
            let other: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !other.is_empty() && other != name {
                found.insert(other);
            }
        }
    }
    found
}

/// The code map lists exactly the declared modules, and each imports only modules listed
/// above it: the module graph has no cycle.
#[test]
fn code_map_lists_every_module_in_dependency_order() {
    let map = code_map();
    let listed: BTreeSet<String> = map.iter().cloned().collect();
    assert_eq!(listed.len(), map.len(), "a module is listed twice: {map:?}");
    assert_eq!(
        listed,
        declared_modules(),
        "the code map and the declared modules differ"
    );
    for (position, name) in map.iter().enumerate() {
        for other in imports(name) {
            let above = map[..position].contains(&other);
            assert!(
                above,
                "`{name}` imports `{other}`, which the code map does not list above it"
            );
        }
    }
}

/// The README's layout names every file and folder of `src/` and nothing else there.
#[test]
fn readme_layout_matches_the_source_tree() {
    let readme = read(&root().join("README.md"));
    let layout = readme
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("the README has a Layout section with a tree");
    let listed: BTreeSet<String> = layout
        .lines()
        .filter_map(|line| line.strip_prefix("  "))
        .filter_map(|entry| entry.split_whitespace().next())
        .filter(|entry| entry.ends_with(".rs") || entry.ends_with('/'))
        .map(str::to_string)
        .collect();
    let actual: BTreeSet<String> = std::fs::read_dir(root().join("src"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                Some(format!("{name}/"))
            } else if name.ends_with(".rs") && name != "lib.rs" {
                Some(name)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(listed, actual, "README layout against src/");
}

/// A doc comment that names a repository file (a document such as the README, or a path
/// in the docs, src, tests, models or deploy folders) names one that exists.
#[test]
fn doc_comments_name_existing_files() {
    let mut missing = Vec::new();
    let mut files = rust_files(&root().join("src"));
    files.extend(rust_files(&root().join("tests")));
    for file in files {
        for line in read(&file).lines() {
            let comment = line.trim_start();
            if !(comment.starts_with("//!") || comment.starts_with("///")) {
                continue;
            }
            for word in comment.split(|c: char| c.is_whitespace() || c == '`') {
                let word = word.trim_matches(|c: char| "'\"(),.;:".contains(c));
                let document = word.ends_with(".md")
                    && (word.contains('/') || word.starts_with(|c: char| c.is_ascii_uppercase()));
                let names_file = document
                    || ["docs/", "src/", "tests/", "models/", "deploy/"]
                        .iter()
                        .any(|prefix| word.starts_with(prefix));
                let plain = !word.contains(['<', '{', '*', '$', '[']);
                if names_file && plain && !root().join(word).exists() {
                    missing.push(format!("{}: {word}", file.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "doc comments name missing files: {missing:#?}"
    );
}
