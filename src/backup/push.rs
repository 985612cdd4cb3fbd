//! `backup-push`: an online base backup through the non-exclusive backup API.
//!
//! The session that calls pg_backup_start stays open until pg_backup_stop; if
//! walvault dies in between, the server ends the backup with the session and the
//! repository holds parts without a manifest: an incomplete backup, never listed.

use super::blockhash::BlockHash;
use super::filelist;
use super::read::Reader;
use super::resume;
use super::walk::{self, Entry, Kind, PG_CONTROL};
use super::{
    ChecksumFailure, FileRecord, Manifest, Part, Tablespace, TakenOn, INCREMENTAL_FORMAT,
    MANIFEST_FORMAT,
};
use crate::codec::Codec;
use crate::config::Config;
use crate::progress::Progress;
use crate::store::{Class, Mode, Store};
use crate::wal::names::{Lsn, SegmentName};
use crate::{pg, repo};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Options {
    pub pgdata: Option<PathBuf>,
    /// Request an immediate checkpoint instead of a spread one.
    pub fast: bool,
    pub label: Option<String>,
    /// `--full` (Some(false)) or `--incremental` (Some(true)); None: `backup.incremental`.
    pub incremental: Option<bool>,
}

pub async fn run(
    cfg: &Config,
    store: Arc<dyn Store>,
    codec: &Codec,
    opts: Options,
) -> Result<Manifest> {
    let t0 = Instant::now();
    let client = pg::conn::connect(cfg.postgres.conninfo.as_deref()).await?;
    let row = client
        .query_one(
            "select current_setting('data_directory'), current_setting('server_version_num')::int, \
             (select system_identifier from pg_control_system())::text, \
             (select setting::bigint from pg_settings where name = 'wal_segment_size'), \
             pg_is_in_recovery(), current_setting('archive_mode'), \
             current_setting('data_checksums') = 'on', \
             (select timeline_id from pg_control_checkpoint())::int",
            &[],
        )
        .await
        .context("reading the server's settings")?;
    let (data_directory, version, sysid, seg_size, in_recovery, archive_mode): (
        String,
        i32,
        String,
        i64,
        bool,
        String,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    let (checksums, current_tli): (bool, i32) = (row.get(6), row.get(7));
    // Before anything is started or copied: a major whose WAL walvault cannot
    // archive would leave a backup waiting for WAL that never arrives.
    pg::majors::require(
        pg::majors::of_version_num(version.into()),
        &format!("the server's server_version_num is {version}"),
    )?;
    // On a standby the primary archives (or both, with archive_mode = always).
    let upstream = if in_recovery {
        Some(super::standby::check(&client, cfg.backup.standby_max_lag_mb).await?)
    } else {
        None
    };
    if upstream.is_none() && archive_mode == "off" {
        bail!("archive_mode is off: a base backup without archived WAL cannot be restored; set archive_mode = on and archive_command = 'walvault wal-push %p'");
    }
    let sysid: u64 = sysid.parse().context("system identifier")?;
    // The configuration as the backup starts: files outside PGDATA are stored beside it.
    let (server_config, config_files) =
        super::server_config::collect(&client, &data_directory).await?;
    let pgdata = opts
        .pgdata
        .clone()
        .unwrap_or_else(|| PathBuf::from(&data_directory));
    let local = pg::control::system_identifier(&pgdata)?;
    if local != sysid {
        bail!(
            "{} belongs to cluster {local}, but the server walvault connected to is cluster {sysid}; point --pgdata/PGDATA and PGHOST/PGPORT at the same cluster",
            pgdata.display()
        );
    }
    // One backup-push at a time per data directory (until this process exits).
    let _lock = lock_pgdata(&pgdata)?;
    repo::ensure(store.as_ref(), sysid, Some(version as u32 / 10000)).await?;
    let parent = if opts.incremental.unwrap_or(cfg.backup.incremental) {
        find_parent(
            cfg,
            store.clone(),
            codec,
            &pgdata,
            current_tli as u32,
            version as u32 / 10000,
        )
        .await?
    } else {
        None
    };
    let parent_id = parent.as_ref().map(|(m, _, _)| m.id.clone());

    // A backup-push killed here within the day with the same parent: its id is
    // taken over and its stored parts reused where their files are unchanged.
    let previous = match resume::interrupted(&pgdata)
        .filter(|r| r.parent == parent_id && resume::recent(&r.id, Utc::now()))
    {
        Some(r) if store.head(&super::manifest_key(&r.id)).await?.is_none() => Some(r),
        _ => None,
    };
    // Otherwise the id is the start second; it must be fresh (a killed push
    // may have left parts under the id of its second).
    let (started, id) = loop {
        let t: DateTime<Utc> = client
            .query_one("select clock_timestamp()", &[])
            .await?
            .get(0);
        if let Some(r) = &previous {
            break (t, r.id.clone());
        }
        let id = t.format("%Y%m%dT%H%M%SZ").to_string();
        if store.list(&super::prefix(&id)).await?.is_empty() {
            break (t, id);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // New parts of a resumed backup never take a name its first run used.
    let part_suffix = match &previous {
        Some(r) => {
            tracing::info!(
                "backup {id}: resuming the interrupted backup ({} parts stored before)",
                r.parts()
            );
            // What the first run wrote after its parts is written again.
            for name in ["backup_label", "tablespace_map", "files.json"] {
                let key = format!("{}{name}", super::prefix(&id));
                if store.head(&key).await?.is_some() {
                    store.delete(&key).await?;
                }
            }
            started.format("-%H%M%S").to_string()
        }
        None => String::new(),
    };
    let journal = Arc::new(resume::Journal::start(
        &pgdata,
        &id,
        parent_id.as_deref(),
        previous.as_ref(),
    )?);
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| format!("walvault {id}"));
    let start_sql = if version >= 150000 {
        "select pg_backup_start($1, $2)::text"
    } else {
        "select pg_start_backup($1, $2, false)::text"
    };
    tracing::info!(
        "backup {id}: starting ({} checkpoint)",
        if opts.fast { "fast" } else { "spread" }
    );
    let start_lsn: String = client
        .query_one(start_sql, &[&label, &opts.fast])
        .await
        .context("pg_backup_start failed")?
        .get(0);
    let start = Lsn::parse(&start_lsn)?;
    tracing::info!(
        "backup {id}: started at {start}, reading {}{}{}",
        pgdata.display(),
        match &upstream {
            Some(u) => format!(
                " on a standby of {} ({} KiB of replay behind it)",
                u.primary,
                u.lag_bytes >> 10
            ),
            None => String::new(),
        },
        match &parent {
            Some((m, _, _)) => format!(
                " (incremental on {}: what changed since {})",
                m.id, m.start_lsn
            ),
            None => String::new(),
        }
    );
    let mut parent = parent;
    if let Some((m, p, _)) = parent.as_mut() {
        if version >= 170000 {
            let summaries = if m.timeline == current_tli as u32 {
                super::summaries::changed(&client, m.timeline, p.start, start).await
            } else {
                Err(format!(
                    "the parent is on timeline {}, this backup on {current_tli}",
                    m.timeline
                ))
            };
            match summaries {
                Ok(changed) => {
                    tracing::info!(
                        "backup {id}: WAL summaries name changed blocks in {} relations; only those are read",
                        changed.len()
                    );
                    p.summarized = Some(changed);
                }
                Err(why) => tracing::info!(
                    "backup {id}: every block is read and hashed (no WAL summaries: {why})"
                ),
            }
        }
    }
    let chain = parent
        .as_ref()
        .map(|(m, _, _)| m.chain.iter().cloned().chain([m.id.clone()]).collect())
        .unwrap_or_default();
    // A chain hashes its blocks as its full backup does.
    let block_hash = parent
        .as_ref()
        .map_or(BlockHash::NEW, |(m, _, _)| m.block_hash);
    let (parent, parent_files) = match parent {
        Some((_, p, files)) => (Some(p), Some(files)),
        None => (None, None),
    };
    let reader = Arc::new(Reader::new(
        parent,
        checksums,
        start,
        crate::throttle::Throttle::mib_per_second(cfg.backup.max_rate_mb),
        block_hash,
    ));

    // The walk streams groups of files (each with the parent's record of it)
    // as it goes: at most the parts being stored and the next one are held.
    let progress = Arc::new(Progress::new(&format!("backup {id}"), 0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Item>>(1);
    let walker = {
        let (pgdata, progress) = (pgdata.clone(), progress.clone());
        let target = cfg.backup.part_size_mb as u64 * 1024 * 1024;
        tokio::task::spawn_blocking(move || {
            walk_into_groups(&pgdata, parent_files, target, &progress, tx)
        })
    };

    // Data parts in parallel; pg_control and the top-level files in the
    // final part, read after all others.
    // An incremental's parts are mostly changed pages, scattered.
    let part_codec = if parent_id.is_some() {
        codec.for_scattered_pages()
    } else {
        codec.clone()
    };
    let mut parts: BTreeMap<u32, Part> = BTreeMap::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(cfg.backup.concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let mut reused = 0;
    let mut groups = 0u32;
    let mut joined = |r: Result<Result<(u32, Part, bool)>, tokio::task::JoinError>| -> Result<()> {
        let (i, part, was_reused) = r.context("part task failed")??;
        parts.insert(i, part);
        reused += usize::from(was_reused);
        Ok(())
    };
    loop {
        // Taken before the next group is: while every worker is busy, the
        // walk waits with at most one group made.
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let Some(group) = rx.recv().await else {
            break;
        };
        let i = groups;
        groups += 1;
        let kept = previous
            .is_some()
            .then(|| journal.stored(i))
            .transpose()?
            .flatten();
        let (store, codec, progress, id, reader, journal) = (
            store.clone(),
            part_codec.clone(),
            progress.clone(),
            id.clone(),
            reader.clone(),
            journal.clone(),
        );
        let key = format!("{}part-{i:04}{part_suffix}.tar", super::prefix(&id));
        tasks.spawn(async move {
            let _permit = permit;
            // A part the killed run stored is reused when its files still
            // hash the same (checked here, in parallel like the reads).
            if let Some(old) = kept {
                if reusable(store.as_ref(), &old, &group).await? {
                    progress.add(group.iter().map(|(e, _)| e.size).sum());
                    return Ok::<_, anyhow::Error>((i, old.part, true));
                }
            }
            let (part, records) =
                upload_part(store.as_ref(), &codec, key, i, group, progress, reader).await?;
            journal.record(i, &part, &records)?;
            Ok((i, part, false))
        });
        // A failed part ends the backup now, not after the walk.
        while let Some(r) = tasks.try_join_next() {
            joined(r)?;
        }
    }
    while let Some(r) = tasks.join_next().await {
        joined(r)?;
    }
    let (final_entries, tablespaces) = walker.await.context("walk task failed")??;
    if previous.is_some() {
        tracing::info!("backup {id}: {reused} stored part(s) reused, their files unchanged");
    }
    let last = groups;
    let (control_part, control_records) = upload_part(
        store.as_ref(),
        codec,
        format!("{}part-{last:04}{part_suffix}.tar", super::prefix(&id)),
        last,
        final_entries,
        progress.clone(),
        reader.clone(),
    )
    .await?;
    parts.insert(last, control_part);
    progress.finish();
    let checksum_failures = checksum_failures(&client, &reader).await;

    // PostgreSQL's own wait for the archiver has no end; walvault waits for the
    // WAL in the repository itself, bounded (backup.wal_wait_seconds).
    let stop_sql = if version >= 150000 {
        "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)"
    } else {
        "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)"
    };
    tracing::info!(
        "backup {id}: files stored; stopping the backup and waiting for its WAL to be archived"
    );
    let row = client
        .query_one(stop_sql, &[])
        .await
        .context("pg_backup_stop failed")?;
    let (stop_lsn, labelfile, spcmap): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let stopped: DateTime<Utc> = client
        .query_one("select clock_timestamp()", &[])
        .await?
        .get(0);
    let stop = Lsn::parse(&stop_lsn)?;
    let timeline = label_timeline(&labelfile).context("backup_label has no START TIMELINE")?;

    let put_text = |key: String, text: String| {
        let (store, codec) = (store.clone(), codec.clone());
        async move {
            codec
                .upload(store.as_ref(), &key, io::Cursor::new(text.into_bytes()))
                .await
        }
    };
    let mut versions = BTreeMap::new();
    let label_key = format!("{}backup_label", super::prefix(&id));
    let up = put_text(label_key.clone(), labelfile).await?;
    versions.extend(up.version.map(|v| (label_key, v)));
    if let Some(map) = spcmap.filter(|s| !s.is_empty()) {
        let map_key = format!("{}tablespace_map", super::prefix(&id));
        let up = put_text(map_key.clone(), map).await?;
        versions.extend(up.version.map(|v| (map_key, v)));
    }
    if !server_config.stored.is_empty() {
        let v = super::server_config::put(store.as_ref(), codec, &id, &config_files).await?;
        versions.extend(v.map(|v| (super::server_config::key(&id), v)));
    }
    let wait = Duration::from_secs(cfg.backup.wal_wait_seconds as u64);
    let waited = Instant::now();
    if let Some(u) = &upstream {
        tracing::info!(
            "backup {id}: stopped at {stop} on the standby; its last segment reaches the repository once the primary {} leaves it (archive_timeout there, or a switch)",
            u.primary
        );
    }
    if let Err(e) = wait_for_wal(store.as_ref(), timeline, start, stop, seg_size as u64, wait).await
    {
        let why = match &upstream {
            Some(u) => super::standby::archiving_report(&archive_mode, &u.primary),
            None => archiver_report(&client).await,
        };
        bail!("{e:#}; {why}; backup {id} stays incomplete (never listed, never restored)");
    }
    tracing::debug!(
        "backup {id}: its WAL reached the repository {} ms after the backup stopped",
        waited.elapsed().as_millis()
    );

    // The file list, from the journal part by part, in part order: stored,
    // and copied here whole for the next incremental.
    let parts: Vec<Part> = parts.into_values().collect();
    let files_key = format!("{}files.json", super::prefix(&id));
    let (up, (listed, kept_here)) = {
        let (journal, cache) = (journal.clone(), super::parent::cache_tmp_path(&pgdata));
        codec
            .upload_from(
                store.as_ref(),
                &files_key,
                Class::Standard,
                Mode::Create,
                move |w| write_file_list(w, &journal, groups, &control_records, &cache),
            )
            .await?
    };
    // What this host's copy stands for (it is not the stored bytes).
    let (stored_sha, list_bytes) = (up.trailer.plain_sha256, up.stored_len);
    versions.extend(up.version.map(|v| (files_key, v)));
    let manifest = Manifest {
        format: if parent_id.is_some() {
            INCREMENTAL_FORMAT
        } else {
            MANIFEST_FORMAT
        },
        id: id.clone(),
        label,
        system_identifier: sysid.to_string(),
        pg_version_num: version as u32,
        timeline,
        start_lsn: start.to_string(),
        stop_lsn: stop.to_string(),
        start_time: started,
        stop_time: stopped,
        wal_segment_size: seg_size as u64,
        raw_bytes: parts.iter().map(|p| p.raw_bytes).sum(),
        stored_bytes: parts.iter().map(|p| p.stored_bytes).sum::<u64>() + list_bytes,
        files: parts.iter().map(|p| p.files).sum(),
        duration_seconds: t0.elapsed().as_secs_f64(),
        parts,
        tablespaces: tablespaces
            .into_iter()
            .map(|(oid, path)| Tablespace {
                oid,
                path: path.display().to_string(),
            })
            .collect(),
        encrypted: codec.encrypts(),
        created_by: format!("walvault {}", env!("CARGO_PKG_VERSION")),
        versions,
        parent: parent_id,
        chain,
        changes_from: manifest_changes_from(&reader),
        checksum_failures,
        block_hash,
        server_config: Some(server_config),
        taken_on: Some(TakenOn {
            host: crate::host::name(),
            role: if upstream.is_some() {
                "standby"
            } else {
                "primary"
            }
            .into(),
        }),
    };
    // Last: from this moment the backup exists.
    let json = serde_json::to_vec_pretty(&manifest)?;
    store
        .put(&super::manifest_key(&id), Box::new(io::Cursor::new(json)))
        .await?;
    resume::finish(&pgdata);
    if previous.is_some() {
        drop_unused_parts(store.as_ref(), &manifest).await;
    }
    // For the next incremental on this host (the stored list may need the key).
    if let Err(e) = kept_here.and_then(|()| super::parent::remember(&pgdata, &stored_sha)) {
        tracing::warn!("{e:#}; the next incremental backup here needs the identity file");
    }
    tracing::info!(
        "backup {id} complete ({}): {} files stored of {}, {} MiB read, {} MiB stored, WAL {start}..{stop} on timeline {timeline}, {:.1} s",
        manifest.parent.as_ref().map(|p| format!("incremental on {p}")).unwrap_or_else(|| "full".into()),
        manifest.files,
        listed,
        progress.done() >> 20,
        manifest.stored_bytes >> 20,
        manifest.duration_seconds
    );
    for f in &manifest.checksum_failures {
        tracing::error!(
            "backup {id}: page checksum failures in {}{}: blocks {}",
            f.path,
            f.relation
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            f.blocks
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(manifest)
}

/// A file (or directory, link) to store, with the parent's record of it.
type Item = (Entry, Option<super::read::ParentFile>);

/// The most files in one part: what a part's task holds in memory (entries
/// and records) stays a few MB however small the files are.
const PART_FILES: usize = 20_000;

/// Groups entries into parts of about `target` bytes (and at most
/// [`PART_FILES`] entries), in walk order.
struct Grouper {
    target: u64,
    group: Vec<Item>,
    size: u64,
}

impl Grouper {
    fn new(target: u64) -> Grouper {
        Grouper {
            target,
            group: Vec::new(),
            size: 0,
        }
    }
    /// Adds an item; returns the group it closed, if it did.
    fn push(&mut self, item: Item) -> Option<Vec<Item>> {
        let full =
            (self.size >= self.target || self.group.len() >= PART_FILES).then(|| self.take());
        self.size += item.0.size + 512;
        self.group.push(item);
        full
    }
    fn take(&mut self) -> Vec<Item> {
        self.size = 0;
        std::mem::take(&mut self.group)
    }
}

/// Whether a file is stored in the final part, read after all others:
/// pg_control, and the small files at the top of the data directory. A
/// restore's target usually has those changed (a restore's own recovery
/// settings in postgresql.auto.conf, a replica's, postmaster.opts after a
/// start): a delta restore then reads a part of a few KiB for them instead
/// of a data part of hundreds of MiB.
fn in_final_part(path: &str) -> bool {
    path == PG_CONTROL || !path.contains('/')
}

/// Walks PGDATA, sending groups of entries (each file with the parent's
/// record) as they fill; returns the entries of the final part (not sent,
/// see [`in_final_part`]) and the tablespaces met.
fn walk_into_groups(
    pgdata: &std::path::Path,
    mut parent: Option<filelist::Lookup>,
    target: u64,
    progress: &Progress,
    tx: tokio::sync::mpsc::Sender<Vec<Item>>,
) -> Result<(Vec<Item>, walk::Tablespaces)> {
    let mut walker = walk::Walker::new(pgdata);
    let mut grouper = Grouper::new(target);
    let mut last = Vec::new();
    for e in walker.by_ref() {
        let e = e?;
        progress.grow(e.size);
        let theirs = match (&mut parent, &e.kind) {
            (Some(p), Kind::File) => p
                .find(&e.path)
                .context("reading the parent's file list")?
                .map(super::parent::parent_file),
            _ => None,
        };
        if matches!(e.kind, Kind::File) && in_final_part(&e.path) {
            last.push((e, theirs));
            continue;
        }
        if let Some(group) = grouper.push((e, theirs)) {
            if tx.blocking_send(group).is_err() {
                // The backup failed (a part did): it says why.
                break;
            }
        }
    }
    let rest = grouper.take();
    if !rest.is_empty() {
        let _ = tx.blocking_send(rest);
    }
    Ok((last, walker.tablespaces))
}

/// Writes the file list, the records of parts `0..parts` as journaled then
/// `last`'s, into `w` as stored ([`FileRecord::as_stored`]), and into
/// `cache` whole, every block hash included, for the next incremental here.
/// Returns the number of records, and whether the copy was written.
fn write_file_list(
    w: &mut dyn Write,
    journal: &resume::Journal,
    parts: u32,
    last: &[FileRecord],
    cache: &std::path::Path,
) -> io::Result<(u64, Result<()>)> {
    let mut copy = std::fs::File::create(cache)
        .and_then(|f| filelist::Writer::new(io::BufWriter::new(f)))
        .with_context(|| format!("cannot write {}", cache.display()));
    let mut list = filelist::Writer::new(w)?;
    let mut push = |r: &FileRecord| -> io::Result<()> {
        list.push(&r.as_stored())?;
        if let Ok(c) = &mut copy {
            if let Err(e) = c.push(r) {
                // Given up, never the stored list; reported after.
                copy = Err(anyhow::Error::new(e).context("cannot write the local file list"));
            }
        }
        Ok(())
    };
    for i in 0..parts {
        let stored = journal
            .stored(i)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other(format!("part {i} is not in the backup's journal")))?;
        for r in &stored.records {
            push(r)?;
        }
    }
    for r in last {
        push(r)?;
    }
    let (_, n) = list.finish()?;
    let copied = copy.and_then(|c| {
        c.finish()
            .and_then(|(b, _)| b.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_data())
            .with_context(|| format!("cannot write {}", cache.display()))
    });
    Ok((n, copied))
}

async fn upload_part(
    store: &dyn Store,
    codec: &Codec,
    key: String,
    index: u32,
    entries: Vec<Item>,
    progress: Arc<Progress>,
    reader: Arc<Reader>,
) -> Result<(Part, Vec<FileRecord>)> {
    let (up, records) = codec
        .upload_from(store, &key, Class::Standard, Mode::Create, move |w| {
            write_tar(&entries, index, w, &progress, &reader)
        })
        .await?;
    Ok((
        Part {
            key,
            files: records.iter().filter(|r| r.entry().is_some()).count() as u64,
            raw_bytes: up.trailer.plain_len,
            stored_bytes: up.stored_len,
            version: up.version,
        },
        records,
    ))
}

/// Writes `entries` as one tar stream: directories and links as they are,
/// files as the reader stores them (whole, or what changed since the parent;
/// a file unchanged since the parent has a record and no entry).
fn write_tar(
    entries: &[Item],
    part: u32,
    w: &mut dyn Write,
    progress: &Progress,
    reader: &Reader,
) -> io::Result<Vec<FileRecord>> {
    let mut b = tar::Builder::new(w);
    let mut records = Vec::new();
    for (e, theirs) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_mtime(0);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &e.path, io::empty())?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &e.path, target)?;
            }
            Kind::File => {
                records.extend(reader.append(&mut b, e, theirs.as_ref(), part, progress)?)
            }
        }
    }
    b.finish()?;
    Ok(records)
}

fn label_timeline(label: &str) -> Option<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every segment from start to stop must be in the repository before the backup
/// is declared complete (pg_backup_stop waited for the archiver; a short grace
/// period covers stores that list new objects late).
async fn wait_for_wal(
    store: &dyn Store,
    tli: u32,
    start: Lsn,
    stop: Lsn,
    seg_size: u64,
    wait: Duration,
) -> Result<()> {
    let last = Lsn(stop.0.saturating_sub(1)).segno(seg_size);
    let t = Instant::now();
    // The archiver usually stores the last segment within a few hundred
    // milliseconds of pg_backup_stop: look every 20 ms for the first two
    // seconds (a HEAD is about a millisecond; a backoff from the start added
    // up to half the wait to an incremental backup), then back off to 500 ms.
    let mut pause = Duration::from_millis(20);
    for segno in start.segno(seg_size)..=last {
        let name = SegmentName::from_segno(tli, segno, seg_size);
        let key = crate::wal::key(&name.to_string());
        while store.head(&key).await?.is_none() {
            if t.elapsed() > wait {
                bail!(
                    "WAL segment {name}, needed to restore this backup, did not reach the repository within {} s (backup.wal_wait_seconds)",
                    wait.as_secs()
                );
            }
            tokio::time::sleep(pause).await;
            if t.elapsed() > Duration::from_secs(2) {
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
    Ok(())
}

/// Takes an exclusive lock on the data directory itself (flock, released when
/// the process ends however it ends): two backup-push runs of one cluster would
/// otherwise race for one backup id.
fn lock_pgdata(pgdata: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let dir =
        std::fs::File::open(pgdata).with_context(|| format!("cannot open {}", pgdata.display()))?;
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another walvault backup-push is running on {}; wait for it to finish",
                pgdata.display()
            );
        }
        return Err(e).with_context(|| format!("cannot lock {}", pgdata.display()));
    }
    Ok(dir)
}

/// What PostgreSQL says of its archiver, for a backup whose WAL never came.
async fn archiver_report(client: &tokio_postgres::Client) -> String {
    let row = client
        .query_one(
            "select failed_count, coalesce(last_failed_wal, ''), \
             coalesce(to_char(last_failed_time, 'YYYY-MM-DD HH24:MI:SSOF'), ''), \
             coalesce(last_archived_wal, ''), current_setting('archive_command') \
             from pg_stat_archiver",
            &[],
        )
        .await;
    match row {
        Ok(r) => {
            let (failed, last_failed, at, last_ok, cmd): (i64, String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            format!(
                "PostgreSQL's archiver reports {failed} failed attempts (last failed {}{}), last archived {}, archive_command '{cmd}': check that archive_command is executing properly (PostgreSQL's log says why it fails)",
                if last_failed.is_empty() { "none" } else { &last_failed },
                if at.is_empty() { String::new() } else { format!(" at {at}") },
                if last_ok.is_empty() { "none" } else { &last_ok },
            )
        }
        Err(e) => format!("pg_stat_archiver could not be read ({e})"),
    }
}

/// Whether a part an interrupted run stored holds `group` as it is now: the
/// same files, each with its recorded size and sha256, and the object still there.
async fn reusable(store: &dyn Store, old: &resume::Stored, group: &[Item]) -> Result<bool> {
    let files: Vec<&Entry> = group
        .iter()
        .map(|(e, _)| e)
        .filter(|e| e.kind == Kind::File)
        .collect();
    let same_files = files.len() == old.records.len()
        && files
            .iter()
            .zip(&old.records)
            .all(|(e, r)| e.path == r.path);
    if !same_files {
        return Ok(false);
    }
    match store.head(&old.part.key).await? {
        Some(o) if o.size == old.part.stored_bytes => {}
        _ => return Ok(false),
    }
    let check: Vec<(PathBuf, FileRecord)> = files
        .iter()
        .zip(&old.records)
        .map(|(e, r)| (e.source.clone(), r.clone()))
        .collect();
    tokio::task::spawn_blocking(move || check.iter().all(|(p, r)| r.matches_file(p)))
        .await
        .context("hashing task failed")
}

/// Removes the parts of a resumed backup's first run that it did not reuse
/// (best effort: left over, they are only removed with the backup).
async fn drop_unused_parts(store: &dyn Store, m: &Manifest) {
    let used: std::collections::HashSet<&str> = m.parts.iter().map(|p| p.key.as_str()).collect();
    let Ok(objects) = store.list(&super::prefix(&m.id)).await else {
        return;
    };
    for o in objects {
        let name = o.key.rsplit('/').next().unwrap_or_default();
        if name.starts_with("part-") && !used.contains(o.key.as_str()) {
            if let Err(e) = store.delete(&o.key).await {
                tracing::warn!(
                    "backup {}: an unused part of its first run stays: {e:#}",
                    m.id
                );
            }
        }
    }
}

/// The parent of an incremental backup with its file list, or None (and
/// why) for a full one.
async fn find_parent(
    cfg: &Config,
    store: Arc<dyn Store>,
    codec: &Codec,
    pgdata: &std::path::Path,
    timeline: u32,
    major: u32,
) -> Result<Option<(Manifest, super::read::Parent, filelist::Lookup)>> {
    let (listing, inv) = super::list_with_wal_cached(store.as_ref(), codec).await?;
    let chosen = super::parent::choose(&listing, &inv, timeline, major, &cfg.backup, Utc::now());
    let m = match chosen {
        // Read again: a parent is never taken from a cache.
        Ok(m) => super::read_manifest(store.as_ref(), &m.id).await?,
        Err(why) => {
            tracing::info!("taking a full backup: {why}");
            return Ok(None);
        }
    };
    match super::parent::load(store, codec, pgdata, &m).await {
        Ok(files) => Ok(Some((m.clone(), super::parent::parent(&m)?, files))),
        Err(why) => {
            tracing::warn!("taking a full backup: {why}");
            Ok(None)
        }
    }
}

/// The checksum failures the reader found, each named by its relation when
/// the server can name it.
async fn checksum_failures(
    client: &tokio_postgres::Client,
    reader: &Reader,
) -> Vec<ChecksumFailure> {
    let db_oid: Option<u32> = client
        .query_one(
            "select oid from pg_database where datname = current_database()",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get(0));
    let mut out = Vec::new();
    for (path, blocks) in reader.failures() {
        let relation = match relation_of(&path, db_oid) {
            Some((ts, node)) => client
                .query_one(
                    "select pg_filenode_relation($1, $2)::regclass::text",
                    &[&ts, &node],
                )
                .await
                .ok()
                .and_then(|r| r.get::<_, Option<String>>(0)),
            None => None,
        };
        out.push(ChecksumFailure {
            path,
            relation,
            blocks,
        });
    }
    out
}

/// The (tablespace, relfilenode) pg_filenode_relation takes for a relation
/// file of the database `db` (0: the database's default tablespace).
fn relation_of(path: &str, db: Option<u32>) -> Option<(u32, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let node = |name: &str| name.split(['.', '_']).next()?.parse::<u32>().ok();
    match parts.as_slice() {
        ["global", name] => Some((1664, node(name)?)),
        ["base", d, name] if d.parse::<u32>().ok() == db => Some((0, node(name)?)),
        ["pg_tblspc", ts, _, d, name] if d.parse::<u32>().ok() == db => {
            Some((ts.parse().ok()?, node(name)?))
        }
        _ => None,
    }
}

fn manifest_changes_from(reader: &Reader) -> Option<String> {
    reader.parent.as_ref().map(|p| {
        if p.summarized.is_some() {
            "block hashes and WAL summaries".to_string()
        } else {
            "block hashes".to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_from_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-22 05:00:00 UTC\nLABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label), Some(3));
        assert_eq!(label_timeline("nothing"), None);
    }

    #[test]
    fn parts_are_split_by_size_and_file_count() {
        let e = |size| {
            (
                Entry {
                    path: "f".into(),
                    source: "/f".into(),
                    kind: Kind::File,
                    size,
                    mode: 0o600,
                },
                None,
            )
        };
        // Each entry also costs its 512-byte tar header.
        let mut g = Grouper::new(2000);
        let closed: Vec<usize> = (0..4)
            .filter_map(|_| g.push(e(1000)))
            .map(|g| g.len())
            .collect();
        assert_eq!((closed, g.take().len()), (vec![2], 2));
        let mut g = Grouper::new(u64::MAX);
        let closed = (0..PART_FILES * 2 + 1).filter_map(|_| g.push(e(0))).count();
        assert_eq!((closed, g.take().len()), (2, 1));
    }
}
