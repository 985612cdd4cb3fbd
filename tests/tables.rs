//! `restore-table` against real PostgreSQL 15 and SeaweedFS: a table with an
//! index, a foreign key, a sequence and grants, rows deleted at T, brought back
//! as of just before T beside the live table and in place of it; the rest of
//! production untouched; refusals before anything is written.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;

const SCHEMA: &str = "
create role reporter;
create table customers (id int primary key, name text not null);
insert into customers select g, 'customer ' || g from generate_series(1, 50) g;
create table orders (
    id serial primary key,
    customer_id int not null references customers,
    amount numeric not null,
    note text);
create index orders_by_customer on orders (customer_id);
grant select on orders to reporter;
insert into orders (customer_id, amount, note)
    select 1 + g % 50, g, 'order ' || g from generate_series(1, 2000) g;
create table events (id int, at date not null, what text) partition by range (at);
create table events_2025 partition of events for values from ('2025-01-01') to ('2026-01-01');
create table events_2026 partition of events for values from ('2026-01-01') to ('2027-01-01');
create index on events (id);
insert into events select g, date '2025-06-01' + g % 400, 'event ' || g from generate_series(1, 1000) g;
create schema sales;
create table sales.leads (id int primary key, name text);
insert into sales.leads select g, 'lead ' || g from generate_series(1, 100) g;
create table audit (id bigint generated always as identity primary key, what text);
insert into audit (what) select 'event ' || g from generate_series(1, 300) g;
";

/// The content of a table as one digest (row order fixed by id).
fn digest(a: &Cluster, table: &str) -> String {
    a.psql(&format!(
        "select count(*) || ':' || coalesce(md5(string_agg(t::text, ',' order by t.id)), '') from {table} t"
    ))
}

/// A sequence's value as recovered: PostgreSQL logs sequences 32 values ahead,
/// so a recovered sequence stands up to 32 past the value it had (never behind:
/// no id is handed out twice).
fn sequence_as_then(a: &Cluster, seq: &str, then: &str) {
    let then: i64 = then.parse().unwrap();
    let now: i64 = a
        .psql(&format!("select last_value from {seq}"))
        .parse()
        .unwrap();
    assert!(
        (then..=then + 32).contains(&now),
        "{seq}: {now}, was {then}"
    );
}

fn restore_table(
    env: &BTreeMap<String, String>,
    scratch: &Path,
    args: &[&str],
) -> std::process::Output {
    let mut all = vec!["restore-table", "--scratch-dir", scratch.to_str().unwrap()];
    all.extend_from_slice(args);
    walvault(&all, env, None)
}

/// A restore-table run that must be refused: exit 1, its error line.
fn refused(env: &BTreeMap<String, String>, scratch: &Path, args: &[&str]) -> String {
    let out = restore_table(env, scratch, args);
    let (code, line) = failure(&out);
    assert_eq!(code, Some(1), "{args:?}: {line}");
    line
}

fn scratch_is_empty(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn a_table_comes_back_as_it_was_beside_or_in_place_and_nothing_else_moves() {
    let s3 = Seaweed::start();
    let src = source(|root| {
        let identity = root.join("identity.txt");
        let recipient = keygen(&identity);
        let mut env = s3.walvault_env("tables");
        env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
        env.insert(
            "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
            identity.display().to_string(),
        );
        env
    });
    let a = &src.a;
    a.psql(SCHEMA);
    src.backup();
    // Work after the backup, replayed from the archive.
    a.psql("insert into orders (customer_id, amount, note) select 1 + g % 50, g, 'later ' || g from generate_series(1, 500) g");
    let then = digest(a, "orders");
    let events_then = digest(a, "events");
    let events_2026_then = digest(a, "events_2026");
    let leads_then = digest(a, "sales.leads");
    let seq_then = a.psql("select last_value from orders_id_seq");
    let target = now_utc(a);
    // The bad DELETE at T, then life goes on.
    a.psql(
        "delete from orders where customer_id <= 10; delete from events where at >= '2026-01-01'",
    );
    a.psql("insert into orders (customer_id, amount, note) select 20, g, 'after ' || g from generate_series(1, 100) g");
    a.psql("insert into audit (what) values ('after the delete')");
    src.flush_archive();
    let live = digest(a, "orders");
    let others = [digest(a, "customers"), digest(a, "audit")];
    assert_ne!(then, live);
    assert_ne!(events_then, digest(a, "events"));

    let scratch = src.root.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_pg(&scratch);
    let env = a.pg_env(&src.env);
    let at = ["--database", "postgres", "--target-time", target.as_str()];

    // Refused before anything is restored: a name taken, a target before every backup.
    let line = refused(
        &env,
        &scratch,
        &[&at[..], &["--table", "orders", "--as", "customers"]].concat(),
    );
    assert!(
        line.contains("public.customers already exists in database postgres"),
        "{line}"
    );
    let line = refused(
        &env,
        &scratch,
        &[
            "--database",
            "postgres",
            "--table",
            "orders",
            "--target-time",
            "2020-01-01 00:00:00+00",
        ],
    );
    assert!(line.contains("2020-01-01"), "{line}");
    // Refused after recovery, still before production: no such table at T.
    let line = refused(
        &env,
        &scratch,
        &[&at[..], &["--table", "public.nope"]].concat(),
    );
    assert!(
        line.contains("table public.nope did not exist at time")
            && line.contains("nothing was written"),
        "{line}"
    );
    scratch_is_empty(&scratch);

    // Beside the live table, as of just before the DELETE.
    let out = restore_table(
        &env,
        &scratch,
        &[
            &at[..],
            &["--table", "public.orders", "--as", "orders_before"],
        ]
        .concat(),
    );
    let text = ok(&out, "restore-table --as");
    for phase in [
        "restored:",
        "recovered:",
        "dumping: public.orders (2500 rows) as at the target",
        "loaded: public.orders_before (2500 rows",
        "timings:",
    ] {
        assert!(text.contains(phase), "{phase}: {text}");
    }
    assert_eq!(digest(a, "orders_before"), then);
    assert_eq!(
        a.psql("select string_agg(indexname, ',' order by indexname) from pg_indexes where tablename = 'orders_before'"),
        "orders_before_by_customer,orders_before_pkey"
    );
    assert_eq!(
        a.psql("select pg_get_serial_sequence('orders_before', 'id')"),
        "public.orders_before_id_seq"
    );
    sequence_as_then(a, "orders_before_id_seq", &seq_then);
    assert_eq!(
        a.psql("select has_table_privilege('reporter', 'orders_before', 'select')"),
        "t"
    );
    assert_eq!(
        a.psql("select conname || ' ' || confrelid::regclass from pg_constraint where conrelid = 'orders_before'::regclass and contype = 'f'"),
        "orders_before_customer_id_fkey customers"
    );
    assert_eq!(digest(a, "orders"), live, "the live table is untouched");
    assert_eq!([digest(a, "customers"), digest(a, "audit")], others);
    // The same name again is refused: never overwritten.
    let out = restore_table(
        &env,
        &scratch,
        &[&at[..], &["--table", "orders", "--as", "orders_before"]].concat(),
    );
    assert!(
        failure(&out)
            .1
            .contains("public.orders_before already exists"),
        "{}",
        failure(&out).1
    );
    a.psql("drop table orders_before");

    // A partitioned table comes back with its partitions, named after it; a
    // partition asked for alone comes back as a table of its own.
    let out = restore_table(
        &env,
        &scratch,
        &[&at[..], &["--table", "events", "--as", "events_before"]].concat(),
    );
    let text = ok(&out, "restore-table of a partitioned table");
    assert!(
        text.contains("public.events (1000 rows in 2 partitions)"),
        "{text}"
    );
    assert_eq!(digest(a, "events_before"), events_then);
    assert_eq!(
        a.psql("select string_agg(c.relname, ',' order by c.relname) from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = 'events_before'::regclass"),
        "events_before_2025,events_before_2026"
    );
    let out = restore_table(
        &env,
        &scratch,
        &[
            &at[..],
            &["--table", "events_2026", "--as", "events_2026_back"],
        ]
        .concat(),
    );
    ok(&out, "restore-table of one partition");
    assert_eq!(digest(a, "events_2026_back"), events_2026_then);
    assert_eq!(
        a.psql("select relispartition from pg_class where relname = 'events_2026_back'"),
        "f"
    );
    assert_eq!(
        a.psql("select count(*) from events"),
        a.psql("select count(*) from events_2025"),
        "the live table is untouched"
    );
    // A dropped schema comes back whole, beside (never in place).
    let out = restore_table(
        &env,
        &scratch,
        &[&at[..], &["--schema", "sales", "--replace"]].concat(),
    );
    assert!(
        failure(&out).1.contains("--replace swaps tables"),
        "{}",
        failure(&out).1
    );
    let out = restore_table(
        &env,
        &scratch,
        &[&at[..], &["--schema", "sales", "--as", "sales_back"]].concat(),
    );
    ok(&out, "restore-table --schema");
    assert_eq!(digest(a, "sales_back.leads"), leads_then);

    // In place: refused while a view and another table's foreign key depend on it.
    a.psql(
        "create view big_orders as select * from orders where amount > 1000;
            create table refunds (order_id int references orders, amount numeric)",
    );
    let line = refused(
        &env,
        &scratch,
        &[&at[..], &["--table", "orders", "--replace"]].concat(),
    );
    assert!(
        line.contains("refused: 2 depend on table public.orders")
            && line.contains("big_orders")
            && line.contains("refunds")
            && line.contains("--cascade"),
        "{line}"
    );
    // With --cascade they go with it, and the output names them.
    let out = restore_table(
        &env,
        &scratch,
        &[&at[..], &["--table", "orders", "--replace", "--cascade"]].concat(),
    );
    let text = ok(&out, "restore-table --replace --cascade");
    assert!(
        text.contains("dropped with --cascade:")
            && text.contains("big_orders")
            && text.contains("refunds"),
        "{text}"
    );
    assert_eq!(digest(a, "orders"), then);
    assert_eq!(
        a.psql("select count(*) from pg_views where viewname = 'big_orders'"),
        "0"
    );
    assert_eq!(
        a.psql("select count(*) from pg_constraint where conrelid = 'refunds'::regclass and contype = 'f'"),
        "0"
    );
    a.psql("drop table refunds");
    // One transaction: a restored row whose customer production no longer has
    // fails the foreign key, and the live table stays as it was.
    a.psql("delete from orders where customer_id = 3; delete from customers where id = 3");
    let live = digest(a, "orders");
    let others = [digest(a, "customers"), digest(a, "audit")];
    let line = refused(
        &env,
        &scratch,
        &[&at[..], &["--table", "orders", "--replace"]].concat(),
    );
    assert!(
        line.contains("nothing of it was kept") && line.contains("foreign key"),
        "{line}"
    );
    assert_eq!(digest(a, "orders"), live);
    a.psql("insert into customers values (3, 'customer 3')");
    let others = [digest(a, "customers"), others[1].clone()];
    let out = restore_table(
        &env,
        &scratch,
        &[&at[..], &["--table", "orders", "--replace"]].concat(),
    );
    let text = ok(&out, "restore-table --replace");
    assert!(
        text.contains("replaced: public.orders (2500 rows"),
        "{text}"
    );
    assert!(text.contains("in one transaction"), "{text}");
    assert_eq!(digest(a, "orders"), then);
    assert_eq!(
        a.psql("select string_agg(indexname, ',' order by indexname) from pg_indexes where tablename = 'orders'"),
        "orders_by_customer,orders_pkey"
    );
    sequence_as_then(a, "orders_id_seq", &seq_then);
    assert_eq!(
        a.psql("select has_table_privilege('reporter', 'orders', 'select')"),
        "t"
    );
    assert_eq!([digest(a, "customers"), digest(a, "audit")], others);

    // Without --as: a stamped name beside the live table.
    let out = restore_table(&env, &scratch, &[&at[..], &["--table", "audit"]].concat());
    let text = ok(&out, "restore-table, default name");
    let copy = a.psql(
        "select relname from pg_class where relname like 'audit\\_restored\\_%' and relkind = 'r'",
    );
    assert!(
        copy.len() == "audit_restored_20261203_101010".len(),
        "{copy}"
    );
    assert!(
        text.contains(&format!("loaded: public.{copy} (300 rows")),
        "{text}"
    );

    // To a file: a custom-format dump pg_restore reads.
    let file = src.root.path().join("orders.dump");
    let out = restore_table(
        &env,
        &scratch,
        &[
            &at[..],
            &["--table", "orders", "--to-file", file.to_str().unwrap()],
        ]
        .concat(),
    );
    ok(&out, "restore-table --to-file");
    let list = pg_command("/usr/lib/postgresql/15/bin/pg_restore", &BTreeMap::new())
        .arg("--list")
        .arg(&file)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("TABLE DATA public orders"), "{list}");
    assert!(list.contains("SEQUENCE SET public orders_id_seq"), "{list}");
    let out = restore_table(
        &env,
        &scratch,
        &[
            &at[..],
            &["--table", "orders", "--to-file", file.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(failure(&out)
        .1
        .contains("exists; restore-table never overwrites a file"));
    scratch_is_empty(&scratch);
}
