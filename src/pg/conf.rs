//! PostgreSQL's configuration files as the server reads them: `name = value`
//! (or `name value`) lines, `#` comments, single-quoted values with `''` for a
//! quote, case-insensitive names, and `include`, `include_if_exists` and
//! `include_dir` (its `*.conf` files not starting with a dot, in name order),
//! each relative to the directory of the file that names it.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One setting line of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Lowercased name.
    pub key: String,
    /// The value, unquoted.
    pub value: String,
    /// Its line, counted from 0.
    pub line: usize,
}

/// The settings of one file's text, in order (include directives too, by
/// their names).
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter_map(|(n, l)| {
            parse_line(l).map(|(key, value)| Entry {
                key,
                value,
                line: n,
            })
        })
        .collect()
}

/// The name and unquoted value of one line; None for comments, blank and
/// malformed lines (the server would refuse those: not ours to judge).
fn parse_line(line: &str) -> Option<(String, String)> {
    let l = line.trim_start();
    let end = l
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .unwrap_or(l.len());
    if end == 0 {
        return None;
    }
    let key = l[..end].to_ascii_lowercase();
    let mut rest = l[end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let value = if let Some(q) = rest.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = q.chars().peekable();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    out.push('\'');
                }
                '\'' => break,
                '\\' => {
                    // The server's escapes in quoted values: \' and \\ are common.
                    if let Some(c) = chars.next() {
                        out.push(match c {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                    }
                }
                c => out.push(c),
            }
        }
        out
    } else {
        rest.split(|c: char| c == '#' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string()
    };
    Some((key, value))
}

/// A value in single quotes as the server reads it.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// One file read through the includes.
#[derive(Clone, Debug)]
pub struct File {
    pub path: PathBuf,
    pub text: String,
}

/// An include directive met while reading.
#[derive(Clone, Debug)]
pub struct Include {
    /// The file that names it, and its line.
    pub from: PathBuf,
    pub line: usize,
    /// include, include_if_exists or include_dir.
    pub kind: String,
    /// As written.
    pub value: String,
    /// Resolved against the naming file's directory.
    pub path: PathBuf,
}

/// A configuration read from its main file through every include.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub files: Vec<File>,
    pub includes: Vec<Include>,
    /// Setting → (value, the file that set it last).
    pub settings: BTreeMap<String, (String, PathBuf)>,
}

impl Loaded {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(|(v, _)| v.as_str())
    }
}

/// Where an include names, found with `open` (the real file system, or a
/// backup's stored copies): a file's text, or a directory's file names.
pub trait Source {
    fn read(&self, path: &Path) -> Option<String>;
    fn list(&self, dir: &Path) -> Option<Vec<PathBuf>>;
}

/// The local file system.
pub struct Disk;

impl Source for Disk {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
    fn list(&self, dir: &Path) -> Option<Vec<PathBuf>> {
        let rd = std::fs::read_dir(dir).ok()?;
        Some(rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
    }
}

/// Reads `main` and, in the server's order, every file it includes; a missing
/// file named by `include`/`include_dir` is recorded as an include with no
/// file (the caller decides), a nesting deeper than the server's 10 is refused.
pub fn load(src: &dyn Source, main: &Path) -> Result<Loaded> {
    let mut out = Loaded::default();
    read_into(src, main, 0, &mut out)?;
    Ok(out)
}

fn read_into(src: &dyn Source, file: &Path, depth: usize, out: &mut Loaded) -> Result<()> {
    if depth > 10 {
        bail!(
            "{}: includes nested more than 10 deep (the server refuses them too)",
            file.display()
        );
    }
    let Some(text) = src.read(file) else {
        return Ok(());
    };
    let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    out.files.push(File {
        path: file.to_path_buf(),
        text: text.clone(),
    });
    for e in parse(&text) {
        match e.key.as_str() {
            "include" | "include_if_exists" | "include_dir" => {
                let path = dir.join(&e.value);
                out.includes.push(Include {
                    from: file.to_path_buf(),
                    line: e.line,
                    kind: e.key.clone(),
                    value: e.value.clone(),
                    path: path.clone(),
                });
                if e.key == "include_dir" {
                    for f in dir_files(src, &path) {
                        read_into(src, &f, depth + 1, out)?;
                    }
                } else {
                    read_into(src, &path, depth + 1, out)
                        .with_context(|| format!("included from {}", file.display()))?;
                }
            }
            _ => {
                out.settings.insert(e.key, (e.value, file.to_path_buf()));
            }
        }
    }
    Ok(())
}

/// An include_dir's files as the server takes them: `*.conf`, no dot first, sorted.
pub fn dir_files(src: &dyn Source, dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = src
        .list(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.ends_with(".conf") && !name.starts_with('.')
        })
        .collect();
    files.sort();
    files
}

/// The effective configuration of a data directory: its postgresql.conf
/// through the includes, then postgresql.auto.conf (read last, it wins).
pub fn of_data_dir(pgdata: &Path) -> Result<Loaded> {
    let mut loaded = load(&Disk, &pgdata.join("postgresql.conf"))?;
    let auto = pgdata.join("postgresql.auto.conf");
    let mut more = load(&Disk, &auto)?;
    loaded.files.append(&mut more.files);
    loaded.includes.append(&mut more.includes);
    loaded.settings.append(&mut more.settings);
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_like_the_server() {
        let e = parse(
            "#port = 1\nport = 5433 # main\nunix_socket_directories = '/run/pg, /tmp'\n\
             Log_Directory '/var/log/it''s'\n  shared_buffers=128MB\nbad line = \n",
        );
        let kv: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("port", "5433"),
                ("unix_socket_directories", "/run/pg, /tmp"),
                ("log_directory", "/var/log/it's"),
                ("shared_buffers", "128MB"),
                ("bad", "line"),
            ]
        );
        assert_eq!(e[0].line, 1);
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(parse(&format!("x = {}", quote("a'b")))[0].value, "a'b");
    }

    #[test]
    fn follows_includes_in_the_servers_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir(p.join("conf.d")).unwrap();
        std::fs::write(
            p.join("postgresql.conf"),
            "port = 1\ninclude_dir 'conf.d'\ninclude_if_exists = 'missing.conf'\ninclude 'last.conf'\n",
        )
        .unwrap();
        std::fs::write(p.join("conf.d/b.conf"), "port = 3\n").unwrap();
        std::fs::write(p.join("conf.d/a.conf"), "port = 2\nwork_mem = 1MB\n").unwrap();
        std::fs::write(p.join("conf.d/.hidden.conf"), "port = 9\n").unwrap();
        std::fs::write(p.join("conf.d/notes.txt"), "port = 9\n").unwrap();
        std::fs::write(p.join("last.conf"), "log_directory = '/x'\n").unwrap();
        std::fs::write(p.join("postgresql.auto.conf"), "work_mem = '2MB'\n").unwrap();
        let l = of_data_dir(p).unwrap();
        assert_eq!(l.get("port"), Some("3"));
        assert_eq!(l.get("work_mem"), Some("2MB"));
        assert_eq!(l.get("log_directory"), Some("/x"));
        assert_eq!(l.includes.len(), 3);
        assert_eq!(l.includes[1].kind, "include_if_exists");
        let names: Vec<String> = l
            .files
            .iter()
            .map(|f| f.path.strip_prefix(p).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "postgresql.conf",
                "conf.d/a.conf",
                "conf.d/b.conf",
                "last.conf",
                "postgresql.auto.conf"
            ]
        );
    }

    #[test]
    fn refuses_endless_includes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("postgresql.conf"),
            "include 'postgresql.conf'\n",
        )
        .unwrap();
        let e = format!("{:#}", of_data_dir(d.path()).unwrap_err());
        assert!(e.contains("nested more than 10 deep"), "{e}");
    }
}
