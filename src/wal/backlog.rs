//! `push.max_backlog`: availability over point-in-time recovery, opt-in.
//!
//! While the repository fails, PostgreSQL keeps every unarchived segment in
//! pg_wal until the disk fills and the primary stops. Past the bound, a failed
//! push of a segment answers 0 instead: PostgreSQL recycles the segment, and
//! the archive has a deliberate gap. Each dropped segment is journaled in
//! pg_wal (written before the 0, so never lost) and copied into the
//! repository as `gaps/<segment>.json` by the next push that succeeds, where
//! `wal-verify`, `backup-list` and `status` name it.

use super::names::WalFile;
use crate::store::{Mode, Store};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The journal of dropped segments not yet recorded in the repository.
const JOURNAL: &str = "walvault_skipped";
const PREFIX: &str = "gaps/";

/// A segment dropped from the archive on purpose.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Dropped {
    pub segment: String,
    pub at: DateTime<Utc>,
    /// `.ready` files waiting when it was dropped, and the bound.
    pub backlog: u64,
    pub max_backlog: u64,
    pub host: String,
    /// Why the push failed.
    pub error: String,
}

/// After a failed push of `path`: drops it when `max` (> 0) is reached and
/// the failure is the repository's, not a refusal of the file. True: the
/// segment is journaled and wal-push may exit 0.
pub fn drop_if_over(max: i64, path: &Path, e: &anyhow::Error) -> Result<bool> {
    if max <= 0 || super::push::refused(e) {
        return Ok(false);
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(false);
    };
    // A history file is how recovery finds a timeline; only segments go.
    if !matches!(WalFile::parse(name), Ok(WalFile::Segment(_))) {
        return Ok(false);
    }
    let Some(pg_wal) = path.parent() else {
        return Ok(false);
    };
    let backlog = ready_count(&pg_wal.join("archive_status"));
    if backlog < max as u64 {
        return Ok(false);
    }
    let d = Dropped {
        segment: name.to_string(),
        at: Utc::now(),
        backlog,
        max_backlog: max as u64,
        host: crate::host::name(),
        error: format!("{e:#}"),
    };
    // Durable before wal-push answers 0.
    crate::files::append_line(&journal_path(pg_wal), &serde_json::to_string(&d)?)?;
    tracing::error!(
        "push.max_backlog: {backlog} WAL files wait to be archived (bound {max}) and the repository fails; {name} is DROPPED from the archive, not stored (a deliberate gap: point-in-time recovery cannot pass it; take a base backup once archiving resumes): {e:#}"
    );
    Ok(true)
}

/// Records the journaled drops of this pg_wal in the repository (after a push
/// succeeded there). Best effort: what fails stays journaled for the next push.
pub async fn record_journaled(store: &dyn Store, path: &Path) {
    let Some(pg_wal) = path.parent() else { return };
    let journal = journal_path(pg_wal);
    let Ok(text) = std::fs::read_to_string(&journal) else {
        return;
    };
    let mut left = Vec::new();
    let mut recorded = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(d) = serde_json::from_str::<Dropped>(line) else {
            tracing::warn!(
                "{}: an unreadable line is dropped: {line}",
                journal.display()
            );
            continue;
        };
        let body = serde_json::to_vec_pretty(&d).expect("plain data");
        let key = format!("{PREFIX}{}.json", d.segment);
        match store
            .write_bytes(&key, body.into(), crate::store::Class::Kept, Mode::Create)
            .await
        {
            Ok(_) => recorded += 1,
            Err(e) if crate::store::already_stored(&e) => recorded += 1,
            Err(e) => {
                tracing::warn!("the drop of {} is not recorded in the repository yet ({e:#}); the next push retries", d.segment);
                left.push(line.to_string());
            }
        }
    }
    let rewritten = if left.is_empty() {
        crate::files::remove_if_present(&journal)
    } else {
        crate::files::write_atomically(&journal, (left.join("\n") + "\n").as_bytes())
    };
    if let Err(e) = rewritten {
        tracing::warn!("{}: {e:#}", journal.display());
    }
    if recorded > 0 {
        tracing::error!(
            "recorded {recorded} segment(s) dropped by push.max_backlog in {}: point-in-time recovery cannot pass them; take a base backup",
            store.locate(PREFIX)
        );
    }
}

/// Every drop recorded in the repository, by segment name.
pub async fn recorded(store: &dyn Store) -> Result<Vec<Dropped>> {
    let mut out = Vec::new();
    for o in store.list(PREFIX).await? {
        let d: Option<Dropped> = crate::store::get_json(store, &o.key, "a walvault gap record")
            .await
            .with_context(|| store.locate(&o.key))?;
        out.extend(d);
    }
    out.sort_by(|a, b| a.segment.cmp(&b.segment));
    Ok(out)
}

fn journal_path(pg_wal: &Path) -> PathBuf {
    pg_wal.join(JOURNAL)
}

/// `.ready` files in an archive_status directory.
fn ready_count(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
            .count() as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_only_segments_past_the_bound_and_never_a_refusal() {
        let (d, status) = crate::testing::temp_path("archive_status");
        std::fs::create_dir_all(&status).unwrap();
        let seg = d.path().join("000000010000000000000005");
        let down = anyhow::anyhow!("S3 request failed: Connection refused");
        for n in 5..7 {
            std::fs::write(
                status.join(format!("0000000100000000000000{n:02}.ready")),
                "",
            )
            .unwrap();
        }
        assert!(!drop_if_over(0, &seg, &down).unwrap(), "off by default");
        assert!(!drop_if_over(3, &seg, &down).unwrap(), "2 wait, bound 3");
        std::fs::write(status.join("000000010000000000000007.ready"), "").unwrap();
        let refused = anyhow::Error::new(super::super::push::Refused("DIFFERENT content".into()))
            .context("refusing x");
        assert!(
            !drop_if_over(3, &seg, &refused).unwrap(),
            "a refusal never drops"
        );
        let history = d.path().join("00000002.history");
        assert!(
            !drop_if_over(3, &history, &down).unwrap(),
            "history files stay"
        );
        assert!(drop_if_over(3, &seg, &down).unwrap());
        let text = std::fs::read_to_string(d.path().join(JOURNAL)).unwrap();
        let j: Dropped = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            (j.segment.as_str(), j.backlog, j.max_backlog),
            ("000000010000000000000005", 3, 3)
        );
        assert!(j.error.contains("Connection refused"));
    }
}
