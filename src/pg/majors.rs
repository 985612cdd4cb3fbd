//! The PostgreSQL majors walvault supports, and how an unsupported one is named.

use anyhow::{Context, Result};
use std::path::Path;

pub const OLDEST: u32 = 13;
pub const NEWEST: u32 = 18;

pub fn supported(major: u32) -> bool {
    (OLDEST..=NEWEST).contains(&major)
}

/// "13 to 18": for messages.
pub fn known() -> String {
    format!("{OLDEST} to {NEWEST}")
}

/// The one-line refusal of a major walvault does not know; `seen` says where it was read.
pub fn refusal(major: u32, seen: &str) -> anyhow::Error {
    let hint = if major > NEWEST {
        "; a newer walvault may support it"
    } else {
        ""
    };
    anyhow::anyhow!(
        "PostgreSQL {major} ({seen}) is not supported: walvault {} supports PostgreSQL {}{hint}",
        env!("CARGO_PKG_VERSION"),
        known()
    )
}

/// Fails with `refusal` unless `major` is supported.
pub fn require(major: u32, seen: &str) -> Result<()> {
    if supported(major) {
        Ok(())
    } else {
        Err(refusal(major, seen))
    }
}

/// The major of a `server_version_num` (e.g. 180004 -> 18).
pub fn of_version_num(num: i64) -> u32 {
    (num / 10000) as u32
}

/// The major written in a data directory's `PG_VERSION` by initdb.
pub fn of_data_directory(pgdata: &Path) -> Result<u32> {
    let p = pgdata.join("PG_VERSION");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let major = text.trim();
    // Before 10 the file held "9.6": a major walvault does not support either way.
    let whole = major.split('.').next().unwrap_or("");
    whole
        .parse()
        .with_context(|| format!("{}: not a PostgreSQL major: '{major}'", p.display()))
}

/// The major of a program's `--version` line, e.g. "pg_ctl (PostgreSQL) 18.4".
pub fn of_version_line(line: &str) -> Option<u32> {
    let rest = line.split("(PostgreSQL)").nth(1)?.trim();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_it_refuses() {
        assert!(supported(13) && supported(18));
        assert!(!supported(12) && !supported(19));
        let old = refusal(12, "PG_VERSION of /d").to_string();
        assert!(old.contains("PostgreSQL 12 (PG_VERSION of /d)"), "{old}");
        assert!(old.contains("supports PostgreSQL 13 to 18"), "{old}");
        assert!(!old.contains("newer walvault"), "{old}");
        let new = refusal(19, "server_version_num 190000").to_string();
        assert!(
            new.contains("PostgreSQL 19") && new.contains("newer walvault"),
            "{new}"
        );
        assert!(require(15, "x").is_ok() && require(9, "x").is_err());
    }

    #[test]
    fn reads_majors() {
        assert_eq!(of_version_num(130023), 13);
        assert_eq!(of_version_num(180004), 18);
        assert_eq!(of_version_line("pg_ctl (PostgreSQL) 18.4"), Some(18));
        assert_eq!(
            of_version_line("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(of_version_line("postgres (PostgreSQL) 19devel"), Some(19));
        assert_eq!(of_version_line("something else 15.1"), None);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("PG_VERSION"), "17\n").unwrap();
        assert_eq!(of_data_directory(d.path()).unwrap(), 17);
        std::fs::write(d.path().join("PG_VERSION"), "9.6\n").unwrap();
        assert_eq!(of_data_directory(d.path()).unwrap(), 9);
        std::fs::write(d.path().join("PG_VERSION"), "x\n").unwrap();
        assert!(of_data_directory(d.path()).is_err());
    }
}
