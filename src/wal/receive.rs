//! `wal-receive`: WAL streamed from the server into the repository, so the
//! repository trails the server by about `receive.flush_seconds` instead of
//! by a segment (or `archive_timeout`).
//!
//! - A completed segment is stored with `push::store_file`: the very object
//!   `wal-push` stores, so the archiver and the receiver may both run and
//!   either may store a segment first (identical: success; different: refused).
//! - The open segment is stored as it grows: every flush stores the bytes
//!   received since the one before as a create-only piece
//!   `stream/<segment>.<from>-<to>` ([`super::stream`]), so a flush costs
//!   what it adds, not the segment so far. In the background, after every
//!   [`COMPACT_AFTER`] pieces (and at most once a second), the segment from
//!   its start is stored as one piece and the pieces it covers deleted, so a
//!   reader chains a few objects. All of a segment's pieces go once the whole
//!   segment is stored (a deletion Object Lock refuses is left to its expiry).
//! - The server is told a position is flushed only once the repository holds
//!   it: with `synchronous_standby_names` naming the receiver's
//!   application_name, a commit returns only once its WAL is in the
//!   repository. `receive.flush_seconds = 0` flushes as soon as no more WAL is
//!   at hand, which is what a synchronous commit waits on.
//! - On start (and after each reconnect) it resumes from what the repository
//!   holds on the server's timeline: the segment after the newest complete one,
//!   or the segment of the newest stream object, re-streamed from its start
//!   (the slot keeps it: its position moves only with what was flushed).
//!   When the repository's newest WAL is on an ancestor of the server's
//!   timeline, held short of that timeline's end (a promotion while the
//!   receiver was down), it first streams the rest of that timeline, which
//!   the server ends at the switch point, then the next ([`choose_start`]).

use super::history::HistoryEntry;
use super::names::{Lsn, SegmentName, WalFile};
use super::replication::{Event, Replication, System};
use super::stream::{self, Piece};
use crate::codec::Codec;
use crate::store::{Class, Mode, Store};
use crate::{pg, repo};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pieces of a segment stored before they are merged into one from its start.
pub const COMPACT_AFTER: usize = 32;

/// How often an idle synchronous receiver reports its position, as
/// wal_receiver_status_interval does for a standby (so the server's lag
/// figures clear once it has caught up).
const IDLE_REPORT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Options {
    pub conninfo: Option<String>,
    pub slot: String,
    /// Create the slot when the server has none of that name.
    pub create_slot: bool,
    pub flush_interval: Duration,
    /// Flush once this many bytes are received and not yet stored.
    pub flush_bytes: u64,
    /// Stop once this position is stored (tests, one-off catch-ups).
    pub stop_at: Option<Lsn>,
}

/// Runs until stopped (SIGTERM, SIGINT, or `stop_at` stored). A refusal
/// (another cluster's repository, a slot that does not exist, no permission)
/// ends it with the server's words; a connection lost once streaming is
/// retried.
pub async fn run(store: Arc<dyn Store>, codec: &Codec, opts: &Options) -> Result<()> {
    // Told to stop, a session stores what it holds first.
    let (tell, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown().await;
        let _ = tell.send(true);
    });
    let mut past = Past::default();
    loop {
        match session(&store, codec, opts, &mut past, stop.clone()).await {
            Ok(Ended::Stop) => return Ok(()),
            Ok(Ended::Timeline) => continue,
            Err(e) if !past.streamed => return Err(e),
            Err(e) => {
                tracing::warn!("wal-receive: {e:#}; reconnecting in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
        }
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("wal-receive: stopping");
}

/// What earlier sessions of this run leave to the next.
#[derive(Default)]
struct Past {
    /// Streaming began once: a lost connection is retried, not fatal.
    streamed: bool,
    /// WAL the server no longer has, per timeline: counted as held up to
    /// there, so it is not asked for again (an ancestor's rest: to its end).
    given_up: BTreeMap<u32, Lsn>,
}

impl Past {
    /// The server recycled WAL this receiver had not stored (it was down
    /// longer than its slot kept WAL, or its slot was dropped): said once,
    /// then streaming goes on from what the server still has. The archive
    /// may hold what is missing.
    fn give_up(
        &mut self,
        tli: u32,
        from: Lsn,
        sys: &System,
        seg_size: u64,
        e: &anyhow::Error,
    ) -> Ended {
        let (what, upto) = match tli == sys.timeline {
            false => (
                format!("the rest of timeline {tli} from {from}, which ended while this receiver was down,"),
                Lsn(u64::MAX),
            ),
            true => {
                let now = Lsn(sys.position.0 / seg_size * seg_size);
                (format!("timeline {tli}'s WAL from {from} to {now}"), now)
            }
        };
        tracing::error!(
            "wal-receive: {what} is gone from the server ({e:#}); the repository has it only \
             if the archive stored it (wal-verify shows any gap); going on from what the server has"
        );
        self.given_up.insert(tli, upto);
        Ended::Timeline
    }
}

enum Ended {
    Stop,
    /// The timeline streamed ended: reconnect and follow the next.
    Timeline,
}

async fn session(
    store: &Arc<dyn Store>,
    codec: &Codec,
    opts: &Options,
    past: &mut Past,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Ended> {
    if *stop.borrow() {
        return Ok(Ended::Stop);
    }
    let cfg = pg::conn::resolve(opts.conninfo.as_deref())?;
    let mut r = Replication::connect(&cfg).await?;
    let sys = r.identify_system().await?;
    let seg_size = r.segment_size().await?;
    if opts.create_slot {
        if let Err(e) = r.create_slot(&opts.slot).await {
            // SQLSTATE 42710: it exists already, as on every start but the first.
            if !format!("{e:#}").contains("SQLSTATE 42710") {
                return Err(e);
            }
        }
    }
    let history = match sys.timeline {
        1 => None,
        tli => Some(r.timeline_history(tli).await?),
    };
    let ancestors = match &history {
        Some((_, content)) => super::history::parse(&String::from_utf8_lossy(content))?,
        None => Vec::new(),
    };
    let Start { tli, from } =
        start_point(store.as_ref(), &sys, &ancestors, &past.given_up, seg_size).await?;
    // WAL the server has recycled before this receiver stored it.
    let gone = |e: &anyhow::Error| {
        let e = format!("{e:#}");
        // 58P01 when the file is missing at open; the words for a check after.
        e.contains("SQLSTATE 58P01") || e.contains("has already been removed")
    };
    // Stream objects of segments stored whole meanwhile (by the archiver,
    // while this receiver was down) serve no one any more.
    for o in store.list(&format!("{}{tli:08X}", stream::PREFIX)).await? {
        if let Some(p) = stream::parse(&o.key) {
            let whole = store.head(&super::key(&p.seg.to_string())).await?.is_some();
            if p.seg.segno(seg_size)? < from.0 / seg_size && whole {
                forget(store.as_ref(), &o.key).await;
            }
        }
    }
    // Streaming starts before the repository is written to: a slot that does
    // not exist is refused before anything is initialised.
    if let Err(e) = r.start(Some(&opts.slot), from, tli).await {
        if gone(&e) {
            return Ok(past.give_up(tli, from, &sys, seg_size, &e));
        }
        return Err(e.context(format!("streaming timeline {tli} from {from}")));
    }
    repo::ensure(store.as_ref(), sys.system_id, r.major())
        .await
        .with_context(|| format!("refusing to receive from {}", r.location()))?;
    if let Some((name, content)) = &history {
        store_local(store.as_ref(), codec, name, content).await?;
    }
    past.streamed = true;
    tracing::info!(
        "wal-receive: streaming timeline {tli} from {from} at {} into {}{}",
        r.location(),
        store.locate(""),
        match tli == sys.timeline {
            true => String::new(),
            false => format!(
                " (to its end: the server is on timeline {}, and this receiver \
                 was down when timeline {tli} ended)",
                sys.timeline
            ),
        }
    );
    let mut seg = Open::new(tli, from, seg_size);
    let mut last_flush = Instant::now();
    loop {
        // Synchronous mode (0) flushes at each message the server sends; its
        // timer only reports to the server now and then, where a zero one
        // would wake at once, again and again, while the server is idle.
        let tick = match opts.flush_interval {
            Duration::ZERO => IDLE_REPORT,
            every => every,
        };
        let deadline = tokio::time::Instant::from_std(last_flush + tick);
        let ev = tokio::select! {
            ev = tokio::time::timeout_at(deadline, r.next()) => match ev {
                Ok(Ok(ev)) => Some(ev),
                Ok(Err(e)) => {
                    // The server gone (crashed, failed over): a server sends
                    // only WAL it has flushed, so what came is kept.
                    if seg.unflushed() > 0 {
                        seg.store_partial(store, codec).await?;
                    }
                    if gone(&e) {
                        return Ok(past.give_up(tli, seg.received(), &sys, seg_size, &e));
                    }
                    return Err(e);
                }
                Err(_) => None,
            },
            _ = stop.wait_for(|s| *s) => {
                if seg.unflushed() > 0 {
                    seg.store_partial(store, codec).await?;
                    r.report(seg.received(), seg.flushed, false).await?;
                }
                return Ok(Ended::Stop);
            }
        };
        match ev {
            Some(Event::Data { start, data, .. }) => {
                if start != seg.received() {
                    bail!(
                        "the server sent WAL from {start}, expected {}",
                        seg.received()
                    );
                }
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let took = seg.take(rest);
                    rest = &rest[took..];
                    if seg.full() {
                        seg.store_whole(store.as_ref(), codec).await?;
                        r.report(seg.received(), seg.flushed, false).await?;
                        last_flush = Instant::now();
                        seg = Open::new(tli, seg.received(), seg_size);
                    }
                }
                let due = if opts.flush_interval.is_zero() {
                    !r.pending()
                } else {
                    opts.flush_bytes > 0 && seg.unflushed() >= opts.flush_bytes
                };
                if due && seg.unflushed() > 0 {
                    seg.store_partial(store, codec).await?;
                    r.report(seg.received(), seg.flushed, false).await?;
                    last_flush = Instant::now();
                }
            }
            Some(Event::Keepalive { reply, .. }) => {
                if reply {
                    r.report(seg.received(), seg.flushed, false).await?;
                }
            }
            Some(Event::TimelineEnd { next }) => {
                if seg.unflushed() > 0 {
                    seg.store_partial(store, codec).await?;
                }
                tracing::info!("wal-receive: timeline {tli} ended on the server (next: {next:?})");
                return Ok(Ended::Timeline);
            }
            None => {
                if seg.unflushed() > 0 {
                    seg.store_partial(store, codec).await?;
                }
                r.report(seg.received(), seg.flushed, false).await?;
                last_flush = Instant::now();
            }
        }
        if opts.stop_at.is_some_and(|at| seg.flushed >= at) {
            return Ok(Ended::Stop);
        }
    }
}

/// The segment being received: its bytes from its start.
struct Open {
    name: SegmentName,
    start: Lsn,
    size: u64,
    bytes: Vec<u8>,
    /// What the repository holds (the server is told no more).
    flushed: Lsn,
    /// The piece from the segment's start stored last by a compaction.
    base: Option<Piece>,
    /// Pieces stored since (or since the start), in order.
    deltas: Vec<Piece>,
    compaction: Option<Compaction>,
    compacted_at: Option<Instant>,
}

/// A compaction running in the background: the segment from its start up
/// to the end of the first `covers` deltas.
struct Compaction {
    piece: Piece,
    covers: usize,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Open {
    fn new(tli: u32, start: Lsn, size: u64) -> Open {
        // Offsets in stream keys are the segment's own: streaming starts at
        // segment boundaries.
        assert_eq!(start.0 % size, 0, "a segment received from its start");
        Open {
            name: SegmentName::from_segno(tli, start.0 / size, size),
            start,
            size,
            bytes: Vec::with_capacity(size as usize),
            flushed: start,
            base: None,
            deltas: Vec::new(),
            compaction: None,
            compacted_at: None,
        }
    }

    fn received(&self) -> Lsn {
        Lsn(self.start.0 + self.bytes.len() as u64)
    }

    fn unflushed(&self) -> u64 {
        self.received().0 - self.flushed.0
    }

    fn full(&self) -> bool {
        self.bytes.len() as u64 == self.size
    }

    /// Appends what fits in this segment; returns how much it took.
    fn take(&mut self, data: &[u8]) -> usize {
        let n = data
            .len()
            .min((self.size - self.bytes.len() as u64) as usize);
        self.bytes.extend_from_slice(&data[..n]);
        n
    }

    /// Stores what was received since the last flush, as one piece.
    async fn store_partial(&mut self, store: &Arc<dyn Store>, codec: &Codec) -> Result<()> {
        let from = self.flushed.0 - self.start.0;
        let to = self.bytes.len() as u64;
        let piece = Piece {
            seg: self.name,
            from,
            to,
            key: stream::key(&self.name, from, to),
        };
        store_piece(store.as_ref(), codec, &piece, &self.bytes[from as usize..]).await?;
        self.deltas.push(piece);
        self.flushed = self.received();
        self.compact(store, codec).await;
        Ok(())
    }

    /// Reaps a finished compaction; starts one when enough pieces wait.
    async fn compact(&mut self, store: &Arc<dyn Store>, codec: &Codec) {
        if self
            .compaction
            .as_ref()
            .is_some_and(|c| c.task.is_finished())
        {
            let c = self.compaction.take().expect("checked");
            match c.task.await {
                Ok(Ok(())) => {
                    self.deltas.drain(..c.covers);
                    self.base = Some(c.piece);
                }
                Ok(Err(e)) => tracing::warn!("wal-receive: {e:#} (its pieces stay)"),
                Err(e) => tracing::warn!("wal-receive: compaction of {}: {e}", self.name),
            }
        }
        let recent = self
            .compacted_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if self.compaction.is_some() || self.deltas.len() < COMPACT_AFTER || recent {
            return;
        }
        let to = self.flushed.0 - self.start.0;
        let piece = Piece {
            seg: self.name,
            from: 0,
            to,
            key: stream::key(&self.name, 0, to),
        };
        let covered: Vec<String> = self
            .base
            .iter()
            .chain(&self.deltas)
            .map(|p| p.key.clone())
            .collect();
        let data = self.bytes[..to as usize].to_vec();
        let (store, codec, p) = (store.clone(), codec.clone(), piece.clone());
        let task = tokio::spawn(async move {
            store_piece(store.as_ref(), &codec, &p, &data).await?;
            for key in covered {
                forget(store.as_ref(), &key).await;
            }
            Ok(())
        });
        self.compaction = Some(Compaction {
            piece,
            covers: self.deltas.len(),
            task,
        });
        self.compacted_at = Some(Instant::now());
    }

    async fn store_whole(&mut self, store: &dyn Store, codec: &Codec) -> Result<()> {
        // A compaction still uploading would land after the listing below.
        if let Some(c) = self.compaction.take() {
            let _ = c.task.await;
        }
        store_local(store, codec, &self.name.to_string(), &self.bytes).await?;
        for p in stream::list(store, &self.name).await? {
            forget(store, &p.key).await;
        }
        self.base = None;
        self.deltas.clear();
        self.flushed = self.received();
        tracing::info!("wal-receive: stored {}", self.name);
        Ok(())
    }
}

/// Stores `bytes` as `piece`, create-only; one stored already (by an earlier
/// run that stopped before telling the server) holds the same bytes.
async fn store_piece(store: &dyn Store, codec: &Codec, piece: &Piece, bytes: &[u8]) -> Result<()> {
    let data = bytes.to_vec();
    let c = codec.clone();
    let (_, encoded) =
        tokio::task::spawn_blocking(move || c.encode_to_vec(&mut &data[..])).await??;
    match store
        .write_bytes(&piece.key, encoded.into(), Class::Standard, Mode::Create)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if crate::store::already_stored(&e) => Ok(()),
        Err(e) => Err(e.context(format!("storing {}", piece.key))),
    }
}

/// A stream object superseded: deleted, or left to its lock's expiry.
async fn forget(store: &dyn Store, key: &str) {
    if let Err(e) = store.delete(key).await {
        tracing::debug!("{key} stays until its retention ends: {e:#}");
    }
}

/// Stores WAL file `name` (a segment or a history file) as wal-push does,
/// through a private local copy (the checks and comparison read a file).
async fn store_local(store: &dyn Store, codec: &Codec, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("walvault-receive-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    super::push::store_file(store, codec, &path).await?;
    Ok(())
}

/// Where a session streams from.
#[derive(Debug, PartialEq)]
struct Start {
    tli: u32,
    from: Lsn,
}

/// Chooses where to stream from, given what the repository holds (`held`:
/// timeline → how far) of the server's timeline `sys` and of its ancestors
/// (its history, oldest first).
///
/// - Something held on the server's timeline: after it.
/// - Else the newest ancestor held: when it is not held to its end (the
///   switch happened while this receiver was down), that timeline from
///   there (the server streams it to its end, then says which comes next);
///   when it is, the timeline after it from where it began.
/// - Nothing held: the server's timeline from where it began, else from now.
///
/// Always from a segment's start: a segment is stored from its start.
fn choose_start(
    sys: (u32, Lsn),
    ancestors: &[HistoryEntry],
    held: &BTreeMap<u32, Lsn>,
    seg_size: u64,
) -> Start {
    let (tli, position) = sys;
    let at = |tli: u32, l: Lsn| Start {
        tli,
        from: Lsn(l.0 / seg_size * seg_size),
    };
    if let Some(&h) = held.get(&tli) {
        return at(tli, h);
    }
    for (i, e) in ancestors.iter().enumerate().rev() {
        let Some(&h) = held.get(&e.parent_tli) else {
            continue;
        };
        if h < e.switch_lsn {
            return at(e.parent_tli, h);
        }
        let child = ancestors.get(i + 1).map_or(tli, |n| n.parent_tli);
        return at(child, e.switch_lsn);
    }
    at(tli, ancestors.last().map_or(position, |e| e.switch_lsn))
}

/// [`choose_start`] on what the repository holds, read newest timeline
/// first and only as far as needed. WAL given up counts as held.
async fn start_point(
    store: &dyn Store,
    sys: &System,
    ancestors: &[HistoryEntry],
    given_up: &BTreeMap<u32, Lsn>,
    seg_size: u64,
) -> Result<Start> {
    let mut held = BTreeMap::new();
    let newest_first =
        std::iter::once(sys.timeline).chain(ancestors.iter().rev().map(|e| e.parent_tli));
    for t in newest_first {
        let stored = held_on(store, t, seg_size).await?;
        if let Some(h) = stored.max(given_up.get(&t).copied()) {
            held.insert(t, h);
            break;
        }
    }
    Ok(choose_start(
        (sys.timeline, sys.position),
        ancestors,
        &held,
        seg_size,
    ))
}

/// How far the repository holds `tli`'s WAL: the end of its newest complete
/// segment, or how far the stream objects of a later segment reach from its
/// start, whichever is further.
async fn held_on(store: &dyn Store, tli: u32, seg_size: u64) -> Result<Option<Lsn>> {
    let mut end = None;
    for o in store.list(&super::key(&format!("{tli:08X}"))).await? {
        let name = o.key.trim_start_matches("wal/");
        if let Ok(WalFile::Segment(s)) = WalFile::parse(name) {
            end = end.max(Some(Lsn((s.segno(seg_size)? + 1) * seg_size)));
        }
    }
    let pieces = store
        .list(&format!("{}{tli:08X}", stream::PREFIX))
        .await?
        .iter()
        .filter_map(|o| stream::parse(&o.key))
        .filter(|p| p.seg.tli == tli)
        .collect::<Vec<_>>();
    for (seg, reach) in stream::reach(pieces) {
        end = end.max(Some(Lsn(seg.segno(seg_size)? * seg_size + reach)));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_that_ended_while_the_receiver_was_down_is_streamed_to_its_end() {
        const SEG: u64 = 16 << 20;
        let entry = |parent_tli: u32, switch: u64| HistoryEntry {
            parent_tli,
            switch_lsn: Lsn(switch),
            reason: String::new(),
        };
        // Timeline 3: 1 ended at 0/5000100, 2 at 0/7000200.
        let history = [entry(1, 5 * SEG + 0x100), entry(2, 7 * SEG + 0x200)];
        let now = Lsn(9 * SEG + 5);
        let start = |held: &[(u32, u64)]| {
            let held = held.iter().map(|&(t, l)| (t, Lsn(l))).collect();
            let s = choose_start((3, now), &history, &held, SEG);
            (s.tli, s.from.0 / SEG)
        };
        // Held on the server's timeline: after it (a partial segment again from its start).
        assert_eq!(start(&[(3, 8 * SEG + 10)]), (3, 8));
        assert_eq!(start(&[(3, 9 * SEG)]), (3, 9));
        // Timeline 1 held short of its end: the rest of it first.
        assert_eq!(start(&[(1, 3 * SEG + 7)]), (1, 3));
        assert_eq!(start(&[(1, 5 * SEG)]), (1, 5));
        // Timeline 1 held to its end (or past it: the old primary's WAL the
        // promoted server never had): timeline 2 from where it began.
        assert_eq!(start(&[(1, 5 * SEG + 0x100)]), (2, 5));
        assert_eq!(start(&[(1, 6 * SEG)]), (2, 5));
        // Timeline 2 short of its end, then to it.
        assert_eq!(start(&[(2, 6 * SEG + 1)]), (2, 6));
        assert_eq!(start(&[(2, 7 * SEG + 0x200)]), (3, 7));
        // Nothing held: the server's timeline from where it began; with no
        // history, from now.
        assert_eq!(start(&[]), (3, 7));
        let s = choose_start((1, now), &[], &BTreeMap::new(), SEG);
        assert_eq!((s.tli, s.from), (1, Lsn(9 * SEG)));
    }

    /// Down past what its slot kept (or its slot dropped): what the server
    /// recycled is given up once per timeline, then streaming goes on from
    /// the server's current segment, whatever the repository holds before.
    #[tokio::test]
    async fn wal_the_server_recycled_is_given_up_once_then_streaming_goes_on() {
        const SEG: u64 = 16 << 20;
        let (_dir, path) = crate::testing::temp_dir_at("repo");
        let store = crate::store::fs::FsStore::new(path);
        let old = SegmentName::from_segno(1, 3, SEG).to_string();
        store
            .put_bytes(
                &super::super::key(&old),
                vec![0u8; 10].into(),
                Class::Standard,
            )
            .await
            .unwrap();
        let history = [HistoryEntry {
            parent_tli: 1,
            switch_lsn: Lsn(5 * SEG + 0x100),
            reason: String::new(),
        }];
        let sys = System {
            system_id: 1,
            timeline: 2,
            position: Lsn(9 * SEG + 5),
        };
        let mut past = Past::default();
        let start = |past: &Past| {
            let (store, sys, history) = (&store, &sys, &history);
            let given_up = past.given_up.clone();
            async move {
                let s = start_point(store, sys, history, &given_up, SEG)
                    .await
                    .unwrap();
                (s.tli, s.from.0 / SEG)
            }
        };
        // Timeline 1 held to 0/4000000: its rest first.
        assert_eq!(start(&past).await, (1, 4));
        let e = anyhow::anyhow!("requested WAL segment has already been removed");
        past.give_up(1, Lsn(4 * SEG), &sys, SEG, &e);
        // Its rest gone: timeline 2 from where it began.
        assert_eq!(start(&past).await, (2, 5));
        past.give_up(2, Lsn(5 * SEG), &sys, SEG, &e);
        // That gone too: from the server's current segment.
        assert_eq!(start(&past).await, (2, 9));
        assert_eq!(past.given_up.len(), 2);
    }

    #[test]
    fn a_segment_fills_to_its_size_and_no_further() {
        let mut o = Open::new(1, Lsn(3 << 24), 1 << 24);
        assert_eq!(o.take(&[1u8; 10]), 10);
        assert_eq!(o.unflushed(), 10);
        let big = vec![2u8; 1 << 24];
        assert_eq!(o.take(&big), (1 << 24) - 10);
        assert!(o.full());
        assert_eq!(o.received(), Lsn(4 << 24));
        assert_eq!(o.name.to_string(), "000000010000000000000003");
    }
}
