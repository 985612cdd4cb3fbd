//! `wal-push %p`: archive one WAL file.
//!
//! Exit 0 means durably stored. A file already archived with the same content is
//! success (PostgreSQL re-sends after a crash between upload and its own
//! bookkeeping); different content is refused, never overwritten.

use super::header::{LongPageHeader, LONG_HEADER_LEN};
use super::names::WalFile;
use crate::codec::{self, Codec};
use crate::store::{Class, Store};
use crate::{pg, repo};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::time::Instant;

/// What the file says about its cluster, learnt while checking it.
struct Checked {
    sysid: Option<u64>,
    pg_version: Option<u32>,
}

pub async fn run(store: &dyn Store, codec: &Codec, path: &Path) -> Result<()> {
    let started = Instant::now();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("'{}' names no file", path.display()))?
        .to_string();
    let kind = WalFile::parse(&name)?;
    let checked =
        check_file(path, &kind).with_context(|| format!("refusing {}", path.display()))?;
    let key = super::key(&name);

    // The identity and an existing copy are independent look-ups: ask both at once.
    let (identity, existing) = tokio::join!(repo::load(store), codec::read_trailer(store, &key));
    let identity = identity?;
    let file_sysid = match checked.sysid {
        Some(s) => Some(s),
        // History and backup files carry no identifier; the data directory does.
        None => pg::control::pgdata_of_wal_path(path)
            .and_then(|d| pg::control::system_identifier(&d).ok()),
    };
    match (&identity, file_sysid) {
        (Some(id), Some(s)) if id.sysid()? != s => {
            return Err(repo::mismatch(store, id.sysid()?, s))
                .with_context(|| format!("refusing {name}"));
        }
        (Some(_), _) => {}
        (None, Some(s)) => {
            repo::ensure(store, s, checked.pg_version).await?;
        }
        (None, None) => bail!(
            "repository {} is not initialised and {name} does not say which cluster it belongs to; run 'walvault repo-init --pgdata <data directory>'",
            store.locate("")
        ),
    }

    if let Some(stored) = existing? {
        let p = path.to_path_buf();
        let (sha, len) =
            tokio::task::spawn_blocking(move || codec::sha256_of(&mut std::fs::File::open(&p)?))
                .await?
                .with_context(|| format!("reading {}", path.display()))?;
        if sha == stored.plain_sha256 && len == stored.plain_len {
            tracing::info!("{name} is already archived with identical content");
            return Ok(());
        }
        bail!(
            "{name} is already archived at {} with DIFFERENT content (stored sha256 {}, {} bytes; this file sha256 {}, {len} bytes); refusing to overwrite. Two clusters may be archiving into one repository, or this cluster was restored without a new timeline: keep the repository and give this cluster its own",
            store.locate(&key),
            hex::encode(stored.plain_sha256),
            stored.plain_len,
            hex::encode(sha)
        );
    }

    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // History files are never expired: later timelines are found through them.
    let class = match kind {
        WalFile::History(_) => Class::Kept,
        _ => Class::Standard,
    };
    let up = codec.upload_class(store, &key, file, class).await?;
    tracing::info!(
        "archived {name} ({} bytes, stored {}) to {} in {} ms",
        up.trailer.plain_len,
        up.stored_len,
        store.locate(&key),
        started.elapsed().as_millis()
    );
    Ok(())
}

fn check_file(path: &Path, kind: &WalFile) -> Result<Checked> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    match kind {
        WalFile::Segment(seg) | WalFile::Partial(seg) => {
            let mut b = [0u8; LONG_HEADER_LEN];
            let mut f = std::fs::File::open(path)?;
            f.read_exact(&mut b)
                .map_err(|_| anyhow::anyhow!("file is too short to be a WAL segment"))?;
            let h = LongPageHeader::parse(&b)?;
            h.check(seg, meta.len())?;
            Ok(Checked {
                sysid: Some(h.sysid),
                pg_version: h.pg_major(),
            })
        }
        WalFile::History(_) => {
            let text = read_small_text(path, &meta)?;
            super::history::parse(&text).context("not a timeline history file")?;
            Ok(Checked {
                sysid: None,
                pg_version: None,
            })
        }
        WalFile::BackupHistory(..) => {
            let text = read_small_text(path, &meta)?;
            if !text.starts_with("START WAL LOCATION:") {
                bail!("not a backup history file (no START WAL LOCATION line)");
            }
            Ok(Checked {
                sysid: None,
                pg_version: None,
            })
        }
    }
}

fn read_small_text(path: &Path, meta: &std::fs::Metadata) -> Result<String> {
    if meta.len() > 16 << 20 {
        bail!("{} bytes is too large for a text WAL file", meta.len());
    }
    String::from_utf8(std::fs::read(path)?).context("not text")
}
