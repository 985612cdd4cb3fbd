use clap::Parser;
use std::process::ExitCode;
use walvault::cmd::{Cli, Kind};
use walvault::exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (name, kind) = cli.command.spec();
    // Still one thread here.
    match kind {
        Kind::Parallel | Kind::PipedParallel => few_malloc_arenas(),
        Kind::ArchiveCall | Kind::RestoreCall | Kind::Report | Kind::Piped => {}
    }
    match kind {
        // A panic exits 101, which PostgreSQL would read as "absent" and end
        // recovery early: wal-fetch turns any panic, on any thread, into fatal.
        Kind::RestoreCall => {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                eprintln!("walvault {name}: error: internal error (panic); recovery stops here");
                std::process::exit(exit::FETCH_FATAL.into());
            }));
        }
        // Rust ignores SIGPIPE: a write to a closed pipe is an error. Wanted
        // where walvault feeds pg_restore or psql, and harmless where it writes
        // nothing to stdout (PostgreSQL's calls).
        Kind::ArchiveCall | Kind::Piped | Kind::PipedParallel => {}
        // A person's command piped into a pager that quits early ends quietly.
        Kind::Report | Kind::Parallel => unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        },
    }
    if std::env::var_os(PANIC_FOR_TESTS).is_some_and(|v| v == name) {
        panic!("{PANIC_FOR_TESTS} asked for a panic in {name}");
    }
    // A failure of wal-fetch that is not "absent" must stop recovery (see exit.rs).
    let failure = match kind {
        Kind::RestoreCall => exit::FETCH_FATAL,
        Kind::ArchiveCall | Kind::Report | Kind::Piped | Kind::Parallel | Kind::PipedParallel => {
            exit::FAILURE
        }
    };
    match cli.command.execute(cli.config, cli.set) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line, the whole cause chain: PostgreSQL's log keeps it.
            eprintln!("walvault {name}: error: {e:#}");
            ExitCode::from(failure)
        }
    }
}

/// Test hook: `_WALVAULT_PANIC_FOR_TESTS=<command>` makes that command panic
/// at its start, so the tests can prove what a panic exits with. Its name is
/// outside the WALVAULT_ settings on purpose.
const PANIC_FOR_TESTS: &str = "_WALVAULT_PANIC_FOR_TESTS";

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and memory freed in one is not reused by the others: part tasks on
/// blocking threads took a 48 MiB heap to 165 MiB resident. Two arenas keep
/// resident memory near the heap at no measured cost in speed; on an
/// overloaded machine they slowed the prefetcher (threads wait on arena
/// locks), so only the commands that read a backup's parts on many threads
/// ask for them. Called before any thread starts.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
