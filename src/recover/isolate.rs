//! Makes a restored copy self-contained: every file it reads or writes is its
//! own. A backup's configuration names production's files wherever they are
//! (Debian's /etc/postgresql, Patroni's absolute hba_file, an absolute
//! log_directory, an external pid file); a copy that kept them would log into
//! production's log, read its live pg_hba.conf, or fail to start on another
//! host. Each such setting is pointed into the copy (from the backup's stored
//! copies of the files where it names one) or, when that cannot be done,
//! refused in one line naming the setting.
//!
//! A recovery in place (into the directory the backup was taken of) keeps
//! them: they are that cluster's own files.

use crate::backup::server_config::{ServerConfig, Stored};
use crate::files::write_atomically;
use crate::pg::conf;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Where stored files from outside the data directory are placed, under their
/// absolute path.
pub const PLACED_DIR: &str = "walvault-config";

/// What was made the copy's own.
#[derive(Debug, Default)]
pub struct Isolation {
    /// Settings for walvault's block of postgresql.auto.conf (read last: they win).
    pub settings: Vec<String>,
    /// What changed, said briefly (the `isolated:` line).
    pub notes: Vec<String>,
    /// Why the copy cannot start as it is (each naming the setting and what to do).
    pub refusals: Vec<String>,
    /// The copy has no postgresql.conf (and the backup held none to place).
    pub no_config: Option<String>,
}

struct Ctx<'a> {
    copy: PathBuf,
    /// The backup's data directory (None in manifests written before it was
    /// recorded: then files inside the copy are taken as its own).
    orig: Option<PathBuf>,
    in_place: bool,
    stored: &'a Stored,
    out: Isolation,
}

/// Rewrites the copy's configuration in `pgdata` (include lines, data_directory)
/// and says what walvault's block must set. `standby`: a member of the same
/// cluster (often under Patroni, which writes its own configuration): only the
/// files it reads are made its own; its log, pid file and TLS stay as
/// configured.
pub fn apply(
    pgdata: &Path,
    sc: Option<&ServerConfig>,
    stored: &Stored,
    standby: bool,
) -> Result<Isolation> {
    let copy = std::fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_path_buf());
    let orig = sc.map(|s| PathBuf::from(&s.data_directory));
    let in_place = orig.as_deref() == Some(copy.as_path());
    let mut cx = Ctx {
        copy: copy.clone(),
        orig,
        in_place,
        stored,
        out: Isolation::default(),
    };
    let main = copy.join("postgresql.conf");
    // The directory the main file's relative includes were resolved against.
    let mut main_orig_dir = cx.orig.clone().unwrap_or_else(|| copy.clone());
    if !main.exists() {
        let cf = sc.and_then(|s| s.config_file.clone());
        match cf.as_ref().map(PathBuf::from) {
            Some(cf) if stored.files.contains_key(&cf) => {
                write_private(&main, &stored.files[&cf])?;
                cx.out.notes.push(format!(
                    "postgresql.conf from the backup's copy of {}",
                    cf.display()
                ));
                main_orig_dir = cf.parent().unwrap_or(Path::new("/")).to_path_buf();
            }
            Some(cf) => {
                cx.out.no_config = Some(format!(
                    "the restored directory has no postgresql.conf: the server read {}, of which the backup holds no copy{}; put one in {} (or start it with config_file set) and start the copy yourself",
                    cf.display(),
                    unreadable_why(sc, &cf),
                    copy.display()
                ));
            }
            None => {
                cx.out.no_config = Some(format!(
                    "the restored directory has no postgresql.conf and the backup does not say where its server's was; put one in {} and start the copy yourself",
                    copy.display()
                ));
            }
        }
    }
    if main.exists() {
        fix_file(&mut cx, &main, &main_orig_dir, 0)?;
        let auto = copy.join("postgresql.auto.conf");
        if auto.exists() {
            fix_file(&mut cx, &auto, &copy, 0)?;
        }
    }
    let eff = conf::of_data_dir(&copy)?;
    files_setting(&mut cx, &eff, "hba_file");
    files_setting(&mut cx, &eff, "ident_file");
    if !cx.in_place && !standby {
        outward_dirs(&mut cx, &eff);
    }
    Ok(cx.out)
}

fn unreadable_why(sc: Option<&ServerConfig>, p: &Path) -> String {
    let s = p.display().to_string();
    sc.and_then(|c| c.unreadable.iter().find(|u| u.starts_with(&s)))
        .map(|u| format!(" (unreadable at backup time: {})", &u[s.len()..].trim()))
        .unwrap_or_default()
}

impl Ctx<'_> {
    /// Where a path of the backup's server lies in the copy, when it was
    /// inside the backup's data directory (or is inside the copy already).
    fn in_copy(&self, p: &Path) -> Option<PathBuf> {
        if p.starts_with(&self.copy) {
            return Some(p.to_path_buf());
        }
        let rel = p.strip_prefix(self.orig.as_ref()?).ok()?;
        Some(self.copy.join(rel))
    }

    /// Where a stored file from outside the data directory goes in the copy.
    fn placed(&self, p: &Path) -> PathBuf {
        self.copy
            .join(PLACED_DIR)
            .join(p.strip_prefix("/").unwrap_or(p))
    }

    fn place_file(&mut self, p: &Path) -> Result<Option<PathBuf>> {
        let Some(text) = self.stored.files.get(p) else {
            return Ok(None);
        };
        let to = self.placed(p);
        std::fs::create_dir_all(to.parent().expect("placed under the copy"))?;
        write_private(&to, text)?;
        Ok(Some(to))
    }
}

/// Follows one of the copy's config files: include lines re-pointed to the
/// copy's files, data_directory commented out (the copy is where -D says).
fn fix_file(cx: &mut Ctx, file: &Path, orig_dir: &Path, depth: usize) -> Result<()> {
    if depth > 10 {
        bail!("{}: includes nested more than 10 deep", file.display());
    }
    let text = std::fs::read_to_string(file)?;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut changed = false;
    let mut follow: Vec<(PathBuf, PathBuf)> = Vec::new();
    let here = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    for e in conf::parse(&text) {
        let original = lines[e.line].clone();
        match e.key.as_str() {
            "data_directory" if Path::new(&e.value) != cx.copy => {
                lines[e.line] = format!("#walvault recover: {original}");
                changed = true;
                cx.out
                    .notes
                    .push(format!("data_directory {} commented out", e.value));
            }
            "include" | "include_if_exists" | "include_dir" => {
                let orig_target = orig_dir.join(&e.value);
                let dir = e.key == "include_dir";
                let wanted = if let Some(p) = cx.in_copy(&orig_target) {
                    Some(p)
                } else if cx.in_place && orig_target.exists() {
                    Some(orig_target.clone())
                } else if dir {
                    let to = cx.placed(&orig_target);
                    std::fs::create_dir_all(&to)?;
                    let names: Vec<PathBuf> = conf::dir_files(cx.stored, &orig_target);
                    for f in names {
                        cx.place_file(&f)?;
                    }
                    Some(to)
                } else {
                    cx.place_file(&orig_target)?
                };
                match wanted {
                    Some(to) => {
                        if here.join(&e.value) != to {
                            lines[e.line] = format!(
                                "{} = {} #walvault recover: was {}",
                                e.key,
                                conf::quote(&to.display().to_string()),
                                conf::quote(&e.value)
                            );
                            changed = true;
                            cx.out
                                .notes
                                .push(format!("{} {} → {}", e.key, orig_target.display(), to.display()));
                        }
                        if dir {
                            for f in conf::dir_files(&conf::Disk, &to) {
                                let o = orig_target.join(f.file_name().unwrap_or_default());
                                follow.push((f, o.parent().unwrap_or(Path::new("/")).to_path_buf()));
                            }
                        } else {
                            follow.push((to, orig_target.parent().unwrap_or(Path::new("/")).to_path_buf()));
                        }
                    }
                    None if e.key == "include_if_exists" => {
                        lines[e.line] = format!("#walvault recover: {original}");
                        changed = true;
                        cx.out.notes.push(format!(
                            "include_if_exists {} commented out (outside the copy, not in the backup)",
                            orig_target.display()
                        ));
                    }
                    None => cx.out.refusals.push(format!(
                        "{} '{}' in {}: {} lies outside the restored directory and the backup holds no copy of it; copy it into {} and point the line there",
                        e.key,
                        e.value,
                        file.display(),
                        orig_target.display(),
                        cx.copy.display()
                    )),
                }
            }
            _ => {}
        }
    }
    if changed {
        let mut t = lines.join("\n");
        t.push('\n');
        write_private(file, &t)?;
    }
    for (f, o) in follow {
        if f.is_file() {
            fix_file(cx, &f, &o, depth + 1)?;
        }
    }
    Ok(())
}

/// hba_file and ident_file: the copy's own file, from its data directory or
/// from the backup's stored copy; else a refusal naming the setting.
fn files_setting(cx: &mut Ctx, eff: &conf::Loaded, key: &str) {
    let Some(v) = eff.get(key).filter(|v| !v.is_empty()) else {
        return;
    };
    let p = PathBuf::from(v);
    if !p.is_absolute() || p.starts_with(&cx.copy) {
        return;
    }
    let to = if let Some(to) = cx.in_copy(&p) {
        Some(to)
    } else if cx.in_place {
        return;
    } else {
        match cx.place_file(&p) {
            Ok(t) => t,
            Err(e) => {
                cx.out.refusals.push(format!(
                    "{key}: cannot place the backup's copy of {v}: {e:#}"
                ));
                return;
            }
        }
    };
    match to {
        Some(to) => {
            cx.out
                .settings
                .push(format!("{key} = {}", conf::quote(&to.display().to_string())));
            cx.out.notes.push(format!("{key} {v} → {}", to.display()));
        }
        None => cx.out.refusals.push(format!(
            "{key} = '{v}' lies outside the restored directory and the backup holds no copy of it; copy the file into {} and set {key} to it in postgresql.auto.conf",
            cx.copy.display()
        )),
    }
}

/// Settings that write outward: logs, the external pid file, the stats
/// directory of 14 and before; and TLS files outside the copy.
fn outward_dirs(cx: &mut Ctx, eff: &conf::Loaded) {
    let outside = |v: &str| {
        let p = Path::new(v);
        p.is_absolute() && !p.starts_with(&cx.copy)
    };
    if let Some(v) = eff.get("log_directory").filter(|v| outside(v)) {
        cx.out.settings.push("log_directory = 'log'".into());
        cx.out.notes.push(format!("log_directory {v} → log"));
    }
    if let Some(v) = eff
        .get("external_pid_file")
        .filter(|v| !v.is_empty() && outside(v))
    {
        cx.out.settings.push("external_pid_file = ''".into());
        cx.out.notes.push(format!("external_pid_file {v} off"));
    }
    if let Some(v) = eff.get("stats_temp_directory").filter(|v| outside(v)) {
        cx.out
            .settings
            .push("stats_temp_directory = 'pg_stat_tmp'".into());
        cx.out
            .notes
            .push(format!("stats_temp_directory {v} → pg_stat_tmp"));
    }
    let ssl_on = eff
        .get("ssl")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1"));
    if ssl_on {
        let outer: Vec<String> = [
            "ssl_cert_file",
            "ssl_key_file",
            "ssl_ca_file",
            "ssl_crl_file",
            "ssl_crl_dir",
            "ssl_dh_params_file",
        ]
        .iter()
        .filter_map(|k| {
            eff.get(k)
                .filter(|v| !v.is_empty() && outside(v))
                .map(|v| format!("{k} {v}"))
        })
        .collect();
        if !outer.is_empty() {
            cx.out.settings.push("ssl = off".into());
            cx.out.notes.push(format!(
                "ssl off ({} outside the copy; copy them in and set ssl = on to serve TLS)",
                outer.join(", ")
            ));
        }
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, text.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(orig: &Path, etc: &Path) -> ServerConfig {
        ServerConfig {
            data_directory: orig.display().to_string(),
            config_file: Some(etc.join("postgresql.conf").display().to_string()),
            hba_file: Some(etc.join("pg_hba.conf").display().to_string()),
            ident_file: Some(etc.join("pg_ident.conf").display().to_string()),
            stored: vec![],
            dirs: vec![],
            unreadable: vec![],
        }
    }

    #[test]
    fn a_debian_copy_gets_its_own_config_from_the_backup() {
        let (_d, copy) = crate::testing::temp_dir_at("copy");
        let etc = PathBuf::from("/etc/postgresql/15/main");
        let orig = PathBuf::from("/var/lib/postgresql/15/main");
        let mut stored = Stored::default();
        stored.files.insert(
            etc.join("postgresql.conf"),
            "data_directory = '/var/lib/postgresql/15/main'\nhba_file = '/etc/postgresql/15/main/pg_hba.conf'\n\
             ident_file = '/etc/postgresql/15/main/pg_ident.conf'\nexternal_pid_file = '/var/run/postgresql/15-main.pid'\n\
             ssl = on\nssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'\ninclude_dir = 'conf.d'\n\
             log_directory = '/var/log/postgresql'\n"
                .into(),
        );
        stored
            .files
            .insert(etc.join("conf.d/a.conf"), "work_mem = '1MB'\n".into());
        stored
            .files
            .insert(etc.join("pg_hba.conf"), "local all all peer\n".into());
        stored.files.insert(etc.join("pg_ident.conf"), "".into());
        let iso = apply(&copy, Some(&sc(&orig, &etc)), &stored, false).unwrap();
        assert!(iso.refusals.is_empty(), "{:?}", iso.refusals);
        assert!(iso.no_config.is_none());
        let main = std::fs::read_to_string(copy.join("postgresql.conf")).unwrap();
        assert!(main.contains("#walvault recover: data_directory"), "{main}");
        let placed = copy.join(PLACED_DIR).join("etc/postgresql/15/main");
        assert!(
            main.contains(&format!(
                "include_dir = '{}'",
                placed.join("conf.d").display()
            )),
            "{main}"
        );
        assert_eq!(
            std::fs::read_to_string(placed.join("conf.d/a.conf")).unwrap(),
            "work_mem = '1MB'\n"
        );
        let s = iso.settings.join("\n");
        let placed_at = |file: &str| placed.join(file).display().to_string();
        for setting in [
            format!("hba_file = '{}'", placed_at("pg_hba.conf")),
            format!("ident_file = '{}'", placed_at("pg_ident.conf")),
            "log_directory = 'log'".into(),
            "external_pid_file = ''".into(),
            "ssl = off".into(),
        ] {
            assert!(s.contains(&setting), "{setting} not in {s}");
        }
        // The server would now read only the copy's files.
        let eff = conf::of_data_dir(&copy).unwrap();
        assert_eq!(eff.get("work_mem"), Some("1MB"));
        assert_eq!(eff.get("data_directory"), None);
    }

    #[test]
    fn a_patroni_copy_reads_its_own_hba_and_missing_files_are_refused() {
        let (_d, copy) = crate::testing::temp_dir_at("copy");
        let orig = PathBuf::from("/data/patroni1");
        std::fs::write(
            copy.join("postgresql.conf"),
            "include 'postgresql.base.conf'\nhba_file = '/data/patroni1/pg_hba.conf'\nident_file = '/etc/elsewhere/pg_ident.conf'\n\
             include_if_exists = '/etc/extra.conf'\ninclude = '/etc/must.conf'\n",
        )
        .unwrap();
        std::fs::write(
            copy.join("postgresql.base.conf"),
            "log_directory = '/var/log/patroni'\n",
        )
        .unwrap();
        let mut s = sc(&orig, Path::new("/nowhere"));
        s.config_file = Some("/data/patroni1/postgresql.conf".into());
        let iso = apply(&copy, Some(&s), &Stored::default(), false).unwrap();
        let set = iso.settings.join("\n");
        assert!(
            set.contains(&format!(
                "hba_file = '{}'",
                copy.join("pg_hba.conf").display()
            )),
            "{set}"
        );
        assert!(set.contains("log_directory = 'log'"), "{set}");
        assert_eq!(iso.refusals.len(), 2, "{:?}", iso.refusals);
        assert!(
            iso.refusals[0].starts_with("include '/etc/must.conf'"),
            "{}",
            iso.refusals[0]
        );
        assert!(
            iso.refusals[1].starts_with("ident_file = '/etc/elsewhere/pg_ident.conf' lies outside"),
            "{}",
            iso.refusals[1]
        );
        let main = std::fs::read_to_string(copy.join("postgresql.conf")).unwrap();
        assert!(
            main.contains("#walvault recover: include_if_exists = '/etc/extra.conf'"),
            "{main}"
        );
    }

    #[test]
    fn in_place_keeps_the_clusters_own_files() {
        let d = tempfile::tempdir().unwrap();
        let copy = d.path().canonicalize().unwrap();
        std::fs::write(
            copy.join("postgresql.conf"),
            "log_directory = '/var/log/pg'\nhba_file = '/etc/pg/pg_hba.conf'\n",
        )
        .unwrap();
        let s = ServerConfig {
            data_directory: copy.display().to_string(),
            ..Default::default()
        };
        let iso = apply(&copy, Some(&s), &Stored::default(), false).unwrap();
        assert!(
            iso.settings.is_empty() && iso.refusals.is_empty(),
            "{iso:?}"
        );
    }
}
