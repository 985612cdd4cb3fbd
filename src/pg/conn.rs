//! Connecting to the local PostgreSQL server the way libpq does: `postgres.conninfo`
//! (key=value or URL) first, then PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,
//! then libpq's defaults (Unix socket, OS user name). backup-push reads the data
//! directory itself, so the server is on this host and TLS is not used.

use anyhow::{bail, Context, Result};
use std::path::Path;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{Client, NoTls};

pub async fn connect(conninfo: Option<&str>) -> Result<Client> {
    connect_config(resolve(conninfo)?).await
}

/// Connects with resolved settings (see [`resolve`]).
pub async fn connect_config(cfg: tokio_postgres::Config) -> Result<Client> {
    let where_ = describe(&cfg);
    let (client, connection) = cfg
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {where_} (set PGHOST/PGPORT/PGUSER or postgres.conninfo)"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// The connection settings libpq would use: the string's, then the
/// environment's, then libpq's defaults.
pub fn resolve(conninfo: Option<&str>) -> Result<tokio_postgres::Config> {
    let mut cfg: tokio_postgres::Config = match conninfo {
        Some(s) => s
            .parse()
            .context("config key postgres.conninfo is not a valid connection string")?,
        None => tokio_postgres::Config::new(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cfg.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) => {
                for host in h.split(',') {
                    cfg.host(host);
                }
            }
            None => {
                let sock = ["/var/run/postgresql", "/tmp"]
                    .into_iter()
                    .find(|d| Path::new(d).is_dir())
                    .unwrap_or("/tmp");
                cfg.host(sock);
            }
        }
    }
    if cfg.get_target_session_attrs() == TargetSessionAttrs::Any {
        match env("PGTARGETSESSIONATTRS").as_deref() {
            Some("read-write") => {
                cfg.target_session_attrs(TargetSessionAttrs::ReadWrite);
            }
            Some("read-only") => {
                cfg.target_session_attrs(TargetSessionAttrs::ReadOnly);
            }
            Some("any") | None => {}
            Some(other) => bail!(
                "PGTARGETSESSIONATTRS is {other:?}: walvault knows any, read-write and read-only"
            ),
        }
    }
    if cfg.get_ports().is_empty() {
        if let Some(p) = env("PGPORT") {
            cfg.port(p.parse().context("PGPORT is not a port number")?);
        }
    }
    if cfg.get_user().is_none() {
        cfg.user(env("PGUSER").unwrap_or_else(os_user));
    }
    if cfg.get_password().is_none() {
        if let Some(p) = env("PGPASSWORD") {
            cfg.password(p);
        }
    }
    if cfg.get_dbname().is_none() {
        let db =
            env("PGDATABASE").unwrap_or_else(|| cfg.get_user().unwrap_or("postgres").to_string());
        cfg.dbname(db);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("walvault");
    }
    Ok(cfg)
}

/// A resolved configuration as a libpq key=value string for a client program
/// (psql, pg_dump), without the password: that goes in the returned value, for
/// the program's PGPASSWORD, so it never shows on a command line.
pub fn to_libpq(cfg: &tokio_postgres::Config) -> (String, Option<String>) {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", q(&hosts.join(","))));
    }
    let ports: Vec<String> = cfg.get_ports().iter().map(|p| p.to_string()).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", q(&ports.join(","))));
    }
    if let Some(u) = cfg.get_user() {
        parts.push(format!("user={}", q(u)));
    }
    if let Some(d) = cfg.get_dbname() {
        parts.push(format!("dbname={}", q(d)));
    }
    if let Some(o) = cfg.get_options() {
        parts.push(format!("options={}", q(o)));
    }
    if let Some(a) = cfg.get_application_name() {
        parts.push(format!("application_name={}", q(a)));
    }
    let ssl = match cfg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    };
    parts.push(format!("sslmode={ssl}"));
    if let Some(t) = cfg.get_connect_timeout() {
        parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
    }
    let password = cfg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    (parts.join(" "), password)
}

/// Host, port and user for messages (never the password).
pub fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host} port {port} as {}", cfg.get_user().unwrap_or("?"))
}

/// The name of the effective OS user, libpq's default user name.
pub fn os_user() -> String {
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "postgres".into())
}

/// A value in single quotes for a libpq-style connection string.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "\\'")
}
