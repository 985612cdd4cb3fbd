//! The repository backend: one trait; a local directory, S3 and Azure Blob.
//!
//! Stores move opaque bytes. They know nothing of compression, keys or WAL.
//! Writes are all-or-nothing: an object becomes visible only once its whole body
//! was read to a clean end and is durable; a body that ends in an error stores nothing.

pub mod azure;
pub mod fs;
pub mod remote;
pub mod s3;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncRead;

pub type Body = Box<dyn AsyncRead + Send + Unpin>;

#[derive(Clone, Debug)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
    /// Object Lock: the object cannot be deleted before this time (HEAD on S3 only).
    pub retain_until: Option<DateTime<Utc>>,
    /// The current version's id on a versioned bucket (HEAD on S3 only).
    pub version: Option<String>,
}

/// How a write treats an object already stored under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Create only: a key already taken is refused with [`AlreadyStored`], by the
    /// store itself and atomically (S3 `If-None-Match: *`, a hard link locally), so
    /// a compromised host cannot rewrite history it already stored.
    Create,
    /// Replace what is there: marks that change, a damaged copy being mended.
    Replace,
}

/// What a write stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The object's version id on a versioned bucket: what `verify` later
    /// compares with the current version to tell a replaced object.
    pub version: Option<String>,
}

/// A create-only write found its key taken: callers branch on it (a WAL push
/// compares the stored copy with its file).
#[derive(Debug, thiserror::Error)]
#[error(
    "{location} already exists (walvault writes create-only and never replaces a stored object)"
)]
pub struct AlreadyStored {
    pub location: String,
}

/// Whether `e` (at any depth of its context) is a create-only refusal.
pub fn already_stored(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<AlreadyStored>())
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores `body` under `key` in a lifecycle class (S3 with `s3.class_tags`:
    /// the object's tag), as `mode` says. Returns once durable.
    async fn write(&self, key: &str, body: Body, class: Class, mode: Mode) -> Result<Stored>;
    /// The largest body this backend sends in one request (its part size):
    /// `write_bytes` of no more goes to `write_single`. 0: always `write`.
    fn single_request_max(&self) -> usize {
        0
    }
    /// Stores `data` (at most `single_request_max`) in one request.
    async fn write_single(
        &self,
        key: &str,
        data: bytes::Bytes,
        class: Class,
        mode: Mode,
    ) -> Result<Stored> {
        self.write(key, Box::new(std::io::Cursor::new(data)), class, mode)
            .await
    }
    /// `write` of bytes already in memory: one request when they fit, sent
    /// without copying them again.
    async fn write_bytes(
        &self,
        key: &str,
        data: bytes::Bytes,
        class: Class,
        mode: Mode,
    ) -> Result<Stored> {
        if data.len() <= self.single_request_max() {
            return self.write_single(key, data, class, mode).await;
        }
        self.write(key, Box::new(std::io::Cursor::new(data)), class, mode)
            .await
    }
    /// Stores a new object under `key`; a key already taken is [`AlreadyStored`].
    async fn put(&self, key: &str, body: Body) -> Result<Stored> {
        self.write(key, body, Class::Standard, Mode::Create).await
    }
    /// `put` in a lifecycle class.
    async fn put_class(&self, key: &str, body: Body, class: Class) -> Result<Stored> {
        self.write(key, body, class, Mode::Create).await
    }
    /// `put_class` of bytes already in memory.
    async fn put_bytes(&self, key: &str, data: bytes::Bytes, class: Class) -> Result<Stored> {
        self.write_bytes(key, data, class, Mode::Create).await
    }
    /// Opens `key` for reading, at `version` where given (versioned buckets;
    /// a store without versions has only the one); `None` when the store
    /// says it does not exist.
    async fn read(&self, key: &str, version: Option<&str>) -> Result<Option<Body>>;
    /// The last `n` bytes of `key` (all of it when shorter), at `version`
    /// where given; `None` when absent.
    async fn read_tail(&self, key: &str, n: u64, version: Option<&str>) -> Result<Option<Vec<u8>>>;
    async fn get(&self, key: &str) -> Result<Option<Body>> {
        self.read(key, None).await
    }
    async fn get_version(&self, key: &str, version: &str) -> Result<Option<Body>> {
        self.read(key, Some(version)).await
    }
    async fn get_tail(&self, key: &str, n: u64) -> Result<Option<Vec<u8>>> {
        self.read_tail(key, n, None).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// `list` of the keys after `after` only (S3 `StartAfter`): what was
    /// stored since a listing that ended at `after`, at the cost of the new
    /// keys rather than of all of them.
    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let mut all = self.list(prefix).await?;
        all.retain(|o| o.key.as_str() > after);
        Ok(all)
    }
    /// Removes `key`; absent is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Whether the repository enforces Object Lock (objects may refuse deletion).
    async fn object_lock(&self) -> Result<bool> {
        Ok(false)
    }
    /// Makes an object found already stored as protected as a write of it
    /// now would make it: where protection is a second request after the
    /// write (Azure's immutability policy), a push that failed between the two
    /// left it unprotected, and its retry finds it in place.
    async fn protect(&self, _key: &str) -> Result<()> {
        Ok(())
    }
    /// Puts `key` in a lifecycle class (the S3 tag `walvault-class`), which the
    /// bucket's lifecycle rules act on. Returns false where there are no classes
    /// (a local directory keeps everything until `delete` removes it).
    async fn set_class(&self, _key: &str, _class: Class) -> Result<bool> {
        Ok(false)
    }
    /// Where `key` lives, for messages: `s3://bucket/prefix/key` or a path.
    fn locate(&self, key: &str) -> String;
}

/// A store whose reads of some keys are pinned to a version: a backup's objects
/// at the versions its manifest recorded, so that a restore or a verify reads
/// what the backup wrote even if the key was overwritten since. Writes and
/// listings go to the store as they are (bytes in memory streamed: writes
/// through a pinned store are rare, and copying once more is no matter).
pub struct Pinned {
    inner: Arc<dyn Store>,
    versions: std::collections::HashMap<String, String>,
}

impl Pinned {
    /// `inner` itself when nothing is pinned.
    pub fn over(
        inner: Arc<dyn Store>,
        versions: impl IntoIterator<Item = (String, String)>,
    ) -> Arc<dyn Store> {
        let versions: std::collections::HashMap<String, String> = versions.into_iter().collect();
        if versions.is_empty() {
            inner
        } else {
            Arc::new(Pinned { inner, versions })
        }
    }

    fn pinned(&self, key: &str) -> Option<&str> {
        self.versions.get(key).map(String::as_str)
    }
}

#[async_trait]
impl Store for Pinned {
    async fn write(&self, key: &str, body: Body, class: Class, mode: Mode) -> Result<Stored> {
        self.inner.write(key, body, class, mode).await
    }
    async fn read(&self, key: &str, version: Option<&str>) -> Result<Option<Body>> {
        self.inner.read(key, version.or(self.pinned(key))).await
    }
    async fn read_tail(&self, key: &str, n: u64, version: Option<&str>) -> Result<Option<Vec<u8>>> {
        self.inner
            .read_tail(key, n, version.or(self.pinned(key)))
            .await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list_after(prefix, after).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn object_lock(&self) -> Result<bool> {
        self.inner.object_lock().await
    }
    async fn set_class(&self, key: &str, class: Class) -> Result<bool> {
        self.inner.set_class(key, class).await
    }
    async fn protect(&self, key: &str) -> Result<()> {
        self.inner.protect(key).await
    }
    fn locate(&self, key: &str) -> String {
        self.inner.locate(key)
    }
}

/// Reads a small clear JSON object (identity, manifest, mark, report); `None`
/// when absent. `what` names it in the error when it does not parse.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &str,
    what: &str,
) -> Result<Option<T>> {
    use tokio::io::AsyncReadExt;
    let Some(mut body) = store.get(key).await? else {
        return Ok(None);
    };
    let mut text = Vec::new();
    body.read_to_end(&mut text)
        .await
        .with_context(|| format!("reading {}", store.locate(key)))?;
    serde_json::from_slice(&text)
        .map(Some)
        .with_context(|| format!("{} is not {what}", store.locate(key)))
}

/// Replaces a small clear JSON object that is only a cache (the catalogues),
/// best effort: a host that may not write it goes on without.
pub async fn replace_cache<T: serde::Serialize>(store: &dyn Store, key: &str, value: &T) {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!("{key} not written: {e}");
            return;
        }
    };
    if let Err(e) = store
        .write_bytes(key, body.into(), Class::Standard, Mode::Replace)
        .await
    {
        tracing::debug!("{key} not written: {e:#}");
    }
}

/// Lifecycle classes, as the tag `walvault-class` names them (terraform/ holds the rules).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Class {
    /// Daily data: `walvault delete` decides; an optional lifecycle backstop.
    Standard,
    /// A permanent backup and the WAL it needs: colder storage, kept for years.
    Permanent,
    /// A backup kept until a date: no lifecycle rule may expire it.
    Kept,
}

impl Class {
    pub const TAG: &'static str = "walvault-class";

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Standard => "standard",
            Class::Permanent => "permanent",
            Class::Kept => "kept",
        }
    }
}

/// A parsed repository URL.
#[derive(Clone, Debug, PartialEq)]
pub enum RepoUrl {
    Fs(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    Azure {
        account: String,
        container: String,
        prefix: String,
    },
}

impl RepoUrl {
    pub fn parse(s: &str) -> Result<RepoUrl> {
        let url = url::Url::parse(s).with_context(|| {
            format!("'{s}' is not a URL; use file:///path, s3://bucket/prefix or az://account/container/prefix")
        })?;
        match url.scheme() {
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    bail!(
                        "'{s}': a file URL takes an absolute path, file:///var/lib/walvault/repo"
                    );
                }
                let path = PathBuf::from(url.path());
                if !path.is_absolute() || url.path() == "/" {
                    bail!("'{s}': the repository must be an absolute directory below /");
                }
                Ok(RepoUrl::Fs(path))
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .with_context(|| format!("'{s}' names no bucket; use s3://bucket/prefix"))?
                    .to_string();
                let prefix = url.path().trim_matches('/').to_string();
                Ok(RepoUrl::S3 { bucket, prefix })
            }
            "az" => {
                let account = url
                    .host_str()
                    .filter(|a| !a.is_empty())
                    .with_context(|| {
                        format!("'{s}' names no storage account; use az://account/container/prefix")
                    })?
                    .to_string();
                let path = url.path().trim_matches('/');
                let (container, prefix) = path.split_once('/').unwrap_or((path, ""));
                if container.is_empty() {
                    bail!("'{s}' names no container; use az://account/container/prefix");
                }
                Ok(RepoUrl::Azure {
                    account,
                    container: container.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                })
            }
            other => bail!("'{s}': unsupported scheme '{other}', use file://, s3:// or az://"),
        }
    }
}

/// Opens the store `repo` names, with its backend's settings.
pub async fn open(
    repo: &str,
    s3: &s3::Settings,
    azure: &azure::Settings,
) -> Result<Arc<dyn Store>> {
    match RepoUrl::parse(repo)? {
        RepoUrl::Fs(path) => Ok(Arc::new(fs::FsStore::new(path))),
        RepoUrl::S3 { bucket, prefix } => {
            Ok(Arc::new(s3::S3Store::connect(s3, bucket, prefix).await?))
        }
        RepoUrl::Azure {
            account,
            container,
            prefix,
        } => Ok(Arc::new(azure::AzureStore::connect(
            azure, account, container, prefix,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_urls() {
        assert_eq!(
            RepoUrl::parse("file:///var/lib/walvault/repo").unwrap(),
            RepoUrl::Fs("/var/lib/walvault/repo".into())
        );
        assert_eq!(
            RepoUrl::parse("s3://bk/a/b/").unwrap(),
            RepoUrl::S3 {
                bucket: "bk".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            RepoUrl::parse("s3://bk").unwrap(),
            RepoUrl::S3 {
                bucket: "bk".into(),
                prefix: "".into()
            }
        );
        assert!(RepoUrl::parse("/var/lib/x").is_err());
        assert!(RepoUrl::parse("file:///").is_err());
        assert!(RepoUrl::parse("s3:///x").is_err());
        assert!(RepoUrl::parse("gs://b/x").is_err());
        assert_eq!(
            RepoUrl::parse("az://acct/wal-repo/main/pg1").unwrap(),
            RepoUrl::Azure {
                account: "acct".into(),
                container: "wal-repo".into(),
                prefix: "main/pg1".into()
            }
        );
        assert!(RepoUrl::parse("az://acct").is_err());
        assert!(RepoUrl::parse("az:///c/p").is_err());
    }
}
