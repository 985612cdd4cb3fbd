use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use walvault::cli::{Cli, Command};
use walvault::config::Config;
use walvault::{codec::Codec, exit, logging, store, wal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Still one thread here. The commands that read a backup's parts on many
    // threads; not PostgreSQL's calls, whose timing under load it changed.
    if matches!(
        cli.command,
        Command::BackupPush { .. }
            | Command::Recover { .. }
            | Command::Verify { .. }
            | Command::Drill { .. }
            | Command::RestoreTable { .. }
    ) {
        few_malloc_arenas();
    }
    // A failure of wal-fetch that is not "absent" must stop recovery (see exit.rs).
    let failure = match cli.command {
        Command::WalFetch { .. } => exit::FETCH_FATAL,
        _ => exit::FAILURE,
    };
    let name = command_name(&cli.command);
    match cli.command {
        // A panic exits 101, which PostgreSQL would read as "absent" and end
        // recovery early: wal-fetch turns any panic, on any thread, into fatal.
        Command::WalFetch { .. } => {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                eprintln!("walvault wal-fetch: error: internal error (panic); recovery stops here");
                std::process::exit(exit::FETCH_FATAL.into());
            }));
        }
        // PostgreSQL's calls write nothing to stdout; a person's command piped
        // into a pager that quits early ends quietly, as other tools do.
        Command::WalPush { .. } | Command::WalPrefetch { .. } => {}
        // These feed pg_restore and psql through pipes: one that exits early
        // is an error with its own words, not a silent death by SIGPIPE.
        Command::DumpRestore { .. } | Command::DumpVerify { .. } | Command::RestoreTable { .. } => {
        }
        _ => unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        },
    }
    if std::env::var_os(PANIC_FOR_TESTS).is_some_and(|v| v == name) {
        panic!("{PANIC_FOR_TESTS} asked for a panic in {name}");
    }
    let report = |e: anyhow::Error| {
        // One line, the whole cause chain: PostgreSQL's log keeps it.
        eprintln!("walvault {name}: error: {e:#}");
    };
    if let Command::Keygen { output } = &cli.command {
        return match walvault::keygen::run(output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(e);
                ExitCode::from(exit::FAILURE)
            }
        };
    }
    let cfg = match Config::load_from_process(cli.config.as_deref(), &cli.set) {
        Ok(c) => c,
        Err(e) => {
            report(e);
            return ExitCode::from(failure);
        }
    };
    logging::init(&cfg.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(e.into());
            return ExitCode::from(failure);
        }
    };
    // restore_command written by recover names the config file in use.
    let config_file = cli.config.clone().or_else(|| {
        let p = PathBuf::from(walvault::config::DEFAULT_CONFIG_PATH);
        p.exists().then_some(p)
    });
    let ctx = Context {
        config_file,
        sets: cli.set,
    };
    match rt.block_on(dispatch(cli.command, cfg, ctx)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(e);
            ExitCode::from(failure)
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::WalPush { .. } => "wal-push",
        Command::WalFetch { .. } => "wal-fetch",
        Command::WalPrefetch { .. } => "wal-prefetch",
        Command::Keygen { .. } => "keygen",
        Command::RepoInit { .. } => "repo-init",
        Command::RepoSwitch { .. } => "repo-switch",
        Command::BackupPush { .. } => "backup-push",
        Command::BackupList { .. } => "backup-list",
        Command::Recover { .. } => "recover",
        Command::BackupMark { .. } => "backup-mark",
        Command::Delete { .. } => "delete",
        Command::WalVerify { .. } => "wal-verify",
        Command::Verify { .. } => "verify",
        Command::Status { .. } => "status",
        Command::Drill { .. } => "drill",
        Command::RestoreTable { .. } => "restore-table",
        Command::DumpPush { .. } => "dump-push",
        Command::DumpList { .. } => "dump-list",
        Command::DumpRestore { .. } => "dump-restore",
        Command::DumpVerify { .. } => "dump-verify",
    }
}

/// Test hook: `_WALVAULT_PANIC_FOR_TESTS=<command>` makes that command panic
/// at its start, so the tests can prove what a panic exits with. Its name is
/// outside the WALVAULT_ settings on purpose.
const PANIC_FOR_TESTS: &str = "_WALVAULT_PANIC_FOR_TESTS";

/// What commands that start other walvault processes pass on to them.
struct Context {
    /// The config file in use (restore_command and the prefetcher name it).
    config_file: Option<PathBuf>,
    /// `--set` arguments of this run.
    sets: Vec<String>,
}

async fn dispatch(command: Command, cfg: Config, ctx: Context) -> anyhow::Result<u8> {
    let config_file = ctx.config_file.clone();
    // The fast paths of PostgreSQL's calls need neither key nor repository.
    let answered = match &command {
        Command::WalFetch { name, dest } => {
            wal::fetch::from_spool(name, dest, &prefetch_settings(&cfg, &ctx))
        }
        Command::WalPush { path } => wal::push::archived_ahead(path, &cfg.repo)?,
        _ => false,
    };
    if answered {
        return Ok(exit::OK);
    }
    let codec = Codec::from_config(&cfg)?;
    if let Command::WalPush { path } = &command {
        let opts = wal::push::Options {
            lookahead: cfg.push.lookahead as usize,
            concurrency: cfg.push.concurrency as usize,
            repo: cfg.repo.clone(),
        };
        // Encoding starts before the repository is opened (see push::prepare).
        let prepared = wal::push::prepare(&codec, path, &opts)?;
        let pushed = async {
            let store = store::open(&cfg).await?;
            wal::push::run(store.as_ref(), &codec, prepared, &opts).await?;
            anyhow::Ok(store)
        }
        .await;
        return match pushed {
            Ok(store) => {
                wal::backlog::record_journaled(store.as_ref(), path).await;
                Ok(exit::OK)
            }
            Err(e) if wal::backlog::drop_if_over(cfg.push.max_backlog, path, &e)? => Ok(exit::OK),
            Err(e) => Err(e),
        };
    }
    let store = store::open(&cfg).await?;
    match command {
        Command::WalPrefetch {
            spool,
            timeline,
            clean,
            ahead,
            segment_size,
            names,
        } => {
            let dir = spool
                .or_else(|| cfg.fetch.spool_dir.clone())
                .unwrap_or_else(|| PathBuf::from("pg_wal").join(wal::prefetch::DIR));
            let spool = wal::prefetch::Spool::at(dir);
            if clean {
                spool.clean()?;
            } else {
                let tli = timeline.expect("clap requires it without --clean");
                let job = wal::prefetch::Job {
                    tli,
                    names,
                    concurrency: cfg.fetch.prefetch_concurrency as usize,
                    follow: ahead.zip(segment_size).map(|(ahead, segment_size)| {
                        wal::prefetch::Follow {
                            ahead,
                            segment_size,
                        }
                    }),
                };
                wal::prefetch::run(store.as_ref(), &codec, &spool, job).await?;
            }
            Ok(exit::OK)
        }
        Command::WalFetch { name, dest } => {
            match wal::fetch::run(
                store.as_ref(),
                &codec,
                &name,
                &dest,
                cfg.fetch.retries as u32,
                &prefetch_settings(&cfg, &ctx),
            )
            .await
            {
                Ok(wal::fetch::Fetched::Restored) => Ok(exit::OK),
                Ok(wal::fetch::Fetched::Absent) => Ok(exit::FAILURE),
                Err(wal::fetch::Fatal(e)) => Err(e),
            }
        }
        Command::RepoInit { pgdata } => {
            let sysid = walvault::pg::control::system_identifier(&pgdata)?;
            let version = std::fs::read_to_string(pgdata.join("PG_VERSION"))
                .ok()
                .and_then(|v| v.trim().parse().ok());
            let id = walvault::repo::ensure(store.as_ref(), sysid, version).await?;
            println!(
                "repository {} belongs to cluster {}",
                store.locate(""),
                id.system_identifier
            );
            Ok(exit::OK)
        }
        Command::RepoSwitch { to, pgdata } => {
            use walvault::repo_switch::{self, RepoSource};
            let repo_source = if ctx.sets.iter().any(|s| s.starts_with("repo=")) {
                RepoSource::Elsewhere("a --set argument".into())
            } else if std::env::var_os("WALVAULT_REPO").is_some() {
                RepoSource::Elsewhere("WALVAULT_REPO in the environment".into())
            } else if let Some(file) = config_file {
                RepoSource::File(file)
            } else {
                RepoSource::Elsewhere("the default (there is no config file)".into())
            };
            let opts = repo_switch::Options {
                to,
                pgdata,
                repo_source,
            };
            repo_switch::run(&cfg, store.as_ref(), opts).await?;
            Ok(exit::OK)
        }
        Command::BackupPush {
            pgdata,
            fast,
            label,
            full,
            incremental,
        } => {
            let opts = walvault::backup::push::Options {
                pgdata,
                fast,
                label,
                incremental: match (full, incremental) {
                    (true, _) => Some(false),
                    (_, true) => Some(true),
                    _ => None,
                },
            };
            let m = walvault::backup::push::run(&cfg, store, &codec, opts).await?;
            println!("{}", m.id);
            Ok(exit::OK)
        }
        Command::BackupList { json } => {
            walvault::backup::catalog::run(store.as_ref(), &codec, json).await?;
            Ok(exit::OK)
        }
        Command::Recover {
            pgdata,
            target,
            target_action,
            exclusive,
            backup,
            overwrite,
            delta,
            dry_run,
            start,
            port,
            socket_dir,
            tablespace_map,
            archive,
            standby,
            primary_conninfo,
            primary_slot_name,
        } => {
            use walvault::recover::target::Action;
            let (target, timeline) = parse_target(target)?;
            let mut ts = std::collections::BTreeMap::new();
            for m in tablespace_map {
                let (oid, dir) = m
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--tablespace-map '{m}': use OID=DIR"))?;
                ts.insert(oid.to_string(), PathBuf::from(dir));
            }
            let opts = walvault::recover::Options {
                pgdata,
                target,
                timeline,
                action: Action::parse(&target_action)?,
                exclusive,
                backup,
                overwrite,
                delta,
                dry_run,
                start,
                port,
                socket_dir,
                tablespace_map: ts,
                tablespace_root: None,
                archive,
                config_file,
                carry: walvault::config::carried_settings(&ctx.sets)?,
                postgres: cfg.postgres.clone(),
                standby: standby.then(|| walvault::recover::Standby {
                    primary_conninfo: primary_conninfo.or(cfg.standby.primary_conninfo.clone()),
                    primary_slot_name: primary_slot_name.or(cfg.standby.primary_slot_name.clone()),
                }),
            };
            walvault::recover::run(&cfg, store, &codec, opts).await?;
            Ok(exit::OK)
        }
        Command::BackupMark {
            id,
            permanent,
            keep_until,
            unmark,
            note,
        } => {
            use walvault::backup::keep::{self, Mark};
            let mark = match (permanent, keep_until, unmark) {
                (true, _, _) => Mark::Permanent,
                (_, Some(d), _) => Mark::Until(keep::parse_date(&d)?),
                (_, _, true) => Mark::Unmark,
                _ => anyhow::bail!("say --permanent, --keep-until DATE or --unmark"),
            };
            keep::run(store.as_ref(), &id, mark, note).await?;
            Ok(exit::OK)
        }
        Command::Delete {
            keep_last,
            keep_days,
            keep_full,
            confirm,
        } => {
            let policy = walvault::retention::Policy {
                keep_last: keep_last.unwrap_or(cfg.retention.keep_last as u32),
                keep_days: keep_days.unwrap_or(cfg.retention.keep_days as u32),
                keep_full: keep_full.unwrap_or(cfg.retention.keep_full as u32),
            };
            let dumps = walvault::dump::retention::Policy {
                keep_daily: cfg.retention.dump_keep_daily as u32,
                keep_weekly: cfg.retention.dump_keep_weekly as u32,
                keep_monthly: cfg.retention.dump_keep_monthly as u32,
            };
            let opts = walvault::retention::Options {
                policy,
                dumps,
                confirm,
            };
            let clean = walvault::retention::run(store.as_ref(), &codec, opts).await?;
            Ok(if clean { exit::OK } else { exit::FAILURE })
        }
        Command::WalVerify { json } => {
            let ok =
                wal::verify::run(store.as_ref(), &codec, cfg.verify.pending_seconds, json).await?;
            Ok(if ok { exit::OK } else { exit::FAILURE })
        }
        Command::Verify { backup, wal } => {
            let opts = walvault::backup::verify::Options {
                backup,
                all_wal: wal,
                concurrency: cfg.verify.concurrency as usize,
            };
            let ok = walvault::backup::verify::run(store, &codec, opts).await?;
            Ok(if ok { exit::OK } else { exit::FAILURE })
        }
        Command::Status {
            pgdata,
            json,
            prometheus,
        } => {
            let opts = walvault::status::Options {
                pgdata,
                json,
                prometheus,
            };
            let ok = walvault::status::run(&cfg, store.as_ref(), &codec, opts).await?;
            Ok(if ok { exit::OK } else { exit::FAILURE })
        }
        Command::Drill {
            target,
            backup,
            dump,
            checks,
            scratch_dir,
            report_dir,
            no_upload,
            no_amcheck,
            operator,
        } => {
            let (target, timeline) = parse_target(target)?;
            let opts = walvault::drill::Options {
                target,
                timeline,
                backup,
                dump,
                checks: checks.or_else(|| cfg.drill.checks_file.clone()),
                scratch_root: scratch_dir.unwrap_or_else(|| cfg.drill.scratch_dir.clone()),
                report_dir: report_dir.unwrap_or_else(|| cfg.drill.report_dir.clone()),
                upload: cfg.drill.upload && !no_upload,
                amcheck: cfg.drill.amcheck && !no_amcheck,
                operator,
                config_file,
                carry: walvault::config::carried_settings(&ctx.sets)?,
            };
            let passed = walvault::drill::run(&cfg, store, &codec, opts).await?;
            Ok(if passed { exit::OK } else { exit::FAILURE })
        }
        Command::RestoreTable {
            table,
            schema,
            database,
            target,
            exclusive,
            backup,
            into,
            as_name,
            replace,
            cascade,
            to_file,
            scratch_dir,
        } => {
            use walvault::table::{self, names, Destination, Selection};
            let (target, timeline) = parse_target(target)?;
            let selection = match schema {
                Some(s) => Selection::Schema(names::parse_identifier(&s, "--schema")?),
                None => Selection::Tables(
                    table
                        .iter()
                        .map(|t| names::parse_table(t))
                        .collect::<anyhow::Result<_>>()?,
                ),
            };
            let destination = match (to_file, replace) {
                (Some(f), _) => Destination::File(f),
                (None, true) => Destination::Replace { into, cascade },
                (None, false) => Destination::Beside {
                    into,
                    rename: as_name
                        .map(|n| names::parse_identifier(&n, "--as"))
                        .transpose()?,
                },
            };
            let opts = table::Options {
                selection,
                database,
                destination,
                target,
                timeline,
                exclusive,
                backup,
                scratch_root: scratch_dir.unwrap_or_else(|| cfg.drill.scratch_dir.clone()),
                config_file,
                carry: walvault::config::carried_settings(&ctx.sets)?,
            };
            table::run(&cfg, store, &codec, opts).await?;
            Ok(exit::OK)
        }
        Command::DumpPush {
            database,
            no_globals,
        } => {
            let opts = walvault::dump::push::Options {
                databases: database,
                globals: !no_globals,
            };
            let id = walvault::dump::push::run(&cfg, store.as_ref(), &codec, opts).await?;
            println!("{id}");
            Ok(exit::OK)
        }
        Command::DumpList { json } => {
            walvault::dump::run_list(store.as_ref(), json).await?;
            Ok(exit::OK)
        }
        Command::DumpRestore {
            id,
            into,
            database,
            table,
            globals,
        } => {
            let opts = walvault::dump::restore::Options {
                id,
                database,
                tables: table
                    .iter()
                    .map(|t| walvault::table::names::parse_table(t))
                    .collect::<anyhow::Result<_>>()?,
                into,
                globals,
            };
            walvault::dump::restore::run(&cfg, store.as_ref(), &codec, opts).await?;
            Ok(exit::OK)
        }
        Command::DumpVerify { ids, stored_only } => {
            let opts = walvault::dump::verify::Options { ids, stored_only };
            let ok = walvault::dump::verify::run(&cfg, store.as_ref(), &codec, opts).await?;
            Ok(if ok { exit::OK } else { exit::FAILURE })
        }
        // keygen needs no configuration, wal-push no store before its encoding starts.
        Command::Keygen { .. } | Command::WalPush { .. } => unreachable!("handled above"),
    }
}

/// The recovery target and timeline from the command line.
fn parse_target(
    a: walvault::cli::TargetArgs,
) -> anyhow::Result<(walvault::recover::target::Target, Option<u32>)> {
    use walvault::recover::target::{parse_time, Target};
    let target = if let Some(t) = a.target_time {
        Target::Time(parse_time(&t)?)
    } else if let Some(l) = a.target_lsn {
        Target::Lsn(walvault::wal::names::Lsn::parse(&l)?)
    } else if let Some(x) = a.target_xid {
        Target::Xid(
            x.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--target-xid '{x}' is not a transaction id"))?,
        )
    } else if let Some(n) = a.target_name {
        Target::Name(n)
    } else {
        match a.target.as_deref() {
            None | Some("latest") => Target::Latest,
            Some("immediate") => Target::Immediate,
            Some(o) => anyhow::bail!("--target '{o}': use immediate or latest"),
        }
    };
    let timeline = match a.target_timeline.as_deref() {
        None | Some("latest") => None,
        Some(t) => Some(
            t.parse()
                .map_err(|_| anyhow::anyhow!("--target-timeline '{t}': use a number or latest"))?,
        ),
    };
    Ok((target, timeline))
}

fn prefetch_settings(cfg: &Config, ctx: &Context) -> wal::fetch::Prefetch {
    wal::fetch::Prefetch {
        ahead: cfg.fetch.prefetch as usize,
        spool_dir: cfg.fetch.spool_dir.clone(),
        config_file: ctx.config_file.clone(),
        sets: ctx.sets.clone(),
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and memory freed in one is not reused by the others: part tasks on
/// blocking threads took a 48 MiB heap to 165 MiB resident. Two arenas keep
/// resident memory near the heap at no measured cost in speed; on an
/// overloaded machine they slowed the prefetcher (threads wait on arena
/// locks), so only the backup commands ask for them. Called before any
/// thread starts.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
