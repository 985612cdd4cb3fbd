//! The streaming pipeline between plaintext and stored objects:
//! plaintext → sha256 → zstd → age (when recipients are configured) → object envelope,
//! and its inverse with every checksum verified. Nothing else in walvault knows
//! about compression or keys.

pub mod envelope;
pub mod keys;

use crate::store::{Body, Class, Mode, Store};
use anyhow::{Context, Result};
use bytes::Bytes;
use envelope::{HashingWriter, Trailer, TrailerSplitReader, FLAG_ENCRYPTED, FLAG_ZSTD, HEADER_LEN};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Why a download could not produce verified plaintext. Callers branch on it:
/// a key problem does not get better by retrying, a transport or integrity
/// problem may.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the object is encrypted but no identity file is configured (set encryption.identity_file / WALVAULT_ENCRYPTION_IDENTITY_FILE)")]
    MissingKey,
    #[error("{0}")]
    Key(String),
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("transfer failed: {0:#}")]
    Transport(anyhow::Error),
}

impl DecodeError {
    pub fn is_key_problem(&self) -> bool {
        matches!(self, DecodeError::MissingKey | DecodeError::Key(_))
    }
}

/// The most a text object (label, tablespace map, timeline history) may decode to.
pub const TEXT_LIMIT: u64 = 16 << 20;

#[derive(Clone)]
pub struct Codec {
    inner: Arc<Inner>,
    /// zstd worker threads per object (0: compress on the calling thread).
    workers: u32,
    /// zstd's shortest match, when set below the level's own.
    min_match: Option<u32>,
}

struct Inner {
    level: i32,
    recipients: Vec<age::x25519::Recipient>,
    identity_file: Option<PathBuf>,
    identities: OnceLock<Result<Vec<age::x25519::Identity>, String>>,
}

impl Codec {
    pub fn new(
        level: i32,
        recipients: Vec<age::x25519::Recipient>,
        identity_file: Option<PathBuf>,
    ) -> Codec {
        Codec {
            inner: Arc::new(Inner {
                level,
                recipients,
                identity_file,
                identities: OnceLock::new(),
            }),
            workers: 0,
            min_match: None,
        }
    }

    /// This codec using `workers` threads for each object (compressing with them;
    /// decoding with sha256 on a second one): for a lone object, where the other
    /// cores would idle; not for many at once.
    pub fn with_workers(&self, workers: u32) -> Codec {
        Codec {
            inner: self.inner.clone(),
            workers: if workers > 1 { workers } else { 0 },
            min_match: self.min_match,
        }
    }

    /// This codec for objects of scattered 8 KiB pages (an incremental
    /// backup's changed blocks): at levels 1 and 2, whose shortest match is 6
    /// bytes, it matches 5. Pages of different tuples share runs of 5 bytes
    /// (tuple headers, equal columns): measured on pgbench's changed pages,
    /// 23% fewer bytes at the same speed. Whole relation files gain nothing
    /// and compress 35% slower so, hence not for full backups.
    pub fn for_scattered_pages(&self) -> Codec {
        Codec {
            inner: self.inner.clone(),
            workers: self.workers,
            min_match: (1..=2).contains(&self.inner.level).then_some(5),
        }
    }

    /// `with_workers` sized to this machine's cores, at most `most`: a 1-core
    /// machine gets no worker threads, which would only take turns with the caller.
    pub fn for_lone_object(&self, most: usize) -> Codec {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.with_workers(cores.min(most) as u32)
    }

    pub fn from_config(cfg: &crate::config::Config) -> Result<Codec> {
        let recipients = cfg
            .encryption
            .recipients
            .iter()
            .map(|r| {
                r.parse::<age::x25519::Recipient>()
                    .map_err(|e| anyhow::anyhow!("encryption.recipients: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Codec::new(
            cfg.compression.level as i32,
            recipients,
            cfg.encryption.identity_file.clone(),
        ))
    }

    pub fn encrypts(&self) -> bool {
        !self.inner.recipients.is_empty()
    }

    /// Fails, with the reason, when encrypted objects could not be decrypted.
    pub fn check_key(&self) -> Result<(), DecodeError> {
        self.identities().map(|_| ())
    }

    /// The identities, read once from the identity file.
    fn identities(&self) -> Result<&[age::x25519::Identity], DecodeError> {
        let path = self
            .inner
            .identity_file
            .as_ref()
            .ok_or(DecodeError::MissingKey)?;
        self.inner
            .identities
            .get_or_init(|| keys::read_identity_file(path).map_err(|e| format!("{e:#}")))
            .as_deref()
            .map_err(|e| DecodeError::Key(e.clone()))
    }

    fn tune<W: Write>(&self, z: &mut zstd::Encoder<'static, W>) -> io::Result<()> {
        z.multithread(self.workers)?;
        if let Some(m) = self.min_match {
            z.set_parameter(zstd::stream::raw::CParameter::MinMatch(m))?;
        }
        Ok(())
    }

    /// A writer that encodes what is written into `sink` (header written now,
    /// trailer at `finish`).
    pub fn encoder<W: Write>(&self, sink: W) -> io::Result<EncodingWriter<W>> {
        let flags = FLAG_ZSTD | if self.encrypts() { FLAG_ENCRYPTED } else { 0 };
        let mut stored = HashingWriter::new(sink);
        stored.write_all(&envelope::header(flags))?;
        let z = if self.encrypts() {
            let enc = age::Encryptor::with_recipients(
                self.inner
                    .recipients
                    .iter()
                    .map(|r| r as &dyn age::Recipient),
            )
            .map_err(io::Error::other)?;
            let mut z = zstd::Encoder::new(enc.wrap_output(stored)?, self.inner.level)?;
            self.tune(&mut z)?;
            Compressed::Aged(z)
        } else {
            let mut z = zstd::Encoder::new(stored, self.inner.level)?;
            self.tune(&mut z)?;
            Compressed::Plain(z)
        };
        Ok(EncodingWriter {
            z,
            plain: Sha256::new(),
            plain_len: 0,
        })
    }

    /// Encodes `src` into `sink` as one object; returns its trailer.
    pub fn encode(&self, src: &mut dyn Read, sink: &mut dyn Write) -> io::Result<Trailer> {
        let mut e = self.encoder(sink)?;
        copy_large(src, &mut e)?;
        Ok(e.finish()?.0)
    }

    /// Encodes `src` as one object in memory (a WAL segment: a few MiB).
    pub fn encode_to_vec(&self, src: &mut dyn Read) -> io::Result<(Trailer, Vec<u8>)> {
        let mut out = Vec::with_capacity(4 << 20);
        let trailer = self.encode(src, &mut out)?;
        Ok((trailer, out))
    }

    /// Decodes one object from `src` into `dest`, verifying the stored checksum,
    /// the age authentication (when encrypted) and the plaintext checksum and length.
    /// `dest` may have received data even on error: write it somewhere temporary.
    pub fn decode(
        &self,
        src: &mut dyn Read,
        dest: &mut (dyn Write + Send),
    ) -> Result<Trailer, DecodeError> {
        let (mut env, flags) = Envelope::open(src)?;
        let hashed = if self.workers > 1 {
            self.decode_beside(&mut env, flags, dest)
        } else {
            let mut out = HashingWriter::new(dest);
            let r = self.decode_body(&mut env, flags, &mut |chunk: Vec<u8>, n| {
                out.write_all(&chunk[..n])?;
                Ok(chunk)
            });
            let (_, sha, len) = out.finish();
            r.map(|()| (sha, len))
        };
        let (plain_sha, plain_len) = match hashed {
            Ok(h) => h,
            // A damaged recipient stanza reads as another key's: the stored
            // bytes' sha256 tells damage (Integrity) from a wrong key.
            Err(DecodeError::Key(why)) => {
                return Err(match env.finish() {
                    Err(damaged @ DecodeError::Integrity(_)) => damaged,
                    _ => DecodeError::Key(why),
                })
            }
            Err(e) => return Err(e),
        };
        let (trailer, _) = env.finish()?;
        if trailer.plain_len != plain_len || trailer.plain_sha256 != plain_sha {
            return Err(DecodeError::Integrity(
                "restored content does not match its recorded sha256".into(),
            ));
        }
        Ok(trailer)
    }

    /// A lone restore, where the second core would otherwise idle: sha256 and
    /// the writes to `dest` on a thread of their own, beside decryption and
    /// decompression. Whole chunks change hands (no copy) and come back for
    /// reuse; at most four exist (two queued, one being written, one filled).
    fn decode_beside(
        &self,
        env: &mut Envelope<'_>,
        flags: u8,
        dest: &mut (dyn Write + Send),
    ) -> Result<([u8; 32], u64), DecodeError> {
        let (to_writer, chunks) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(2);
        let (give_back, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> io::Result<([u8; 32], u64)> {
                let (mut h, mut count) = (Sha256::new(), 0u64);
                for (chunk, n) in chunks {
                    h.update(&chunk[..n]);
                    dest.write_all(&chunk[..n])?;
                    count += n as u64;
                    let _ = give_back.try_send(chunk);
                }
                dest.flush()?;
                Ok((h.finalize().into(), count))
            });
            let decoded = self.decode_body(env, flags, &mut |chunk: Vec<u8>, n| {
                to_writer
                    .send((chunk, n))
                    .map_err(|_| io::Error::other("the writing thread ended"))?;
                Ok(spare.try_recv().unwrap_or_else(|_| vec![0u8; PLAIN_CHUNK]))
            });
            drop(to_writer);
            let written = writer.join().expect("the writing thread does not panic");
            // The writer's own failure (a size limit, a full disk) is the cause
            // of the decoder's "ended"; it is the one reported.
            match (decoded, written) {
                (Err(e @ DecodeError::Key(_)), _) => Err(e),
                (_, Err(w)) => Err(env.failed.classify(w)),
                (Err(e), Ok(_)) => Err(e),
                (Ok(()), Ok(h)) => Ok(h),
            }
        })
    }

    /// Decrypts (when encrypted) and decompresses the body, chunk by chunk,
    /// into `out` (see `unzstd`).
    fn decode_body(
        &self,
        env: &mut Envelope<'_>,
        flags: u8,
        out: &mut dyn FnMut(Vec<u8>, usize) -> io::Result<Vec<u8>>,
    ) -> Result<(), DecodeError> {
        let classify = |e| env.failed.classify(e);
        if flags & FLAG_ENCRYPTED != 0 {
            let ids = self.identities()?;
            let dec = age::Decryptor::new_buffered(BufReader::new(&mut env.split))
                .map_err(|e| age_error(e, &classify))?;
            let mut plain = dec
                .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
                .map_err(|e| age_error(e, &classify))?;
            unzstd(
                &mut BufReader::with_capacity(PLAIN_CHUNK / 8, &mut plain),
                out,
            )
            .map_err(classify)?;
        } else {
            unzstd(
                &mut BufReader::with_capacity(PLAIN_CHUNK / 8, &mut env.split),
                out,
            )
            .map_err(classify)?;
        }
        Ok(())
    }

    /// Encodes `src` and stores it under `key`.
    pub async fn upload<R: Read + Send + 'static>(
        &self,
        store: &dyn Store,
        key: &str,
        src: R,
    ) -> Result<Uploaded> {
        self.upload_class(store, key, src, Class::Standard, Mode::Create)
            .await
    }

    /// `upload` into a lifecycle class other than the daily one, or replacing.
    pub async fn upload_class<R: Read + Send + 'static>(
        &self,
        store: &dyn Store,
        key: &str,
        src: R,
        class: Class,
        mode: Mode,
    ) -> Result<Uploaded> {
        let mut src = src;
        Ok(self
            .upload_from(store, key, class, mode, move |w| {
                copy_large(&mut src, w).map(|_| ())
            })
            .await?
            .0)
    }

    /// Stores under `key` what `produce` writes (plaintext), encoded. `produce`
    /// runs on a blocking thread. The store sees an error, never a clean end,
    /// when producing or encoding fails, so a partial object is never stored.
    pub async fn upload_from<T, F>(
        &self,
        store: &dyn Store,
        key: &str,
        class: Class,
        mode: Mode,
        produce: F,
    ) -> Result<(Uploaded, T)>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Write) -> io::Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let codec = self.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
                sent: 0,
            };
            let r = (|| -> io::Result<(Trailer, T)> {
                let mut e = codec.encoder(&mut w)?;
                let t = produce(&mut e)?;
                let (trailer, _) = e.finish()?;
                Ok((trailer, t))
            })();
            match r {
                Ok((trailer, t)) => Ok((
                    Uploaded {
                        trailer,
                        stored_len: w.sent,
                        version: None,
                    },
                    t,
                )),
                Err(e) => {
                    let _ =
                        w.tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
                    Err(e)
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body: Body = Box::new(tokio_util::io::StreamReader::new(Box::pin(stream)));
        let stored = store.write(key, body, class, mode).await;
        let encoded = encoder.await.context("encoder task failed")?;
        match (encoded, stored) {
            (Err(e), _) => Err(e).with_context(|| format!("encoding {}", store.locate(key))),
            (Ok(_), Err(e)) => Err(e),
            (Ok((up, t)), Ok(stored)) => Ok((
                Uploaded {
                    version: stored.version,
                    ..up
                },
                t,
            )),
        }
    }

    /// Fetches `key` and decodes it into `dest`; `Ok(None)` when the store says the
    /// object does not exist. Returns `dest` back so the caller can make it durable.
    pub async fn download<W: Write + Send + 'static>(
        &self,
        store: &dyn Store,
        key: &str,
        dest: W,
    ) -> Result<Option<(Trailer, W)>, DecodeError> {
        let body = match store.get(key).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(DecodeError::Transport(e)),
        };
        let codec = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut src = tokio_util::io::SyncIoBridge::new(body);
            let mut dest = dest;
            let t = codec.decode(&mut src, &mut dest)?;
            Ok(Some((t, dest)))
        })
        .await
        .map_err(|e| DecodeError::Transport(anyhow::Error::new(e)))?
    }
}

/// What an upload stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub trailer: Trailer,
    /// Bytes stored (header, body and trailer).
    pub stored_len: u64,
    /// The stored object's version id on a versioned bucket.
    pub version: Option<String>,
}

enum Compressed<W: Write> {
    Plain(zstd::Encoder<'static, HashingWriter<W>>),
    Aged(zstd::Encoder<'static, age::stream::StreamWriter<HashingWriter<W>>>),
}

/// Plaintext in, encoded object out (see `Codec::encoder`).
pub struct EncodingWriter<W: Write> {
    z: Compressed<W>,
    plain: Sha256,
    plain_len: u64,
}

impl<W: Write> Write for EncodingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.z {
            Compressed::Plain(z) => z.write(buf)?,
            Compressed::Aged(z) => z.write(buf)?,
        };
        self.plain.update(&buf[..n]);
        self.plain_len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> EncodingWriter<W> {
    /// Ends the object: closes zstd and age, writes the trailer, returns the sink.
    pub fn finish(self) -> io::Result<(Trailer, W)> {
        let stored = match self.z {
            Compressed::Plain(z) => z.finish()?,
            Compressed::Aged(z) => z.finish()?.finish()?,
        };
        let (mut sink, stored_sha256, _) = stored.finish();
        let trailer = Trailer {
            plain_len: self.plain_len,
            plain_sha256: self.plain.finalize().into(),
            stored_sha256,
        };
        sink.write_all(&trailer.to_bytes())?;
        sink.flush()?;
        Ok((trailer, sink))
    }
}

fn copy_large(src: &mut dyn Read, dst: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

impl Codec {
    /// A small object (a history file, a file list), decoded in memory;
    /// `None` when absent. Errors name the object. One that decodes to more
    /// than `limit` bytes (a damaged or hostile repository) is refused on the way.
    pub async fn download_small(
        &self,
        store: &dyn Store,
        key: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>> {
        match self
            .download(store, key, Limited::new(Vec::new(), limit))
            .await
        {
            Ok(found) => Ok(found.map(|(_, bytes)| bytes.into_inner())),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", store.locate(key)))),
        }
    }

    /// A small encoded text object (a backup label, a timeline history),
    /// at most [`TEXT_LIMIT`] bytes; `None` when absent.
    pub async fn read_text(&self, store: &dyn Store, key: &str) -> Result<Option<String>> {
        self.download_small(store, key, TEXT_LIMIT)
            .await?
            .map(|b| {
                String::from_utf8(b).with_context(|| format!("{} is not text", store.locate(key)))
            })
            .transpose()
    }

    /// A codec like this one that stores in clear (zstd and checksums only), for
    /// objects that key-less jobs must read and that hold no data: timeline
    /// histories. It still decrypts what was encrypted, with the identity.
    pub fn clear(&self) -> Codec {
        Codec {
            inner: Arc::new(Inner {
                level: self.inner.level,
                recipients: Vec::new(),
                identity_file: self.inner.identity_file.clone(),
                identities: OnceLock::new(),
            }),
            workers: self.workers,
            min_match: self.min_match,
        }
    }
}

/// A writer that refuses to take more than its limit: decoding stops as soon
/// as an object decodes to more than it may, before memory or disk fill.
pub struct Limited<W> {
    inner: W,
    left: u64,
    limit: u64,
}

impl<W> Limited<W> {
    pub fn new(inner: W, limit: u64) -> Limited<W> {
        Limited {
            inner,
            left: limit,
            limit,
        }
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
    /// How many bytes went through.
    pub fn written(&self) -> u64 {
        self.limit - self.left
    }
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "the object decodes to more than {} bytes, more than it can hold: refusing it",
                self.limit
            )));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the trailer of a stored object without downloading it. A trailer that
/// does not parse is `DecodeError::Integrity`: the object is damaged.
pub async fn read_trailer(store: &dyn Store, key: &str) -> Result<Option<Trailer>, DecodeError> {
    match store
        .get_tail(key, envelope::TRAILER_LEN as u64)
        .await
        .map_err(DecodeError::Transport)?
    {
        None => Ok(None),
        Some(t) => Trailer::parse(&t)
            .map(Some)
            .map_err(|e| DecodeError::Integrity(format!("{}: {e}", store.locate(key)))),
    }
}

/// Checks an object's stored bytes without the private key: the envelope header,
/// the trailer, and the sha256 of header and body against the trailer's record.
/// Returns the trailer and the stored length; `Ok(None)` when the object is absent.
pub async fn verify_stored(
    store: &dyn Store,
    key: &str,
) -> Result<Option<(Trailer, u64)>, DecodeError> {
    let body = match store.get(key).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => return Err(DecodeError::Transport(e)),
    };
    tokio::task::spawn_blocking(move || {
        let mut src = tokio_util::io::SyncIoBridge::new(body);
        let (env, _) = Envelope::open(&mut src)?;
        env.finish().map(Some)
    })
    .await
    .map_err(|e| DecodeError::Transport(anyhow::Error::new(e)))?
}

/// sha256 and length of a plaintext file, for comparing with a stored trailer.
pub fn sha256_of(src: &mut dyn Read) -> io::Result<([u8; 32], u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok((h.finalize().into(), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

/// Decompressed output changes hands in chunks of this size: large writes
/// (io::copy's 8 KiB would cost 2048 write calls per 16 MiB segment), yet
/// the four a lone restore holds at most add only 1 MiB to its memory.
const PLAIN_CHUNK: usize = 256 * 1024;

/// Decompresses one zstd frame. Each chunk goes to `out` with the number of
/// bytes it holds; `out` hands back a chunk (of `PLAIN_CHUNK` bytes) to fill next.
fn unzstd(
    src: &mut dyn io::BufRead,
    out: &mut dyn FnMut(Vec<u8>, usize) -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    let mut z = zstd::Decoder::with_buffer(src)?.single_frame();
    let mut buf = vec![0u8; PLAIN_CHUNK];
    // Each chunk filled before it is handed on (zstd returns a block at a time).
    let mut n = 0;
    loop {
        match z.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(got) => n += got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if n == buf.len() {
            buf = out(buf, n)?;
            n = 0;
        }
    }
    if n > 0 {
        out(buf, n)?;
    }
    // Whatever follows the frame (within the body) is damage, and reading to the
    // end makes age authenticate its final chunk.
    let mut rest = Vec::new();
    z.finish().read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} unexpected bytes after the compressed data", rest.len()),
        ));
    }
    Ok(())
}

fn age_error(e: age::DecryptError, classify: &dyn Fn(io::Error) -> DecodeError) -> DecodeError {
    match e {
        age::DecryptError::NoMatchingKeys => DecodeError::Key(
            "no identity in the identity file matches this object's recipients (wrong key?)".into(),
        ),
        age::DecryptError::Io(io) => classify(io),
        other => DecodeError::Integrity(format!("encrypted stream is damaged: {other}")),
    }
}

/// Notes whether the transport below failed, to tell damage from a broken download.
struct Tap<'a> {
    inner: &'a mut dyn Read,
    failed: Arc<AtomicBool>,
}

/// Whether the source (the store) failed: then an I/O error is a transport
/// problem, worth a retry; otherwise the bytes themselves are bad.
#[derive(Clone)]
struct TransportFlag(Arc<AtomicBool>);

impl TransportFlag {
    fn classify(&self, e: io::Error) -> DecodeError {
        if self.0.load(Ordering::Relaxed) {
            DecodeError::Transport(anyhow::Error::new(e))
        } else {
            DecodeError::Integrity(e.to_string())
        }
    }
}

/// A stored object being read: header checked, body streaming, trailer held back.
struct Envelope<'a> {
    split: TrailerSplitReader<Tap<'a>>,
    failed: TransportFlag,
}

impl<'a> Envelope<'a> {
    /// Reads and checks the header; returns the reader positioned at the body and the flags.
    fn open(src: &'a mut dyn Read) -> Result<(Envelope<'a>, u8), DecodeError> {
        let failed = TransportFlag(Arc::new(AtomicBool::new(false)));
        let mut split = TrailerSplitReader::new(Tap {
            inner: src,
            failed: failed.0.clone(),
        });
        let mut h = [0u8; HEADER_LEN];
        split.read_exact(&mut h).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => DecodeError::Integrity("object is too short".into()),
            _ => failed.classify(e),
        })?;
        let flags = envelope::parse_header(&h).map_err(DecodeError::Integrity)?;
        Ok((Envelope { split, failed }, flags))
    }

    /// Reads to the end; checks the stored bytes against the trailer's sha256.
    /// Returns the trailer and the object's stored length.
    fn finish(self) -> Result<(Trailer, u64), DecodeError> {
        let failed = self.failed;
        let (stored_sha, len, trailer_bytes) =
            self.split.finish().map_err(|e| failed.classify(e))?;
        let trailer = Trailer::parse(&trailer_bytes).map_err(DecodeError::Integrity)?;
        if trailer.stored_sha256 != stored_sha {
            return Err(DecodeError::Integrity(
                "stored bytes do not match their recorded sha256".into(),
            ));
        }
        Ok((trailer, len + envelope::TRAILER_LEN as u64))
    }
}

impl Read for Tap<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

const CHUNK: usize = 256 * 1024;

/// A blocking writer feeding the async store through a bounded channel.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    sent: u64,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.sent += self.buf.len() as u64;
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible with some noise, like WAL.
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    ((i * 2654435761usize) >> 13) as u8
                } else {
                    (i / 512) as u8
                }
            })
            .collect()
    }

    fn roundtrip(codec: &Codec, dec: &Codec, data: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut stored = Vec::new();
        codec.encode(&mut &data[..], &mut stored).unwrap();
        let mut out = Vec::new();
        dec.decode(&mut &stored[..], &mut out)?;
        Ok(out)
    }

    fn keyed() -> (Codec, tempfile::TempDir) {
        let (dir, path) = crate::testing::temp_path("id.txt");
        let recipient = keys::generate_identity_file(&path).unwrap();
        (
            Codec::new(1, vec![recipient.parse().unwrap()], Some(path)),
            dir,
        )
    }

    #[test]
    fn plain_and_encrypted_round_trip() {
        let data = sample(3 << 20);
        let plain = Codec::new(3, vec![], None);
        assert_eq!(roundtrip(&plain, &plain, &data).unwrap(), data);
        let (enc, _d) = keyed();
        assert_eq!(roundtrip(&enc, &enc, &data).unwrap(), data);
        assert_eq!(roundtrip(&enc, &enc, b"").unwrap(), b"");
        // With workers: compressed on several threads, decoded with sha256 on a
        // second one (a wrong digest or length there would fail the decode).
        let par = enc.with_workers(2);
        assert_eq!(roundtrip(&par, &par, &data).unwrap(), data);
        assert_eq!(roundtrip(&enc, &par, &data).unwrap(), data);
        assert_eq!(roundtrip(&par, &enc, &data).unwrap(), data);
        assert_eq!(roundtrip(&par, &par, b"").unwrap(), b"");
    }

    #[test]
    fn scattered_pages_match_shorter_runs_and_decode_as_any_object() {
        // Runs of 5 equal bytes between random ones, as tuple headers of
        // unrelated pages share: too short for level 1's 6-byte matches.
        let mut x = 0x2545f491u32;
        let mut data = Vec::new();
        while data.len() < 1 << 20 {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            data.extend_from_slice(b"\x01\x00\x18\x00\x02");
            data.extend_from_slice(&x.to_le_bytes());
        }
        // In clear, so that the sizes are zstd's alone (deterministic).
        let plain = Codec::new(1, vec![], None);
        let size = |c: &Codec| {
            let mut stored = Vec::new();
            c.encode(&mut &data[..], &mut stored).unwrap();
            stored.len()
        };
        let (whole, scattered) = (size(&plain), size(&plain.for_scattered_pages()));
        assert!(scattered < whole, "{scattered} against {whole}");
        let (enc, _d) = keyed();
        let pages = enc.for_scattered_pages();
        assert_eq!(roundtrip(&pages, &enc, &data).unwrap(), data);
        // Levels that match 5 bytes or fewer already are left alone.
        assert_eq!(
            Codec::new(3, vec![], None).for_scattered_pages().min_match,
            None
        );
        assert_eq!(enc.with_workers(2).for_scattered_pages().min_match, Some(5));
    }

    #[test]
    fn encrypted_object_is_opaque() {
        let data = sample(1 << 20);
        let (enc, _d) = keyed();
        let mut stored = Vec::new();
        enc.encode(&mut &data[..], &mut stored).unwrap();
        let body = &stored[HEADER_LEN..stored.len() - envelope::TRAILER_LEN];
        assert!(body.starts_with(b"age-encryption.org/v1"));
        assert!(zstd::decode_all(body).is_err());
        // The zstd magic appears nowhere in the body.
        assert!(!body.windows(4).any(|w| w == [0x28, 0xb5, 0x2f, 0xfd]));
    }

    /// Decoding `stored` with one bit flipped at `pos` fails its integrity check.
    fn assert_flip_detected(codec: &Codec, stored: &[u8], pos: usize, bit: u8) {
        let mut bad = stored.to_vec();
        bad[pos] ^= bit;
        let mut out = Vec::new();
        let r = codec.decode(&mut &bad[..], &mut out);
        assert!(
            matches!(r, Err(DecodeError::Integrity(_))),
            "flip {bit:#x} at {pos}/{}: {r:?}",
            stored.len()
        );
    }

    #[test]
    fn every_flipped_byte_of_a_small_object_is_detected() {
        // Every byte of the stored object (header, age stanza, body, trailer),
        // each with a low and a high bit flipped.
        let data = sample(3_000);
        let (enc, _d) = keyed();
        let plain = Codec::new(1, vec![], None);
        for codec in [&enc, &plain] {
            let mut stored = Vec::new();
            codec.encode(&mut &data[..], &mut stored).unwrap();
            for pos in 0..stored.len() {
                for bit in [0x01u8, 0x80] {
                    assert_flip_detected(codec, &stored, pos, bit);
                }
            }
        }
    }

    #[test]
    fn sampled_flipped_bytes_of_a_large_object_are_detected() {
        let data = sample(200_000);
        let (enc, _d) = keyed();
        let plain = Codec::new(1, vec![], None);
        for codec in [&enc, &plain, &enc.with_workers(2)] {
            let mut stored = Vec::new();
            codec.encode(&mut &data[..], &mut stored).unwrap();
            let step = (stored.len() / 97).max(1);
            for pos in (0..stored.len()).step_by(step) {
                assert_flip_detected(codec, &stored, pos, 0x20);
            }
            for cut in [0, 10, stored.len() / 2, stored.len() - 1] {
                let mut out = Vec::new();
                let r = codec.decode(&mut &stored[..cut], &mut out);
                assert!(
                    matches!(r, Err(DecodeError::Integrity(_))),
                    "cut at {cut}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn a_decompression_bomb_is_refused_within_its_limit() {
        // 64 MiB of zeros compress to a few KiB.
        let zeros = vec![0u8; 64 << 20];
        let codec = Codec::new(3, vec![], None);
        let mut stored = Vec::new();
        codec.encode(&mut &zeros[..], &mut stored).unwrap();
        assert!(stored.len() < 1 << 20, "{}", stored.len());
        // Also with the writes on a thread of their own (a lone restore): the
        // writer's refusal is the error reported, not the decoder's "ended".
        for dec in [codec.clone(), codec.with_workers(2)] {
            let mut out = Limited::new(Vec::new(), 1 << 20);
            let e = dec.decode(&mut &stored[..], &mut out).unwrap_err();
            assert!(e.to_string().contains("more than 1048576 bytes"), "{e}");
            assert!(out.get_ref().len() <= 1 << 20);
            let mut out = Limited::new(Vec::new(), 64 << 20);
            dec.decode(&mut &stored[..], &mut out).unwrap();
            assert_eq!(out.into_inner().len(), 64 << 20);
        }
    }

    #[test]
    fn key_problems_are_named() {
        let data = sample(10_000);
        let (enc, _d) = keyed();
        let no_key = Codec::new(1, vec![], None);
        assert!(matches!(
            roundtrip(&enc, &no_key, &data),
            Err(DecodeError::MissingKey)
        ));
        let (other, _d2) = keyed();
        for dec in [other.clone(), other.with_workers(2)] {
            let e = roundtrip(&enc, &dec, &data).unwrap_err();
            assert!(
                matches!(e, DecodeError::Key(_)) && e.to_string().contains("wrong key"),
                "{e}"
            );
        }
        let gone = Codec::new(1, vec![], Some("/nonexistent/identity.txt".into()));
        let e = roundtrip(&enc, &gone, &data).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/identity.txt"), "{e}");
    }

    #[tokio::test]
    async fn upload_of_a_failing_source_stores_nothing() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk read error"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::fs::FsStore::new(dir.path().to_path_buf());
        let codec = Codec::new(1, vec![], None);
        let e = codec
            .upload(&store, "wal/x", Broken(3 << 20))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("disk read error"), "{e:#}");
        assert!(store.head("wal/x").await.unwrap().is_none());
        let up = codec.upload(&store, "wal/y", &b"abc"[..]).await.unwrap();
        let t = up.trailer;
        assert_eq!(t.plain_len, 3);
        assert_eq!(
            up.stored_len,
            store.head("wal/y").await.unwrap().unwrap().size
        );
        let (t2, out) = codec
            .download(&store, "wal/y", Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((t2, out.as_slice()), (t, &b"abc"[..]));
        assert!(codec
            .download(&store, "wal/none", Vec::new())
            .await
            .unwrap()
            .is_none());
        assert_eq!(read_trailer(&store, "wal/y").await.unwrap(), Some(t));
    }
}
