//! Reading a backup's parts: each part downloaded and its tar stream walked,
//! every entry checked against the size and sha256 recorded at backup, and
//! written below a target (whole, or an incremental's blocks over the file
//! already there) or only checked (verify). `chain` decides what is written.
//!
//! Files are not fsync'd one by one: a restored cluster starts in recovery from a
//! backup, and PostgreSQL syncs the whole data directory before it replays.

use super::{FileRecord, Stored};
use crate::codec::Codec;
use crate::progress::Progress;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub struct Target {
    pub dir: PathBuf,
    /// Tablespace oid → directory to restore it into.
    pub tablespaces: BTreeMap<String, PathBuf>,
}

impl Target {
    /// The directory `path` (a backup path) is restored under.
    fn root_of(&self, path: &str) -> PathBuf {
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            let oid = rest.split('/').next().unwrap_or(rest);
            if let Some(dir) = self.tablespaces.get(oid) {
                return dir.clone();
            }
        }
        self.dir.clone()
    }

    pub fn dest(&self, path: &str) -> Result<PathBuf> {
        let p = Path::new(path);
        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("refusing unsafe path '{path}' in the backup");
        }
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(dir) = self.tablespaces.get(oid) {
                return Ok(if inner.is_empty() {
                    dir.clone()
                } else {
                    dir.join(inner)
                });
            }
        }
        Ok(self.dir.join(p))
    }
}

/// A symbolic link of the backup, made only once every part is extracted.
pub struct Link {
    pub part: String,
    pub path: String,
    pub dest: PathBuf,
    pub points_to: PathBuf,
}

/// What one part held: how many files were written (or checked), their
/// bytes, and the links still to make.
pub struct PartRead {
    pub files: u64,
    pub bytes: u64,
    pub links: Vec<Link>,
}

/// What a restore writes of one part.
#[derive(Clone)]
pub struct Apply {
    pub target: Arc<Target>,
    /// Also make the part's directories and links (the backup restored last).
    pub layout: bool,
    /// `restore.max_rate_mb`: bytes written.
    pub throttle: Option<Arc<crate::throttle::Throttle>>,
}

/// Downloads one part and walks its tar stream. `index` holds the records
/// of the part's files to write (`apply`), or of all its files (`None`:
/// verification, every file only checked); each entry is checked against
/// its record (size and sha256), and every record must be met.
pub async fn read_part(
    store: Arc<dyn Store>,
    codec: Codec,
    key: String,
    index: HashMap<String, FileRecord>,
    apply: Option<Apply>,
    progress: Arc<Progress>,
) -> Result<PartRead> {
    let (reader, writer) = io::pipe()?;
    let part = key.clone();
    let extract = tokio::task::spawn_blocking(move || {
        extract(reader, &part, apply.as_ref(), &index, &progress)
    });
    // The decoder hands the pipe's writer back: drop it at once so the
    // extractor sees the end of the stream.
    let download = codec
        .download(store.as_ref(), &key, writer)
        .await
        .map(|done| {
            done.map(|(trailer, writer)| {
                drop(writer);
                trailer
            })
        });
    let extracted = extract.await.context("extract task failed")?;
    // The download's verdict first: a damaged part may also break the tar stream.
    match download {
        Ok(Some(_)) => {}
        Ok(None) => bail!("part {} is missing from the repository", store.locate(&key)),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("part {}", store.locate(&key)))),
    }
    extracted.with_context(|| format!("reading {}", store.locate(&key)))
}

pub struct Restored {
    pub files: u64,
    pub bytes: u64,
}

/// Makes the backup's symbolic links, after every file is written: no file of
/// the backup can then be written through one of them. A link where the backup
/// also wrote a file or directory, or below another link, is refused by name.
pub fn make_links(target: &Target, mut links: Vec<Link>) -> Result<()> {
    links.sort_by(|a, b| a.path.cmp(&b.path));
    for l in links {
        let refuse = |why: &str| {
            anyhow::anyhow!(
                "refusing entry '{}' of {}: a symbolic link to {} {why}; a backup may not make a restore write outside its directories",
                l.path,
                l.part,
                l.points_to.display()
            )
        };
        if std::fs::read_link(&l.dest).is_ok_and(|to| to == l.points_to) {
            continue; // already there (a delta restore's target)
        }
        if std::fs::symlink_metadata(&l.dest).is_ok() {
            return Err(refuse("where the backup also holds a file or directory"));
        }
        let root = target.root_of(&l.path);
        let mut p = l.dest.parent();
        while let Some(dir) = p.filter(|d| d.starts_with(&root) && *d != root) {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(refuse("below another symbolic link"));
            }
            p = dir.parent();
        }
        std::os::unix::fs::symlink(&l.points_to, &l.dest)
            .with_context(|| format!("cannot create link {}", l.dest.display()))?;
    }
    Ok(())
}

/// Walks one tar stream (part `part`): files checked, and written when
/// `apply` asks for them; links returned to be made last.
fn extract(
    reader: io::PipeReader,
    part: &str,
    apply: Option<&Apply>,
    index: &HashMap<String, FileRecord>,
    progress: &Progress,
) -> Result<PartRead> {
    let mut ar = tar::Archive::new(reader);
    let mut done = HashSet::new();
    let mut links = Vec::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut made: Option<PathBuf> = None;
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().to_string();
        let mode = entry.header().mode().unwrap_or(0o600);
        let kind = entry.header().entry_type();
        let record = |path: &str| {
            let rec = index
                .get(path)
                .with_context(|| format!("{path} is in the backup but not in its file list"))?;
            let (size, sha256) = rec.entry().with_context(|| {
                format!("{path} is in the part but its record says it is the parent's")
            })?;
            Ok::<_, anyhow::Error>((rec, size, sha256.to_string()))
        };
        let Some(apply) = apply else {
            if kind == tar::EntryType::Regular {
                let (_, size, sha) = record(&path)?;
                bytes += copy_checked(
                    &path,
                    &mut entry,
                    size,
                    &sha,
                    &mut buf,
                    progress,
                    &mut io::sink(),
                )?;
                done.insert(path);
            }
            continue;
        };
        let target = &apply.target;
        match kind {
            tar::EntryType::Directory if apply.layout => {
                let dest = target.dest(&path)?;
                std::fs::create_dir_all(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Symlink if apply.layout => {
                let points_to = entry
                    .link_name()?
                    .context("symlink without target")?
                    .to_path_buf();
                links.push(Link {
                    part: part.to_string(),
                    dest: target.dest(&path)?,
                    path,
                    points_to,
                });
            }
            tar::EntryType::Directory | tar::EntryType::Symlink => {}
            tar::EntryType::Regular => {
                if !index.contains_key(&path) {
                    continue; // not wanted from this part
                }
                let (rec, size, sha) = record(&path)?;
                let dest = target.dest(&path)?;
                // A part's files come directory by directory: one check each.
                if let Some(parent) = dest.parent().filter(|p| made.as_deref() != Some(*p)) {
                    std::fs::create_dir_all(parent)?;
                    made = Some(parent.to_path_buf());
                }
                let n = if matches!(rec.stored, Stored::Blocks { .. }) {
                    // Over the file an earlier backup of the chain wrote.
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&dest)
                        .with_context(|| {
                            format!(
                                "{path}: the file its blocks go over is not there ({})",
                                dest.display()
                            )
                        })?;
                    let mut hashed = CheckedRead::new(&mut entry, size);
                    hashed.throttle = apply.throttle.clone();
                    super::delta::apply(&mut hashed, &f, &path)?;
                    io::copy(&mut hashed, &mut io::sink())?;
                    hashed.finish(&path, &sha)?;
                    progress.add(size);
                    size
                } else {
                    // Never through a link already there (a delta restore's target).
                    if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_file()) {
                        std::fs::remove_file(&dest)
                            .with_context(|| format!("cannot replace {}", dest.display()))?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&dest)
                        .with_context(|| format!("cannot create {}", dest.display()))?;
                    let mut out = Throttled {
                        inner: &mut f,
                        throttle: &apply.throttle,
                    };
                    copy_checked(&path, &mut entry, size, &sha, &mut buf, progress, &mut out)?
                };
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
                bytes += n;
                done.insert(path);
            }
            other => bail!("unexpected entry type {other:?} for {path}"),
        }
    }
    // Drain: the decoder must see the whole part consumed (end-of-archive blocks).
    io::copy(&mut ar.into_inner(), &mut io::sink())?;
    if let Some(lost) = index.keys().find(|p| !done.contains(*p)) {
        bail!(
            "{lost} is not in {part} although the file list says it is ({} such file(s))",
            index.len() - done.len()
        );
    }
    Ok(PartRead {
        files: done.len() as u64,
        bytes,
        links,
    })
}

/// Copies one tar entry to `out`, checking it against the recorded size and sha256.
fn copy_checked(
    path: &str,
    entry: &mut dyn Read,
    size: u64,
    sha256: &str,
    buf: &mut [u8],
    progress: &Progress,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut h = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = entry.read(buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > size {
            // A tar header may claim any size: stop at the recorded one.
            bail!("{path}: longer than the {size} bytes recorded at backup");
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        progress.add(n as u64);
    }
    if total != size || hex::encode(h.finalize()) != sha256 {
        bail!("{path}: content does not match the checksum recorded at backup");
    }
    Ok(total)
}

/// Writes at the restore's rate.
struct Throttled<'a, W> {
    inner: W,
    throttle: &'a Option<Arc<crate::throttle::Throttle>>,
}

impl<W: Write> Write for Throttled<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        crate::throttle::take(self.throttle, n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An entry read through its hash, never past its recorded size.
struct CheckedRead<'a> {
    inner: io::Take<&'a mut dyn Read>,
    hash: Sha256,
    count: u64,
    size: u64,
    throttle: Option<Arc<crate::throttle::Throttle>>,
}

impl<'a> CheckedRead<'a> {
    fn new(inner: &'a mut dyn Read, size: u64) -> Self {
        CheckedRead {
            inner: inner.take(size + 1),
            hash: Sha256::new(),
            count: 0,
            size,
            throttle: None,
        }
    }
    fn finish(self, path: &str, sha256: &str) -> Result<()> {
        if self.count != self.size || hex::encode(self.hash.finalize()) != sha256 {
            bail!("{path}: content does not match the checksum recorded at backup");
        }
        Ok(())
    }
}

impl Read for CheckedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        crate::throttle::take(&self.throttle, n as u64);
        if self.count > self.size {
            return Err(io::Error::other("longer than the size recorded at backup"));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore target in a new, empty directory (no tablespaces).
    fn empty_target() -> (tempfile::TempDir, Target) {
        let root = tempfile::tempdir().unwrap();
        let t = Target {
            dir: root.path().to_path_buf(),
            tablespaces: BTreeMap::new(),
        };
        (root, t)
    }

    #[test]
    fn paths_are_confined_and_tablespaces_mapped() {
        let t = Target {
            dir: "/restore".into(),
            tablespaces: [("16389".to_string(), PathBuf::from("/ts1"))].into(),
        };
        assert_eq!(
            t.dest("base/1/1259").unwrap(),
            PathBuf::from("/restore/base/1/1259")
        );
        assert_eq!(t.dest("pg_tblspc/16389").unwrap(), PathBuf::from("/ts1"));
        assert_eq!(
            t.dest("pg_tblspc/16389/PG_15_1/5/1").unwrap(),
            PathBuf::from("/ts1/PG_15_1/5/1")
        );
        assert!(t.dest("../etc/passwd").is_err());
        assert!(t.dest("/etc/passwd").is_err());
        assert!(t.dest("base/../../x").is_err());
    }

    fn tar_of(entries: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o600);
            match link {
                Some(to) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, to).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn record(path: &str, data: &[u8]) -> (String, FileRecord) {
        let rec = FileRecord {
            path: path.into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            part: 0,
            stored: Stored::Whole,
            block_sha: None,
            block_changes: None,
        };
        (path.to_string(), rec)
    }

    fn run_extract(
        t: &Target,
        tar: Vec<u8>,
        index: &HashMap<String, FileRecord>,
    ) -> Result<PartRead> {
        let (reader, mut writer) = io::pipe().unwrap();
        let feed = std::thread::spawn(move || {
            let _ = writer.write_all(&tar);
        });
        let apply = Apply {
            target: Arc::new(Target {
                dir: t.dir.clone(),
                tablespaces: t.tablespaces.clone(),
            }),
            layout: true,
            throttle: None,
        };
        let r = extract(
            reader,
            "part-0000.tar",
            Some(&apply),
            index,
            &Progress::new("t", 0),
        );
        feed.join().unwrap();
        r
    }

    #[test]
    fn nothing_is_written_through_a_link_of_the_backup() {
        let outside = tempfile::tempdir().unwrap();
        let (_root, t) = empty_target();
        let out = outside.path().to_str().unwrap();
        let index: HashMap<_, _> = [record("x/evil", b"owned")].into();
        let tar = tar_of(&[("x", Some(out), b""), ("x/evil", None, b"owned")]);
        let read = run_extract(&t, tar, &index).unwrap();
        let e = make_links(&t, read.links).unwrap_err().to_string();
        assert!(e.contains("refusing entry 'x' of part-0000.tar"), "{e}");
        assert!(!outside.path().join("evil").exists());
        // A link below another link.
        let (_root2, t2) = empty_target();
        let tar = tar_of(&[("a", Some(out), b""), ("a/b", Some("/etc"), b"")]);
        let read = run_extract(&t2, tar, &HashMap::new()).unwrap();
        let e = make_links(&t2, read.links).unwrap_err().to_string();
        assert!(e.contains("'a/b'") && e.contains("below another"), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // An ordinary link is made.
        let (root3, t3) = empty_target();
        let read = run_extract(&t3, tar_of(&[("log", Some(out), b"")]), &HashMap::new()).unwrap();
        make_links(&t3, read.links).unwrap();
        // Made again over itself (a delta restore): nothing to do.
        let read = run_extract(&t3, tar_of(&[("log", Some(out), b"")]), &HashMap::new()).unwrap();
        make_links(&t3, read.links).unwrap();
        assert_eq!(
            std::fs::read_link(root3.path().join("log")).unwrap(),
            outside.path()
        );
    }

    #[test]
    fn a_file_the_list_gives_a_part_must_be_in_it() {
        let (root, t) = empty_target();
        let index: HashMap<_, _> = [record("a", b"1"), record("b", b"2")].into();
        let e = run_extract(&t, tar_of(&[("a", None, b"1")]), &index)
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains(
                "b is not in part-0000.tar although the file list says it is (1 such file(s))"
            ),
            "{e:#}"
        );
        // What the list does not give this part is passed over, not written.
        let one: HashMap<_, _> = [record("a", b"1")].into();
        let read = run_extract(&t, tar_of(&[("a", None, b"1"), ("c", None, b"3")]), &one).unwrap();
        assert_eq!(read.files, 1);
        assert!(!root.path().join("c").exists());
    }

    #[test]
    fn an_entry_longer_than_recorded_is_cut_short() {
        let (root, t) = empty_target();
        let big = vec![7u8; 3 << 20];
        let (k, mut rec) = record("base/1/1", &big);
        rec.size = 1 << 20;
        let index: HashMap<_, _> = [(k, rec)].into();
        let e = run_extract(&t, tar_of(&[("base/1/1", None, &big)]), &index)
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("longer than the 1048576 bytes"),
            "{e:#}"
        );
        let written = std::fs::metadata(root.path().join("base/1/1"))
            .unwrap()
            .len();
        assert!(written <= 1 << 20, "{written}");
    }
}
