//! The drill report: one structure, written as JSON (for machines) and as
//! Markdown (for the audit binder).

use super::checks::{CheckResult, Status, TableRows};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub format: u32,
    pub drill_id: String,
    /// `passed` or `failed`.
    pub result: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub host: String,
    pub operator: String,
    pub walvault_version: String,
    pub repository: String,
    pub backup: Option<BackupUsed>,
    /// A drill of a logical dump (`drill --dump`) instead of a backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpUsed>,
    pub target: TargetUsed,
    pub wal: Option<WalUsed>,
    pub recovered: Option<Recovered>,
    pub timings: Timings,
    pub rpo: Rpo,
    pub objectives: Objectives,
    pub checks: Vec<CheckResult>,
    pub tables: Vec<TableRows>,
    /// Why the drill failed, when it did: failed checks, missed objectives, errors.
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupUsed {
    pub id: String,
    pub label: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub stop_time: DateTime<Utc>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub encrypted: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct DumpUsed {
    pub id: String,
    pub finished_at: DateTime<Utc>,
    /// The dumped server's version, and the major of the scratch server it
    /// was restored into.
    pub server_version: String,
    pub restored_into_major: u32,
    pub databases: Vec<String>,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub encrypted: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetUsed {
    pub description: String,
    /// The timeline followed (None: not yet known).
    pub timeline: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WalUsed {
    /// First segment replay needs (the backup's start).
    pub first_segment: String,
    /// Last contiguous segment in the repository on the timeline followed.
    pub last_segment: Option<String>,
    pub end_lsn: String,
    /// When the newest of those segments was stored.
    pub newest_stored_at: Option<DateTime<Utc>>,
    pub gap: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Recovered {
    pub end_lsn: String,
    pub timeline: i32,
    pub last_replayed_commit: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Listing the repository, choosing the backup, reading its manifest.
    pub plan_seconds: Option<f64>,
    /// Downloading, decrypting, decompressing and extracting the backup: one
    /// streamed pass, so download and restore are measured together.
    pub restore_seconds: Option<f64>,
    pub downloaded_bytes: Option<u64>,
    pub restored_bytes: Option<u64>,
    /// Server start to target reached: WAL fetched from the repository and replayed.
    pub recovery_seconds: Option<f64>,
    /// Plan + restore + recovery: how long until the database serves again (RTO).
    pub rto_seconds: Option<f64>,
    pub checks_seconds: Option<f64>,
    pub total_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rpo {
    /// Age of the newest WAL in the repository when the drill began: what a
    /// loss of the primary at that moment would have lost (the live RPO).
    pub newest_wal_age_seconds: Option<f64>,
    /// Between the target (or, for `latest`, the newest stored WAL) and the
    /// last commit replayed.
    pub target_gap_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Objectives {
    pub rto_target_seconds: Option<u64>,
    pub rpo_target_seconds: Option<u64>,
    pub rto_met: Option<bool>,
    pub rpo_met: Option<bool>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(m, "# Restore drill {} — {verdict}\n", self.drill_id);
        let _ = writeln!(m, "## Summary\n");
        row(&mut m, "Result", verdict);
        row(&mut m, "Started (UTC)", &ts(Some(self.started_at)));
        row(&mut m, "Finished (UTC)", &ts(self.finished_at));
        row(&mut m, "Host", &self.host);
        row(&mut m, "Operator", &self.operator);
        row(&mut m, "walvault", &self.walvault_version);
        row(&mut m, "Repository", &self.repository);
        if !self.failures.is_empty() {
            let _ = writeln!(m, "\nFailures:\n");
            for f in &self.failures {
                let _ = writeln!(m, "- {f}");
            }
        }

        if let Some(d) = &self.dump {
            let _ = writeln!(m, "\n## Dump used\n");
            row(&mut m, "Dump", &d.id);
            row(&mut m, "Finished (UTC)", &ts(Some(d.finished_at)));
            row(
                &mut m,
                "Dumped from",
                &format!("PostgreSQL {}", d.server_version),
            );
            row(
                &mut m,
                "Restored into",
                &format!("PostgreSQL {}", d.restored_into_major),
            );
            row(&mut m, "Databases", &d.databases.join(", "));
            row(
                &mut m,
                "Size",
                &format!(
                    "{} MiB raw, {} MiB stored",
                    d.raw_bytes >> 20,
                    d.stored_bytes >> 20
                ),
            );
            row(&mut m, "Encrypted", if d.encrypted { "yes" } else { "no" });
        }
        let _ = writeln!(m, "\n## Backup used\n");
        match &self.backup {
            Some(b) => {
                row(&mut m, "Backup", &b.id);
                row(&mut m, "Label", &b.label);
                row(&mut m, "Ended (UTC)", &ts(Some(b.stop_time)));
                row(&mut m, "Timeline", &b.timeline.to_string());
                row(
                    &mut m,
                    "LSN range",
                    &format!("{} .. {}", b.start_lsn, b.stop_lsn),
                );
                row(
                    &mut m,
                    "Size",
                    &format!(
                        "{} MiB raw, {} MiB stored",
                        b.raw_bytes >> 20,
                        b.stored_bytes >> 20
                    ),
                );
                row(&mut m, "Encrypted", if b.encrypted { "yes" } else { "no" });
            }
            None if self.dump.is_some() => m.push_str("None: a logical dump was drilled.\n"),
            None => m.push_str("No backup could be used.\n"),
        }

        let _ = writeln!(m, "\n## WAL range\n");
        match &self.wal {
            Some(w) => {
                row(&mut m, "First segment", &w.first_segment);
                row(&mut m, "Last contiguous segment", opt(&w.last_segment));
                row(&mut m, "Archive ends at LSN", &w.end_lsn);
                row(
                    &mut m,
                    "Newest segment stored (UTC)",
                    &ts(w.newest_stored_at),
                );
                row(&mut m, "Gap", w.gap.as_deref().unwrap_or("none"));
            }
            None => m.push_str("Not determined.\n"),
        }

        let _ = writeln!(m, "\n## Target and result\n");
        row(&mut m, "Target", &self.target.description);
        row(
            &mut m,
            "Timeline followed",
            &self
                .target
                .timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        match &self.recovered {
            Some(r) => {
                row(&mut m, "Recovery ended at LSN", &r.end_lsn);
                row(&mut m, "On timeline", &r.timeline.to_string());
                row(
                    &mut m,
                    "Last replayed commit (UTC)",
                    &ts(r.last_replayed_commit),
                );
            }
            None => m.push_str("Recovery did not complete.\n"),
        }

        let _ = writeln!(m, "\n## Timings (RTO)\n");
        let t = &self.timings;
        let _ = writeln!(m, "| Phase | Seconds |\n|---|---:|");
        for (name, v) in [
            ("Plan (list repository, choose backup)", t.plan_seconds),
            (
                "Download and restore (streamed together)",
                t.restore_seconds,
            ),
            ("Recovery (WAL fetch and replay)", t.recovery_seconds),
            ("**RTO** (until the database serves)", t.rto_seconds),
            ("Checks", t.checks_seconds),
            ("Total", t.total_seconds),
        ] {
            let _ = writeln!(m, "| {name} | {} |", secs(v));
        }
        if let (Some(d), Some(r)) = (t.downloaded_bytes, t.restored_bytes) {
            let _ = writeln!(m, "\nDownloaded {} MiB, restored {} MiB.", d >> 20, r >> 20);
        }

        let _ = writeln!(m, "\n## RPO\n");
        row(
            &mut m,
            "Newest WAL age at drill start",
            &secs(self.rpo.newest_wal_age_seconds),
        );
        row(
            &mut m,
            "Target to last replayed commit",
            &secs(self.rpo.target_gap_seconds),
        );

        let _ = writeln!(m, "\n## Objectives\n");
        let o = &self.objectives;
        let _ = writeln!(
            m,
            "| Objective | Target | Measured | Met |\n|---|---:|---:|---|"
        );
        let _ = writeln!(
            m,
            "| RTO | {} | {} | {} |",
            target(o.rto_target_seconds),
            secs(t.rto_seconds),
            met(o.rto_met)
        );
        let _ = writeln!(
            m,
            "| RPO | {} | {} | {} |",
            target(o.rpo_target_seconds),
            secs(self.rpo.newest_wal_age_seconds),
            met(o.rpo_met)
        );

        let _ = writeln!(m, "\n## Checks\n");
        if self.checks.is_empty() {
            m.push_str("No check ran.\n");
        } else {
            let _ = writeln!(
                m,
                "| Check | Kind | Database | Result | Detail |\n|---|---|---|---|---|"
            );
            for c in &self.checks {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} |",
                    cell(&c.name),
                    c.kind,
                    cell(c.database.as_deref().unwrap_or("(server)")),
                    match c.status {
                        Status::Passed => "passed",
                        Status::Failed => "**FAILED**",
                        Status::Skipped => "skipped",
                    },
                    cell(&c.detail)
                );
            }
        }

        let _ = writeln!(m, "\n## Tables read\n");
        if self.tables.is_empty() {
            m.push_str("No table was read.\n");
        } else {
            let _ = writeln!(m, "| Database | Table | Rows |\n|---|---|---:|");
            for t in &self.tables {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} |",
                    cell(&t.database),
                    cell(&t.table),
                    t.rows
                );
            }
        }
        m
    }
}

fn row(m: &mut String, k: &str, v: &str) {
    let _ = writeln!(m, "- **{k}:** {v}");
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
}

fn target(v: Option<u64>) -> String {
    v.map(|s| format!("{s}"))
        .unwrap_or_else(|| "none set".into())
}

fn met(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "**NO**",
        None => "-",
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// A Markdown table cell: no pipe or newline may break the table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_names_failures_and_keeps_tables_whole() {
        let now: DateTime<Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
        let r = Report {
            format: 1,
            drill_id: "20261122T100000Z".into(),
            result: "failed".into(),
            started_at: now,
            finished_at: Some(now),
            host: "db1".into(),
            operator: "postgres".into(),
            walvault_version: "0.1.0".into(),
            repository: "s3://b/p".into(),
            backup: None,
            dump: None,
            target: TargetUsed {
                description: "latest".into(),
                timeline: None,
            },
            wal: None,
            recovered: None,
            timings: Timings {
                rto_seconds: Some(12.345),
                ..Default::default()
            },
            rpo: Rpo::default(),
            objectives: Objectives {
                rto_target_seconds: Some(10),
                rto_met: Some(false),
                ..Default::default()
            },
            checks: vec![CheckResult {
                name: "no | pipes".into(),
                kind: "user",
                database: Some("shop".into()),
                status: Status::Failed,
                detail: "returned 1 row,\nfirst: (7)".into(),
            }],
            tables: vec![],
            failures: vec!["check 'no | pipes' failed".into()],
        };
        let md = r.to_markdown();
        assert!(md.starts_with("# Restore drill 20261122T100000Z — FAILED"));
        assert!(
            md.contains("| no \\| pipes | user | shop | **FAILED** | returned 1 row, first: (7) |")
        );
        assert!(md.contains("| RTO | 10 | 12.3 | **NO** |"));
        assert!(md.contains("- check 'no | pipes' failed"));
    }
}
