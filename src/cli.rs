//! Command-line definitions only; `main.rs` dispatches.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

const SETUP: &str = "\
Set up PostgreSQL (postgresql.conf), as the postgres user can run walvault:
    wal_level = replica
    archive_mode = on
    archive_command = '/usr/local/bin/walvault wal-push %p'
    archive_timeout = 60                 # RPO: a segment at least every minute
    restore_command = '/usr/local/bin/walvault wal-fetch %f %p'   # used in recovery only

Settings come from /etc/walvault/walvault.toml (or --config FILE, or WALVAULT_CONFIG),
each overridable by WALVAULT_<KEY> (WALVAULT_REPO, WALVAULT_COMPRESSION_LEVEL, ...).
S3 endpoint, region and credentials come from the standard AWS chain
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, roles).
The repository is file:///var/lib/walvault/repo unless `repo` says otherwise.";

#[derive(Parser, Debug)]
#[command(
    name = "walvault",
    version,
    about = "Keeps a PostgreSQL cluster recoverable to any point in time",
    after_help = SETUP
)]
pub struct Cli {
    /// Configuration file (default /etc/walvault/walvault.toml; may be absent)
    #[arg(long, global = true, env = "WALVAULT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive one WAL file: archive_command = 'walvault wal-push %p'
    #[command(after_help = "\
postgresql.conf:
    archive_mode = on
    archive_command = '/usr/local/bin/walvault wal-push %p'
    archive_timeout = 60

Compresses (zstd), encrypts (age, when encryption.recipients is set) and checksums
(sha256) the file, then stores it as wal/<name>. Checks first that the file is a WAL
segment of this cluster (page magic, page address matching the name, segment size,
system identifier matching the repository). Also archives .history, .partial and
.backup files.

Exit status: 0 once the file is durably stored, or when it is already archived with
identical content; 1 otherwise (PostgreSQL keeps the file and retries), including a
file already archived with different content, which is never overwritten.")]
    WalPush {
        /// Path of the file, as PostgreSQL's %p gives it (relative to the data directory)
        path: PathBuf,
    },
    /// Restore one WAL file: restore_command = 'walvault wal-fetch %f %p'
    #[command(after_help = "\
postgresql.conf (or what `walvault recover` writes):
    restore_command = '/usr/local/bin/walvault wal-fetch %f %p'

Downloads wal/<name>, verifies its checksums, decrypts (encryption.identity_file) and
decompresses it, and writes it to the destination atomically (temporary file, fsync,
rename).

Exit status: 0 restored; 1 the file is not in the archive (normal: PostgreSQL asks
for files that do not exist); 128 the file could not be restored although it may
exist (store unreachable after retries, damaged object, missing or wrong key). 128
makes PostgreSQL stop recovery with an error instead of ending it early.")]
    WalFetch {
        /// WAL file name (%f)
        name: String,
        /// Where to write it (%p)
        dest: PathBuf,
    },
    /// Create an age identity file (mode 0600) and print its public recipient
    Keygen {
        /// Where to write the identity; an existing file is never overwritten
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Bind the repository to a cluster (done by the first wal-push otherwise)
    RepoInit {
        /// The cluster's data directory
        #[arg(long, env = "PGDATA")]
        pgdata: PathBuf,
    },
}
