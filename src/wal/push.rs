//! `wal-push %p`: archive one WAL file.
//!
//! Exit 0 means durably stored. A file already archived with the same content is
//! success (PostgreSQL re-sends after a crash between upload and its own
//! bookkeeping); different content is refused, never overwritten.

use super::header::{LongPageHeader, LONG_HEADER_LEN};
use super::names::WalFile;
use crate::codec::{self, envelope::Trailer, Codec, DecodeError};
use crate::store::{Class, Mode, Store};
use crate::{pg, repo};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;
use std::time::Instant;

/// A push refused because of the file itself (another cluster's, different
/// content under a stored name): never a repository failure, so never
/// dropped by `push.max_backlog`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Whether `e` (at any depth) is a refusal of the file.
pub fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Refused>())
}

/// A local file that passed the checks, and what it says about its cluster.
struct Checked {
    path: std::path::PathBuf,
    name: String,
    kind: WalFile,
    sysid: Option<u64>,
    pg_version: Option<u32>,
}

/// Parallel archiving: how many `.ready` files one call also pushes, and how
/// many uploads run at once.
#[derive(Clone, Debug)]
pub struct Options {
    pub lookahead: usize,
    pub concurrency: usize,
    /// The repository URL as configured: what markers name.
    pub repo: String,
}

/// PostgreSQL's call for a file an earlier call already pushed (its marker
/// names this repository and this very file): answered without opening the
/// repository. See `archived`.
pub fn archived_ahead(path: &Path, repo: &str) -> Result<bool> {
    let started = Instant::now();
    let Some(st) = super::archived::Status::beside(path) else {
        return Ok(false);
    };
    let name = file_name(path)?;
    if !st.take(repo, path, &name)? {
        return Ok(false);
    }
    tracing::info!(
        "{name} was archived by an earlier call ({} ms)",
        started.elapsed().as_millis()
    );
    Ok(true)
}

/// A file pushed: its plaintext length, as stored.
struct Pushed {
    len: u64,
}

/// What `run` needs from the local side, started before the repository is
/// opened: the file's encoding depends on the file alone, so it runs while the
/// S3 client is built and the repository is asked about the file.
pub struct Prepared {
    started: Instant,
    own: Checked,
    status: Option<super::archived::Status>,
    candidates: Vec<(std::path::PathBuf, WalFile)>,
    own_codec: Codec,
    encoded: Encoding,
}

/// A file being encoded in memory on a blocking thread: its trailer and bytes.
type Encoding = tokio::task::JoinHandle<std::io::Result<(Trailer, Vec<u8>)>>;

/// Checks the file, finds the other `.ready` files, and starts encoding the file
/// asked for (on every core when it is alone: latency is what counts then).
/// Called inside the runtime (the encoding is a blocking task).
pub fn prepare(codec: &Codec, path: &Path, opts: &Options) -> Result<Prepared> {
    let started = Instant::now();
    let name = file_name(path)?;
    let kind = WalFile::parse(&name)?;
    super::prefetch::clean_after_recovery(path);
    // Checked before anything is read into memory: only a file that passed
    // (a segment of its exact size, a small text file) is encoded.
    let own = check_file(path, name.clone(), kind)
        .with_context(|| format!("refusing {}", path.display()))?;
    let status = super::archived::Status::beside(path);
    let candidates = match &status {
        Some(st) if opts.lookahead > 0 => st.ready_after(&name, opts.lookahead),
        _ => Vec::new(),
    };
    let own_codec = for_kind(
        &if candidates.is_empty() {
            codec.for_lone_object(4)
        } else {
            codec.clone()
        },
        &own.kind,
    );
    let (c, p) = (own_codec.clone(), path.to_path_buf());
    let encoded =
        tokio::task::spawn_blocking(move || c.encode_to_vec(&mut std::fs::File::open(&p)?));
    Ok(Prepared {
        started,
        own,
        status,
        candidates,
        own_codec,
        encoded,
    })
}

/// `wal-push %p`. PostgreSQL hands one file; when it sits in a pg_wal with an
/// archive_status directory, the call also pushes up to `lookahead` other
/// `.ready` files at once and leaves a durable marker for each one uploaded, so
/// PostgreSQL's later calls for them return at once. Only the file asked for
/// decides the exit status.
pub async fn run(store: &dyn Store, codec: &Codec, p: Prepared, opts: &Options) -> Result<()> {
    let name = p.own.name.clone();
    // The identity and an existing copy are independent look-ups: ask both at once.
    let own_key = super::key(&name);
    let (identity, existing) =
        tokio::join!(repo::load(store), codec::read_trailer(store, &own_key));
    let identity = identity?;
    // A new repository is bound by the first file alone.
    let ahead = if identity.is_some() {
        p.candidates
    } else {
        Vec::new()
    };
    let id = identity.as_ref();
    // One pool of `concurrency` upload slots for the whole call: the file asked
    // for holds one until it is stored, then its slot goes to the files ahead.
    // (Giving the others `concurrency - 1` slots of their own left one slot idle
    // for most of a batch once the file asked for was done.)
    let slots = tokio::sync::Semaphore::new(opts.concurrency.max(1));
    let own_slot = slots.try_acquire().expect("a fresh pool has a free slot");
    let own = async {
        let path = p.own.path.clone();
        let _slot = own_slot;
        push_one(
            store,
            &p.own_codec,
            p.own,
            id,
            Some(existing),
            Some(p.encoded),
        )
        .await
        .with_context(|| format!("refusing {}", path.display()))
    };
    let status = p.status.as_ref();
    let pool = &slots;
    let others = async {
        use futures_util::StreamExt;
        futures_util::stream::iter(ahead)
            .map(|(other, other_kind)| async move {
                let Ok(_slot) = pool.acquire().await else {
                    return false;
                };
                // Nothing here fails the call: only the file asked for decides.
                let other_name = other.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let pushed = match check_file(&other, other_name.clone(), other_kind) {
                    Ok(checked) => push_one(store, codec, checked, id, None, None).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = pushed {
                    tracing::warn!("{other_name}: not archived ahead ({e:#}); PostgreSQL's own call for it will retry");
                    return false;
                }
                // Marked as soon as its upload returned (a marker always means
                // "stored"): a call killed later in the batch keeps what is done.
                let st = status.expect("lookahead only with a status directory");
                match st.mark(&opts.repo, &other_name) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("{other_name}: archived, but its marker could not be written ({e:#}); PostgreSQL's own call will check the repository");
                        false
                    }
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect::<Vec<bool>>()
            .await
    };
    let (own, others) = tokio::join!(own, others);
    let ahead_done = others.into_iter().filter(|&marked| marked).count();
    let pushed = own?;
    tracing::info!(
        "archived {name} ({} bytes) to {}{} in {} ms",
        pushed.len,
        store.locate(&super::key(&name)),
        if ahead_done > 0 {
            format!(", and {ahead_done} more .ready file(s) ahead")
        } else {
            String::new()
        },
        p.started.elapsed().as_millis()
    );
    Ok(())
}

/// Stores one local WAL file as `wal-push` stores it: the same checks (header
/// against the name, the repository's cluster), the same object, create-only,
/// an identical copy already stored being success and a different one refused.
/// For writers other than PostgreSQL's archiver (the WAL receiver), so that
/// whichever of them arrives first, the other finds its own bytes. Returns the
/// file's length.
pub async fn store_file(store: &dyn Store, codec: &Codec, path: &Path) -> Result<u64> {
    let name = file_name(path)?;
    let kind = WalFile::parse(&name)?;
    let checked =
        check_file(path, name, kind).with_context(|| format!("refusing {}", path.display()))?;
    let identity = repo::load(store).await?;
    let pushed = push_one(store, codec, checked, identity.as_ref(), None, None)
        .await
        .with_context(|| format!("refusing {}", path.display()))?;
    Ok(pushed.len)
}

fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("'{}' names no file", path.display()))?
        .to_string())
}

/// Stores one checked file; an identical copy already stored is success.
async fn push_one(
    store: &dyn Store,
    codec: &Codec,
    checked: Checked,
    identity: Option<&repo::RepoIdentity>,
    // The stored copy's trailer when already looked up.
    existing: Option<Result<Option<Trailer>, DecodeError>>,
    // The file already being encoded.
    encoded: Option<Encoding>,
) -> Result<Pushed> {
    let (path, name) = (checked.path.as_path(), checked.name.as_str());
    let key = super::key(name);
    let file_sysid = match checked.sysid {
        Some(s) => Some(s),
        // History and backup files carry no identifier; the data directory does.
        None => pg::control::pgdata_of_wal_path(path)
            .and_then(|d| pg::control::system_identifier(&d).ok()),
    };
    match (identity, file_sysid) {
        (Some(id), Some(s)) if id.sysid()? != s => {
            let why = repo::mismatch(store, id.sysid()?, s).await;
            return Err(Refused(format!("{why:#}")).into());
        }
        (Some(_), _) => {}
        (None, Some(s)) => {
            repo::ensure(store, s, checked.pg_version).await?;
        }
        (None, None) => {
            return Err(Refused(format!(
                "repository {} is not initialised and {name} does not say which cluster it belongs to; run 'walvault repo-init --pgdata <data directory>'",
                store.locate("")
            ))
            .into())
        }
    }

    let existing = match existing {
        Some(e) => e,
        None => codec::read_trailer(store, &key).await,
    };
    // Create-only, unless the stored copy is damaged or vanished and is mended.
    let mut mode = Mode::Create;
    match existing {
        Ok(Some(stored)) => match settle(store, &key, name, path, &stored).await? {
            Some(pushed) => return Ok(pushed),
            None => mode = Mode::Replace,
        },
        Ok(None) => {}
        Err(DecodeError::Integrity(e)) => {
            replacing_damaged(name, &e);
            mode = Mode::Replace;
        }
        Err(e) => return Err(e.into()),
    }

    // History files are never expired: later timelines are found through them.
    let class = match checked.kind {
        WalFile::History(_) => Class::Kept,
        _ => Class::Standard,
    };
    let stored = match encoded {
        Some(task) => {
            let (trailer, bytes) = task
                .await
                .context("encoder task failed")?
                .with_context(|| format!("encoding {}", path.display()))?;
            let stored_len = bytes.len() as u64;
            store
                .write_bytes(&key, bytes.into(), class, mode)
                .await
                .map(|_| (trailer.plain_len, stored_len))
        }
        None => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            for_kind(codec, &checked.kind)
                .upload_class(store, &key, file, class, mode)
                .await
                .map(|up| (up.trailer.plain_len, up.stored_len))
        }
    };
    let (plain_len, stored_len) = match stored {
        Ok(s) => s,
        Err(e) if crate::store::already_stored(&e) => {
            // Stored by someone else since the check (a standby archiving the same
            // segment, a retried request): the same comparison decides.
            tracing::info!(
                "{name} was stored by another push meanwhile (create-only write refused); comparing"
            );
            return match codec::read_trailer(store, &key).await {
                Ok(Some(stored)) => match settle(store, &key, name, path, &stored).await? {
                    Some(pushed) => Ok(pushed),
                    None => bail!(
                        "{name} was stored at {} by another push meanwhile, and that copy does not read back whole; the next attempt replaces it",
                        store.locate(&key)
                    ),
                },
                Ok(None) => Err(e),
                Err(d) => Err(anyhow::Error::from(d).context(format!(
                    "{name} was stored at {} by another push meanwhile",
                    store.locate(&key)
                ))),
            };
        }
        Err(e) => return Err(e),
    };
    tracing::debug!("stored {name} ({plain_len} bytes, {stored_len} stored)");
    Ok(Pushed { len: plain_len })
}

/// Compares the copy stored under `key` with the file: `Some` when identical and
/// whole (nothing to do), `None` when it must be replaced (damaged or gone), an
/// error when it differs, which is never overwritten.
async fn settle(
    store: &dyn Store,
    key: &str,
    name: &str,
    path: &Path,
    stored: &Trailer,
) -> Result<Option<Pushed>> {
    let (sha, len) = sha256_of_file(path).await?;
    if sha != stored.plain_sha256 || len != stored.plain_len {
        return Err(Refused(format!(
            "{name} is already archived at {} with DIFFERENT content (stored sha256 {}, {} bytes; this file sha256 {}, {len} bytes); refusing to overwrite: the stored copy is the history recovery follows. Another server wrote this timeline differently: after a failover, an old primary that wrote on or was started again without being rewound (rebuild it from the new primary with pg_rewind, or walvault recover --standby --delta, and it archives only the new timeline); else two clusters archiving into one repository, or a copy restored without a new timeline (give it a repository of its own)",
            store.locate(key),
            hex::encode(stored.plain_sha256),
            stored.plain_len,
            hex::encode(sha)
        ))
        .into());
    }
    // PostgreSQL re-sends only after a failure: worth one read to be sure the
    // stored copy is whole, and to mend it from the file while it still exists.
    match codec::verify_stored(store, key).await {
        Ok(Some(_)) => {
            store.protect(key).await?;
            tracing::info!("{name} is already archived with identical content");
            Ok(Some(Pushed { len }))
        }
        Ok(None) => Ok(None),
        Err(DecodeError::Integrity(e)) => {
            replacing_damaged(name, &e);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Timeline histories are stored in clear (compressed and checksummed): every
/// job that needs no key (status, lists, verification, retention) reads them to
/// follow timelines, and they hold only LSNs and the reason of each switch.
fn for_kind(codec: &Codec, kind: &WalFile) -> Codec {
    match kind {
        WalFile::History(_) => codec.clear(),
        _ => codec.clone(),
    }
}

fn replacing_damaged(name: &str, e: &impl std::fmt::Display) {
    tracing::warn!("the stored copy of {name} is damaged ({e}); replacing it with this file");
}

/// sha256 and length of a file, off the async threads.
async fn sha256_of_file(path: &Path) -> Result<([u8; 32], u64)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || codec::sha256_of(&mut std::fs::File::open(&p)?))
        .await?
        .with_context(|| format!("reading {}", path.display()))
}

/// The refusal naming the cluster's major (its data directory's PG_VERSION)
/// when that major is one walvault does not support: more exact than what the
/// page magic alone can say.
fn unsupported_cluster(path: &Path, magic: u16) -> Option<anyhow::Error> {
    let pgdata = pg::control::pgdata_of_wal_path(path)?;
    let major = pg::majors::of_data_directory(&pgdata).ok()?;
    (!pg::majors::supported(major)).then(|| {
        pg::majors::refusal(
            major,
            &format!("PG_VERSION of the data directory; WAL page magic {magic:#06X}"),
        )
    })
}

/// Checks that `path` is the WAL file its name (`name`, parsed as `kind`) says: a
/// segment's header names it and its size is right; a history or backup history
/// file parses.
fn check_file(path: &Path, name: String, kind: WalFile) -> Result<Checked> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    let (sysid, pg_version) = match &kind {
        WalFile::Segment(seg) | WalFile::Partial(seg) => {
            let mut b = [0u8; LONG_HEADER_LEN];
            let mut f = std::fs::File::open(path)?;
            f.read_exact(&mut b)
                .map_err(|_| anyhow::anyhow!("file is too short to be a WAL segment"))?;
            let h = LongPageHeader::parse(&b)?;
            if h.pg_major().is_none() {
                if let Some(refusal) = unsupported_cluster(path, h.magic) {
                    return Err(refusal);
                }
            }
            h.check(seg, meta.len())?;
            (Some(h.sysid), h.pg_major())
        }
        WalFile::History(_) => {
            let text = read_small_text(path, &meta)?;
            super::history::parse(&text).context("not a timeline history file")?;
            (None, None)
        }
        WalFile::BackupHistory(..) => {
            let text = read_small_text(path, &meta)?;
            if !text.starts_with("START WAL LOCATION:") {
                bail!("not a backup history file (no START WAL LOCATION line)");
            }
            (None, None)
        }
    };
    Ok(Checked {
        path: path.to_path_buf(),
        name,
        kind,
        sysid,
        pg_version,
    })
}

fn read_small_text(path: &Path, meta: &std::fs::Metadata) -> Result<String> {
    if meta.len() > 16 << 20 {
        bail!("{} bytes is too large for a text WAL file", meta.len());
    }
    String::from_utf8(std::fs::read(path)?).context("not text")
}
