//! Restoring a base backup into a directory: parts downloaded and extracted in
//! parallel, every file checked against the size and sha256 recorded at backup.
//!
//! Files are not fsync'd one by one: a restored cluster starts in recovery from a
//! backup, and PostgreSQL syncs the whole data directory before it replays.

use super::walk::EMPTY_DIRS;
use super::{FileRecord, Manifest};
use crate::codec::Codec;
use crate::progress::Progress;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub struct Target {
    pub dir: PathBuf,
    /// Tablespace oid → directory to restore it into.
    pub tablespaces: BTreeMap<String, PathBuf>,
}

impl Target {
    fn dest(&self, path: &str) -> Result<PathBuf> {
        let p = Path::new(path);
        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("refusing unsafe path '{path}' in the backup");
        }
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(dir) = self.tablespaces.get(oid) {
                return Ok(if inner.is_empty() {
                    dir.clone()
                } else {
                    dir.join(inner)
                });
            }
        }
        Ok(self.dir.join(p))
    }
}

/// Downloads one part and walks its tar stream: every file checked against
/// `index` (size and sha256), and written below `target` unless it is `None`
/// (verification only). Returns the files seen and their bytes.
pub async fn read_part(
    store: Arc<dyn Store>,
    codec: Codec,
    key: String,
    index: Arc<HashMap<String, FileRecord>>,
    target: Option<Arc<Target>>,
    progress: Arc<Progress>,
) -> Result<(Vec<String>, u64)> {
    let (reader, writer) = io::pipe()?;
    let extract =
        tokio::task::spawn_blocking(move || extract(reader, target.as_deref(), &index, &progress));
    // The decoder hands the pipe's writer back: drop it at once so the
    // extractor sees the end of the stream.
    let download = codec
        .download(store.as_ref(), &key, writer)
        .await
        .map(|done| {
            done.map(|(trailer, writer)| {
                drop(writer);
                trailer
            })
        });
    let extracted = extract.await.context("extract task failed")?;
    // The download's verdict first: a damaged part may also break the tar stream.
    match download {
        Ok(Some(_)) => {}
        Ok(None) => bail!("part {} is missing from the repository", store.locate(&key)),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("part {}", store.locate(&key)))),
    }
    extracted.with_context(|| format!("reading {}", store.locate(&key)))
}

pub struct Restored {
    pub files: u64,
    pub bytes: u64,
}

pub async fn restore(
    store: Arc<dyn Store>,
    codec: &Codec,
    m: &Manifest,
    files: Vec<FileRecord>,
    target: Arc<Target>,
    concurrency: usize,
) -> Result<Restored> {
    let index: Arc<HashMap<String, FileRecord>> =
        Arc::new(files.into_iter().map(|f| (f.path.clone(), f)).collect());
    let progress = Arc::new(Progress::new(&format!("restore {}", m.id), m.raw_bytes));
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for part in m.parts.clone() {
        let (store, codec, target, index, progress, sem) = (
            store.clone(),
            codec.clone(),
            target.clone(),
            index.clone(),
            progress.clone(),
            sem.clone(),
        );
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            read_part(store, codec, part.key, index, Some(target), progress).await
        });
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        let (paths, b) = r.context("restore task failed")??;
        seen.extend(paths);
        bytes += b;
    }
    progress.finish();
    if let Some(missing) = index.keys().find(|p| !seen.contains(*p)) {
        bail!("file {missing} of backup {} was not in any part", m.id);
    }
    for d in EMPTY_DIRS
        .iter()
        .chain(["pg_wal/archive_status", "pg_tblspc"].iter())
    {
        let p = target.dir.join(d);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(Restored {
        files: seen.len() as u64,
        bytes,
    })
}

/// Extracts one tar stream; returns the files written and their bytes.
fn extract(
    reader: io::PipeReader,
    target: Option<&Target>,
    index: &HashMap<String, FileRecord>,
    progress: &Progress,
) -> Result<(Vec<String>, u64)> {
    let mut ar = tar::Archive::new(reader);
    let mut done = Vec::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().to_string();
        let mode = entry.header().mode().unwrap_or(0o600);
        let Some(target) = target else {
            if entry.header().entry_type() == tar::EntryType::Regular {
                let rec = index
                    .get(&path)
                    .with_context(|| format!("{path} is in the backup but not in its file list"))?;
                let n = hash_entry(&path, &mut entry, rec, &mut buf, progress, &mut io::sink())?;
                bytes += n;
                done.push(path);
            }
            continue;
        };
        let dest = target.dest(&path)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()?
                    .context("symlink without target")?
                    .to_path_buf();
                std::os::unix::fs::symlink(&link, &dest)
                    .with_context(|| format!("cannot create link {}", dest.display()))?;
            }
            tar::EntryType::Regular => {
                let rec = index
                    .get(&path)
                    .with_context(|| format!("{path} is in the backup but not in its file list"))?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut f = std::fs::File::create(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                let n_total = hash_entry(&path, &mut entry, rec, &mut buf, progress, &mut f)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                bytes += n_total;
                done.push(path);
            }
            other => bail!("unexpected entry type {other:?} for {path}"),
        }
    }
    // Drain: the decoder must see the whole part consumed (end-of-archive blocks).
    io::copy(&mut ar.into_inner(), &mut io::sink())?;
    Ok((done, bytes))
}

/// Copies one tar entry to `out`, checking its size and sha256 against `rec`.
fn hash_entry(
    path: &str,
    entry: &mut dyn Read,
    rec: &FileRecord,
    buf: &mut [u8],
    progress: &Progress,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut h = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = entry.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
        progress.add(n as u64);
    }
    if total != rec.size || hex::encode(h.finalize()) != rec.sha256 {
        bail!("{path}: content does not match the checksum recorded at backup");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_and_tablespaces_mapped() {
        let t = Target {
            dir: "/restore".into(),
            tablespaces: [("16389".to_string(), PathBuf::from("/ts1"))].into(),
        };
        assert_eq!(
            t.dest("base/1/1259").unwrap(),
            PathBuf::from("/restore/base/1/1259")
        );
        assert_eq!(t.dest("pg_tblspc/16389").unwrap(), PathBuf::from("/ts1"));
        assert_eq!(
            t.dest("pg_tblspc/16389/PG_15_1/5/1").unwrap(),
            PathBuf::from("/ts1/PG_15_1/5/1")
        );
        assert!(t.dest("../etc/passwd").is_err());
        assert!(t.dest("/etc/passwd").is_err());
        assert!(t.dest("base/../../x").is_err());
    }
}
