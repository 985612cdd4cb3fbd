//! `global/pg_control`: its first field is the cluster's 64-bit system identifier.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub fn system_identifier(pgdata: &Path) -> Result<u64> {
    let p = pgdata.join("global").join("pg_control");
    let mut b = [0u8; 8];
    std::fs::File::open(&p)
        .and_then(|mut f| f.read_exact(&mut b))
        .with_context(|| format!("cannot read the system identifier from {}", p.display()))?;
    Ok(u64::from_le_bytes(b))
}

/// The data directory holding `path` when it lies in `pg_wal/` (as `%p` does:
/// PostgreSQL runs archive_command with the data directory as working directory).
pub fn pgdata_of_wal_path(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    if dir.file_name()? != "pg_wal" {
        return None;
    }
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => Some(p.to_path_buf()),
        _ => Some(PathBuf::from(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pgdata_from_wal_paths() {
        assert_eq!(
            pgdata_of_wal_path(Path::new("pg_wal/00000001.history")),
            Some(".".into())
        );
        assert_eq!(
            pgdata_of_wal_path(Path::new("/d/pg_wal/x")),
            Some("/d".into())
        );
        assert_eq!(pgdata_of_wal_path(Path::new("/tmp/x")), None);
        assert_eq!(pgdata_of_wal_path(Path::new("x")), None);
    }

    #[test]
    fn reads_identifier() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("global")).unwrap();
        let mut v = 7311234567890123456u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[0u8; 100]);
        std::fs::write(d.path().join("global/pg_control"), v).unwrap();
        assert_eq!(system_identifier(d.path()).unwrap(), 7311234567890123456);
        assert!(system_identifier(Path::new("/nonexistent")).is_err());
    }
}
