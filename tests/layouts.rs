//! Recovery on the cluster layouts people run, not only initdb's: PGDG/RHEL
//! (`logging_collector = on`, relative and absolute `log_directory`), an
//! `include_dir` conf.d with an include outside PGDATA, Patroni's absolute
//! `hba_file`/`ident_file`, Debian's `pg_createcluster` (config in
//! /etc/postgresql) and a Docker-image-shaped data directory. Each: backup-push
//! → recover --start to a time → exact rows → drill → production's files
//! (config, logs, pid file, data directory) unchanged by content and mtime.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Content and mtime of every file below some paths (a missing path recorded
/// as missing), to show a recovery wrote none of them.
#[derive(Debug, PartialEq)]
struct Snapshot(BTreeMap<PathBuf, Option<(Vec<u8>, SystemTime)>>);

impl Snapshot {
    fn of(paths: &[PathBuf]) -> Snapshot {
        let mut m = BTreeMap::new();
        for p in paths {
            walk(p, &mut m);
        }
        Snapshot(m)
    }
}

fn walk(p: &Path, m: &mut BTreeMap<PathBuf, Option<(Vec<u8>, SystemTime)>>) {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        m.insert(p.to_path_buf(), None);
        return;
    };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        m.insert(
            p.to_path_buf(),
            Some((Vec::new(), meta.modified().unwrap())),
        );
        for e in entries {
            walk(&e, m);
        }
    } else {
        let body = if meta.is_file() {
            std::fs::read(p).unwrap()
        } else {
            Vec::new()
        };
        m.insert(p.to_path_buf(), Some((body, meta.modified().unwrap())));
    }
}

/// Rows 1..=20, a backup, rows 21..=40, the target, rows 41..=60, all archived.
/// Returns the backup id and the target.
fn story(a: &Cluster, env: &BTreeMap<String, String>) -> (String, String) {
    a.psql("create table t (i bigint primary key, note text)");
    insert(a, 1, 20);
    let out = walvault(&["backup-push", "--fast"], &a.pg_env(env), None);
    let id = ok(&out, "backup-push").trim().to_string();
    insert(a, 21, 40);
    let target = now_utc(a);
    insert(a, 41, 60);
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(120));
    (id, target)
}

/// recover --start into a new cluster `name` below `root`, to `target`:
/// the exact rows; returns what recover printed (the copy is stopped).
fn recover_to(root: &Path, name: &str, target: &str, env: &BTreeMap<String, String>) -> String {
    let mut b = Cluster::at(root, name);
    let mut args = b.recover_args();
    args.extend(["--target-time".to_string(), target.to_string()]);
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "recover: {}\n{text}\n{}",
        stderr(&out),
        tail(&b.pgdata.join("walvault-recover.log"), 30)
    );
    assert!(text.contains("recovered: ended at LSN"), "{text}");
    assert!(text.contains("checked:  "), "{text}");
    b.adopt();
    assert_eq!(
        summary(&b),
        expected(&[(1, 40)]),
        "rows up to the target only"
    );
    let log = std::fs::read_to_string(b.pgdata.join("walvault-recover.log")).unwrap();
    assert!(log.contains("recovery stopping"), "{log}");
    b.stop();
    text
}

/// A drill to `target` in a scratch directory below `root`: it passes.
fn drill_to(root: &Path, target: &str, env: &BTreeMap<String, String>) {
    let scratch = root.join("scratch");
    let reports = root.join("reports");
    for d in [&scratch, &reports] {
        std::fs::create_dir_all(d).unwrap();
        chown_pg(d);
    }
    let out = walvault(
        &[
            "drill",
            "--scratch-dir",
            scratch.to_str().unwrap(),
            "--report-dir",
            reports.to_str().unwrap(),
            "--no-upload",
            "--target-time",
            target,
        ],
        env,
        None,
    );
    let text = ok(&out, "drill");
    assert!(text.contains("drill PASSED"), "{text}");
}

/// PGDG's RHEL packages: `logging_collector = on`, `log_directory = 'log'`
/// (in PGDATA), and the same with an absolute log_directory outside it.
/// Recover reads the copy's log wherever the configuration would put it,
/// and the copy never writes production's.
#[test]
fn pgdg_logging_collector_relative_and_absolute_log_directory() {
    for absolute in [false, true] {
        let root = pg_tempdir();
        let env = fs_repo(root.path());
        let mut a = Cluster::init(root.path(), "a");
        a.archive_to_walvault();
        let logdir = if absolute {
            let d = root.path().join("var-log-pgsql");
            std::fs::create_dir_all(&d).unwrap();
            chown_pg(&d);
            d.display().to_string()
        } else {
            "log".to_string()
        };
        a.conf(&format!(
            "track_commit_timestamp = on\nlogging_collector = on\nlog_directory = '{logdir}'\n\
             log_filename = 'postgresql-%a.log'\nlog_truncate_on_rotation = on\nlog_rotation_age = 1d"
        ));
        a.start(&env);
        let (_, target) = story(&a, &env);
        a.stop();
        let prod_log = if absolute {
            PathBuf::from(&logdir)
        } else {
            a.pgdata.join("log")
        };
        let before = Snapshot::of(&[prod_log.clone(), a.pgdata.clone()]);
        assert!(
            before
                .0
                .keys()
                .any(|p| p.starts_with(&prod_log) && p != &prod_log),
            "production logged into {}",
            prod_log.display()
        );
        let text = recover_to(root.path(), "b", &target, &env);
        if absolute {
            assert!(
                text.contains(&format!("log_directory {logdir} → log")),
                "absolute: {text}"
            );
        }
        // Started again as its configuration says (collector on): it logs
        // into its own directory.
        let mut b = Cluster::at(root.path(), "b");
        b.start(&env);
        b.psql("select 1");
        b.stop();
        let own = std::fs::read_dir(root.path().join("b/log")).map_or(0, |d| d.count());
        assert!(own > 0, "the copy logs into b/log");
        drill_to(root.path(), &target, &env);
        assert!(
            Snapshot::of(&[prod_log, a.pgdata.clone()]) == before,
            "absolute {absolute}: production's log or data directory changed"
        );
    }
}

/// A server that dies while it starts is reported at once, in its own words
/// (with the logging collector on, its stderr has only the redirect lines).
#[test]
fn a_server_dying_at_start_is_reported_at_once_with_its_fatal_line() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on\nlogging_collector = on\nlisten_addresses = '127.0.0.1'");
    a.start(&env);
    let (_, target) = story(&a, &env);
    // The port the copy is given is taken: postgres exits with a FATAL.
    let b = Cluster::at(root.path(), "b");
    let taken = std::net::TcpListener::bind(("127.0.0.1", b.port)).unwrap();
    let mut args = b.recover_args();
    args.extend(["--target-time".to_string(), target]);
    let t = Instant::now();
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
        None,
    );
    let took = t.elapsed();
    drop(taken);
    let (code, line) = failure(&out);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains("PostgreSQL stopped during recovery") && line.contains("FATAL:"),
        "{line}"
    );
    assert!(
        took < Duration::from_secs(40),
        "noticed after {took:?} (restore included)"
    );
    // Production's own socket is refused in one line naming --port.
    let c = root.path().join("c");
    let out = walvault(
        &[
            "recover",
            "--pgdata",
            c.to_str().unwrap(),
            "--start",
            "--port",
            &a.port.to_string(),
            "--socket-dir",
            a.sockdir.to_str().unwrap(),
        ],
        &env,
        None,
    );
    let (code, line) = failure(&out);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains(&format!("port {} is in use by a running server", a.port))
            && line.contains("--port N"),
        "{line}"
    );
    assert!(!c.exists(), "refused before anything was written");
    a.stop();
}

/// Patroni's shape: absolute hba_file and ident_file (here outside PGDATA,
/// as a hand-made config has them), an external pid file, `include_dir
/// 'conf.d'` in PGDATA and an `include` of a file outside it. The copy reads
/// the backup's copies, never production's files.
#[test]
fn absolute_hba_ident_and_includes_outside_pgdata() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    let etc = root.path().join("etc-pg");
    let run = root.path().join("run-pg");
    for d in [&etc, &run] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::rename(a.pgdata.join("pg_hba.conf"), etc.join("pg_hba.conf")).unwrap();
    std::fs::rename(a.pgdata.join("pg_ident.conf"), etc.join("pg_ident.conf")).unwrap();
    std::fs::write(etc.join("tuning.conf"), "work_mem = '7MB'\n").unwrap();
    std::fs::create_dir(a.pgdata.join("conf.d")).unwrap();
    std::fs::write(
        a.pgdata.join("conf.d/10-commit-ts.conf"),
        "track_commit_timestamp = on\n",
    )
    .unwrap();
    for d in [&etc, &run, &a.pgdata.join("conf.d")] {
        chown_pg(d);
    }
    for f in ["pg_hba.conf", "pg_ident.conf", "tuning.conf"] {
        chown_pg(&etc.join(f));
    }
    chown_pg(&a.pgdata.join("conf.d/10-commit-ts.conf"));
    a.conf(&format!(
        "hba_file = '{}'\nident_file = '{}'\nexternal_pid_file = '{}'\ninclude_dir = 'conf.d'\ninclude = '{}'",
        etc.join("pg_hba.conf").display(),
        etc.join("pg_ident.conf").display(),
        run.join("a.pid").display(),
        etc.join("tuning.conf").display()
    ));
    a.start(&env);
    let (id, target) = story(&a, &env);
    let manifest = manifest_json(&env, &id);
    let stored: Vec<String> = manifest["server_config"]["stored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        stored.len(),
        3,
        "hba, ident and the included file: {stored:?}"
    );
    a.stop();
    let before = Snapshot::of(&[etc.clone(), run.clone(), a.pgdata.clone()]);
    // The copy must not depend on production's files: they are gone here,
    // as on another host.
    let away = root.path().join("etc-pg-away");
    std::fs::rename(&etc, &away).unwrap();
    let text = recover_to(root.path(), "b", &target, &env);
    std::fs::rename(&away, &etc).unwrap();
    for want in [
        "hba_file ",
        "ident_file ",
        "external_pid_file ",
        &format!("include {} → ", etc.join("tuning.conf").display()),
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let mut b = Cluster::at(root.path(), "b");
    b.start(&env);
    assert_eq!(
        b.psql("show work_mem"),
        "7MB",
        "the included file, from the backup"
    );
    assert!(
        b.psql("show hba_file")
            .starts_with(root.path().join("b").to_str().unwrap()),
        "the copy's own pg_hba.conf"
    );
    b.stop();
    drill_to(root.path(), &target, &env);
    assert!(
        Snapshot::of(&[etc, run, a.pgdata.clone()]) == before,
        "production's config, pid file or data directory changed"
    );
}

/// The official Docker image's data directory: PGDATA
/// /var/lib/postgresql/data, config inside it, logging to stderr, password
/// authentication over TCP (listen_addresses is '*' in the image; loopback
/// here), the POSTGRES_* environment only at first start.
#[test]
fn docker_image_shaped_data_directory() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let base = root.path().join("var/lib/postgresql");
    std::fs::create_dir_all(&base).unwrap();
    chown_pg(&root.path().join("var"));
    chown_pg(&root.path().join("var/lib"));
    chown_pg(&base);
    let mut a = Cluster::init(&base, "data");
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on\nlisten_addresses = '127.0.0.1'\npassword_encryption = 'scram-sha-256'");
    std::fs::write(
        a.pgdata.join("pg_hba.conf"),
        "local all all trust\nhost all all all scram-sha-256\n",
    )
    .unwrap();
    a.start(&env);
    a.psql("alter role postgres password 'docker-secret'");
    let (_, target) = story(&a, &env);
    a.stop();
    let before = Snapshot::of(&[a.pgdata.clone()]);
    let text = recover_to(root.path(), "b", &target, &env);
    assert!(!text.contains("docker-secret"), "{text}");
    drill_to(root.path(), &target, &env);
    assert!(
        Snapshot::of(&[a.pgdata.clone()]) == before,
        "production's data directory changed"
    );
}

/// A Debian cluster made by `pg_createcluster`: the cluster's files as the
/// package makes them, removed by `pg_dropcluster` when the test ends.
struct Debian {
    name: String,
    port: u16,
}

impl Debian {
    fn create(env: &BTreeMap<String, String>) -> Debian {
        require(
            "/usr/bin/pg_createcluster",
            "postgresql-common (pg_createcluster)",
        );
        let d = Debian {
            name: format!("wvtest{}", std::process::id()),
            port: free_port(),
        };
        let out = std::process::Command::new("pg_createcluster")
            .args(["15", &d.name, "-p", &d.port.to_string(), "--", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_createcluster: {}", stderr(&out));
        // Debian's way to give the server an environment: the cluster's
        // `environment` file (archive_command inherits it).
        let vars: String = env.iter().map(|(k, v)| format!("{k} = '{v}'\n")).collect();
        std::fs::write(d.etc().join("environment"), vars).unwrap();
        let snippet = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/archive-command/postgresql.conf.snippet"
        ))
        .unwrap()
        .replace(
            "/usr/local/bin/walvault-env",
            &format!("\"{}\"", wrapper_bin().display()),
        );
        std::fs::write(
            d.etc().join("conf.d/walvault.conf"),
            format!("{snippet}\ntrack_commit_timestamp = on\nfsync = off\n"),
        )
        .unwrap();
        d
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from(format!("/etc/postgresql/15/{}", self.name))
    }

    fn pgdata(&self) -> PathBuf {
        PathBuf::from(format!("/var/lib/postgresql/15/{}", self.name))
    }

    fn log(&self) -> PathBuf {
        PathBuf::from(format!(
            "/var/log/postgresql/postgresql-15-{}.log",
            self.name
        ))
    }

    fn ctl(&self, action: &str) {
        let out = std::process::Command::new("pg_ctlcluster")
            .args(["15", &self.name, action])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctlcluster {action}: {}\n{}",
            stderr(&out),
            tail(&self.log(), 20)
        );
    }

    /// A handle for psql and the walvault environment (the server is pg_ctlcluster's).
    fn cluster(&self, root: &Path) -> Cluster {
        let mut c = Cluster::at(root, "debian");
        c.pgdata = self.pgdata();
        c.port = self.port;
        c.sockdir = PathBuf::from("/var/run/postgresql");
        c
    }
}

impl Drop for Debian {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pg_dropcluster")
            .args(["--stop", "15", &self.name])
            .output();
    }
}

/// Debian/Ubuntu: postgresql.conf, pg_hba.conf and pg_ident.conf in
/// /etc/postgresql/15/<name>/ (outside PGDATA: backup-push stores them), the
/// snakeoil TLS files, an external pid file and pg_ctlcluster's log. A copy
/// elsewhere starts with recover --start on the backup's config; the
/// cluster recovered in place starts with pg_ctlcluster on its own /etc.
#[test]
fn debian_pg_createcluster() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let deb = Debian::create(&env);
    deb.ctl("start");
    let a = deb.cluster(root.path());
    let (id, target) = story(&a, &env);
    let manifest = manifest_json(&env, &id);
    let sc = &manifest["server_config"];
    assert_eq!(
        sc["config_file"],
        deb.etc().join("postgresql.conf").display().to_string()
    );
    assert_eq!(
        sc["hba_file"],
        deb.etc().join("pg_hba.conf").display().to_string()
    );
    deb.ctl("stop");
    let prod = [
        deb.etc(),
        deb.pgdata(),
        deb.log(),
        PathBuf::from(format!("/var/run/postgresql/15-{}.pid", deb.name)),
    ];
    let before = Snapshot::of(&prod);
    let text = recover_to(root.path(), "b", &target, &env);
    for want in [
        format!(
            "postgresql.conf from the backup's copy of {}",
            deb.etc().join("postgresql.conf").display()
        ),
        "data_directory ".into(),
        "hba_file ".into(),
        "external_pid_file ".into(),
        "ssl off ".into(),
    ] {
        assert!(text.contains(&want), "{want}: {text}");
    }
    drill_to(root.path(), &target, &env);
    assert!(
        Snapshot::of(&prod) == before,
        "production's /etc, data, log or pid file changed"
    );

    // The cluster lost and recovered in place, then started as Debian starts
    // it: pg_ctlcluster with its /etc configuration.
    let out = walvault(
        &[
            "recover",
            "--pgdata",
            deb.pgdata().to_str().unwrap(),
            "--overwrite",
            "--archive",
            "--target-time",
            &target,
        ],
        &env,
        None,
    );
    ok(&out, "recover in place");
    deb.ctl("start");
    let a = deb.cluster(root.path());
    wait_for("end of recovery", Duration::from_secs(120), || {
        a.psql_try("select not pg_is_in_recovery()")
            .is_ok_and(|s| s == "t")
    });
    assert_eq!(
        summary(&a),
        expected(&[(1, 40)]),
        "in place: rows up to the target"
    );
    assert_eq!(
        a.psql("show hba_file"),
        deb.etc().join("pg_hba.conf").display().to_string(),
        "in place: the cluster's own /etc files"
    );
    deb.ctl("stop");
}
