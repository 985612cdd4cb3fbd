//! Local files written all or nothing: the temporary name beside a file, the
//! fsync of a file and of its directory, the rename that publishes it.
//!
//! The repository's local store, the WAL side's journals and markers, recovery
//! settings, status textfiles and the config rewrite all write through here, so
//! one rule decides what a crash can leave behind: the old file or the new one,
//! never a part.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Makes the directory's entries (a rename, a new link) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A hidden temporary name beside `path` (`.<name>.tmp.<pid>`), which no
/// reader of the directory mistakes for the real file and no other process
/// writing the same file shares.
pub fn temp_beside(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    Ok(parent_of(path).join(format!(".{name}.tmp.{}", std::process::id())))
}

/// Removes `path`; a file already absent is not an error.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// Publishes a complete temporary file: fsync, rename over `dest`, fsync of
/// the directory. The temporary file is removed when any step fails.
pub fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    let done = std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(tmp, dest))
        .and_then(|()| sync_dir(parent_of(dest)));
    if done.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    done.with_context(|| format!("cannot write {}", dest.display()))
}

/// Writes a small local file all or nothing ([`temp_beside`], then [`publish`]).
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_beside(path)?;
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(data));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    publish(&tmp, path)
}

/// Appends one line to `path` and makes it durable (the file and, for a new
/// file, its directory entry) before returning.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_all())
        .and_then(|()| sync_dir(parent_of(path)))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let (d, f) = crate::testing::temp_path("state");
        write_atomically(&f, b"first, and longer").unwrap();
        write_atomically(&f, b"second").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
    }

    #[test]
    fn a_failed_publish_removes_its_temporary_and_keeps_the_old_file() {
        let (d, f) = crate::testing::temp_path("state");
        std::fs::write(&f, b"old").unwrap();
        let tmp = temp_beside(&f).unwrap();
        std::fs::write(&tmp, b"new").unwrap();
        // A destination in a directory that does not exist: the rename fails.
        let err = publish(&tmp, &d.path().join("gone").join("state")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
    }

    #[test]
    fn appended_lines_accumulate_and_absent_files_are_no_error_to_remove() {
        let (_d, j) = crate::testing::temp_path("journal");
        append_line(&j, "a").unwrap();
        append_line(&j, "b").unwrap();
        assert_eq!(std::fs::read_to_string(&j).unwrap(), "a\nb\n");
        remove_if_present(&j).unwrap();
        remove_if_present(&j).unwrap();
        assert!(!j.exists());
        assert_eq!(parent_of(Path::new("bare")), Path::new("."));
    }
}
