use clap::Parser;
use std::process::ExitCode;
use walvault::cli::{Cli, Command};
use walvault::config::Config;
use walvault::{codec::Codec, exit, logging, store, wal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A failure of wal-fetch that is not "absent" must stop recovery (see exit.rs).
    let failure = match cli.command {
        Command::WalFetch { .. } => exit::FETCH_FATAL,
        _ => exit::FAILURE,
    };
    let name = command_name(&cli.command);
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
    let cfg = match Config::load_from_process(cli.config.as_deref()) {
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
    match rt.block_on(dispatch(cli.command, cfg)) {
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
        Command::Keygen { .. } => "keygen",
        Command::RepoInit { .. } => "repo-init",
    }
}

async fn dispatch(command: Command, cfg: Config) -> anyhow::Result<u8> {
    let codec = Codec::from_config(&cfg)?;
    let store = store::open(&cfg).await?;
    match command {
        Command::WalPush { path } => {
            wal::push::run(store.as_ref(), &codec, &path).await?;
            Ok(exit::OK)
        }
        Command::WalFetch { name, dest } => {
            match wal::fetch::run(
                store.as_ref(),
                &codec,
                &name,
                &dest,
                cfg.fetch.retries as u32,
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
        Command::Keygen { .. } => unreachable!("handled before the configuration is read"),
    }
}
