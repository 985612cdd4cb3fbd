//! `repo-switch`: after a major-version upgrade (pg_upgrade, or a dump and
//! restore) the cluster has a new system identifier, and its repository is
//! bound to the old one. This binds a new repository to the upgraded cluster,
//! links the two both ways (backup-list shows the link; the old repository's
//! refusal of the new cluster's WAL names the new one), and points the config
//! file at the new repository. The old repository is left as it was: readable
//! for recovery to any time before the upgrade, and under its own retention.

use crate::config::Config;
use crate::pg;
use crate::repo::{self, Link, RepoIdentity};
use crate::store::{Class, Store};
use anyhow::{bail, Context, Result};
use chrono::Utc;
use std::path::{Path, PathBuf};

pub struct Options {
    /// The new repository's URL.
    pub to: String,
    /// The upgraded cluster's data directory.
    pub pgdata: PathBuf,
    /// Where the `repo` setting in force came from.
    pub repo_source: RepoSource,
}

/// Where the `repo` setting in force was read, so that it is changed there.
pub enum RepoSource {
    /// The config file (its `repo` line, or none: the default applied).
    File(PathBuf),
    /// The environment or a `--set`: walvault cannot change those itself.
    Elsewhere(String),
}

pub async fn run(cfg: &Config, old: &dyn Store, opts: Options) -> Result<()> {
    let sysid = pg::control::system_identifier(&opts.pgdata)?;
    let major = pg::majors::of_data_directory(&opts.pgdata)?;
    pg::majors::require(major, &format!("PG_VERSION of {}", opts.pgdata.display()))?;
    if opts.to.trim_end_matches('/') == cfg.repo.trim_end_matches('/') {
        // A rerun after the config file was changed: done already.
        if let Some(id) = repo::load(old).await? {
            if id.sysid()? == sysid {
                let from = id
                    .previous
                    .as_ref()
                    .map(|p| format!(", upgraded from {}", p.describe()));
                println!(
                    "already switched: {} belongs to cluster {sysid} (PostgreSQL {major}){}",
                    old.locate(""),
                    from.unwrap_or_default()
                );
                return Ok(());
            }
        }
        bail!(
            "--to names the repository in use ({}); give a new prefix or directory",
            cfg.repo
        );
    }
    let old_id = repo::require(old).await?;
    if old_id.sysid()? == sysid {
        bail!(
            "{} is cluster {sysid}, which {} already belongs to: nothing to switch (after pg_upgrade, give the upgraded data directory)",
            opts.pgdata.display(),
            old.locate("")
        );
    }
    let mut new_cfg = cfg.clone();
    new_cfg.repo = opts.to.clone();
    let new = new_cfg.open_store().await.context("--to")?;
    let existing = repo::load(new.as_ref()).await?;
    if let Some(id) = &existing {
        if id.sysid()? != sysid {
            bail!(
                "{} already belongs to cluster {}; give a new prefix or directory",
                new.locate(""),
                id.system_identifier
            );
        }
    }
    if let Some(next) = repo::successor(old).await? {
        if next.system_identifier != sysid.to_string() || next.repo != opts.to {
            bail!(
                "{} was already switched to {}; a second switch would leave two successors",
                old.locate(""),
                next.describe()
            );
        }
    }
    // Checked before anything is written: the config file must be writable TOML.
    if let RepoSource::File(file) = &opts.repo_source {
        writable(file)?;
        config_document(file)?;
    }

    let now = Utc::now();
    let previous = Link {
        repo: cfg.repo.clone(),
        system_identifier: old_id.system_identifier.clone(),
        pg_version: old_id.pg_version,
        at: now,
    };
    let new_id = match existing {
        Some(id) => id,
        None => {
            let id = RepoIdentity {
                format: repo::FORMAT,
                system_identifier: sysid.to_string(),
                pg_version: Some(major),
                created: now,
                created_by: format!("walvault {}", env!("CARGO_PKG_VERSION")),
                previous: Some(previous),
            };
            repo::write(new.as_ref(), &id).await?;
            id
        }
    };
    let next = Link {
        repo: opts.to.clone(),
        system_identifier: sysid.to_string(),
        pg_version: Some(major),
        at: new_id.created,
    };
    let json = serde_json::to_vec_pretty(&next)?;
    old.put_class(
        repo::SUCCESSOR_KEY,
        Box::new(std::io::Cursor::new(json)),
        Class::Kept,
    )
    .await?;
    let old_major = old_id
        .pg_version
        .map(|v| format!("PostgreSQL {v}"))
        .unwrap_or_else(|| "its PostgreSQL".into());
    println!(
        "old:      {} (cluster {}, {old_major}) stays as it is: recovery to any time before the upgrade, with {old_major}'s binaries, and its own retention",
        old.locate(""),
        old_id.system_identifier
    );
    println!(
        "new:      {} belongs to cluster {sysid} (PostgreSQL {major})",
        new.locate("")
    );
    match &opts.repo_source {
        RepoSource::File(file) => {
            set_repo(file, &opts.to)?;
            println!("config:   {}: repo = \"{}\"", file.display(), opts.to);
        }
        RepoSource::Elsewhere(place) => println!(
            "config:   repo comes from {place}: set it to \"{}\" there before the upgraded cluster starts archiving",
            opts.to
        ),
    }
    println!("next:     start the upgraded cluster, then walvault backup-push at once (until then it cannot be recovered from the new repository)");
    Ok(())
}

/// Fails unless `file` can be replaced (its directory is writable).
fn writable(file: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c = CString::new(dir.as_os_str().as_bytes())?;
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        bail!(
            "cannot change {}: its directory {} is not writable by this user (run repo-switch as the config file's owner), nothing written",
            file.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The config file as an editable TOML document (an absent file is empty).
fn config_document(file: &Path) -> Result<toml_edit::DocumentMut> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    text.parse()
        .with_context(|| format!("{} is not valid TOML", file.display()))
}

/// Sets the top-level `repo` of the TOML config file, keeping every other line
/// and comment; the file is replaced atomically with its mode and owner.
fn set_repo(file: &Path, to: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut doc = config_document(file)?;
    match doc.get_mut("repo").and_then(|i| i.as_value_mut()) {
        Some(v) => {
            // The comment after the value stays.
            let decor = v.decor().clone();
            *v = to.into();
            *v.decor_mut() = decor;
        }
        None => doc["repo"] = toml_edit::value(to),
    }
    let tmp = crate::files::temp_beside(file)?;
    std::fs::write(&tmp, doc.to_string())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(file) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        // Only root may give the file back to its owner; others own what they write.
        let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
    }
    crate::files::publish(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_only_the_repo_line() {
        let (_d, f) = crate::testing::temp_path("walvault.toml");
        std::fs::write(
            &f,
            "# where\nrepo = \"s3://b/old\"  # the bucket\n\n[s3]\nregion = \"eu-west-1\"\n",
        )
        .unwrap();
        set_repo(&f, "s3://b/new").unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            text,
            "# where\nrepo = \"s3://b/new\"  # the bucket\n\n[s3]\nregion = \"eu-west-1\"\n"
        );
        // A file without the line gets one at the top level, not in a table.
        std::fs::write(&f, "[s3]\nregion = \"x\"\n").unwrap();
        set_repo(&f, "file:///r").unwrap();
        let cfg: toml::Value = toml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert_eq!(cfg["repo"].as_str(), Some("file:///r"));
        assert_eq!(cfg["s3"]["region"].as_str(), Some("x"));
        assert!(cfg["s3"].get("repo").is_none());
    }
}
