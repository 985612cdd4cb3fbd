//! `verify`: proves that backups can be restored: every part, file list, label
//! and WAL segment each backup needs is present and intact.
//!
//! Without the private key (an encrypted repository on the database host) it
//! checks the stored bytes against their recorded sha256. With the identity file,
//! or in an unencrypted repository, it also decodes everything: the plaintext
//! sha256 of every object and of every file inside the parts.

use super::filelist::{self, ByPart, Parts};
use super::restore::read_part;
use super::{Listing, Manifest};
use crate::codec::{self, Codec};
use crate::progress::Progress;
use crate::store::{ObjectMeta, Store};
use crate::wal::inventory::Inventory;
use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub struct Options {
    /// One backup; all complete backups when `None`.
    pub backup: Option<String>,
    /// Also check every WAL object in the repository, not only what backups need.
    pub all_wal: bool,
    pub concurrency: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum What {
    /// Tar part number N: in full mode every file inside is checked.
    Part(u32),
    Other,
}

/// A backup's file list, as verify checks its parts with it.
struct Index {
    /// The records of files stored in the backup's parts, by part.
    parts: Parts,
    /// Every file of the list (an incremental's own and its parent's).
    files: u64,
}

/// Reads a backup's file list into an [`Index`] (on local disk, not in
/// memory): parts are read one by one, so the list is only spooled by part.
async fn index_of(store: &dyn Store, codec: &Codec, id: &str) -> Result<Index> {
    let list = filelist::read(store, codec, id).await?;
    let what = store.locate(&format!("{}files.json", super::prefix(id)));
    tokio::task::spawn_blocking(move || -> Result<Index> {
        let mut by = ByPart::new()?;
        let mut files = 0;
        for r in list {
            let r = r.with_context(|| format!("{what} is damaged"))?;
            files += 1;
            // Files an incremental backup takes from its parent are in no part of its own.
            if r.entry().is_some() {
                by.push(&r)?;
            }
        }
        Ok(Index {
            parts: by.finish()?,
            files,
        })
    })
    .await
    .context("file list task failed")?
}

struct Job {
    /// The backup it belongs to, or "WAL" for `--wal`.
    owner: String,
    key: String,
    what: What,
    size: u64,
}

struct Problem {
    owner: String,
    text: String,
}

pub async fn run(store: Arc<dyn Store>, codec: &Codec, opts: Options) -> Result<bool> {
    let listing = super::list(store.as_ref()).await?;
    let chosen: Vec<&Manifest> = match &opts.backup {
        // With the backups it builds on: it is restorable only if they are.
        Some(id) => match listing.complete.iter().find(|m| &m.id == id) {
            Some(m) => listing
                .complete
                .iter()
                .filter(|b| m.chain.contains(&b.id))
                .chain([m])
                .collect(),
            None => bail!(
                "backup '{id}' does not exist in {} (no manifest); see walvault backup-list",
                store.locate("")
            ),
        },
        None => listing.complete.iter().collect(),
    };
    let seg = chosen
        .first()
        .map(|m| m.wal_segment_size)
        .unwrap_or(16 << 20);
    let inv = Inventory::load(store.as_ref(), codec, seg).await?;
    let encrypted = chosen.iter().any(|m| m.encrypted);
    let full = !encrypted || codec.check_key().is_ok();
    println!(
        "verifying {} backup(s) in {}: {}",
        chosen.len(),
        store.locate(""),
        if full {
            "stored bytes and plaintext sha256 of every object and every file"
        } else {
            "stored bytes only (no identity file: plaintext not checked)"
        }
    );

    let mut problems: Vec<Problem> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut indexes: HashMap<String, Arc<Index>> = HashMap::new();
    let mut planned: BTreeSet<String> = BTreeSet::new();
    for m in &chosen {
        let before = problems.len();
        for id in m
            .chain
            .iter()
            .filter(|id| !listing.complete.iter().any(|b| &b.id == *id))
        {
            problems.push(Problem {
                owner: m.id.clone(),
                text: format!(
                    "MISSING backup {id}, which this incremental backup builds on (no manifest)"
                ),
            });
        }
        let present = objects_of(&listing, &m.id);
        let mut need =
            |key: String, what: What, problems: &mut Vec<Problem>| match present.get(&key) {
                Some(o) => {
                    if planned.insert(key.clone()) {
                        jobs.push(Job {
                            owner: m.id.clone(),
                            key,
                            what,
                            size: o.size,
                        });
                    }
                }
                None => problems.push(Problem {
                    owner: m.id.clone(),
                    text: format!("MISSING {}", store.locate(&key)),
                }),
            };
        for (n, p) in m.parts.iter().enumerate() {
            need(p.key.clone(), What::Part(n as u32), &mut problems);
        }
        for name in ["files.json", "backup_label"] {
            need(
                format!("{}{name}", super::prefix(&m.id)),
                What::Other,
                &mut problems,
            );
        }
        if m.server_config
            .as_ref()
            .is_some_and(|c| !c.stored.is_empty())
        {
            need(super::server_config::key(&m.id), What::Other, &mut problems);
        }
        let map = format!("{}tablespace_map", super::prefix(&m.id));
        if present.contains_key(&map) {
            need(map, What::Other, &mut problems);
        }
        for s in inv.needed_between(m.timeline, m.start()?, m.stop()?) {
            match inv.object(&crate::wal::key(&s.to_string())) {
                Some(o) => {
                    if planned.insert(o.key.clone()) {
                        jobs.push(Job {
                            owner: m.id.clone(),
                            key: o.key.clone(),
                            what: What::Other,
                            size: o.size,
                        });
                    }
                }
                None => problems.push(Problem {
                    owner: m.id.clone(),
                    text: format!(
                        "MISSING {} (WAL the backup needs)",
                        store.locate(&crate::wal::key(&s.to_string()))
                    ),
                }),
            }
        }
        if full && problems.len() == before {
            match index_of(m.pinned(store.clone()).as_ref(), codec, &m.id).await {
                Ok(index) => {
                    indexes.insert(m.id.clone(), Arc::new(index));
                }
                Err(e) => problems.push(Problem {
                    owner: m.id.clone(),
                    text: format!("DAMAGED file list: {e:#}"),
                }),
            }
        }
    }
    // On a versioned bucket the backup recorded the version it wrote of each
    // object: one that was replaced since (by a host holding only the public
    // recipient, its content can still decode cleanly) serves another version.
    for m in &chosen {
        for (key, wrote) in m.recorded_versions() {
            let Some(now) = store.head(key).await? else {
                continue; // reported MISSING above
            };
            if now.version.as_deref() != Some(wrote) {
                problems.push(Problem {
                    owner: m.id.clone(),
                    text: format!(
                        "REPLACED {}: the backup wrote version {wrote}, the bucket now serves version {}; recover and verify read version {wrote} while the bucket keeps it (docs/runbook.md, scenario 4)",
                        store.locate(key),
                        now.version.as_deref().unwrap_or("none")
                    ),
                });
            }
        }
    }
    if opts.all_wal {
        for o in &inv.objects {
            if planned.insert(o.key.clone()) {
                jobs.push(Job {
                    owner: "WAL".into(),
                    key: o.key.clone(),
                    what: What::Other,
                    size: o.size,
                });
            }
        }
    }

    let pinned: HashMap<String, Arc<dyn Store>> = chosen
        .iter()
        .map(|m| (m.id.clone(), m.pinned(store.clone())))
        .collect();
    let total: u64 = jobs.iter().map(|j| j.size).sum();
    let progress = Arc::new(Progress::new("verify", total));
    let inner = Arc::new(Progress::hidden());
    let results: Vec<(Job, Result<u64>)> = stream::iter(jobs)
        .map(|job| {
            let (store, codec, progress, inner) = (
                store.clone(),
                codec.clone(),
                progress.clone(),
                inner.clone(),
            );
            let index = indexes.get(&job.owner).cloned();
            // What a restore reads: the versions the backup wrote.
            let store = pinned.get(&job.owner).cloned().unwrap_or(store);
            async move {
                let r = check(store, codec, &job, index, full, inner).await;
                progress.add(job.size);
                (job, r)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    progress.finish();

    let mut checked: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (job, r) in results {
        match r {
            Ok(_) => {
                let c = checked.entry(job.owner).or_default();
                c.0 += 1;
                c.1 += job.size;
            }
            Err(e) => problems.push(Problem {
                owner: job.owner,
                text: format!("DAMAGED {}: {e:#}", store.locate(&job.key)),
            }),
        }
    }
    // Every file of the list must be in a part of the backup (each part read
    // checked that it holds every file the list gives it).
    for m in &chosen {
        let Some(index) = indexes.get(&m.id) else {
            continue;
        };
        let counts = index.parts.counts();
        let beyond: Vec<(&u32, &u64)> = counts
            .iter()
            .filter(|(n, _)| **n as usize >= m.parts.len())
            .collect();
        if let Some((first, _)) = beyond.first() {
            let lost = index
                .parts
                .records(**first)?
                .into_keys()
                .next()
                .unwrap_or_default();
            problems.push(Problem {
                owner: m.id.clone(),
                text: format!(
                    "{} file(s) of the file list are in no part, e.g. {lost}",
                    beyond.iter().map(|(_, c)| **c).sum::<u64>()
                ),
            });
        }
    }

    // An incremental backup is only as good as the backups it builds on.
    for m in &chosen {
        let broken: Vec<&String> = m
            .chain
            .iter()
            .filter(|id| problems.iter().any(|p| &p.owner == *id))
            .collect();
        if let Some(first) = broken.first() {
            problems.push(Problem {
                owner: m.id.clone(),
                text: format!("CHAIN BROKEN: backup {first}, which this backup builds on, has problems (above)"),
            });
        }
    }
    let mut owners: Vec<String> = chosen.iter().map(|m| m.id.clone()).collect();
    if opts.all_wal {
        owners.push("WAL".into());
    }
    for owner in &owners {
        let mine: Vec<&Problem> = problems.iter().filter(|p| &p.owner == owner).collect();
        let (n, bytes) = checked.get(owner).copied().unwrap_or_default();
        let label = if owner == "WAL" {
            "all WAL".to_string()
        } else {
            format!("backup {owner}")
        };
        if mine.is_empty() {
            let files = indexes
                .get(owner)
                .map(|i| format!(", {} files", i.files))
                .unwrap_or_default();
            println!(
                "{label}: OK ({n} objects, {} MiB stored{files})",
                bytes >> 20
            );
        } else {
            println!("{label}: {} PROBLEM(S)", mine.len());
            for p in mine {
                println!("  {}", p.text);
            }
        }
    }
    Ok(problems.is_empty())
}

/// Objects of one backup by key.
fn objects_of<'a>(listing: &'a Listing, id: &str) -> BTreeMap<String, &'a ObjectMeta> {
    listing
        .objects
        .get(id)
        .map(|v| v.iter().map(|o| (o.key.clone(), o)).collect())
        .unwrap_or_default()
}

/// Checks one object; returns the number of files found inside when it is
/// a part read in full.
async fn check(
    store: Arc<dyn Store>,
    codec: Codec,
    job: &Job,
    index: Option<Arc<Index>>,
    full: bool,
    inner: Arc<Progress>,
) -> Result<u64> {
    if !full {
        return match codec::verify_stored(store.as_ref(), &job.key).await? {
            Some(_) => Ok(0),
            None => bail!("vanished while verifying"),
        };
    }
    match (job.what, index) {
        (What::Part(n), Some(index)) => {
            // Read when its turn comes: at most `concurrency` parts' records in memory.
            let records = tokio::task::spawn_blocking(move || index.parts.records(n))
                .await
                .context("file list task failed")??;
            Ok(
                read_part(store, codec, job.key.clone(), records, None, inner)
                    .await?
                    .files,
            )
        }
        _ => match codec
            .download(store.as_ref(), &job.key, std::io::sink())
            .await?
        {
            Some(_) => Ok(0),
            None => bail!("vanished while verifying"),
        },
    }
}
