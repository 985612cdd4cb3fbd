//! A repository in a local directory (the embedded default).
//!
//! Each object is a file. A write goes to a hidden temporary file in the same
//! directory, is fsync'd, renamed over the key and the directory fsync'd: a crash
//! leaves either the old object or the new one, never a part. A create-only write
//! links the temporary file to the key instead: the kernel refuses a taken name
//! atomically, so two writers of one key cannot both succeed.

use super::{AlreadyStored, Body, Class, Mode, ObjectMeta, Store, Stored};
use crate::files::sync_dir;
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

pub struct FsStore {
    root: PathBuf,
}

/// Temporary files start with this; listings skip them.
const TMP_PREFIX: &str = ".walvault-tmp-";

impl FsStore {
    pub fn new(root: PathBuf) -> FsStore {
        FsStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

#[async_trait]
impl Store for FsStore {
    async fn write(&self, key: &str, mut body: Body, _: Class, mode: Mode) -> Result<Stored> {
        let dest = self.path(key);
        let dir = dest
            .parent()
            .context("object key has no directory")?
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let name = dest
            .file_name()
            .context("empty key")?
            .to_string_lossy()
            .to_string();
        let tmp = dir.join(format!("{TMP_PREFIX}{name}.{}", std::process::id()));
        let result = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            tokio::io::copy(&mut body, &mut f)
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.flush().await?;
            f.sync_all()
                .await
                .with_context(|| format!("fsync {}", tmp.display()))?;
            drop(f);
            match mode {
                Mode::Replace => tokio::fs::rename(&tmp, &dest)
                    .await
                    .with_context(|| format!("rename to {}", dest.display()))?,
                Mode::Create => {
                    let linked = tokio::fs::hard_link(&tmp, &dest).await;
                    let _ = tokio::fs::remove_file(&tmp).await;
                    match linked {
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            return Err(AlreadyStored {
                                location: dest.display().to_string(),
                            }
                            .into())
                        }
                        r => r.with_context(|| format!("link to {}", dest.display()))?,
                    }
                }
            }
            let d = dir.clone();
            tokio::task::spawn_blocking(move || sync_dir(&d))
                .await?
                .with_context(|| format!("fsync directory {}", dir.display()))?;
            Ok(Stored::default())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    // A directory keeps one version of each key.
    async fn read(&self, key: &str, _version: Option<&str>) -> Result<Option<Body>> {
        let p = self.path(key);
        match tokio::fs::File::open(&p).await {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot open {}", p.display())),
        }
    }

    async fn read_tail(
        &self,
        key: &str,
        n: u64,
        _version: Option<&str>,
    ) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        let mut f = match tokio::fs::File::open(&p).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", p.display())),
        };
        let len = f.metadata().await?.len();
        f.seek(std::io::SeekFrom::Start(len.saturating_sub(n)))
            .await?;
        let mut buf = Vec::with_capacity(n.min(len) as usize);
        f.read_to_end(&mut buf).await?;
        Ok(Some(buf))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let p = self.path(key);
        match tokio::fs::metadata(&p).await {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().ok().map(Into::into),
                retain_until: None,
                version: None,
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot stat {}", p.display())),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &prefix, None, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await?
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let after = after.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &prefix, Some(&after), &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await?
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", p.display())),
        }
    }

    fn locate(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }
}

/// Files below `dir` whose keys start with `prefix` (and sort after `after`):
/// only those are stat'ed, so a listing of what is new in a large directory
/// costs its names, not its files.
fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    after: Option<&str>,
    out: &mut Vec<ObjectMeta>,
) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("walk stays below root")
            .to_string_lossy()
            .to_string();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // Descend only where keys below could match the prefix.
            let as_dir = format!("{rel}/");
            if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                walk(root, &path, prefix, after, out)?;
            }
        } else if ft.is_file() && rel.starts_with(prefix) && after.is_none_or(|a| rel.as_str() > a)
        {
            let m = entry.metadata()?;
            out.push(ObjectMeta {
                key: rel,
                size: m.len(),
                modified: m.modified().ok().map(Into::into),
                retain_until: None,
                version: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(b: &'static [u8]) -> Body {
        Box::new(b)
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().join("repo"));
        assert!(s.get("wal/a").await.unwrap().is_none());
        s.put("wal/a", body(b"hello world")).await.unwrap();
        s.put("wal/b", body(b"x")).await.unwrap();
        s.put("walvault.json", body(b"{}")).await.unwrap();
        let mut r = s.get("wal/a").await.unwrap().unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        assert_eq!(v, b"hello world");
        assert_eq!(s.get_tail("wal/a", 5).await.unwrap().unwrap(), b"world");
        assert_eq!(s.get_tail("wal/b", 5).await.unwrap().unwrap(), b"x");
        let keys: Vec<_> = s
            .list("wal/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["wal/a", "wal/b"]);
        assert_eq!(s.head("wal/a").await.unwrap().unwrap().size, 11);
        s.delete("wal/a").await.unwrap();
        s.delete("wal/a").await.unwrap();
        assert!(s.head("wal/a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_create_only_write_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().to_path_buf());
        s.put("wal/a", body(b"first")).await.unwrap();
        let e = s.put("wal/a", body(b"second")).await.unwrap_err();
        assert!(super::super::already_stored(&e), "{e:#}");
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        let read = |s: &FsStore| std::fs::read(s.path("wal/a")).unwrap();
        assert_eq!(read(&s), b"first");
        s.write("wal/a", body(b"third"), Class::Standard, Mode::Replace)
            .await
            .unwrap();
        assert_eq!(read(&s), b"third");
        assert_eq!(
            std::fs::read_dir(dir.path().join("wal")).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }

    #[tokio::test]
    async fn failed_body_stores_nothing() {
        struct Failing;
        impl tokio::io::AsyncRead for Failing {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::Error::other("source broke")))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().to_path_buf());
        assert!(s.put("wal/x", Box::new(Failing)).await.is_err());
        assert!(s.head("wal/x").await.unwrap().is_none());
        assert!(
            s.list("").await.unwrap().is_empty(),
            "no temporary file left behind"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("wal")).unwrap().count(),
            0
        );
    }
}
