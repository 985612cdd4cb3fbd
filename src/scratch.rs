//! A scratch cluster: a backup restored into a private directory and started
//! there, reachable only through its own socket, with nothing that acts
//! outward. `drill` proves restores in one; `restore-table` dumps tables out
//! of one. Dropping it stops the server and removes everything, whatever
//! happened before (also on SIGINT, SIGTERM and SIGHUP through [`interrupted`]).

use crate::pg;
use crate::recover::{self, target::Action, target::Target};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a scratch cluster is recovered to, and what its restore_command
/// carries: the options drill and restore-table share.
#[derive(Clone, Debug)]
pub struct Source {
    pub target: Target,
    pub timeline: Option<u32>,
    /// This backup, else the newest that reaches the target.
    pub backup: Option<String>,
    pub config_file: Option<PathBuf>,
    /// Settings the scratch server's restore_command carries (see recover::Options).
    pub carry: Vec<String>,
}

/// The scratch directory of one run: data directory, socket directory,
/// tablespaces and the server's access files.
pub struct Scratch {
    pub dir: PathBuf,
    /// The port that names the socket file (no TCP listener).
    pub port: u16,
}

impl Scratch {
    /// `<root>/walvault-<kind>-<id>-<pid>`, made new (never one that existed), 0700.
    pub fn create(root: &Path, kind: &str, id: &str) -> Result<Scratch> {
        let dir = root.join(format!("walvault-{kind}-{id}-{}", std::process::id()));
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        // create_dir, not _all: the directory is ours alone.
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create scratch directory {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let scratch = Scratch {
            dir,
            port: free_port()?,
        };
        std::fs::create_dir(scratch.socket_dir())?;
        let user = pg::conn::os_user();
        // Only this OS user can reach the private socket: trust is safe there.
        std::fs::write(
            scratch.dir.join("pg_hba.conf"),
            "# walvault scratch cluster: the private socket directory is the access control\nlocal all all trust\n",
        )?;
        std::fs::write(scratch.dir.join("pg_ident.conf"), "")?;
        std::fs::write(
            scratch.dir.join("postgresql.conf"),
            format!(
                "# walvault scratch cluster (run by {user}): the backup held no postgresql.conf\n"
            ),
        )?;
        Ok(scratch)
    }

    pub fn pgdata(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("socket")
    }

    /// Recovery options that restore everything inside the scratch directory
    /// and promote at the target (the copy is then writable, never archived),
    /// from `src.backup` or the newest that reaches it; inclusive unless changed.
    pub fn recover_options(&self, src: &Source, cfg: &crate::config::Config) -> recover::Options {
        recover::Options {
            pgdata: self.pgdata(),
            target: src.target.clone(),
            timeline: src.timeline,
            action: Action::Promote,
            exclusive: false,
            backup: src.backup.clone(),
            overwrite: false,
            delta: false,
            dry_run: false,
            start: true,
            port: Some(self.port),
            socket_dir: Some(self.socket_dir()),
            tablespace_map: Default::default(),
            tablespace_root: Some(self.dir.join("tablespaces")),
            archive: false,
            config_file: src.config_file.clone(),
            carry: src.carry.clone(),
            postgres: cfg.postgres.clone(),
            standby: None,
        }
    }

    /// Server settings: its own socket only, access for this user only, logging
    /// where walvault reads it, and nothing that would reach outside (TLS
    /// files, the archive).
    pub fn server_settings(&self) -> Vec<String> {
        let mut s = vec![
            "listen_addresses=".to_string(),
            format!("hba_file={}", self.dir.join("pg_hba.conf").display()),
            format!("ident_file={}", self.dir.join("pg_ident.conf").display()),
            "logging_collector=off".into(),
            "ssl=off".into(),
            "archive_mode=off".into(),
        ];
        if !self.pgdata().join("postgresql.conf").exists() {
            // Debian keeps postgresql.conf in /etc: the backup has none.
            s.push(format!(
                "config_file={}",
                self.dir.join("postgresql.conf").display()
            ));
        }
        s
    }

    /// A libpq connection string to database `db` of the scratch server.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host='{}' port={} dbname='{}'",
            pg::conn::escape(&self.socket_dir().display().to_string()),
            self.port,
            pg::conn::escape(db)
        )
    }

    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        pg::conn::connect(Some(&self.conninfo(db))).await
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Immediate shutdown (no checkpoint: the copy is thrown away), then SIGKILL.
        pg::postmaster::stop(&self.pgdata(), libc::SIGQUIT, Duration::from_secs(10));
        // An interrupted restore may still be finishing a file: retry until gone.
        for _ in 0..40 {
            let _ = std::fs::remove_dir_all(&self.dir);
            if !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "walvault: could not remove scratch directory {}; remove it by hand",
            self.dir.display()
        );
    }
}

/// Resolves when SIGINT, SIGTERM or SIGHUP arrives; names it.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// A port number no TCP listener uses now; the scratch server listens on its
/// socket only, the port names the socket file.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot pick a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_removed_with_a_running_server_gone() {
        let root = std::env::temp_dir().join(format!("wv-scratch-test-{}", std::process::id()));
        let s = Scratch::create(&root, "test", "t").unwrap();
        let dir = s.dir.clone();
        std::fs::create_dir_all(s.pgdata().join("base")).unwrap();
        std::fs::write(s.pgdata().join("base/1"), b"x").unwrap();
        assert!(dir.join("pg_hba.conf").exists());
        assert!(s.conninfo("db").contains(&format!("port={}", s.port)));
        drop(s);
        assert!(!dir.exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
