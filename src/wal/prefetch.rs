//! Prefetch for recovery: while PostgreSQL replays segment N, a background
//! `walvault wal-prefetch` downloads the next ones into a spool directory, and
//! `wal-fetch` serves them from there.
//!
//! The prefetcher lives as long as replay keeps asking: each `wal-fetch` records
//! the segment asked for (the spool's `asked` file), and the prefetcher keeps
//! the `fetch.prefetch` segments after it downloaded or under way, in order,
//! several at once, over the same connections. It decodes each (every checksum
//! checked) into the spool with a sidecar holding the CRC32 of what it wrote;
//! `wal-fetch` serves a copy only when that still matches (a millisecond, where
//! sha256 would take ten), by a rename, without opening the repository, and
//! waits for a copy under way rather than downloading it a second time.
//! Nothing in the spool is fsynced: a copy a crash damaged fails its CRC32 and
//! is fetched again. A damaged copy is dropped and fetched again. The spool lies in
//! pg_wal by default (base backups never copy pg_wal; a copy left by
//! pg_rewind is checked like any other). Segments of another timeline than the
//! one asked for, and segments before it, are dropped; the whole spool goes at
//! the end of recovery (`wal-prefetch --clean` as recovery_end_command, or the
//! first `wal-push` after it).

use super::names::{segments_per_xlogid, SegmentName, WalFile};
use crate::codec::Codec;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DIR: &str = "walvault_prefetch";
const PID_FILE: &str = "prefetcher.pid";
/// The segment replay asked for last, written by each `wal-fetch`.
const ASKED: &str = "asked";
/// A prefetcher whose replay asks for nothing new this long exits (the next
/// `wal-fetch` starts another).
const IDLE: Duration = Duration::from_secs(30);
/// How often a prefetcher with nothing to start looks at `asked` again.
const TICK: Duration = Duration::from_millis(5);
/// A copy under way that grows by nothing this long is not waited for.
const STALLED: Duration = Duration::from_secs(5);

/// A prefetcher that follows replay: `ahead` segments of `segment_size` after
/// the one asked for last.
#[derive(Clone, Copy, Debug)]
pub struct Follow {
    pub ahead: usize,
    pub segment_size: u64,
}

pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    pub fn at(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join("wal").join(name)
    }

    fn sidecar(&self, name: &str) -> PathBuf {
        self.dir.join("wal").join(format!("{name}.sha256"))
    }

    /// Where the prefetcher writes `name` before its rename: present while the
    /// download is under way.
    fn partial(&self, name: &str) -> PathBuf {
        self.dir.join("wal").join(format!(".{name}.tmp"))
    }

    /// Records that replay asks for `name` now (a spool no prefetcher made yet
    /// has nobody to tell). Atomic by rename; durable it need not be.
    pub fn record_asked(&self, name: &str) {
        if !self.dir.is_dir() {
            return;
        }
        let tmp = self.dir.join(format!(".{ASKED}.{}", std::process::id()));
        if std::fs::write(&tmp, name)
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(ASKED)))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The segment replay asked for last.
    fn asked(&self) -> Option<SegmentName> {
        let text = std::fs::read_to_string(self.dir.join(ASKED)).ok()?;
        match WalFile::parse(text.trim()) {
            Ok(WalFile::Segment(s)) => Some(s),
            _ => None,
        }
    }

    /// Waits while the running prefetcher is downloading `name` and the copy
    /// still grows; true once it is held. False: fetch it directly.
    pub fn wait_for(&self, name: &str) -> bool {
        let partial = self.partial(name);
        let (mut size, mut grew) = (None, Instant::now());
        loop {
            if self.has(name) {
                return true;
            }
            let now = std::fs::metadata(&partial).ok().map(|m| m.len());
            if now.is_none() || self.prefetcher().is_none() {
                return self.has(name);
            }
            if now != size {
                (size, grew) = (now, Instant::now());
            } else if grew.elapsed() > STALLED {
                tracing::warn!(
                    "the prefetch of {name} has not progressed in {STALLED:?}; fetching it directly"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Moves the prefetched `name` to `dest` once its CRC32 matches the one
    /// recorded when it was written. `Ok(false)`: not held. An error: damaged
    /// (the copy is gone either way).
    pub fn serve(&self, name: &str, dest: &Path) -> Result<bool> {
        let (data, side) = (self.file(name), self.sidecar(name));
        if !data.is_file() {
            return Ok(false);
        }
        let result = (|| -> Result<()> {
            // A spool may be shared or tampered with: only this cluster's copy of
            // exactly this segment is served.
            let WalFile::Segment(seg) = WalFile::parse(name)? else {
                bail!("{name} is not a segment");
            };
            let sysid = crate::pg::control::pgdata_of_wal_path(dest)
                .and_then(|d| crate::pg::control::system_identifier(&d).ok())
                .context("the cluster restoring it cannot be told (no pg_control beside pg_wal)")?;
            super::header::check_segment_file(&data, &seg, Some(sysid))?;
            let recorded = std::fs::read_to_string(&side).context("no checksum recorded")?;
            let (want, len) = recorded
                .split_once(' ')
                .context("unreadable checksum record")?;
            let (crc, got_len) = crc32_of(&data)?;
            let crc = format!("{crc:08x}");
            if crc != want || got_len.to_string() != len.trim() {
                bail!(
                    "CRC32 {crc} ({got_len} bytes) differs from the recorded {want} ({} bytes)",
                    len.trim()
                );
            }
            // Same file system in the default place: a rename; else a copy,
            // renamed into place (atomic, as a direct fetch).
            if std::fs::rename(&data, dest).is_err() {
                let tmp = dest.with_extension("walvault-spool");
                std::fs::copy(&data, &tmp)?;
                std::fs::rename(&tmp, dest)?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&data);
        let _ = std::fs::remove_file(&side);
        result.map(|()| true)
    }

    /// The spool for a restore into `dest`: the configured directory, else
    /// `walvault_prefetch` beside it when `dest` is in a pg_wal (restore_command's
    /// %p); none for a file fetched by hand elsewhere.
    pub fn for_dest(dest: &Path, configured: Option<&Path>) -> Option<Spool> {
        let spool = match configured {
            Some(c) => Spool::at(c.to_path_buf()),
            None => {
                // Only the startup process restores into pg_wal/RECOVERYXLOG.
                // Other clients (pg_rewind --restore-target-wal names the
                // segment itself) get no spool: pg_rewind walks pg_wal and
                // fails on files a prefetcher adds and removes under it.
                if dest.file_name()? != "RECOVERYXLOG" {
                    return None;
                }
                let dir = dest.parent()?;
                if dir.file_name()? != "pg_wal" {
                    return None;
                }
                Spool::at(dir.join(DIR))
            }
        };
        match spool.check_private() {
            Ok(()) => Some(spool),
            Err(e) => {
                tracing::warn!("prefetch off: {e:#}");
                None
            }
        }
    }

    /// Another user who can write the spool could hand PostgreSQL any WAL: a
    /// spool directory must be this user's alone (0700), or it is not used.
    fn check_private(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::symlink_metadata(&self.dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("{}", self.dir.display())),
        };
        let uid = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            bail!(
                "the spool directory {} is not private (mode {:o}, owner uid {}): make it a directory of uid {uid} with mode 0700 (fetch.spool_dir)",
                self.dir.display(),
                meta.mode() & 0o7777,
                meta.uid()
            );
        }
        Ok(())
    }

    /// Segments held, by name.
    fn held(&self) -> Vec<SegmentName> {
        std::fs::read_dir(self.dir.join("wal"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| match WalFile::parse(e.file_name().to_str()?) {
                        Ok(WalFile::Segment(s)) => Some(s),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops what replay at `seg` will not ask for: other timelines, earlier
    /// segments. A prefetcher working on another timeline is stopped.
    pub fn forget_before(&self, seg: SegmentName) {
        if let Some((pid, tli)) = self.prefetcher() {
            if tli != seg.tli {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for s in self.held() {
            if s.tli != seg.tli || (s.log, s.seg) < (seg.log, seg.seg) {
                let name = s.to_string();
                let _ = std::fs::remove_file(self.file(&name));
                let _ = std::fs::remove_file(self.sidecar(&name));
            }
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_file()
    }

    /// Downloads and decodes `name` into the spool, checksum recorded, then the
    /// data renamed into place (its presence means complete).
    async fn fill(&self, store: &dyn Store, codec: &Codec, name: &str) -> Result<bool> {
        let tmp = self.partial(name);
        let f = Crc32Writer {
            inner: std::fs::File::create(&tmp)?,
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        let Some((_, f)) = codec.download(store, &super::key(name), f).await? else {
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        };
        let (crc, len) = (f.crc.finalize(), f.len);
        std::fs::write(self.sidecar(name), format!("{crc:08x} {len}"))?;
        std::fs::rename(&tmp, self.file(name))?;
        Ok(true)
    }

    /// The `n` segments after `seg` on its timeline, in order.
    fn after(seg: SegmentName, seg_size: u64, n: usize) -> Vec<String> {
        let per = segments_per_xlogid(seg_size) as u32;
        let mut names = Vec::with_capacity(n);
        let mut cur = seg;
        for _ in 0..n {
            cur = if cur.seg + 1 >= per {
                SegmentName {
                    tli: cur.tli,
                    log: cur.log + 1,
                    seg: 0,
                }
            } else {
                SegmentName {
                    seg: cur.seg + 1,
                    ..cur
                }
            };
            names.push(cur.to_string());
        }
        names
    }

    /// The next `n` segments after `seg` on its timeline that are not held.
    pub fn missing_after(&self, seg: SegmentName, seg_size: u64, n: usize) -> Vec<String> {
        Self::after(seg, seg_size, n)
            .into_iter()
            .filter(|name| !self.has(name))
            .collect()
    }

    /// How many more segments of `seg_size` the spool's file system holds,
    /// keeping one segment's worth free for everything else.
    pub fn room_for(&self, seg_size: u64) -> Result<usize> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes())?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("free space of {}", self.dir.display()));
        }
        let free = st.f_bavail as u64 * st.f_frsize as u64;
        Ok((free / seg_size.max(1)).saturating_sub(1) as usize)
    }

    /// The running prefetcher: pid and timeline. The pid file also records the
    /// process's start time, so a pid reused by another process is not taken
    /// (nor signalled) for the prefetcher.
    pub fn prefetcher(&self) -> Option<(i32, u32)> {
        let text = std::fs::read_to_string(self.dir.join(PID_FILE)).ok()?;
        let mut it = text.split_whitespace();
        let pid: i32 = it.next()?.parse().ok()?;
        let tli: u32 = it.next()?.parse().ok()?;
        let started: u64 = it.next()?.parse().ok()?;
        (process_start(pid) == Some(started)).then_some((pid, tli))
    }

    /// Starts a detached `walvault wal-prefetch` for `names`, following replay
    /// from `asked` on, unless one runs. The binary is this very one (by
    /// /proc/self/exe), so a relative name or the wrapper in restore_command
    /// makes no difference; it inherits the environment.
    pub fn spawn(
        &self,
        config_file: Option<&Path>,
        sets: &[String],
        asked: SegmentName,
        follow: Follow,
        names: &[String],
    ) -> Result<()> {
        if names.is_empty() || self.prefetcher().is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        self.record_asked(&asked.to_string());
        let exe = std::env::current_exe().context("cannot locate the walvault binary")?;
        let log = std::fs::File::create(self.dir.join("prefetch.log"))?;
        let mut cmd = std::process::Command::new(exe);
        if let Some(c) = config_file {
            cmd.arg("--config").arg(c);
        }
        for kv in sets {
            cmd.arg("--set").arg(kv);
        }
        cmd.arg("wal-prefetch")
            .arg("--spool")
            .arg(&self.dir)
            .arg("--timeline")
            .arg(asked.tli.to_string())
            .arg("--ahead")
            .arg(follow.ahead.to_string())
            .arg("--segment-size")
            .arg(follow.segment_size.to_string())
            .args(names)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        use std::os::unix::process::CommandExt;
        // Its own session: PostgreSQL's signals to restore_command's group do not
        // reach it, and it never holds the terminal.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().context("starting the prefetcher")?;
        Ok(())
    }

    /// Stops a prefetcher and removes the spool.
    pub fn clean(&self) -> Result<()> {
        if let Some((pid, _)) = self.prefetcher() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..100 {
                if unsafe { libc::kill(pid, 0) } != 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.dir.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Writes through, computing the CRC32 of what was written.
struct Crc32Writer {
    inner: std::fs::File,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Write for Crc32Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn crc32_of(path: &Path) -> Result<(u32, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((h.finalize(), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

/// What one prefetcher is to do: `names` of timeline `tli`, `concurrency` at
/// once, then follow replay when `follow` is given.
pub struct Job {
    pub tli: u32,
    pub names: Vec<String>,
    pub concurrency: usize,
    pub follow: Option<Follow>,
}

/// `wal-prefetch`: downloads and decodes `names` into the spool, several at
/// once, in order; with `follow`, then keeps the segments after the one replay
/// asked for last, until replay moves to another timeline, reaches the end of
/// the archive, or asks for nothing new for a while. Exits quietly when
/// another prefetcher runs.
pub async fn run(store: &dyn Store, codec: &Codec, spool: &Spool, job: Job) -> Result<()> {
    let tli = job.tli;
    std::fs::create_dir_all(spool.dir.join("wal"))?;
    let pid_file = spool.dir.join(PID_FILE);
    if spool.prefetcher().is_some() {
        return Ok(());
    }
    let _ = std::fs::remove_file(&pid_file); // a dead one's
    let me = std::process::id().to_string();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&pid_file)
            .context("another prefetcher started")?;
        let started = process_start(std::process::id() as i32)
            .context("cannot read this process's start time")?;
        write!(f, "{me} {tli} {started}")?;
    }
    let ours = || {
        std::fs::read_to_string(&pid_file)
            .is_ok_and(|t| t.split_whitespace().next() == Some(me.as_str()))
    };
    fill_in_order(store, codec, spool, &job, &ours).await;
    if ours() {
        let _ = std::fs::remove_file(&pid_file);
    }
    Ok(())
}

/// The prefetcher's loop (see `run`). Every download is its own: one that
/// fails is logged and left to `wal-fetch`, which fetches it directly.
async fn fill_in_order(
    store: &dyn Store,
    codec: &Codec,
    spool: &Spool,
    job: &Job,
    ours: &dyn Fn() -> bool,
) {
    let Job {
        tli,
        ref names,
        concurrency,
        follow,
    } = *job;
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut under_way = FuturesUnordered::new();
    let mut started: HashSet<String> = HashSet::new();
    // The first segment found absent: the archive ends there (for now), so
    // nothing after it is started.
    let mut end: Option<String> = None;
    let (mut last_asked, mut moved) = (spool.asked(), Instant::now());
    loop {
        if !ours() {
            break; // cleaned, or replaced
        }
        let asked = spool.asked();
        if asked != last_asked {
            (last_asked, moved) = (asked, Instant::now());
        }
        let wanted = match (follow, asked) {
            (Some(_), Some(a)) if a.tli != tli => break, // replay switched timeline
            (Some(f), Some(a)) => Spool::after(a, f.segment_size, f.ahead),
            _ => names.clone(),
        };
        let mut room = None;
        for name in wanted {
            if under_way.len() >= concurrency.max(1) {
                break;
            }
            if end.as_ref().is_some_and(|e| &name >= e) {
                break;
            }
            if started.contains(&name) || spool.has(&name) {
                continue;
            }
            // A full disk costs speed only: nothing more is started.
            let size = follow.map_or(16 << 20, |f| f.segment_size);
            if *room.get_or_insert_with(|| spool.room_for(size).unwrap_or(0)) == 0 {
                break;
            }
            room = room.map(|r| r - 1);
            started.insert(name.clone());
            under_way.push(async move {
                let r = spool.fill(store, codec, &name).await;
                (name, r)
            });
        }
        if under_way.is_empty() {
            let idle = follow.is_none() || end.is_some() || moved.elapsed() > IDLE;
            if idle {
                break;
            }
            tokio::time::sleep(TICK).await;
            continue;
        }
        // Whichever comes first: a download done, or time to look at `asked`.
        let done = tokio::select! {
            d = under_way.next() => d,
            _ = tokio::time::sleep(TICK) => None,
        };
        match done {
            Some((name, Ok(true))) => tracing::debug!("prefetched {name}"),
            Some((name, Ok(false))) => {
                tracing::debug!("{name} is not in the archive (yet)");
                if end.as_ref().is_none_or(|e| &name < e) {
                    end = Some(name);
                }
            }
            Some((name, Err(e))) => {
                // Leave nothing half-written behind.
                let _ = std::fs::remove_file(spool.partial(&name));
                let _ = std::fs::remove_file(spool.sidecar(&name));
                tracing::warn!("prefetching {name}: {e:#}");
            }
            None => {}
        }
    }
}

/// When process `pid` started (clock ticks since boot, /proc/PID/stat field
/// 22); None when there is no such process.
fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// After recovery: a spool left in this pg_wal (no recovery_end_command) is
/// removed once the server no longer recovers.
pub fn clean_after_recovery(wal_path: &Path) {
    let Some(pgdata) = crate::pg::control::pgdata_of_wal_path(wal_path) else {
        return;
    };
    let spool = pgdata.join("pg_wal").join(DIR);
    if spool.exists()
        && !pgdata.join("recovery.signal").exists()
        && !pgdata.join("standby.signal").exists()
    {
        if let Err(e) = Spool::at(spool).clean() {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(s: &str) -> SegmentName {
        match WalFile::parse(s).unwrap() {
            WalFile::Segment(s) => s,
            _ => panic!(),
        }
    }

    #[test]
    fn spool_place_and_housekeeping() {
        let (d, wal) = crate::testing::temp_path("pg_wal");
        assert!(Spool::for_dest(&d.path().join("x/RECOVERYXLOG"), None).is_none());
        let s = Spool::for_dest(&wal.join("RECOVERYXLOG"), None).unwrap();
        assert_eq!(s.dir, wal.join(DIR));
        // pg_rewind's %p is the segment's own name in pg_wal: no spool there.
        assert!(Spool::for_dest(&wal.join("000000010000000000000003"), None).is_none());
        let c = Spool::for_dest(&d.path().join("x/f"), Some(Path::new("/spool"))).unwrap();
        assert_eq!(c.dir, Path::new("/spool"));

        std::fs::create_dir_all(s.dir.join("wal")).unwrap();
        for n in [
            "0000000100000000000000FE",
            "0000000100000000000000FF",
            "000000010000000100000000",
            "000000020000000100000000",
        ] {
            std::fs::write(s.dir.join("wal").join(n), b"x").unwrap();
        }
        // 16 MiB segments: FF is the last of log 0.
        let want = s.missing_after(seg("0000000100000000000000FE"), 16 << 20, 3);
        assert_eq!(want, ["000000010000000100000001"]);
        s.forget_before(seg("0000000100000000000000FF"));
        let mut held: Vec<String> = s.held().iter().map(|x| x.to_string()).collect();
        held.sort();
        assert_eq!(
            held,
            ["0000000100000000000000FF", "000000010000000100000000"]
        );
        s.clean().unwrap();
        assert!(!s.dir.exists());
    }

    #[test]
    fn replay_position_is_recorded_and_a_dead_prefetch_not_waited_for() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::at(d.path().join("spool"));
        // No spool made yet: nobody to tell.
        s.record_asked("000000010000000000000003");
        assert_eq!(s.asked(), None);
        std::fs::create_dir_all(s.dir.join("wal")).unwrap();
        s.record_asked("0000000100000000000000FF");
        assert_eq!(s.asked(), Some(seg("0000000100000000000000FF")));
        assert_eq!(
            Spool::after(seg("0000000100000000000000FF"), 16 << 20, 2),
            ["000000010000000100000000", "000000010000000100000001"]
        );
        // A download under way whose prefetcher is gone: fetch directly, at once.
        std::fs::write(s.partial("000000010000000100000000"), b"half").unwrap();
        let t = Instant::now();
        assert!(!s.wait_for("000000010000000100000000"));
        assert!(t.elapsed() < Duration::from_secs(1));
        // Held already: served.
        std::fs::write(s.file("000000010000000100000000"), b"x").unwrap();
        assert!(s.wait_for("000000010000000100000000"));
    }

    #[test]
    fn a_spool_others_can_write_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let (d, sp) = crate::testing::temp_path("spool");
        std::fs::create_dir(&sp).unwrap();
        let dest = d.path().join("pg_wal/RECOVERYXLOG");
        std::fs::set_permissions(&sp, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(Spool::for_dest(&dest, Some(&sp)).is_none());
        std::fs::set_permissions(&sp, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(Spool::for_dest(&dest, Some(&sp)).is_some());
    }

    #[test]
    fn a_reused_pid_is_not_the_prefetcher() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::at(d.path().to_path_buf());
        let me = std::process::id();
        let started = process_start(me as i32).unwrap();
        let pid_file = d.path().join(PID_FILE);
        std::fs::write(&pid_file, format!("{me} 3 {started}")).unwrap();
        assert_eq!(s.prefetcher(), Some((me as i32, 3)));
        // The same pid, but another process (started at another time).
        std::fs::write(&pid_file, format!("{me} 3 {}", started + 1)).unwrap();
        assert_eq!(s.prefetcher(), None);
        std::fs::write(&pid_file, format!("{me} 3")).unwrap();
        assert_eq!(s.prefetcher(), None);
    }

    #[test]
    fn the_spool_serves_only_this_clusters_segment() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("global")).unwrap();
        std::fs::create_dir_all(d.path().join("pg_wal")).unwrap();
        std::fs::write(d.path().join("global/pg_control"), 42u64.to_le_bytes()).unwrap();
        let dest = d.path().join("pg_wal/RECOVERYXLOG");
        let s = Spool::for_dest(&dest, None).unwrap();
        std::fs::create_dir_all(s.dir.join("wal")).unwrap();
        let put = |name: &str, sysid: u64, pageaddr: u64| {
            let mut data = crate::wal::header::fake_header(0xD110, 1, pageaddr, sysid, 16 << 20);
            data.resize(16 << 20, 0);
            std::fs::write(s.file(name), &data).unwrap();
            let (crc, len) = crc32_of(&s.file(name)).unwrap();
            std::fs::write(s.sidecar(name), format!("{crc:08x} {len}")).unwrap();
        };
        put("000000010000000000000003", 42, 0x3000000);
        assert!(s.serve("000000010000000000000003", &dest).unwrap());
        assert!(dest.exists());
        std::fs::remove_file(&dest).unwrap();
        // Segment 3's content under segment 4's name.
        put("000000010000000000000004", 42, 0x3000000);
        let e = s.serve("000000010000000000000004", &dest).unwrap_err();
        assert!(
            format!("{e:#}").contains("000000010000000000000003"),
            "{e:#}"
        );
        // Another cluster's segment.
        put("000000010000000000000005", 43, 0x5000000);
        let e = s.serve("000000010000000000000005", &dest).unwrap_err();
        assert!(format!("{e:#}").contains("another cluster"), "{e:#}");
        assert!(!dest.exists());
    }
}
