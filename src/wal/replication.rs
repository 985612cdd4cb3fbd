//! A client of PostgreSQL's physical replication protocol: the walsender a
//! standby or pg_receivewal talks to.
//!
//! Our own, small: the crates that speak the replication protocol with tokio
//! decode logical replication (pgoutput) only, and tokio-postgres has no
//! CopyBoth mode. `postgres-protocol` (already under tokio-postgres) encodes the
//! frontend messages and does SCRAM-SHA-256; the backend messages this needs
//! are few and framed here. The connection settings are `pg::conn::resolve`'s
//! (conninfo, PG* variables, libpq's defaults); like every walvault connection
//! it is made without TLS. Several hosts are tried in turn, as libpq does,
//! and `target_session_attrs=read-write` passes over standbys: after a
//! failover, the receiver's next connection finds the new primary.
//!
//! The session: [`Replication::connect`] (startup with `replication=true`,
//! authentication), then commands in the simple query protocol
//! ([`Replication::identify_system`], [`Replication::timeline_history`],
//! [`Replication::create_slot`]), then [`Replication::start`], after which
//! [`Replication::next`] yields the WAL as the server sends it and
//! [`Replication::report`] tells the server how far it is written and flushed.

use super::names::Lsn;
use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{Host, TargetSessionAttrs};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the server said when it refused: its message and SQLSTATE, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{message} (SQLSTATE {code})")]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

/// IDENTIFY_SYSTEM's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct System {
    pub system_id: u64,
    pub timeline: u32,
    /// The server's current flush position (a standby's: its replay position).
    pub position: Lsn,
}

/// What the server sends while streaming.
#[derive(Debug)]
pub enum Event {
    /// WAL bytes starting at `start`; `server_end` is the end of WAL on the server.
    Data {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    /// The server's end of WAL; `reply` asks for a status report at once.
    Keepalive { server_end: Lsn, reply: bool },
    /// The timeline streamed has ended (the server was promoted past it):
    /// its successor and where that begins, or nothing when the server did not say.
    TimelineEnd { next: Option<(u32, Lsn)> },
}

pub struct Replication {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// Where this session connected, for messages.
    location: String,
    /// The server's major version (its `server_version` at startup).
    major: Option<u32>,
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Replication {
    /// Opens a physical replication session with the settings `resolve`d from
    /// conninfo; each host in turn, the first that answers.
    pub async fn connect(cfg: &tokio_postgres::Config) -> Result<Replication> {
        let port = |i: usize| {
            let ports = cfg.get_ports();
            ports.get(i).or(ports.last()).copied().unwrap_or(5432)
        };
        let timeout = cfg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let mut last = None;
        for (i, host) in cfg.get_hosts().iter().enumerate() {
            let (io, location): (Box<dyn Io>, String) = match host {
                Host::Tcp(h) => {
                    let location = format!("{h}:{}", port(i));
                    match tokio::time::timeout(
                        timeout,
                        tokio::net::TcpStream::connect((h.as_str(), port(i))),
                    )
                    .await
                    {
                        Ok(Ok(s)) => {
                            s.set_nodelay(true)?;
                            (Box::new(s), location)
                        }
                        Ok(Err(e)) => {
                            last = Some(anyhow::Error::new(e).context(location));
                            continue;
                        }
                        Err(_) => {
                            last =
                                Some(anyhow::anyhow!("{location}: no answer within {timeout:?}"));
                            continue;
                        }
                    }
                }
                Host::Unix(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{}", port(i)));
                    let location = path.display().to_string();
                    match tokio::net::UnixStream::connect(&path).await {
                        Ok(s) => (Box::new(s), location),
                        Err(e) => {
                            last = Some(anyhow::Error::new(e).context(location));
                            continue;
                        }
                    }
                }
            };
            let mut r = Replication {
                io,
                buf: BytesMut::with_capacity(1 << 20),
                location,
                major: None,
            };
            let at = r.location.clone();
            // As libpq: a host that refuses, or is not the kind asked for,
            // passes the turn to the next one.
            if let Err(e) = r.startup(cfg).await {
                last = Some(e.context(format!("replication connection to {at} refused")));
                continue;
            }
            match r.session_kind(cfg.get_target_session_attrs()).await {
                Ok(None) => return Ok(r),
                Ok(Some(not)) => {
                    tracing::info!("replication: passing over {at}: {not}");
                    last = Some(anyhow::anyhow!("{at}: {not}"));
                }
                Err(e) => last = Some(e.context(at)),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no host to connect to")))
            .context("cannot open a replication connection to PostgreSQL (set PGHOST/PGPORT/PGUSER or postgres.conninfo)")
    }

    /// Why this server is not the kind `target_session_attrs` asks for
    /// (read-write: a primary; read-only: a standby), or None when it is.
    /// The walsender answers SHOW, as a backend does.
    async fn session_kind(&mut self, want: TargetSessionAttrs) -> Result<Option<&'static str>> {
        let read_only = match want {
            TargetSessionAttrs::ReadWrite => false,
            TargetSessionAttrs::ReadOnly => true,
            _ => return Ok(None),
        };
        let rows = self.query("SHOW transaction_read_only").await?;
        let on = rows
            .first()
            .and_then(|r| r.first())
            .and_then(|c| c.as_ref())
            .is_some_and(|v| &v[..] == b"on");
        Ok(match (read_only, on) {
            (false, true) => Some("read-only (a standby), and target_session_attrs is read-write"),
            (true, false) => Some("read-write (a primary), and target_session_attrs is read-only"),
            _ => None,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The server's major version, as it announced it.
    pub fn major(&self) -> Option<u32> {
        self.major
    }

    /// Whether a whole message already waits in the buffer: more WAL is
    /// at hand without waiting on the network.
    pub fn pending(&self) -> bool {
        self.buf.len() >= 5
            && self.buf.len() > u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize
    }

    /// The server's WAL segment size (SHOW wal_segment_size).
    pub async fn segment_size(&mut self) -> Result<u64> {
        let rows = self.query("SHOW wal_segment_size").await?;
        let v = rows
            .first()
            .and_then(|r| r.first())
            .and_then(|c| c.as_ref())
            .context("SHOW wal_segment_size returned nothing")?;
        parse_size(&String::from_utf8_lossy(v))
    }

    async fn startup(&mut self, cfg: &tokio_postgres::Config) -> Result<()> {
        let user = cfg.get_user().context("no user name to connect as")?;
        let app = cfg.get_application_name().unwrap_or("walvault");
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("replication", "true"),
                ("application_name", app),
            ],
            &mut out,
        )?;
        self.send(&out).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.read().await?;
            match tag {
                b'R' => {
                    let code = body.get_i32();
                    let mut out = BytesMut::new();
                    let password = || {
                        cfg.get_password().context(
                            "the server asks for a password: set PGPASSWORD or password= in postgres.conninfo",
                        )
                    };
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password()?, &mut out)?,
                        5 => {
                            let salt = [body[0], body[1], body[2], body[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password()?,
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)?;
                        }
                        10 => {
                            let offered = body
                                .split(|&b| b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offered {
                                bail!("the server offers no SASL mechanism walvault speaks (SCRAM-SHA-256 without TLS)");
                            }
                            let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().context("SASL continue before SASL start")?;
                            s.update(&body)?;
                            frontend::sasl_response(s.message(), &mut out)?;
                        }
                        12 => {
                            let s = scram.as_mut().context("SASL final before SASL start")?;
                            s.finish(&body)
                                .context("the server's SCRAM proof is wrong")?;
                            continue;
                        }
                        other => bail!("authentication method {other} is not supported (use scram-sha-256, md5, password or trust)"),
                    }
                    self.send(&out).await?;
                }
                b'E' => return Err(server_error(&body).into()),
                b'Z' => return Ok(()),
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    if parts.next() == Some(b"server_version") {
                        let v = String::from_utf8_lossy(parts.next().unwrap_or_default());
                        self.major = v
                            .split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|m| m.parse().ok());
                    }
                }
                // BackendKeyData, notices.
                _ => {}
            }
        }
    }

    /// Runs one replication command; its rows, each column as bytes (NULL: None).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<Bytes>>>> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send(&out).await?;
        self.rows(sql).await
    }

    /// The rows up to ReadyForQuery; an error the server reports is returned
    /// once the server is ready again, so the session stays usable.
    async fn rows(&mut self, what: &str) -> Result<Vec<Vec<Option<Bytes>>>> {
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'D' => rows.push(data_row(body)?),
                b'E' => failed = Some(server_error(&body)),
                b'Z' => break,
                b'W' => bail!("{what}: the server began streaming unasked"),
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(anyhow::Error::new(e).context(what.to_string())),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<System> {
        let rows = self.query("IDENTIFY_SYSTEM").await?;
        let row = rows.first().context("IDENTIFY_SYSTEM returned no row")?;
        let col = |i: usize| -> Result<String> {
            let v = row
                .get(i)
                .and_then(|c| c.as_ref())
                .context("IDENTIFY_SYSTEM: a column is missing")?;
            Ok(String::from_utf8_lossy(v).into_owned())
        };
        Ok(System {
            system_id: col(0)?
                .parse()
                .context("IDENTIFY_SYSTEM: the system identifier is not a number")?,
            timeline: col(1)?
                .parse()
                .context("IDENTIFY_SYSTEM: the timeline is not a number")?,
            position: Lsn::parse(&col(2)?)?,
        })
    }

    /// The history file of timeline `tli`: its name and content.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<(String, Bytes)> {
        let rows = self.query(&format!("TIMELINE_HISTORY {tli}")).await?;
        match rows.into_iter().next().as_deref() {
            Some([Some(name), Some(content)]) => {
                Ok((String::from_utf8_lossy(name).into_owned(), content.clone()))
            }
            _ => bail!("TIMELINE_HISTORY {tli}: not the two columns the protocol defines"),
        }
    }

    /// Creates a physical slot that holds WAL from now on (RESERVE_WAL). The
    /// answer's position is a logical slot's (0/0 for a physical one): where
    /// to start is the repository's end or IDENTIFY_SYSTEM's position.
    pub async fn create_slot(&mut self, name: &str) -> Result<()> {
        check_slot_name(name)?;
        self.query(&format!(
            "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
        ))
        .await?;
        Ok(())
    }

    /// Starts streaming timeline `tli` from `from` (which the server rounds
    /// down to nothing: it sends from exactly there), through `slot` when given.
    /// Then [`Replication::next`].
    pub async fn start(&mut self, slot: Option<&str>, from: Lsn, tli: u32) -> Result<()> {
        let slot = match slot {
            Some(s) => {
                check_slot_name(s)?;
                format!("SLOT {s} ")
            }
            None => String::new(),
        };
        let sql = format!("START_REPLICATION {slot}PHYSICAL {from} TIMELINE {tli}");
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out)?;
        self.send(&out).await?;
        loop {
            let (tag, body) = self.read().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = server_error(&body);
                    // Consumed to ReadyForQuery: the session can be used again.
                    let _ = self.rows(&sql).await;
                    return Err(anyhow::Error::new(e).context(sql));
                }
                // At exactly the end of an old timeline the server answers
                // with its successor at once, without streaming.
                b'T' | b'D' | b'C' | b'Z' => bail!(
                    "{sql}: timeline {tli} ends at {from} on this server; nothing to stream on it"
                ),
                _ => {}
            }
        }
    }

    /// The next thing the server sends while streaming.
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            let (tag, mut body) = self.read().await?;
            match tag {
                b'd' if body.first() == Some(&b'w') && body.len() >= 25 => {
                    body.advance(1);
                    let start = Lsn(body.get_u64());
                    let server_end = Lsn(body.get_u64());
                    body.advance(8); // the server's send time
                    return Ok(Event::Data {
                        start,
                        server_end,
                        data: body,
                    });
                }
                b'd' if body.first() == Some(&b'k') && body.len() >= 18 => {
                    body.advance(1);
                    let server_end = Lsn(body.get_u64());
                    body.advance(8);
                    return Ok(Event::Keepalive {
                        server_end,
                        reply: body.get_u8() != 0,
                    });
                }
                b'd' => bail!("the server sent a replication message walvault does not know"),
                b'c' => {
                    // The server ends the timeline: end ours, then it names the next.
                    let mut out = BytesMut::new();
                    frontend::copy_done(&mut out);
                    self.send(&out).await?;
                    let rows = self.rows("the end of a timeline").await?;
                    let next = rows.first().and_then(|r| match r.as_slice() {
                        [Some(t), Some(l), ..] => {
                            let tli = String::from_utf8_lossy(t).parse().ok()?;
                            let lsn = Lsn::parse(&String::from_utf8_lossy(l)).ok()?;
                            Some((tli, lsn))
                        }
                        _ => None,
                    });
                    return Ok(Event::TimelineEnd { next });
                }
                b'E' => return Err(server_error(&body).into()),
                _ => {}
            }
        }
    }

    /// Tells the server how far WAL is written and flushed (what
    /// `synchronous_standby_names` waits on) and applied (the same here: we
    /// replay nothing). `reply` asks for a keepalive back.
    pub async fn report(&mut self, written: Lsn, flushed: Lsn, reply: bool) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - PG_EPOCH_MICROS;
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(flushed.0);
        msg.put_i64(now);
        msg.put_u8(reply as u8);
        let mut out = BytesMut::new();
        frontend::CopyData::new(&msg[..])?.write(&mut out);
        self.send(&out).await
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io
            .write_all(bytes)
            .await
            .and(self.io.flush().await)
            .with_context(|| format!("lost the replication connection to {}", self.location))
    }

    /// One backend message: its tag and body.
    async fn read(&mut self) -> Result<(u8, Bytes)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if len < 4 {
                    bail!("the server sent a message of length {len}");
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let mut msg = self.buf.split_to(len + 1);
                    msg.advance(5);
                    return Ok((tag, msg.freeze()));
                }
                self.buf.reserve(len + 1 - self.buf.len());
            } else {
                self.buf.reserve(64 * 1024);
            }
            let n =
                self.io.read_buf(&mut self.buf).await.with_context(|| {
                    format!("lost the replication connection to {}", self.location)
                })?;
            if n == 0 {
                bail!(
                    "the server at {} closed the replication connection",
                    self.location
                );
            }
        }
    }
}

/// Slot names are what PostgreSQL accepts (lower-case letters, digits,
/// underscores, at most 63), so one can stand in a command unquoted.
pub fn check_slot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        bail!("'{name}' is not a replication slot name: use lower-case letters, digits and underscores, at most 63");
    }
    Ok(())
}

/// `16MB`, `1GB`: PostgreSQL's memory units as SHOW prints them.
fn parse_size(v: &str) -> Result<u64> {
    let digits = v.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &v.trim()[digits.len()..];
    let n: u64 = digits
        .parse()
        .with_context(|| format!("'{v}' is not a size"))?;
    let mul = match unit {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => bail!("'{v}': unknown unit {unit}"),
    };
    Ok(n * mul)
}

fn data_row(mut body: Bytes) -> Result<Vec<Option<Bytes>>> {
    if body.len() < 2 {
        bail!("a data row without its column count");
    }
    let n = body.get_i16();
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            bail!("a data row cut short");
        }
        let len = body.get_i32();
        if len < 0 {
            cols.push(None);
        } else if body.len() < len as usize {
            bail!("a data row cut short");
        } else {
            cols.push(Some(body.split_to(len as usize)));
        }
    }
    Ok(cols)
}

/// An ErrorResponse's message and SQLSTATE.
fn server_error(body: &[u8]) -> ServerError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    ServerError { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_errors_decode_as_the_protocol_frames_them() {
        let mut row = BytesMut::new();
        row.put_i16(3);
        row.put_i32(2);
        row.put_slice(b"42");
        row.put_i32(-1);
        row.put_i32(0);
        let cols = data_row(row.freeze()).unwrap();
        assert_eq!(
            cols,
            vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::new())]
        );
        let mut short = BytesMut::new();
        short.put_i16(1);
        short.put_i32(10);
        short.put_slice(b"abc");
        assert!(data_row(short.freeze()).is_err());

        let e = server_error(b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0");
        assert_eq!(
            e.to_string(),
            "replication slot \"x\" does not exist (SQLSTATE 42704)"
        );
    }

    #[test]
    fn sizes_as_show_prints_them() {
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert!(parse_size("16 parsecs").is_err());
    }

    #[test]
    fn slot_names_are_checked_before_they_reach_a_command() {
        check_slot_name("walvault_1").unwrap();
        for bad in ["", "Walvault", "a b", "x;DROP", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }
}
