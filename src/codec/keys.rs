//! age X25519 identity files: written by `walvault keygen`, read to decrypt.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates a new identity file (mode 0600; refuses to replace an existing file)
/// and returns its public recipient. The secret never leaves the file.
pub fn generate_identity_file(path: &Path) -> Result<String> {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists; refusing to overwrite an identity (data encrypted to it would become unreadable)",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
        })?;
    writeln!(
        f,
        "# created by walvault: {}\n# public key: {recipient}\n{}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    )?;
    f.sync_all()?;
    Ok(recipient)
}

/// Reads every `AGE-SECRET-KEY-` line of an identity file.
pub fn read_identity_file(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "identity file {} is readable by other users; chmod 600 it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Never echo the line: it may hold a secret.
        match line.parse::<age::x25519::Identity>() {
            Ok(id) => out.push(id),
            Err(_) => bail!(
                "identity file {} line {}: not an age X25519 identity (AGE-SECRET-KEY-...)",
                path.display(),
                i + 1
            ),
        }
    }
    if out.is_empty() {
        bail!("identity file {} holds no identity", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_read() {
        let (dir, p) = crate::testing::temp_path("id");
        let r = generate_identity_file(&p).unwrap();
        assert!(r.starts_with("age1"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ids = read_identity_file(&p).unwrap();
        assert_eq!(ids[0].to_public().to_string(), r);
        let e = generate_identity_file(&p).unwrap_err();
        assert!(format!("{e:#}").contains("refusing to overwrite"));
        std::fs::write(dir.path().join("bad"), "AGE-SECRET-KEY-NOPE\n").unwrap();
        let Err(e) = read_identity_file(&dir.path().join("bad")) else {
            panic!("accepted a bad identity")
        };
        let msg = format!("{e:#}");
        assert!(msg.contains("line 1") && !msg.contains("NOPE"), "{msg}");
    }
}
