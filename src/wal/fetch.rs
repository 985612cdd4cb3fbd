//! `wal-fetch %f %p`: restore one WAL file for PostgreSQL.
//!
//! "Absent" (exit 1) is an answer PostgreSQL acts on: at the end of the archive
//! it ends recovery and promotes. So walvault says absent only when the store
//! says so for an object of a repository that exists; every other failure is
//! retried and then reported as fatal (exit 128), which stops recovery.

use super::header::check_segment_file;
use super::names::{SegmentName, WalFile};
use super::prefetch::Spool;
use crate::codec::{Codec, DecodeError, Limited};
use crate::repo;
use crate::store::Store;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub enum Fetched {
    Restored,
    Absent,
}

/// Why no file was produced, when it is not "absent".
#[derive(Debug)]
pub struct Fatal(pub anyhow::Error);

/// Prefetch settings (fetch.prefetch, fetch.spool_dir) and the config file the
/// prefetcher should read.
#[derive(Clone, Debug, Default)]
pub struct Prefetch {
    pub ahead: usize,
    pub spool_dir: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// `--set` arguments the prefetcher is started with, as wal-fetch was.
    pub sets: Vec<String>,
}

pub async fn run(
    store: &dyn Store,
    codec: &Codec,
    name: &str,
    dest: &Path,
    retries: u32,
    prefetch: &Prefetch,
) -> Result<Fetched, Fatal> {
    let started = Instant::now();
    let kind = WalFile::parse(name).map_err(Fatal)?;
    let key = super::key(name);
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".walvault-fetch-{name}.{}", std::process::id()));
    // Segments only: history files and .partial are asked for rarely and out of order.
    let spool = match kind {
        WalFile::Segment(seg) if prefetch.ahead > 0 => {
            Spool::for_dest(dest, prefetch.spool_dir.as_deref()).map(|s| (s, seg))
        }
        _ => None,
    };
    // PostgreSQL waits for this one file: sha256 on the second core, beside
    // decompression (the prefetcher's downloads already keep the cores busy).
    let codec = codec.for_lone_object(2);
    let to = Place {
        tmp: &tmp,
        dest,
        kind: &kind,
    };
    let fetched = fetch_with_retries(store, &codec, name, &key, &to, retries).await;
    if let (Ok(Fetched::Restored), Some((spool, seg))) = (&fetched, &spool) {
        prefetch_after(spool, *seg, dest, prefetch);
    }
    if matches!(fetched, Ok(Fetched::Restored)) {
        tracing::info!(
            "restored {name} from {} in {} ms",
            store.locate(&key),
            started.elapsed().as_millis()
        );
    }
    fetched
}

/// Serves `name` from the prefetch spool when a verified copy is there: no
/// repository, no key needed. Also drops what replay no longer needs, and
/// starts the next prefetch. False: fetch it from the repository.
pub fn from_spool(name: &str, dest: &Path, prefetch: &Prefetch) -> bool {
    let started = Instant::now();
    let Ok(WalFile::Segment(seg)) = WalFile::parse(name) else {
        return false;
    };
    if prefetch.ahead == 0 {
        return false;
    }
    let Some(spool) = Spool::for_dest(dest, prefetch.spool_dir.as_deref()) else {
        return false;
    };
    spool.record_asked(name);
    spool.forget_before(seg);
    // The prefetcher may be downloading it this very moment: a second download
    // beside it would only slow both.
    if !spool.has(name) && !spool.wait_for(name) {
        return false;
    }
    match spool.serve(name, dest) {
        Ok(true) => {
            tracing::info!(
                "restored {name} from the prefetch spool in {} ms",
                started.elapsed().as_millis()
            );
            prefetch_after(&spool, seg, dest, prefetch);
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(
                "the prefetched copy of {name} is damaged ({e:#}); fetching it from the repository"
            );
            false
        }
    }
}

/// Starts a prefetcher for what follows `seg` when none runs and the spool
/// runs low (half empty). A prefetch that cannot start only costs speed: it is
/// logged, never fatal.
fn prefetch_after(spool: &Spool, seg: SegmentName, dest: &Path, p: &Prefetch) {
    if spool.prefetcher().is_some() {
        return; // it follows `asked`
    }
    // The restored segment's size is the cluster's segment size.
    let Ok(seg_size) = std::fs::metadata(dest).map(|m| m.len()) else {
        return;
    };
    let mut missing = spool.missing_after(seg, seg_size, p.ahead);
    if missing.len() * 2 < p.ahead.max(2) {
        return;
    }
    // A full disk must cost speed only: take what fits, keeping one segment free.
    match spool.room_for(seg_size) {
        Ok(0) => {
            tracing::warn!(
                "prefetch paused: {} has less than two segments ({} MiB) of free space; fetching from the repository directly",
                spool.dir.display(),
                (2 * seg_size) >> 20
            );
            return;
        }
        Ok(room) => missing.truncate(room),
        Err(e) => tracing::warn!("{e:#}"),
    }
    let follow = super::prefetch::Follow {
        ahead: p.ahead,
        segment_size: seg_size,
    };
    if let Err(e) = spool.spawn(p.config_file.as_deref(), &p.sets, seg, follow, &missing) {
        tracing::warn!("prefetch not started: {e:#}");
    }
}

/// Where a fetched file goes: `tmp` first, then `dest` once checked.
struct Place<'a> {
    tmp: &'a Path,
    dest: &'a Path,
    kind: &'a WalFile,
}

/// The most a segment may decode to: the largest WAL segment size.
const SEGMENT_LIMIT: u64 = 1 << 30;

async fn fetch_with_retries(
    store: &dyn Store,
    codec: &Codec,
    name: &str,
    key: &str,
    to: &Place<'_>,
    retries: u32,
) -> Result<Fetched, Fatal> {
    let attempts = retries + 1;
    let mut last = None;
    let tmp = to.tmp;
    let segment = match to.kind {
        WalFile::Segment(s) | WalFile::Partial(s) => Some(*s),
        _ => None,
    };
    // The cluster a segment must belong to. Restoring into a data directory
    // (restore_command's %p, pg_rewind's), its own pg_control answers, as
    // PostgreSQL itself checks each segment against it; elsewhere (a file
    // fetched by hand) the repository's identity, read beside the download.
    let own_sysid = segment
        .and_then(|_| crate::pg::control::pgdata_of_wal_path(to.dest))
        .and_then(|d| crate::pg::control::system_identifier(&d).ok());
    for attempt in 1..=attempts {
        let identity = async {
            match (segment, own_sysid) {
                (Some(_), None) => Some(repo::load(store).await),
                _ => None,
            }
        };
        let (got, identity) = tokio::join!(fetch_once(store, codec, key, to), identity);
        match got {
            Ok(true) => {
                let sysid = match identity {
                    Some(Ok(Some(id))) => Some(id.sysid().map_err(Fatal)?),
                    Some(Ok(None)) => {
                        let _ = std::fs::remove_file(tmp);
                        return Err(Fatal(no_repository(store)));
                    }
                    Some(Err(e)) => {
                        let _ = std::fs::remove_file(tmp);
                        return Err(Fatal(e.context(format!(
                            "cannot read the repository's identity to check {name}"
                        ))));
                    }
                    None => own_sysid,
                };
                return place(store, key, name, segment, sysid, to)
                    .await
                    .map(|()| Fetched::Restored);
            }
            Ok(false) => {
                // Not archived whole: what wal-receive holds of it, if anything.
                match from_stream(store, codec, key, to).await {
                    Ok(true) => {
                        let sysid = match identity {
                            Some(Ok(Some(id))) => Some(id.sysid().map_err(Fatal)?),
                            _ => own_sysid,
                        };
                        return place(store, key, name, segment, sysid, to)
                            .await
                            .map(|()| Fetched::Restored);
                    }
                    Ok(false) => return absent(store, name, to.dest).await,
                    Err(e) => {
                        let _ = std::fs::remove_file(tmp);
                        last = Some(anyhow!(
                            "cannot restore {name} from what wal-receive stored: {e:#}"
                        ));
                        continue;
                    }
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                let key_problem = e
                    .downcast_ref::<DecodeError>()
                    .is_some_and(|d| d.is_key_problem());
                let msg = anyhow!("cannot restore {name} from {}: {e:#}", store.locate(key));
                if key_problem {
                    return Err(Fatal(msg));
                }
                if attempt < attempts {
                    let wait = Duration::from_millis(500 << (attempt - 1).min(4));
                    tracing::warn!(
                        "{msg:#} (attempt {attempt} of {attempts}; retrying in {wait:?})"
                    );
                    tokio::time::sleep(wait).await;
                }
                last = Some(msg);
            }
        }
    }
    let e = last.expect("at least one attempt");
    Err(Fatal(e.context(format!(
        "giving up after {attempts} attempts; recovery stops here rather than treating {name} as the end of the archive"
    ))))
}

/// A fetch from where no repository is: fatal, never "absent".
fn no_repository(store: &dyn Store) -> anyhow::Error {
    anyhow!(
        "{} holds no walvault repository (no {}); check the repo setting",
        store.locate(""),
        repo::KEY
    )
}

/// Answers "absent" only for a repository that exists: a wrong bucket, prefix or
/// path must stop recovery, not make every file look absent.
async fn absent(store: &dyn Store, name: &str, dest: &Path) -> Result<Fetched, Fatal> {
    match repo::load(store).await {
        Ok(Some(_)) => {
            // A standby asks every few seconds, for days, for what is not
            // archived yet: said at debug level, not thousands of lines a
            // day in the server's log. Archive recovery's miss is its end.
            if in_standby_mode(dest) {
                tracing::debug!("{name} is not in the archive (yet)");
            } else {
                tracing::info!("{name} is not in the archive");
            }
            Ok(Fetched::Absent)
        }
        Ok(None) => Err(Fatal(no_repository(store))),
        Err(e) => Err(Fatal(
            e.context(format!("cannot tell whether {name} exists")),
        )),
    }
}

/// Whether the server asking is a standby: `standby.signal` in its data
/// directory, the parent of the `pg_wal` that `%p` names.
fn in_standby_mode(dest: &Path) -> bool {
    let pgdata = match dest.parent().and_then(Path::parent) {
        Some(d) if !d.as_os_str().is_empty() => d,
        // %p is relative to the data directory, the command's working directory.
        _ => Path::new("."),
    };
    pgdata.join("standby.signal").exists()
}

/// Downloads into `tmp`, verified (checksums); the object may not decode to
/// more than its kind can hold. `Ok(false)`: no such object. No fsync: `%p`
/// need only appear atomically (the rename in `place`); PostgreSQL makes the
/// files it keeps durable itself (docs/architecture.md, "Why %p is not fsynced").
async fn fetch_once(store: &dyn Store, codec: &Codec, key: &str, to: &Place<'_>) -> Result<bool> {
    let tmp = to.tmp;
    let limit = match to.kind {
        WalFile::Segment(_) | WalFile::Partial(_) => SEGMENT_LIMIT,
        _ => crate::codec::TEXT_LIMIT,
    };
    let file =
        std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let out = Limited::new(file, limit);
    if codec.download(store, key, out).await?.is_none() {
        let _ = std::fs::remove_file(tmp);
        return Ok(false);
    }
    Ok(true)
}

/// A segment not archived whole, from what wal-receive stored of it: its
/// stream pieces chained from the start ([`super::stream`]), then zeros up to
/// the segment's size. Replay reads them to the last whole record and finds
/// the end of WAL there, as in a segment being written: recovery to the
/// latest point ends at the last commit the repository holds. `Ok(false)`:
/// nothing of it is stored.
async fn from_stream(store: &dyn Store, codec: &Codec, key: &str, to: &Place<'_>) -> Result<bool> {
    let WalFile::Segment(seg) = to.kind else {
        return Ok(false);
    };
    // A piece may go between the listing and its read: merged into one from
    // the segment's start (list again), or the whole segment stored.
    let mut attempt = 0;
    let (end, pieces) = loop {
        let chain = super::stream::chain(&super::stream::list(store, seg).await?);
        let Some(end) = chain.last().map(|p| p.to) else {
            return Ok(false);
        };
        if end > SEGMENT_LIMIT {
            bail!("the stream objects of {seg} reach {end} bytes, more than a segment holds: not what walvault wrote");
        }
        let file = std::fs::File::create(to.tmp)
            .with_context(|| format!("cannot create {}", to.tmp.display()))?;
        if super::stream::assemble(store, codec, &chain, file)
            .await?
            .is_some()
        {
            break (end, chain.len());
        }
        if fetch_once(store, codec, key, to).await? {
            return Ok(true);
        }
        attempt += 1;
        if attempt == 3 {
            bail!("the stream objects of {seg} changed under each of 3 reads");
        }
    };
    let mut head = [0u8; super::header::LONG_HEADER_LEN];
    {
        use std::io::Read;
        std::fs::File::open(to.tmp)?
            .read_exact(&mut head)
            .context("stream objects too short for a page header")?;
    }
    let size = super::header::LongPageHeader::parse(&head)?.seg_size as u64;
    if !super::names::valid_segment_size(size) || end > size {
        bail!("the stream objects of {seg} reach {end} bytes, past its size of {size}: not what walvault wrote");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(to.tmp)?
        .set_len(size)?;
    tracing::info!(
        "{seg} is not archived whole: restored the {end} bytes wal-receive stored of it ({pieces} stream objects); replay ends where they do"
    );
    Ok(true)
}

/// Checks that a downloaded segment is the one asked for (page address,
/// timeline-independent segment number, the repository's system identifier),
/// then renames it into place. A mismatch is fatal: PostgreSQL would take the
/// wrong page address for the end of WAL and end recovery early.
async fn place(
    store: &dyn Store,
    key: &str,
    name: &str,
    segment: Option<SegmentName>,
    sysid: Option<u64>,
    to: &Place<'_>,
) -> Result<(), Fatal> {
    if let Some(seg) = segment {
        if let Err(e) = check_segment_file(to.tmp, &seg, sysid) {
            let _ = std::fs::remove_file(to.tmp);
            return Err(Fatal(anyhow!(
                "the object stored as {} is not {name}: {e:#}; recovery stops here rather than replaying the wrong WAL (restore the right object from a bucket version or a copy)",
                store.locate(key)
            )));
        }
    }
    std::fs::rename(to.tmp, to.dest)
        .with_context(|| format!("rename to {}", to.dest.display()))
        .map_err(Fatal)
}
