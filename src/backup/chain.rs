//! Restoring a backup and the backups it builds on (its chain), into an empty
//! directory or, with `delta`, over a copy of the same cluster.
//!
//! Each file of the backup is traced down the chain to the backup that holds
//! it whole; the blocks later backups changed are written over it in chain
//! order. Backups are read from the full one to the last, each one's parts in
//! parallel, and only the parts holding something still needed. Every entry
//! is checked against its recorded sha256 as it is written, and every file
//! assembled from blocks against the sha256 of the whole file at backup.
//!
//! With `delta`, files already there with the backup's size and sha256 stay;
//! files the backup does not have are removed.

use super::restore::{self, Apply, Restored, Target};
use super::walk::EMPTY_DIRS;
use super::{FileRecord, Manifest, Stored};
use crate::codec::Codec;
use crate::progress::Progress;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A backup's chain: its full backup first, the backup itself last, each
/// with its file list by path.
pub struct Chain {
    pub backups: Vec<Manifest>,
    pub files: Vec<Arc<HashMap<String, FileRecord>>>,
}

/// Reads the manifests and file lists of `m`'s chain (each at the versions it wrote).
pub async fn load(store: Arc<dyn Store>, codec: &Codec, m: &Manifest) -> Result<Chain> {
    let mut backups = Vec::new();
    for id in &m.chain {
        let b = super::read_manifest(store.as_ref(), id)
            .await
            .with_context(|| format!("backup {} builds on backup {id}", m.id))?;
        backups.push(b);
    }
    backups.push(m.clone());
    let mut files = Vec::new();
    for b in &backups {
        let list = super::read_files(b.pinned(store.clone()).as_ref(), codec, &b.id)
            .await
            .with_context(|| in_chain(b, m))?;
        files.push(Arc::new(
            list.into_iter().map(|f| (f.path.clone(), f)).collect(),
        ));
    }
    Ok(Chain { backups, files })
}

fn in_chain(b: &Manifest, of: &Manifest) -> String {
    if b.id == of.id {
        format!("backup {}", b.id)
    } else {
        format!("backup {}, which backup {} builds on", b.id, of.id)
    }
}

/// For each backup of the chain, the files to write from it.
fn plan(chain: &Chain, skip: &HashSet<String>) -> Result<(Vec<HashSet<String>>, Vec<String>)> {
    let last = chain.backups.len() - 1;
    let mut wanted: Vec<HashSet<String>> = vec![HashSet::new(); chain.backups.len()];
    let mut assembled = Vec::new();
    for (path, rec) in chain.files[last].iter() {
        if skip.contains(path) {
            continue;
        }
        let mut i = last;
        let mut r = rec;
        loop {
            match r.stored {
                Stored::Whole => {
                    wanted[i].insert(path.clone());
                    break;
                }
                Stored::Blocks { .. } => {
                    wanted[i].insert(path.clone());
                    // Assembled somewhere down the chain: checked whole at the end.
                    if assembled.last() != Some(path) {
                        assembled.push(path.clone());
                    }
                }
                Stored::Parent => {}
            }
            let below = i
                .checked_sub(1)
                .and_then(|j| Some((j, chain.files[j].get(path)?)));
            let Some((j, parent_rec)) = below else {
                bail!(
                    "backup {} takes {path} from its parent, and {} does not hold it",
                    chain.backups[i].id,
                    i.checked_sub(1)
                        .map(|j| format!("backup {}", chain.backups[j].id))
                        .unwrap_or_else(|| "it has no parent: it".into())
                );
            };
            i = j;
            r = parent_rec;
        }
    }
    Ok((wanted, assembled))
}

pub struct Options {
    pub concurrency: usize,
    /// Over a copy of the same cluster: keep what matches, remove what the backup lacks.
    pub delta: bool,
    pub throttle: Option<Arc<crate::throttle::Throttle>>,
}

pub async fn restore(
    store: Arc<dyn Store>,
    codec: &Codec,
    m: &Manifest,
    target: Arc<Target>,
    opts: Options,
) -> Result<Restored> {
    let chain = load(store.clone(), codec, m).await?;
    let last = chain.backups.len() - 1;
    let final_files = chain.files[last].clone();
    let mut kept = HashSet::new();
    if opts.delta {
        kept = matching(&final_files, &target, opts.concurrency).await?;
        remove_strays(&target.dir, &final_files)?;
        for (oid, dir) in &target.tablespaces {
            remove_tablespace_strays(oid, dir, &final_files)?;
        }
        tracing::info!(
            "delta restore: {} of {} files already match the backup and stay",
            kept.len(),
            final_files.len()
        );
    }
    let (mut wanted, assembled) = plan(&chain, &kept)?;
    let total: u64 = wanted
        .iter()
        .zip(&chain.files)
        .flat_map(|(w, files)| w.iter().filter_map(|p| files.get(p)?.entry().map(|e| e.0)))
        .sum();
    let progress = Arc::new(Progress::new(&format!("restore {}", m.id), total));
    let mut bytes = 0;
    let mut links = Vec::new();
    for (i, b) in chain.backups.iter().enumerate() {
        let layout = i == last;
        let files = &chain.files[i];
        let parts: BTreeSet<u32> = wanted[i]
            .iter()
            .filter_map(|p| files.get(p).map(|r| r.part))
            .collect();
        let wanted_here = Arc::new(std::mem::take(&mut wanted[i]));
        let pinned = b.pinned(store.clone());
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (n, part) in b.parts.iter().enumerate() {
            // The last backup's every part holds directories and links; a
            // delta restore has them already and reads only what it writes.
            let every_part = layout && !opts.delta;
            if !every_part && !parts.contains(&(n as u32)) {
                continue;
            }
            let apply = Apply {
                target: target.clone(),
                wanted: Some(wanted_here.clone()),
                layout,
                throttle: opts.throttle.clone(),
            };
            let (store, codec, index, progress, sem, key) = (
                pinned.clone(),
                codec.clone(),
                files.clone(),
                progress.clone(),
                sem.clone(),
                part.key.clone(),
            );
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                restore::read_part(store, codec, key, index, Some(apply), progress).await
            });
        }
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(r) = tasks.join_next().await {
            let read = r
                .context("restore task failed")?
                .with_context(|| in_chain(b, m))?;
            seen.extend(read.files);
            bytes += read.bytes;
            links.extend(read.links);
        }
        if let Some(missing) = wanted_here.iter().find(|p| !seen.contains(*p)) {
            bail!("file {missing} of {} was not in any part", in_chain(b, m));
        }
    }
    progress.finish();
    for d in EMPTY_DIRS
        .iter()
        .chain(["pg_wal/archive_status", "pg_tblspc"].iter())
    {
        let p = target.dir.join(d);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    }
    restore::make_links(&target, links)?;
    // Files assembled from blocks: the whole file against the backup's sha256.
    let check: Vec<(PathBuf, FileRecord)> = assembled
        .iter()
        .map(|p| Ok((target.dest(p)?, final_files[p].clone())))
        .collect::<Result<_>>()?;
    let differ = hash_compare(check, opts.concurrency).await?;
    if let Some(p) = differ.first() {
        bail!(
            "{p}: assembled from the chain of backup {} ({}), it does not match the checksum recorded for the whole file",
            m.id,
            chain.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(" + ")
        );
    }
    Ok(Restored {
        files: final_files.len() as u64,
        bytes,
    })
}

/// The files of `files` already at the target with their recorded size and sha256.
async fn matching(
    files: &HashMap<String, FileRecord>,
    target: &Target,
    threads: usize,
) -> Result<HashSet<String>> {
    let mut candidates = Vec::new();
    for (path, rec) in files {
        let dest = target.dest(path)?;
        match std::fs::symlink_metadata(&dest) {
            Ok(meta) if meta.is_file() && meta.len() == rec.size => {
                candidates.push((dest, rec.clone()))
            }
            _ => {}
        }
    }
    let all: HashSet<String> = candidates.iter().map(|(_, r)| r.path.clone()).collect();
    let differ: HashSet<String> = hash_compare(candidates, threads)
        .await?
        .into_iter()
        .collect();
    Ok(all.difference(&differ).cloned().collect())
}

/// The paths (of `files`) whose file does not have the recorded sha256,
/// hashed on `threads` threads.
async fn hash_compare(files: Vec<(PathBuf, FileRecord)>, threads: usize) -> Result<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        let next = AtomicUsize::new(0);
        let differ = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((dest, rec)) = files.get(i) else {
                        break;
                    };
                    if !rec.matches_file(dest) {
                        differ.lock().expect("differ").push(rec.path.clone());
                    }
                });
            }
        });
        differ.into_inner().expect("differ")
    })
    .await
    .context("hashing task failed")
}

/// Removes below `dir` every file the backup does not have, the
/// contents of the directories a backup leaves empty (pg_wal…), and the
/// directories of databases the backup does not have.
fn remove_strays(dir: &Path, files: &HashMap<String, FileRecord>) -> Result<()> {
    let databases: HashSet<&str> = files
        .keys()
        .filter_map(|p| p.strip_prefix("base/")?.split('/').next())
        .collect();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for e in
            std::fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type()?;
            if rel.is_empty() && name == "pg_wal" && ft.is_symlink() {
                // pg_wal elsewhere: its contents go, the link stays.
                stack.push((e.path(), r));
                continue;
            }
            if ft.is_dir() {
                if rel == "base" && !databases.contains(name.as_str()) {
                    std::fs::remove_dir_all(e.path())?;
                    continue;
                }
                stack.push((e.path(), r));
            } else {
                // Links stay (a log directory elsewhere, pg_stat_tmp on a tmpfs);
                // one where the backup has a link pointing elsewhere is refused by name.
                if files.contains_key(&r) || ft.is_symlink() {
                    continue;
                }
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

/// In tablespace `oid`'s directory `dir`, below each version directory the
/// backup has there (`PG_<major>_<catalog>`): the files the backup lacks, and
/// the directories of databases it lacks. Other majors' directories stay.
fn remove_tablespace_strays(
    oid: &str,
    dir: &Path,
    files: &HashMap<String, FileRecord>,
) -> Result<()> {
    let prefix = format!("pg_tblspc/{oid}/");
    let mut versions: HashSet<&str> = HashSet::new();
    let mut databases: HashSet<(&str, &str)> = HashSet::new();
    for rest in files.keys().filter_map(|p| p.strip_prefix(&prefix)) {
        let mut parts = rest.split('/');
        if let (Some(v), Some(db), Some(_)) = (parts.next(), parts.next(), parts.next()) {
            versions.insert(v);
            databases.insert((v, db));
        }
    }
    for v in versions {
        let mut stack = vec![(dir.join(v), format!("{prefix}{v}"), 0)];
        while let Some((path, rel, depth)) = stack.pop() {
            let entries = match std::fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", path.display())),
            };
            for e in entries {
                let e = e?;
                let name = e.file_name().to_string_lossy().to_string();
                let r = format!("{rel}/{name}");
                let ft = e.file_type()?;
                if ft.is_dir() {
                    if depth == 0 && !databases.contains(&(v, name.as_str())) {
                        std::fs::remove_dir_all(e.path())?;
                        continue;
                    }
                    stack.push((e.path(), r, depth + 1));
                } else if !files.contains_key(&r) && !ft.is_symlink() {
                    std::fs::remove_file(e.path())
                        .with_context(|| format!("cannot remove {}", e.path().display()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, stored: Stored) -> FileRecord {
        FileRecord {
            path: path.into(),
            size: 8192,
            sha256: "x".into(),
            part: 0,
            stored,
            block_sha: None,
        }
    }

    fn blocks() -> Stored {
        Stored::Blocks {
            bytes: 1,
            sha256: "y".into(),
            blocks: 1,
        }
    }

    fn chain(layers: Vec<Vec<FileRecord>>) -> Chain {
        let n = layers.len();
        Chain {
            backups: (0..n)
                .map(|i| {
                    serde_json::from_value(serde_json::json!({
                        "format": 1, "id": format!("b{i}"), "label": "", "system_identifier": "1",
                        "pg_version_num": 150000, "timeline": 1, "start_lsn": "0/0", "stop_lsn": "0/0",
                        "start_time": "2026-12-01T00:00:00Z", "stop_time": "2026-12-01T00:00:00Z",
                        "wal_segment_size": 16777216, "raw_bytes": 0, "stored_bytes": 0, "files": 0,
                        "duration_seconds": 0.0, "parts": [], "tablespaces": [], "encrypted": false,
                        "created_by": "test"
                    }))
                    .unwrap()
                })
                .collect(),
            files: layers
                .into_iter()
                .map(|l| Arc::new(l.into_iter().map(|r| (r.path.clone(), r)).collect()))
                .collect(),
        }
    }

    #[test]
    fn each_file_is_traced_to_its_whole_copy_and_checked_when_assembled() {
        let c = chain(vec![
            vec![
                rec("a", Stored::Whole),
                rec("b", Stored::Whole),
                rec("c", Stored::Whole),
            ],
            vec![
                rec("a", blocks()),
                rec("b", Stored::Parent),
                rec("c", Stored::Whole),
            ],
            vec![
                rec("a", Stored::Parent),
                rec("b", blocks()),
                rec("c", Stored::Parent),
            ],
        ]);
        let (wanted, mut assembled) = plan(&c, &HashSet::new()).unwrap();
        let names = |i: usize| {
            let mut v: Vec<&str> = wanted[i].iter().map(String::as_str).collect();
            v.sort();
            v
        };
        assert_eq!(names(0), vec!["a", "b"]);
        assert_eq!(names(1), vec!["a", "c"]);
        assert_eq!(names(2), vec!["b"]);
        // "a" is the middle backup's assembly, unchanged since: checked too.
        assembled.sort();
        assert_eq!(assembled, vec!["a", "b"]);
        // What a delta restore keeps is read from nowhere.
        let keep: HashSet<String> = ["a".to_string()].into();
        let (wanted, _) = plan(&c, &keep).unwrap();
        assert!(wanted.iter().all(|w| !w.contains("a")));
        // A file the parent does not hold is named.
        let broken = chain(vec![vec![], vec![rec("a", Stored::Parent)]]);
        let e = plan(&broken, &HashSet::new()).err().unwrap().to_string();
        assert!(
            e.contains("backup b1 takes a from its parent, and backup b0 does not hold it"),
            "{e}"
        );
    }
}
