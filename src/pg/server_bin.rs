//! The server programs (pg_ctl, postgres, initdb) of a major: where they are, and which major they are.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The directory of `major`'s server programs (pg_ctl and postgres, whose
/// versions are checked): where the configuration says, else Debian's and the
/// PGDG RPMs' versioned directories, else the first directory on PATH holding
/// the right major. A wrong or missing binary is one line naming the major
/// needed and every place looked at.
pub fn server_bin_dir(major: u32, settings: &crate::config::Postgres) -> Result<PathBuf> {
    if let Some((key, dir)) = settings.bin_dir_for(major) {
        return match server_major(&dir) {
            Ok(found) if found == major => Ok(dir),
            Ok(found) => bail!(
                "{key} = {} holds PostgreSQL {found}'s server, but PostgreSQL {major} is needed (a data directory of one major runs only on that major's binaries)",
                dir.display()
            ),
            Err(e) => bail!("{key} = {}: {e:#}; PostgreSQL {major}'s server is needed", dir.display()),
        };
    }
    let mut dirs = vec![
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|d| d.join("pg_ctl").is_file()));
    }
    let mut looked = Vec::new();
    for dir in dirs {
        if !dir.join("pg_ctl").exists() {
            looked.push(format!("{} (none)", dir.display()));
            continue;
        }
        match server_major(&dir) {
            Ok(found) if found == major => return Ok(dir),
            Ok(found) => looked.push(format!("{} (PostgreSQL {found})", dir.display())),
            Err(e) => looked.push(format!("{} ({e:#})", dir.display())),
        }
    }
    bail!(
        "PostgreSQL {major}'s pg_ctl and postgres not found: looked in {}; install PostgreSQL {major}'s server, or set postgres.bin_dir_{major}",
        looked.join(", ")
    )
}

/// The major of the pg_ctl and postgres in `dir`, which must agree.
pub fn server_major(dir: &Path) -> Result<u32> {
    let ctl = program_major(&dir.join("pg_ctl"))?;
    let server = program_major(&dir.join("postgres"))?;
    if ctl != server {
        bail!("pg_ctl there is PostgreSQL {ctl} but postgres is PostgreSQL {server}");
    }
    Ok(ctl)
}

/// The major a program reports with `--version`.
pub(crate) fn program_major(program: &Path) -> Result<u32> {
    let name = program.file_name().unwrap_or_default().to_string_lossy();
    if !program.is_file() {
        bail!("no {name} there");
    }
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let line = line.lines().next().unwrap_or("").trim();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{name} --version failed: {}",
            err.lines().next().unwrap_or("").trim()
        );
    }
    super::majors::of_version_line(line)
        .with_context(|| format!("{name} --version printed '{line}', not a PostgreSQL version"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory with fake pg_ctl and postgres printing these versions.
    fn fake_bin(ctl: &str, server: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, version) in [("pg_ctl", ctl), ("postgres", server)] {
            let p = d.path().join(name);
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n"),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        d
    }

    #[test]
    fn configured_binaries_must_be_of_the_major_needed() {
        let d17 = fake_bin("17.10", "17.10");
        let settings = crate::config::Postgres {
            bin_dir_17: Some(d17.path().to_path_buf()),
            ..Default::default()
        };
        assert_eq!(server_bin_dir(17, &settings).unwrap(), d17.path());
        let wrong = crate::config::Postgres {
            bin_dir: Some(d17.path().display().to_string()),
            ..Default::default()
        };
        let e = server_bin_dir(16, &wrong).unwrap_err().to_string();
        assert!(e.contains("postgres.bin_dir = "), "{e}");
        assert!(
            e.contains("holds PostgreSQL 17's server, but PostgreSQL 16 is needed"),
            "{e}"
        );
        let mixed = fake_bin("18.4", "15.18");
        let e = server_major(mixed.path()).unwrap_err().to_string();
        assert!(
            e.contains("pg_ctl there is PostgreSQL 18 but postgres is PostgreSQL 15"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(server_major(empty.path())
            .unwrap_err()
            .to_string()
            .contains("no pg_ctl there"));
    }

    #[test]
    fn a_template_names_each_major() {
        let settings = crate::config::Postgres {
            bin_dir: Some("/opt/pg/{major}/bin".into()),
            bin_dir_15: Some("/usr/lib/postgresql/15/bin".into()),
            ..Default::default()
        };
        assert_eq!(
            settings.bin_dir_for(18),
            Some(("postgres.bin_dir".into(), "/opt/pg/18/bin".into()))
        );
        assert_eq!(
            settings.bin_dir_for(15),
            Some((
                "postgres.bin_dir_15".into(),
                "/usr/lib/postgresql/15/bin".into()
            ))
        );
        let e = server_bin_dir(99, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL 99's pg_ctl and postgres not found: looked in /usr/lib/postgresql/99/bin (none)"), "{e}");
        assert!(e.contains("set postgres.bin_dir_99"), "{e}");
    }
}
