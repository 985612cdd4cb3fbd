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
    let out = walvault(
        &["dump-restore", &id, "--into", &conninfo(&b, "x")],
        &env,
        None,
    );
    assert!(
        failure(&out).1.contains("choose one with --database"),
        "{}",
        failure(&out).1
    );
    let out = walvault(
        &[
            "dump-restore",
            "dump-19990101T000000Z",
            "--into",
            &conninfo(&b, "x"),
        ],
        &env,
        None,
    );
    assert!(
        failure(&out).1.contains("no dump dump-19990101T000000Z"),
        "{}",
        failure(&out).1
    );
    let out = walvault(
        &[
            "dump-restore",
            &id,
            "-d",
            "shop",
            "--into",
            &conninfo(&b, "x"),
        ],
        &keyless,
        None,
    );
    assert!(
        failure(&out).1.contains("the dump is encrypted"),
        "{}",
        failure(&out).1
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
