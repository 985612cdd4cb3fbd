//! Timeline history files (`TTTTTTTT.history`): one line per ancestor timeline,
//! `<parent tli>\t<switch LSN>\t<reason>`, with `#` comments and blank lines allowed.

use super::names::Lsn;
use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent_tli: u32,
    /// Where the child timeline branched off the parent.
    pub switch_lsn: Lsn,
    pub reason: String,
}

pub fn parse(text: &str) -> Result<Vec<HistoryEntry>> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, |c: char| c.is_ascii_whitespace());
        let tli = fields.next().unwrap_or_default();
        let parent_tli: u32 = tli
            .parse()
            .with_context(|| format!("history line {}: '{tli}' is not a timeline number", i + 1))?;
        let lsn = fields.next().unwrap_or_default().trim();
        let switch_lsn = Lsn::parse(lsn).with_context(|| format!("history line {}", i + 1))?;
        if let Some(prev) = out.last() {
            if parent_tli <= prev.parent_tli || switch_lsn < prev.switch_lsn {
                bail!("history line {}: timelines must increase", i + 1);
            }
        }
        out.push(HistoryEntry {
            parent_tli,
            switch_lsn,
            reason: fields.next().unwrap_or_default().trim().to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_history() {
        let text =
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        let h = parse(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].parent_tli, 1);
        assert_eq!(h[0].switch_lsn, Lsn(0x3000158));
        assert_eq!(h[1].reason, "at restore point \"x\"");
        assert!(parse("# comment only\n").unwrap().is_empty());
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse("one\t0/1\tx\n").is_err());
        assert!(parse("1\tzz\tx\n").is_err());
        assert!(parse("2\t0/5\tx\n1\t0/6\ty\n").is_err());
        assert!(parse("\u{0}\u{1}binary").is_err());
    }
}
