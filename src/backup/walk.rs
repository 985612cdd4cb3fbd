//! What of PGDATA goes into a base backup, with the exclusions pg_basebackup makes.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Directories whose contents are not backed up (the directory itself is, empty).
pub const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Top-level files never backed up: run-time state, and leftovers that would
/// confuse a restored server (its own recovery settings are written by recover).
const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "recovery.signal",
    "standby.signal",
    "current_logfiles",
    "backup_manifest",
    // The server log of a cluster walvault recovered and started: it would
    // read as the next recovery's own words.
    crate::pg::postmaster::LOG_FILE,
    // This host's copy of the last backup's file list (backup::parent).
    super::parent::CACHE_FILE,
    "walvault_backup_files.json.tmp",
    super::parent::CACHE_STORED_FILE,
    "walvault_backup_files.json.stored.tmp",
    // The journal of a backup-push in progress (backup::resume).
    super::resume::JOURNAL_FILE,
    "walvault_backup_journal.jsonl.tmp",
];

/// `global/pg_control` is read last, after every other file (as pg_basebackup does).
pub const PG_CONTROL: &str = "global/pg_control";

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// Path in the backup: relative to PGDATA; tablespaces under pg_tblspc/<oid>/.
    pub path: String,
    pub source: PathBuf,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
}

/// (oid, target directory) of each tablespace link in pg_tblspc.
pub type Tablespaces = Vec<(String, PathBuf)>;

#[cfg(test)]
pub struct Walked {
    pub entries: Vec<Entry>,
    pub tablespaces: Tablespaces,
}

fn skip_name(name: &str) -> bool {
    name == "pg_internal.init" || name.starts_with("pgsql_tmp")
}

/// The relfilenode and fork of a relation file: `16384` → ("16384", ""),
/// `16384_fsm.2` → ("16384", "fsm"). None for any other name.
fn relation_file(name: &str) -> Option<(&str, &str)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (base, segment) = name.split_once('.').unwrap_or((name, "0"));
    let (node, fork) = base.split_once('_').unwrap_or((base, ""));
    (digits(node) && digits(segment) && matches!(fork, "" | "fsm" | "vm" | "init"))
        .then_some((node, fork))
}

/// A relation's segment file, in a database's directory or in `global/`: its
/// fork ("" for the main fork, "fsm", "vm", "init") and segment number. Its
/// pages carry an LSN and, with data checksums, a checksum.
pub fn relation_segment(path: &str) -> Option<(&str, u32)> {
    let (dir, name) = path.rsplit_once('/')?;
    if dir != "global" && !database_dir(dir) {
        return None;
    }
    let (_, fork) = relation_file(name)?;
    let segment = name
        .split_once('.')
        .map_or(Some(0), |(_, s)| s.parse().ok())?;
    Some((fork, segment))
}

/// A main-fork relation segment file's relation and segment: (tablespace
/// oid, database oid, relfilenode, segment), as WAL summaries name relations
/// (1663 for `base/`, 1664 with database 0 for `global/`).
pub fn relation_key(path: &str) -> Option<(u32, u32, u32, u32)> {
    let (fork, seg) = relation_segment(path)?;
    if !fork.is_empty() {
        return None;
    }
    let (dir, name) = path.rsplit_once('/')?;
    let node: u32 = name.split('.').next()?.parse().ok()?;
    let parts: Vec<&str> = dir.split('/').collect();
    let (ts, db) = match parts.as_slice() {
        ["global"] => (1664, 0),
        ["base", db] => (1663, db.parse().ok()?),
        ["pg_tblspc", ts, _, db] => (ts.parse().ok()?, db.parse().ok()?),
        _ => return None,
    };
    Some((ts, db, node, seg))
}

/// A temporary relation's file, `t<backend>_<relfilenode>[_fork][.segment]`:
/// its session's, gone at any restart.
fn temporary_relation(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(backend, file)| {
            !backend.is_empty()
                && backend.bytes().all(|b| b.is_ascii_digit())
                && relation_file(file).is_some()
        })
}

/// A database's directory: `base/<oid>`, or `pg_tblspc/<oid>/<version dir>/<oid>`.
fn database_dir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let oid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["base", db] => oid(db),
        ["pg_tblspc", ts, _, db] => oid(ts) && oid(db),
        _ => false,
    }
}

/// Every entry of PGDATA at once (the unit tests'; backups use [`Walker`]).
#[cfg(test)]
pub fn walk(pgdata: &Path) -> Result<Walked> {
    let mut w = Walker::new(pgdata);
    let entries = w.by_ref().collect::<Result<Vec<_>>>()?;
    Ok(Walked {
        entries,
        tablespaces: w.tablespaces,
    })
}

/// The entries of PGDATA one at a time, in walk order (a directory, then
/// what it holds, each directory's names in byte order): only the names of
/// the directories being walked are held, in one buffer each.
pub struct Walker {
    stack: Vec<Frame>,
    /// The tablespace links in pg_tblspc met so far.
    pub tablespaces: Tablespaces,
    /// Yielded before walking on (pg_wal/archive_status after pg_wal).
    pending: Option<Entry>,
    /// The data directory could not be listed: the first item is the error.
    failed: Option<anyhow::Error>,
}

/// A directory being walked.
struct Frame {
    dir: PathBuf,
    rel: String,
    names: Names,
    next: usize,
    in_database: bool,
    /// Relations with an init fork (unlogged), in a database's directory.
    unlogged: std::collections::HashSet<String>,
}

/// A directory's names in one buffer, sorted (a database directory can hold
/// a million files: a String each would be ~50 MB, this is ~15).
#[derive(Default)]
pub struct Names {
    bytes: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl Names {
    fn read(dir: &Path) -> std::io::Result<Names> {
        use std::os::unix::ffi::OsStrExt;
        let mut n = Names::default();
        for e in std::fs::read_dir(dir)? {
            let Ok(e) = e else { continue };
            let name = e.file_name();
            let b = name.as_bytes();
            n.spans.push((n.bytes.len() as u32, b.len() as u32));
            n.bytes.extend_from_slice(b);
        }
        n.bytes.shrink_to_fit();
        n.spans.shrink_to_fit();
        let bytes = &n.bytes;
        n.spans
            .sort_unstable_by(|a, b| Self::at(bytes, *a).cmp(Self::at(bytes, *b)));
        Ok(n)
    }
    fn at(bytes: &[u8], (start, len): (u32, u32)) -> &[u8] {
        &bytes[start as usize..(start + len) as usize]
    }
    fn get(&self, i: usize) -> Option<String> {
        let span = *self.spans.get(i)?;
        Some(String::from_utf8_lossy(Self::at(&self.bytes, span)).into_owned())
    }
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.spans.len()).filter_map(|i| self.get(i))
    }
}

/// The names in `dir`, in byte order (the walk's), in one buffer.
pub fn sorted_names(dir: &Path) -> std::io::Result<Names> {
    Names::read(dir)
}

impl Walker {
    pub fn new(pgdata: &Path) -> Walker {
        let mut w = Walker {
            stack: Vec::new(),
            tablespaces: Vec::new(),
            pending: None,
            failed: None,
        };
        // The data directory itself must be there (a subdirectory dropped meanwhile need not).
        match Names::read(pgdata) {
            Ok(names) => w.push(pgdata.to_path_buf(), String::new(), names),
            Err(e) => {
                w.failed =
                    Some(anyhow::Error::new(e).context(format!("cannot list {}", pgdata.display())))
            }
        }
        w
    }

    fn push(&mut self, dir: PathBuf, rel: String, names: Names) {
        // As pg_basebackup: in a database's directory, an unlogged relation (one
        // with an init fork) keeps only its init fork, from which recovery makes
        // it anew and empty; temporary relations' files are left out.
        let in_database = database_dir(&rel);
        let unlogged = if in_database {
            (0..names.spans.len())
                .filter_map(|i| names.get(i))
                .filter_map(|name| {
                    relation_file(&name)
                        .filter(|(_, fork)| *fork == "init")
                        .map(|(node, _)| node.to_string())
                })
                .collect()
        } else {
            Default::default()
        };
        self.stack.push(Frame {
            dir,
            rel,
            names,
            next: 0,
            in_database,
            unlogged,
        });
    }

    /// Walks into `dir` (shown as `rel`) next; one dropped meanwhile is skipped.
    fn enter(&mut self, dir: PathBuf, rel: String) -> Result<()> {
        match Names::read(&dir) {
            Ok(names) => {
                self.push(dir, rel, names);
                Ok(())
            }
            // A directory dropped while we walk (DROP DATABASE): WAL replay recreates the truth.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
        }
    }

    /// The next entry, walking into directories; None when the tree is done.
    fn step(&mut self) -> Result<Option<Entry>> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(name) = top.names.get(top.next) else {
                self.stack.pop();
                continue;
            };
            top.next += 1;
            let rel = top.rel.clone();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if skip_name(&name) || (rel.is_empty() && SKIP_TOP_FILES.contains(&name.as_str())) {
                continue;
            }
            if top.in_database
                && (temporary_relation(&name)
                    || relation_file(&name)
                        .is_some_and(|(node, fork)| fork != "init" && top.unlogged.contains(node)))
            {
                continue;
            }
            let source = top.dir.join(&name);
            let meta = match std::fs::symlink_metadata(&source) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot stat {}", source.display()))
                }
            };
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            let entry = |kind, size, mode, source| Entry {
                path: path.clone(),
                source,
                kind,
                size,
                mode,
            };
            if ft.is_symlink() {
                let target = std::fs::read_link(&source)?;
                if rel == "pg_tblspc" {
                    // A tablespace: back up what the link points to, under pg_tblspc/<oid>/.
                    self.tablespaces.push((name.clone(), target.clone()));
                    let e = entry(Kind::Dir, 0, 0o700, target.clone());
                    self.enter(target, path.clone())?;
                    return Ok(Some(e));
                } else if rel.is_empty() && EMPTY_DIRS.contains(&name.as_str()) {
                    // pg_wal linked elsewhere: restored as an empty directory.
                    return Ok(Some(entry(Kind::Dir, 0, 0o700, source)));
                }
                return Ok(Some(entry(Kind::Symlink(target), 0, mode, source)));
            } else if ft.is_dir() {
                let e = entry(Kind::Dir, 0, mode, source.clone());
                if rel.is_empty() && EMPTY_DIRS.contains(&name.as_str()) {
                    if name == "pg_wal" {
                        self.pending = Some(Entry {
                            path: "pg_wal/archive_status".into(),
                            source: source.join("archive_status"),
                            kind: Kind::Dir,
                            size: 0,
                            mode,
                        });
                    }
                    return Ok(Some(e));
                }
                self.enter(source, path.clone())?;
                return Ok(Some(e));
            } else if ft.is_file() {
                return Ok(Some(entry(Kind::File, meta.len(), mode, source)));
            }
        }
    }
}

impl Iterator for Walker {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        if let Some(e) = self.pending.take() {
            return Some(Ok(e));
        }
        match self.step() {
            Ok(e) => e.map(Ok),
            Err(e) => {
                // An error ends the walk.
                self.stack.clear();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_segments_are_named() {
        assert_eq!(relation_segment("base/5/16384"), Some(("", 0)));
        assert_eq!(relation_segment("base/5/16384.3"), Some(("", 3)));
        assert_eq!(relation_segment("base/5/16384_vm"), Some(("vm", 0)));
        assert_eq!(relation_segment("global/1262"), Some(("", 0)));
        assert_eq!(
            relation_segment("pg_tblspc/16389/PG_15_1/5/16500.1"),
            Some(("", 1))
        );
        for not in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "global/pg_control",
            "pg_xact/0000",
            "pg_multixact/offsets/0000",
            "base/5/t3_16390",
        ] {
            assert_eq!(relation_segment(not), None, "{not}");
        }
        assert_eq!(relation_key("base/5/16384.3"), Some((1663, 5, 16384, 3)));
        assert_eq!(relation_key("global/1262"), Some((1664, 0, 1262, 0)));
        assert_eq!(
            relation_key("pg_tblspc/16389/PG_15_1/5/16500.1"),
            Some((16389, 5, 16500, 1))
        );
        assert_eq!(relation_key("base/5/16384_fsm"), None);
    }

    #[test]
    fn exclusions_follow_pg_basebackup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc",
            "base/1/pgsql_tmp",
        ] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in [
            "base/1/1259",
            "global/pg_control",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "postmaster.pid",
            "base/1/pg_internal.init",
            "base/1/pgsql_tmp/t1",
            "PG_VERSION",
            "standby.signal",
        ] {
            std::fs::write(p.join(f), "x").unwrap();
        }
        let ts = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ts.path().join("PG_15_1/5")).unwrap();
        std::fs::write(ts.path().join("PG_15_1/5/16390"), "data").unwrap();
        std::os::unix::fs::symlink(ts.path(), p.join("pg_tblspc/16389")).unwrap();

        let w = walk(p).unwrap();
        let paths: Vec<&str> = w.entries.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "base/1/1259",
            "global/pg_control",
            "PG_VERSION",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc/16389/PG_15_1/5/16390",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        for not in [
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "postmaster.pid",
            "base/1/pg_internal.init",
            "base/1/pgsql_tmp",
            "standby.signal",
        ] {
            assert!(!paths.contains(&not), "{not} should be excluded");
        }
        assert_eq!(
            w.tablespaces,
            vec![("16389".to_string(), ts.path().to_path_buf())]
        );
    }

    #[test]
    fn unlogged_and_temporary_relations_as_pg_basebackup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("base/5")).unwrap();
        std::fs::create_dir_all(p.join("global")).unwrap();
        let ts = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ts.path().join("PG_15_1/5")).unwrap();
        std::fs::create_dir_all(p.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(ts.path(), p.join("pg_tblspc/16389")).unwrap();
        for f in [
            // unlogged: only the init fork stays
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16384_init",
            // logged
            "base/5/16385",
            "base/5/16385.1",
            "base/5/16385_fsm",
            // temporary
            "base/5/t3_16390",
            "base/5/t3_16390_fsm",
            "base/5/t12_16391.1",
            // not relation files: kept
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "base/5/16384_init_copy",
            // a global file named like an init fork is not in a database
            "global/16400",
            "global/16400_init",
        ] {
            std::fs::write(p.join(f), "x").unwrap();
        }
        for f in [
            "PG_15_1/5/16500",
            "PG_15_1/5/16500_init",
            "PG_15_1/5/t4_16501",
        ] {
            std::fs::write(ts.path().join(f), "x").unwrap();
        }
        let w = walk(p).unwrap();
        let files: Vec<&str> = w
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            files,
            vec![
                "base/5/16384_init",
                "base/5/16384_init_copy",
                "base/5/16385",
                "base/5/16385.1",
                "base/5/16385_fsm",
                "base/5/PG_VERSION",
                "base/5/pg_filenode.map",
                "global/16400",
                "global/16400_init",
                "pg_tblspc/16389/PG_15_1/5/16500_init",
            ]
        );
    }
}
