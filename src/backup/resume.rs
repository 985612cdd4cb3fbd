//! Resuming a `backup-push` that was killed: each part stored is journaled in
//! the data directory (`walvault_backup_journal.jsonl`, never backed up) with
//! its file records; the next `backup-push` of that data directory, with the
//! same parent, takes over the unfinished backup's id and reuses every stored
//! part whose files still have the size and sha256 recorded (read and hashed
//! again, not compressed, encrypted nor sent again).
//!
//! The journal is local on purpose: the same lock (the data directory) guards
//! it, and it needs no key to read on a host that holds only the recipient.

use super::{FileRecord, Part};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const JOURNAL_FILE: &str = "walvault_backup_journal.jsonl";

fn path(pgdata: &Path) -> PathBuf {
    pgdata.join(JOURNAL_FILE)
}

#[derive(Serialize, Deserialize)]
struct Head {
    id: String,
    parent: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Stored {
    pub index: u32,
    pub part: Part,
    pub records: Vec<FileRecord>,
}

/// A journal line's part index (its records are not kept).
#[derive(Deserialize)]
struct IndexOnly {
    index: u32,
}

/// Where a journal line is: its offset and length (the newline excluded).
type Span = (u64, u64);

/// What an interrupted backup left: its id, parent and where in the journal
/// each part it stored is described (read part by part, never whole: the
/// parts of a million files hold some 200 MB of records).
pub struct Interrupted {
    pub id: String,
    pub parent: Option<String>,
    lines: BTreeMap<u32, Span>,
}

impl Interrupted {
    /// How many parts the interrupted run stored.
    pub fn parts(&self) -> usize {
        self.lines.len()
    }
}

/// The journal of the last backup-push here that did not finish, if any. A
/// torn last line (killed while writing it) is left out.
pub fn interrupted(pgdata: &Path) -> Option<Interrupted> {
    let f = std::fs::File::open(path(pgdata)).ok()?;
    let mut r = std::io::BufReader::new(f);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).ok()?;
    let head: Head = serde_json::from_slice(&line).ok()?;
    let mut offset = line.len() as u64;
    let mut lines = BTreeMap::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            break;
        }
        if line.ends_with(b"\n") {
            if let Ok(l) = serde_json::from_slice::<IndexOnly>(&line) {
                lines.insert(l.index, (offset, n as u64 - 1));
            }
        }
        offset += n as u64;
    }
    Some(Interrupted {
        id: head.id,
        parent: head.parent,
        lines,
    })
}

/// The journal of the backup being taken: where each part's line is.
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: std::fs::File,
    len: u64,
    lines: BTreeMap<u32, Span>,
}

impl Journal {
    /// A new journal for backup `id`, keeping the lines of the parts the
    /// interrupted run stored under it.
    pub fn start(
        pgdata: &Path,
        id: &str,
        parent: Option<&str>,
        previous: Option<&Interrupted>,
    ) -> Result<Journal> {
        let p = path(pgdata);
        let tmp = pgdata.join(format!("{JOURNAL_FILE}.tmp"));
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?,
        );
        let mut head = serde_json::to_vec(&Head {
            id: id.to_string(),
            parent: parent.map(str::to_string),
        })?;
        head.push(b'\n');
        out.write_all(&head)?;
        let mut len = head.len() as u64;
        let mut lines = BTreeMap::new();
        if let Some(prev) = previous {
            let old =
                std::fs::File::open(&p).with_context(|| format!("cannot read {}", p.display()))?;
            for (&index, &span) in &prev.lines {
                let mut line = read_span(&old, span)?;
                line.push(b'\n');
                out.write_all(&line)?;
                lines.insert(index, (len, span.1));
                len += line.len() as u64;
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        Ok(Journal {
            path: p,
            state: Mutex::new(State { file, len, lines }),
        })
    }

    /// Records a part as stored (after its upload returned).
    pub fn record(&self, index: u32, part: &Part, records: &[FileRecord]) -> Result<()> {
        let line = serde_json::to_vec(&Stored {
            index,
            part: part.clone(),
            records: records.to_vec(),
        })?;
        let mut s = self.state.lock().expect("journal");
        let offset = s.len;
        s.file.write_all(&line)?;
        s.file.write_all(b"\n")?;
        s.file.sync_data()?;
        s.len += line.len() as u64 + 1;
        s.lines.insert(index, (offset, line.len() as u64));
        Ok(())
    }

    /// The part journaled under `index` (by this run or the interrupted one).
    pub fn stored(&self, index: u32) -> Result<Option<Stored>> {
        let span = self
            .state
            .lock()
            .expect("journal")
            .lines
            .get(&index)
            .copied();
        let Some(span) = span else {
            return Ok(None);
        };
        let f = std::fs::File::open(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let line = read_span(&f, span)?;
        serde_json::from_slice(&line)
            .map(Some)
            .with_context(|| format!("{} is damaged", self.path.display()))
    }
}

fn read_span(f: &std::fs::File, (offset, len): Span) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Whether backup `id` (its start second) began within the last day: an
/// older one is left to retention and a new backup starts afresh.
pub fn recent(id: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    chrono::NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%SZ")
        .is_ok_and(|t| now - t.and_utc() < chrono::Duration::hours(24))
}

/// The backup is complete: nothing to resume.
pub fn finish(pgdata: &Path) {
    if let Err(e) = crate::files::remove_if_present(&path(pgdata)) {
        tracing::warn!("cannot remove {}: {e:#}", path(pgdata).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(i: u32) -> Part {
        Part {
            key: format!("part-{i}"),
            files: 1,
            raw_bytes: 1,
            stored_bytes: 1,
            version: None,
        }
    }
    fn rec(p: &str) -> FileRecord {
        FileRecord {
            path: p.into(),
            size: 1,
            sha256: "00".into(),
            part: 0,
            stored: super::super::Stored::Whole,
            block_sha: None,
            block_changes: None,
        }
    }

    #[test]
    fn parts_are_read_back_one_by_one_and_survive_a_resume() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::start(d.path(), "b1", None, None).unwrap();
        j.record(1, &part(1), &[rec("b")]).unwrap();
        j.record(0, &part(0), &[rec("a")]).unwrap();
        // Stored again (a kept part that did not match): the last line counts.
        j.record(1, &part(1), &[rec("b2")]).unwrap();
        assert_eq!(j.stored(1).unwrap().unwrap().records, vec![rec("b2")]);
        assert!(j.stored(2).unwrap().is_none());
        drop(j);
        // A torn last line is left out.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path(d.path()))
            .unwrap();
        f.write_all(b"{\"index\":2,\"part").unwrap();
        let prev = interrupted(d.path()).unwrap();
        assert_eq!((prev.id.as_str(), prev.parts()), ("b1", 2));
        let j = Journal::start(d.path(), "b1", None, Some(&prev)).unwrap();
        assert_eq!(j.stored(0).unwrap().unwrap().records, vec![rec("a")]);
        assert_eq!(j.stored(1).unwrap().unwrap().records, vec![rec("b2")]);
        j.record(2, &part(2), &[rec("c")]).unwrap();
        assert_eq!(interrupted(d.path()).unwrap().parts(), 3);
        finish(d.path());
        assert!(interrupted(d.path()).is_none());
    }

    #[test]
    fn only_a_recent_backup_is_resumed() {
        let now = "2026-12-02T12:00:00Z".parse().unwrap();
        assert!(recent("20261202T010000Z", now));
        assert!(!recent("20261201T110000Z", now));
        assert!(!recent("not-an-id", now));
    }
}
