//! The module map's one rule, checked on the source: no cycle between the
//! top-level modules of src/ (docs/architecture.md draws them as layers;
//! a cycle is how a layer starts to sag). Unit-test modules do not count:
//! a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file below src/: src/a/b.rs and src/a/b/mod.rs are a::b.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first names of the paths in a `{a, b::c, d as e}` group.
fn group_heads(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut heads) = (0, 1, Vec::new());
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                heads.push(ident_at(s[start..i].trim_start()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(ident_at(s[start..i].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    heads.into_iter().filter(|h| !h.is_empty()).collect()
}

/// The top-level modules `text` (of module `module`) names, through
/// `crate::` or a `super::` chain that climbs to the crate's root.
fn named_roots(text: &str, module: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(['c', 's']) {
        let here = &text[at..];
        let joined = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if joined {
            continue;
        }
        let tail = if let Some(t) = here.strip_prefix("crate::") {
            t
        } else {
            let mut t = here;
            let mut ups = 0;
            while let Some(n) = t.strip_prefix("super::") {
                t = n;
                ups += 1;
            }
            if ups == 0 || ups != module.len() {
                continue;
            }
            t
        };
        if tail.starts_with('{') {
            found.extend(group_heads(tail).into_iter().map(str::to_string));
        } else {
            found.insert(ident_at(tail).to_string());
        }
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut roots: BTreeSet<String> = BTreeSet::new();
    let mut texts = Vec::new();
    for f in &files {
        let module = module_of(f.strip_prefix(&src).unwrap());
        let Some(top) = module.first().cloned() else {
            continue; // main.rs and lib.rs: the crate root itself
        };
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        roots.insert(top.clone());
        texts.push((top, module, text));
    }
    let mut g: Graph = roots.iter().map(|r| (r.clone(), BTreeSet::new())).collect();
    for (top, module, text) in texts {
        for r in named_roots(&text, &module) {
            if r != top && roots.contains(&r) {
                g.get_mut(&top).unwrap().insert(r);
            }
        }
    }
    g
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(g: &Graph, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in &g[&at] {
            if next == from {
                let mut p = path.clone();
                p.push(from.to_string());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_cycle_between_top_level_modules() {
    let g = graph();
    assert!(g.len() > 20, "src/ read: {:?}", g.keys());
    // The layers the map draws, from the source: a command uses its work,
    // the work uses the store, never the other way.
    for (a, b) in [("cmd", "backup"), ("backup", "store"), ("codec", "store")] {
        assert!(g[a].contains(b), "{a} should use {b}: {:?}", g[a]);
    }
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|m| cycle_through(&g, m))
        .map(|p| p.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "cycles between modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_way_of_naming_a_module() {
    let inner = vec!["recover".to_string(), "end".to_string()];
    let top = vec!["wal".to_string()];
    let found = named_roots(
        "use crate::{store::Store, pg::{self, ctl}, codec as c};\n\
         let x = crate::marks::read(); super::super::files::sync();\n\
         super::target::parse(); notcrate::x; my_super::y; scrate::z;",
        &inner,
    );
    let want: BTreeSet<String> = ["store", "pg", "codec", "marks", "files"]
        .map(String::from)
        .into();
    assert_eq!(found, want);
    assert_eq!(
        named_roots("super::repo::KEY", &top),
        ["repo".to_string()].into()
    );
    // A cycle is found when there is one.
    let mut g = Graph::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(cycle_through(&g, "a").unwrap().join(" "), "a b c a");
    g.get_mut("c").unwrap().clear();
    assert!(cycle_through(&g, "a").is_none());
}
