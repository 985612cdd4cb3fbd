//! The repository backend: one trait, a local directory and S3.
//!
//! Stores move opaque bytes. They know nothing of compression, keys or WAL.
//! Writes are all-or-nothing: an object becomes visible only once its whole body
//! was read to a clean end and is durable; a body that ends in an error stores nothing.

pub mod fs;
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
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores `body` under `key`, replacing any object there. Returns once durable.
    async fn put(&self, key: &str, body: Body) -> Result<()>;
    /// `put` in a lifecycle class (S3 with `s3.class_tags`: the object's tag).
    async fn put_class(&self, key: &str, body: Body, _class: Class) -> Result<()> {
        self.put(key, body).await
    }
    /// `put_class` of bytes already in memory (S3 sends them without copying them again).
    async fn put_bytes(&self, key: &str, data: bytes::Bytes, class: Class) -> Result<()> {
        self.put_class(key, Box::new(std::io::Cursor::new(data)), class)
            .await
    }
    /// Opens `key` for reading; `None` when the store says it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Body>>;
    /// The last `n` bytes of `key` (all of it when shorter); `None` when absent.
    async fn get_tail(&self, key: &str, n: u64) -> Result<Option<Vec<u8>>>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Removes `key`; absent is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Whether the repository enforces Object Lock (objects may refuse deletion).
    async fn object_lock(&self) -> Result<bool> {
        Ok(false)
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
    S3 { bucket: String, prefix: String },
}

impl RepoUrl {
    pub fn parse(s: &str) -> Result<RepoUrl> {
        let url = url::Url::parse(s).with_context(|| {
            format!("'{s}' is not a URL; use file:///path or s3://bucket/prefix")
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
            other => bail!("'{s}': unsupported scheme '{other}', use file:// or s3://"),
        }
    }
}

/// Opens the store the configuration names.
pub async fn open(cfg: &crate::config::Config) -> Result<Arc<dyn Store>> {
    match RepoUrl::parse(&cfg.repo)? {
        RepoUrl::Fs(path) => Ok(Arc::new(fs::FsStore::new(path))),
        RepoUrl::S3 { bucket, prefix } => Ok(Arc::new(
            s3::S3Store::connect(&cfg.s3, bucket, prefix).await?,
        )),
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
    }
}
