//! A backup's file list (`files.json`, a JSON array of [`FileRecord`]s) read
//! and written one record at a time, so that memory does not grow with the
//! number of files: a cluster of a million small relations has a list of
//! some 200 MB.
//!
//! Records are in walk order ([`walk_order`]: path components compared in
//! turn, as the walk sorts each directory), `global/pg_control` last. Lists
//! compared with each other (a parent's and the walk, a chain's backups) are
//! read side by side in that order, never held whole.

use super::FileRecord;
use crate::codec::Codec;
use crate::store::Store;
use anyhow::{Context, Result};
use serde::de::{SeqAccess, Visitor};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::sync::Arc;

/// The order the walk yields paths in: a directory before what it holds,
/// the names of one directory in byte order.
pub fn walk_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// Records parsed from a JSON array on a thread of their own and handed over
/// a bounded channel: the list is never in memory whole.
pub struct Records {
    rx: std::sync::mpsc::Receiver<io::Result<FileRecord>>,
}

/// Records in flight between the parser and the reader.
const IN_FLIGHT: usize = 4096;

impl Records {
    pub fn from_reader<R: Read + Send + 'static>(src: R) -> Records {
        let (tx, rx) = std::sync::mpsc::sync_channel(IN_FLIGHT);
        std::thread::spawn(move || {
            let mut de = serde_json::Deserializer::from_reader(BufReader::new(src));
            let r = serde::Deserializer::deserialize_seq(&mut de, Each { tx: tx.clone() })
                .and_then(|()| de.end());
            if let Err(e) = r {
                // The reader may be gone (it stopped early): nothing to tell.
                let _ = tx.send(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        });
        Records { rx }
    }

    /// The records of a local copy of a list.
    pub fn from_file(file: File) -> Records {
        Records::from_reader(file)
    }
}

impl Iterator for Records {
    type Item = io::Result<FileRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// Sends each element of the array as it is parsed; stops when nobody reads.
struct Each {
    tx: std::sync::mpsc::SyncSender<io::Result<FileRecord>>,
}

impl<'de> Visitor<'de> for Each {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of file records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(r) = seq.next_element::<FileRecord>()? {
            if self.tx.send(Ok(r)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Writes a list: `[`, the records, `]`.
pub struct Writer<W: Write> {
    out: W,
    count: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Writer<W>> {
        out.write_all(b"[")?;
        Ok(Writer { out, count: 0 })
    }
    pub fn push(&mut self, r: &FileRecord) -> io::Result<()> {
        if self.count > 0 {
            self.out.write_all(b",")?;
        }
        serde_json::to_writer(&mut self.out, r)?;
        self.count += 1;
        Ok(())
    }
    /// Ends the array; returns the sink and the number of records.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(b"]")?;
        Ok((self.out, self.count))
    }
}

type RecordIter = Box<dyn Iterator<Item = io::Result<FileRecord>> + Send>;

/// Looks records up by path, for paths asked in walk order: each record is
/// read once and dropped once passed. Records out of that order (pg_control,
/// last) are found only among those a [`Sorted`] list set aside; a stream's
/// are not found, which costs their file being read whole.
pub struct Lookup {
    records: RecordIter,
    aside: Arc<BTreeMap<String, FileRecord>>,
    next: Option<FileRecord>,
    ended: bool,
}

impl Lookup {
    pub fn new(records: Records) -> Lookup {
        Lookup {
            records: Box::new(records),
            aside: Arc::default(),
            next: None,
            ended: false,
        }
    }

    /// The record of `path`, if the list has it (at this point of the walk).
    pub fn find(&mut self, path: &str) -> io::Result<Option<FileRecord>> {
        if let Some(r) = self.aside.get(path) {
            return Ok(Some(r.clone()));
        }
        loop {
            if self.next.is_none() && !self.ended {
                match self.records.next().transpose()? {
                    Some(r) => self.next = Some(r),
                    None => self.ended = true,
                }
            }
            let Some(r) = &self.next else {
                return Ok(None);
            };
            match walk_order(&r.path, path) {
                Ordering::Less => self.next = None,
                Ordering::Equal => return Ok(self.next.take()),
                Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// Records as JSON lines in an unnamed temporary file: written once, then
/// read from the start as often as needed.
pub struct Spool {
    out: BufWriter<File>,
    file: Arc<File>,
    len: u64,
}

impl Spool {
    pub fn new() -> io::Result<Spool> {
        let out = tempfile::tempfile()?;
        let file = Arc::new(out.try_clone()?);
        Ok(Spool {
            out: BufWriter::new(out),
            file,
            len: 0,
        })
    }
    pub fn push(&mut self, r: &FileRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.len += line.len() as u64;
        Ok(())
    }
    /// Ends writing: the records, readable.
    pub fn finish(mut self) -> io::Result<Spooled> {
        self.out.flush()?;
        Ok(Spooled {
            file: self.file,
            len: self.len,
        })
    }
}

/// A [`Spool`] written.
pub struct Spooled {
    file: Arc<File>,
    len: u64,
}

impl Spooled {
    /// The records of bytes `from..to`, in order.
    fn lines(&self, from: u64, to: u64) -> Lines {
        Lines {
            src: io::BufReader::new(At {
                file: self.file.clone(),
                pos: from,
                end: to,
            }),
            buf: Vec::new(),
        }
    }
    pub fn iter(&self) -> Lines {
        self.lines(0, self.len)
    }
}

/// Reads a file from a position of its own (the handle is shared).
struct At {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let most = buf.len().min((self.end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..most], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Spooled records, one line each.
pub struct Lines {
    src: io::BufReader<At>,
    buf: Vec<u8>,
}

impl Iterator for Lines {
    type Item = io::Result<FileRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        self.buf.clear();
        match io::BufRead::read_until(&mut self.src, b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_slice(&self.buf).map_err(io::Error::from)),
            Err(e) => Some(Err(e)),
        }
    }
}

/// A backup's file list on local disk, in walk order: the records in order
/// spooled, those out of it (pg_control, stored last) held aside.
pub struct Sorted {
    spooled: Spooled,
    aside: Arc<BTreeMap<String, FileRecord>>,
}

impl Sorted {
    pub fn from_records(
        records: impl Iterator<Item = io::Result<FileRecord>>,
    ) -> io::Result<Sorted> {
        let mut spool = Spool::new()?;
        let mut aside = BTreeMap::new();
        let mut last: Option<String> = None;
        for r in records {
            let r = r?;
            if last
                .as_deref()
                .is_some_and(|l| walk_order(&r.path, l) != Ordering::Greater)
            {
                aside.insert(r.path.clone(), r);
                continue;
            }
            spool.push(&r)?;
            last = Some(r.path);
        }
        Ok(Sorted {
            spooled: spool.finish()?,
            aside: Arc::new(aside),
        })
    }
    /// Every record: those in order, then those set aside.
    pub fn iter(&self) -> impl Iterator<Item = io::Result<FileRecord>> + Send + 'static {
        let rest: Vec<FileRecord> = self.aside.values().cloned().collect();
        self.spooled.iter().chain(rest.into_iter().map(Ok))
    }
    pub fn lookup(&self) -> Lookup {
        Lookup {
            records: Box::new(self.spooled.iter()),
            aside: self.aside.clone(),
            next: None,
            ended: false,
        }
    }
}

/// Records by the part that holds them, on local disk: each part's lines
/// together (a part is a run of the walk), read part by part.
pub struct ByPart {
    spool: Spool,
    spans: BTreeMap<u32, Span>,
    current: Option<u32>,
    /// Records of a part met again after another part's (not in a backup
    /// walvault wrote), in memory.
    aside: BTreeMap<u32, Vec<FileRecord>>,
}

/// A part's lines: where they start and end, and how many.
#[derive(Clone, Copy, Default)]
struct Span {
    from: u64,
    to: u64,
    count: u64,
}

impl ByPart {
    pub fn new() -> io::Result<ByPart> {
        Ok(ByPart {
            spool: Spool::new()?,
            spans: BTreeMap::new(),
            current: None,
            aside: BTreeMap::new(),
        })
    }
    pub fn push(&mut self, r: &FileRecord) -> io::Result<()> {
        if self.current != Some(r.part) && self.spans.contains_key(&r.part) {
            self.aside.entry(r.part).or_default().push(r.clone());
            return Ok(());
        }
        let from = self.spool.len;
        self.spool.push(r)?;
        let span = self.spans.entry(r.part).or_insert(Span {
            from,
            to: from,
            count: 0,
        });
        span.to = self.spool.len;
        span.count += 1;
        self.current = Some(r.part);
        Ok(())
    }
    pub fn finish(self) -> io::Result<Parts> {
        Ok(Parts {
            spooled: self.spool.finish()?,
            spans: self.spans,
            aside: self.aside,
        })
    }
}

/// [`ByPart`] written.
pub struct Parts {
    spooled: Spooled,
    spans: BTreeMap<u32, Span>,
    aside: BTreeMap<u32, Vec<FileRecord>>,
}

impl Parts {
    /// The parts that hold records, with how many.
    pub fn counts(&self) -> BTreeMap<u32, u64> {
        let mut c: BTreeMap<u32, u64> = self.spans.iter().map(|(p, s)| (*p, s.count)).collect();
        for (p, v) in &self.aside {
            *c.entry(*p).or_default() += v.len() as u64;
        }
        c
    }
    /// Part `part`'s records by path.
    pub fn records(&self, part: u32) -> io::Result<HashMap<String, FileRecord>> {
        let mut out = HashMap::new();
        if let Some(s) = self.spans.get(&part) {
            for r in self.spooled.lines(s.from, s.to) {
                let r = r?;
                out.insert(r.path.clone(), r);
            }
        }
        for r in self.aside.get(&part).into_iter().flatten() {
            out.insert(r.path.clone(), r.clone());
        }
        Ok(out)
    }
}

/// A backup's stored file list, decoded into an unnamed temporary file (gone
/// when closed), ready to read from its start.
pub async fn download(store: &dyn Store, codec: &Codec, id: &str) -> Result<File> {
    let key = format!("{}files.json", super::prefix(id));
    let tmp = tempfile::tempfile().context("cannot create a temporary file for a file list")?;
    let limited = crate::codec::Limited::new(BufWriter::new(tmp), super::FILES_JSON_LIMIT);
    let (_, limited) = codec
        .download(store, &key, limited)
        .await
        .with_context(|| format!("reading {}", store.locate(&key)))?
        .with_context(|| format!("{} is missing", store.locate(&key)))?;
    let mut file = limited
        .into_inner()
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing a temporary file")?;
    file.rewind()?;
    Ok(file)
}

/// A backup's stored file list, record by record.
pub async fn read(store: &dyn Store, codec: &Codec, id: &str) -> Result<Records> {
    Ok(Records::from_file(download(store, codec, id).await?))
}

/// A backup's stored file list, [`Sorted`] on local disk.
pub async fn sorted(store: &dyn Store, codec: &Codec, id: &str) -> Result<Sorted> {
    let key = format!("{}files.json", super::prefix(id));
    let file = download(store, codec, id).await?;
    let what = store.locate(&key);
    tokio::task::spawn_blocking(move || {
        Sorted::from_records(Records::from_file(file)).with_context(|| format!("{what} is damaged"))
    })
    .await
    .context("file list task failed")?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Stored;

    fn rec(path: &str) -> FileRecord {
        FileRecord {
            path: path.into(),
            size: 1,
            sha256: "00".into(),
            part: 0,
            stored: Stored::Whole,
            block_sha: None,
            block_changes: None,
        }
    }

    #[test]
    fn walk_order_is_the_walks() {
        // The walk puts a directory's contents right after it, before a
        // sibling whose name sorts after it only by bytes ('.' < '/').
        let mut paths = vec!["a.b", "a/x", "a", "a/x/y", "b", "a0", "A"];
        paths.sort_by(|a, b| walk_order(a, b));
        assert_eq!(paths, vec!["A", "a", "a/x", "a/x/y", "a.b", "a0", "b"]);
    }

    #[test]
    fn written_lists_read_back_record_by_record() {
        let mut w = Writer::new(Vec::new()).unwrap();
        for p in ["a", "a/x", "b"] {
            w.push(&rec(p)).unwrap();
        }
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n, 3);
        // The same bytes serde_json writes for the whole list.
        assert_eq!(
            bytes,
            serde_json::to_vec(&vec![rec("a"), rec("a/x"), rec("b")]).unwrap()
        );
        let back: Vec<FileRecord> = Records::from_reader(io::Cursor::new(bytes))
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(back, vec![rec("a"), rec("a/x"), rec("b")]);
        let empty = Writer::new(Vec::new()).unwrap().finish().unwrap().0;
        assert_eq!(Records::from_reader(io::Cursor::new(empty)).count(), 0);
    }

    #[test]
    fn a_damaged_list_ends_in_an_error() {
        let mut bytes = serde_json::to_vec(&vec![rec("a"), rec("b")]).unwrap();
        bytes.truncate(bytes.len() - 5);
        let got: Vec<io::Result<FileRecord>> =
            Records::from_reader(io::Cursor::new(bytes)).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(got[1].is_err());
    }

    #[test]
    fn sorted_lists_set_pg_control_aside_and_parts_read_back_alone() {
        let mut list = vec![
            rec("base/1/1"),
            rec("base/1/2"),
            rec("global/1"),
            rec("pg_xact/0000"),
        ];
        list[2].part = 1;
        list[3].part = 1;
        list.push(FileRecord {
            part: 2,
            ..rec("global/pg_control")
        });
        let sorted = Sorted::from_records(list.clone().into_iter().map(Ok)).unwrap();
        let all: Vec<FileRecord> = sorted.iter().collect::<io::Result<_>>().unwrap();
        assert_eq!(all, list);
        // Another list's lookups find pg_control wherever the walk is.
        let mut l = sorted.lookup();
        assert!(l.find("base/1/2").unwrap().is_some());
        assert!(l.find("pg_wal").unwrap().is_none());
        assert!(l.find("global/pg_control").unwrap().is_some());
        assert!(l.find("global/1").unwrap().is_none(), "passed by then");
        let mut by = ByPart::new().unwrap();
        for r in &all {
            by.push(r).unwrap();
        }
        // A part met again after another (no walvault backup does this) still reads back whole.
        by.push(&rec("base/9")).unwrap();
        let parts = by.finish().unwrap();
        assert_eq!(
            parts.counts().into_iter().collect::<Vec<_>>(),
            vec![(0, 3), (1, 2), (2, 1)]
        );
        let mut zero: Vec<String> = parts.records(0).unwrap().into_keys().collect();
        zero.sort();
        assert_eq!(zero, vec!["base/1/1", "base/1/2", "base/9"]);
        assert_eq!(parts.records(1).unwrap().len(), 2);
        assert!(parts.records(7).unwrap().is_empty());
    }

    #[test]
    fn lookup_follows_the_walk() {
        let list = vec![
            rec("base/1/1"),
            rec("base/1/2"),
            rec("base/1/3"),
            rec("global/pg_control"),
        ];
        let bytes = serde_json::to_vec(&list).unwrap();
        let mut l = Lookup::new(Records::from_reader(io::Cursor::new(bytes)));
        assert_eq!(l.find("base").unwrap(), None);
        assert_eq!(l.find("base/1/1").unwrap().unwrap().path, "base/1/1");
        // Skipped and new paths are not found; later ones still are.
        assert_eq!(l.find("base/1/25").unwrap(), None);
        assert_eq!(l.find("base/1/3").unwrap().unwrap().path, "base/1/3");
        assert_eq!(l.find("global/pg_control").unwrap().unwrap().size, 1);
        assert_eq!(l.find("zzz").unwrap(), None);
    }
}
