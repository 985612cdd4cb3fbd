//! Logical dumps against real PostgreSQL and SeaweedFS: a PostgreSQL 15
//! database dumped (encrypted) and restored into PostgreSQL 16's server with
//! the same rows, single tables restored, `dump-verify` with and without the
//! key, a damaged object named.

mod common;

use common::*;
use std::collections::BTreeMap;

const SHOP: &str = "
create role auditor;
create table customers (id int primary key, name text not null);
insert into customers select g, 'customer ' || g from generate_series(1, 200) g;
create table orders (id serial primary key, customer_id int not null references customers,
                     amount numeric not null, placed timestamptz not null default now());
create index orders_by_customer on orders (customer_id);
insert into orders (customer_id, amount) select 1 + g % 200, g / 7.0 from generate_series(1, 20000) g;
grant select on orders to auditor;
create schema audit;
create table audit.events (id bigint generated always as identity primary key, what text);
insert into audit.events (what) select 'event ' || g from generate_series(1, 1000) g;
analyze;
";

/// psql into database `db` of a cluster (any major: PostgreSQL 15's client).
fn psql_db(c: &Cluster, db: &str, sql: &str) -> String {
    let out = pg_command("/usr/lib/postgresql/15/bin/psql", &BTreeMap::new())
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
        .arg("-h")
        .arg(&c.sockdir)
        .arg("-p")
        .arg(c.port.to_string())
        .arg("-d")
        .arg(db)
        .arg("-c")
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {db}: {sql}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A walvault run that must be refused with `what` in its error line.
fn refused(args: &[&str], env: &BTreeMap<String, String>, what: &str) {
    let out = walvault(args, env, None);
    let (code, line) = failure(&out);
    assert_eq!(code, Some(1), "{args:?}: {line}");
    assert!(line.contains(what), "{args:?}: {line}");
}

/// A table's rows as one digest.
fn digest(c: &Cluster, db: &str, table: &str) -> String {
    psql_db(
        c,
        db,
        &format!(
            "select count(*) || ':' || md5(string_agg(t::text, ',' order by t.id)) from {table} t"
        ),
    )
}

fn conninfo(c: &Cluster, db: &str) -> String {
    format!(
        "host={} port={} user=postgres dbname={db}",
        c.sockdir.display(),
        c.port
    )
}

#[test]
fn a_dump_of_postgresql_15_restores_into_a_newer_major_and_verifies() {
    let s3 = Seaweed::start();
    let root = pg_tempdir();
    let identity = root.path().join("identity.txt");
    let recipient = keygen(&identity);
    let mut env = s3.walvault_env("dumps");
    env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
    let keyless = env.clone();
    env.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        identity.display().to_string(),
    );
    let pg16 = upgrade_bin();
    env.insert(
        "WALVAULT_POSTGRES_BIN_DIR_16".into(),
        pg16.display().to_string(),
    );

    let mut a = Cluster::init(root.path(), "a");
    a.start(&BTreeMap::new());
    a.psql("create database shop");
    psql_db(&a, "shop", SHOP);
    let env_a = a.pg_env(&env);

    let out = walvault(&["dump-push"], &env_a, None);
    let id = ok(&out, "dump-push").trim().to_string();
    assert!(id.starts_with("dump-"), "{id}");
    let err = stderr(&out);
    assert!(err.contains("dumped shop: 3 tables"), "{err}");

    // The manifest: clear, written last, with versions, sizes, sha256 and tables.
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3.get(&format!("dumps/dumps/{id}/manifest.json"))).unwrap();
    assert_eq!(manifest["server_major"], 15);
    assert_eq!(manifest["encrypted"], true);
    let shop = manifest["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "shop")
        .unwrap()
        .clone();
    assert_eq!(shop["key"], format!("dumps/{id}/shop.dump"));
    assert_eq!(shop["sha256"].as_str().unwrap().len(), 64);
    let orders = shop["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap();
    assert_eq!(orders["rows"], 20000);
    assert!(manifest["globals"]["key"]
        .as_str()
        .unwrap()
        .ends_with("/globals.sql"));
    // Nothing of the data in clear: the stored dump is age-encrypted.
    let stored = s3.get(&format!("dumps/{}", shop["key"].as_str().unwrap()));
    assert!(!stored.windows(11).any(|w| w == b"customer 42"));

    let list = ok(&walvault(&["dump-list"], &keyless, None), "dump-list");
    assert!(
        list.contains(&id) && list.contains("15.") && list.contains("shop"),
        "{list}"
    );

    // Verified without the key (stored bytes) and with it (table of contents).
    let out = ok(
        &walvault(&["dump-verify"], &keyless, None),
        "dump-verify keyless",
    );
    assert!(
        out.contains(&format!("{id}: OK")) && out.contains("without the key"),
        "{out}"
    );
    let out = ok(&walvault(&["dump-verify", &id], &env, None), "dump-verify");
    assert!(
        out.contains(&format!("{id}: OK")) && out.contains("pg_restore --list"),
        "{out}"
    );

    // Into PostgreSQL 16: a new database, the same rows, the grants with the globals.
    let mut b = Cluster::init_with(root.path(), "b16", &pg16);
    b.start(&BTreeMap::new());
    let out = walvault(
        &[
            "dump-restore",
            &id,
            "--database",
            "shop",
            "--globals",
            "--into",
            &conninfo(&b, "shop_copy"),
        ],
        &env,
        None,
    );
    let text = ok(&out, "dump-restore");
    assert!(
        text.contains("of PostgreSQL 15.") && text.contains("PostgreSQL 16."),
        "{text}"
    );
    assert!(text.contains("created:  database shop_copy"), "{text}");
    assert!(text.contains("3 tables now (the dump listed 3)"), "{text}");
    for t in ["customers", "orders", "audit.events"] {
        assert_eq!(digest(&b, "shop_copy", t), digest(&a, "shop", t), "{t}");
    }
    assert_eq!(
        psql_db(
            &b,
            "shop_copy",
            "select has_table_privilege('auditor', 'orders', 'select')"
        ),
        "t"
    );
    assert_eq!(
        psql_db(&b, "shop_copy", "show server_version_num").get(..2),
        Some("16")
    );
    // A whole database never goes over one that holds tables.
    let out = walvault(
        &[
            "dump-restore",
            &id,
            "-d",
            "shop",
            "--into",
            &conninfo(&b, "shop_copy"),
        ],
        &env,
        None,
    );
    let (code, line) = failure(&out);
    assert_eq!(code, Some(1));
    assert!(line.contains("already holds 3 tables"), "{line}");
    // One table, into another database.
    psql_db(&b, "postgres", "create database one");
    let out = walvault(
        &[
            "dump-restore",
            &id,
            "-d",
            "shop",
            "--table",
            "audit.events",
            "--into",
            &conninfo(&b, "one"),
        ],
        &env,
        None,
    );
    ok(&out, "dump-restore --table");
    assert_eq!(
        digest(&b, "one", "audit.events"),
        digest(&a, "shop", "audit.events")
    );
    assert_eq!(
        psql_db(
            &b,
            "one",
            "select count(*) from pg_tables where schemaname = 'public'"
        ),
        "0"
    );
    // Bad input: one line each.
    refused(
        &["dump-restore", &id, "--into", &conninfo(&b, "x")],
        &env,
        "choose one with --database",
    );
    refused(
        &[
            "dump-restore",
            "dump-19990101T000000Z",
            "--into",
            &conninfo(&b, "x"),
        ],
        &env,
        "no dump dump-19990101T000000Z",
    );
    refused(
        &[
            "dump-restore",
            &id,
            "-d",
            "shop",
            "--into",
            &conninfo(&b, "x"),
        ],
        &keyless,
        "the dump is encrypted",
    );

    // A damaged object is named, with and without the key.
    let key = format!("dumps/{}", shop["key"].as_str().unwrap());
    let mut bytes = s3.get(&key);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    s3.put(&key, bytes);
    for (e, what) in [(&keyless, "keyless"), (&env, "with the key")] {
        let out = walvault(&["dump-verify"], e, None);
        assert_eq!(out.status.code(), Some(1), "{what}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{id}: DAMAGED")) && text.contains(&format!("{id}/shop.dump")),
            "{what}: {text}"
        );
        assert!(
            !text.contains("postgres.dump:"),
            "{what}: only the damaged object: {text}"
        );
    }
    b.stop();
    a.stop();
}

#[test]
fn dumps_have_their_own_retention_marks_status_and_drill() {
    let s3 = Seaweed::start();
    let src = source(|_| {
        let mut env = s3.walvault_env("dump-life");
        env.insert("WALVAULT_S3_CLASS_TAGS".into(), "true".into());
        env
    });
    let a = &src.a;
    a.psql("create table t (i bigint primary key, note text);
            insert into t select g, 'row ' || g from generate_series(1, 5000) g;
            create table u (id int primary key); insert into u select generate_series(1, 10); analyze");
    // The cluster archives into the repository (which makes it one).
    let segment = a.switch_wal();
    a.wait_archived(&segment, std::time::Duration::from_secs(60));
    let env = a.pg_env(&src.env);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = walvault(&["dump-push", "--database", "postgres"], &env, None);
        ids.push(ok(&out, "dump-push").trim().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // A push that died: no manifest, recent, so kept for now.
    s3.put(
        "dump-life/dumps/dump-20990101T000000Z/postgres.dump",
        b"partial".to_vec(),
    );
    let mark = walvault(
        &[
            "backup-mark",
            &ids[0],
            "--permanent",
            "--note",
            "audit 2026",
        ],
        &src.env,
        None,
    );
    let text = ok(&mark, "backup-mark dump");
    assert!(
        text.contains(&format!("dump {}: permanent: audit 2026", ids[0])),
        "{text}"
    );
    assert_eq!(
        s3.class_tag(&format!("dump-life/dumps/{}/postgres.dump", ids[0]))
            .as_deref(),
        Some("permanent")
    );

    // Retention: the newest of the day and the permanent one stay.
    let policy = ["--set", "retention.dump_keep_daily=1"];
    let out = walvault(&[&policy[..], &["delete"]].concat(), &src.env, None);
    let text = ok(&out, "delete dry run");
    assert!(
        text.contains("no backup policy, every backup kept"),
        "{text}"
    );
    assert!(
        text.contains(&format!("dump {:<22} REMOVE", ids[1])),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "dump {:<22} keep    permanent: audit 2026",
            ids[0]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("dump {:<22} keep    newest of its day", ids[2])),
        "{text}"
    );
    assert!(text.contains("may be a dump-push still running"), "{text}");
    ok(
        &walvault(
            &[&policy[..], &["delete", "--confirm"]].concat(),
            &src.env,
            None,
        ),
        "delete",
    );
    let list = ok(&walvault(&["dump-list"], &src.env, None), "dump-list");
    assert!(
        list.contains(&ids[0]) && list.contains(&ids[2]) && !list.contains(&ids[1]),
        "{list}"
    );
    assert!(s3.list(&format!("dump-life/dumps/{}/", ids[1])).is_empty());

    // Status and its metrics name the newest dump.
    let st: serde_json::Value =
        serde_json::from_str(&ok(&walvault(&["status", "--json"], &env, None), "status")).unwrap();
    assert_eq!(st["dumps"], 2);
    assert_eq!(st["last_dump_id"], ids[2].as_str());
    let prom = src.root.path().join("walvault.prom");
    walvault(
        &["status", "--prometheus", prom.to_str().unwrap()],
        &env,
        None,
    );
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("walvault_dumps{") && metrics.contains("walvault_last_dump_time_seconds{"),
        "{metrics}"
    );

    // A drill of the newest dump: a new cluster, every table there, the user's check.
    let scratch = src.root.path().join("scratch");
    let reports = src.root.path().join("reports");
    for d in [&scratch, &reports] {
        std::fs::create_dir_all(d).unwrap();
        chown_pg(d);
    }
    let checks = src.root.path().join("checks.sql");
    std::fs::write(
        &checks,
        "-- check: all rows of t\nselect count(*) = 5000 from t;\n",
    )
    .unwrap();
    chown_pg(&checks);
    let args = [
        "drill",
        "--dump",
        &ids[2],
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--report-dir",
        reports.to_str().unwrap(),
        "--checks",
        checks.to_str().unwrap(),
    ];
    let out = walvault(&args, &env, None);
    let text = ok(&out, "drill --dump");
    assert!(text.contains("drill PASSED: dump restored in"), "{text}");
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "scratch left behind"
    );
    let report = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["result"], "passed");
    assert_eq!(r["dump"]["id"], ids[2].as_str());
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"the dump's 2 tables are restored") && names.contains(&"all rows of t"),
        "{names:?}"
    );
    let md = std::fs::read_to_string(report.with_extension("md")).unwrap();
    assert!(md.contains("## Dump used") && md.contains(&ids[2]), "{md}");
    // A check that fails fails the drill.
    std::fs::write(
        &checks,
        "-- check: too many rows\nselect count(*) = 5001 from t;\n",
    )
    .unwrap();
    let out = walvault(&args, &env, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("check 'too many rows' failed"));
    // A dump that does not exist is bad input: nothing made.
    refused(
        &[
            "drill",
            "--dump",
            "dump-19990101T000000Z",
            "--scratch-dir",
            scratch.to_str().unwrap(),
            "--report-dir",
            reports.to_str().unwrap(),
        ],
        &env,
        "no dump dump-19990101T000000Z",
    );
    assert!(std::fs::read_dir(&scratch).unwrap().next().is_none());
}
