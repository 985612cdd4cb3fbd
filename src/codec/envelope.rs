//! The stored object format.
//!
//! ```text
//! header  (16 bytes)  "WALVAULT" | version u8 | flags u8 | 6 reserved zero bytes
//! body                zstd frame, wrapped in an age stream when flags has ENCRYPTED
//! trailer (80 bytes)  plaintext length u64 LE | sha256(plaintext) | sha256(header+body) | "WVTRAILR"
//! ```
//! The trailer comes last so an object can be written in one streaming pass.
//! `sha256(header+body)` lets anyone check the stored bytes without the private key.
//! `sha256(plaintext)` lets the database host (which holds only the public
//! recipient) tell an identical re-push from a different one, since age output
//! differs on every encryption.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"WALVAULT";
pub const TRAILER_MAGIC: &[u8; 8] = b"WVTRAILR";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const TRAILER_LEN: usize = 80;
pub const FLAG_ZSTD: u8 = 1;
pub const FLAG_ENCRYPTED: u8 = 2;

pub fn header(flags: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9] = flags;
    h
}

/// Returns the flags of a valid header.
pub fn parse_header(h: &[u8]) -> Result<u8, String> {
    if h.len() < HEADER_LEN || &h[..8] != MAGIC {
        return Err("not a walvault object (bad header magic)".into());
    }
    if h[8] != VERSION {
        return Err(format!(
            "object format version {} is not supported by this walvault (knows {VERSION})",
            h[8]
        ));
    }
    let flags = h[9];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED) != 0 || flags & FLAG_ZSTD == 0 {
        return Err(format!("unknown object flags {flags:#x}"));
    }
    Ok(flags)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub plain_len: u64,
    pub plain_sha256: [u8; 32],
    pub stored_sha256: [u8; 32],
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[..8].copy_from_slice(&self.plain_len.to_le_bytes());
        t[8..40].copy_from_slice(&self.plain_sha256);
        t[40..72].copy_from_slice(&self.stored_sha256);
        t[72..].copy_from_slice(TRAILER_MAGIC);
        t
    }

    pub fn parse(t: &[u8]) -> Result<Trailer, String> {
        if t.len() != TRAILER_LEN || &t[72..] != TRAILER_MAGIC {
            return Err("object is truncated or damaged (no valid trailer)".into());
        }
        Ok(Trailer {
            plain_len: u64::from_le_bytes(t[..8].try_into().expect("8 bytes")),
            plain_sha256: t[8..40].try_into().expect("32 bytes"),
            stored_sha256: t[40..72].try_into().expect("32 bytes"),
        })
    }
}

/// A writer that hashes and counts what passes through.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hasher.finalize().into(), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads an object while holding back its last `TRAILER_LEN` bytes: it yields
/// header+body (hashing them) and, once the source ends, hands out the trailer.
pub struct TrailerSplitReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> TrailerSplitReader<R> {
    pub fn new(inner: R) -> Self {
        TrailerSplitReader {
            inner,
            buf: Vec::with_capacity(256 * 1024),
            start: 0,
            eof: false,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Reads the source to its end and returns (sha256 of everything before the
    /// trailer, its length, the trailer bytes).
    pub fn finish(mut self) -> io::Result<([u8; 32], u64, Vec<u8>)> {
        io::copy(&mut self, &mut io::sink())?;
        let trailer = self.buf[self.start..].to_vec();
        Ok((self.hasher.finalize().into(), self.count, trailer))
    }
}

impl<R: Read> Read for TrailerSplitReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while !self.eof && self.held() <= TRAILER_LEN {
            if self.start > 0 && self.start >= self.buf.len() / 2 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + 128 * 1024, 0);
            let n = loop {
                match self.inner.read(&mut self.buf[old..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            };
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
        let available = self.held().saturating_sub(TRAILER_LEN);
        let n = available.min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.hasher.update(&out[..n]);
        self.count += n as u64;
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns at most `step` bytes a call, to exercise refills.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn split_reader_holds_back_the_trailer() {
        for len in [0usize, 1, 79, 80, 81, 1000, 300_000] {
            for step in [1usize, 7, 4096, 1 << 20] {
                let data: Vec<u8> = (0..len + TRAILER_LEN)
                    .map(|i| (i * 31 % 251) as u8)
                    .collect();
                let mut r = TrailerSplitReader::new(Dribble(&data, step));
                let mut body = Vec::new();
                let mut chunk = [0u8; 333];
                loop {
                    let n = r.read(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let (sha, count, trailer) = r.finish().unwrap();
                assert_eq!(body, data[..len], "len {len} step {step}");
                assert_eq!(trailer, data[len..]);
                assert_eq!(count, len as u64);
                assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&data[..len])));
            }
        }
    }

    #[test]
    fn short_source_yields_short_trailer() {
        let mut r = TrailerSplitReader::new(&b"abc"[..]);
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert!(v.is_empty());
        let (_, _, t) = r.finish().unwrap();
        assert!(Trailer::parse(&t).is_err());
    }

    #[test]
    fn trailer_round_trip_and_header_checks() {
        let t = Trailer {
            plain_len: 16 << 20,
            plain_sha256: [7; 32],
            stored_sha256: [9; 32],
        };
        assert_eq!(Trailer::parse(&t.to_bytes()).unwrap(), t);
        let mut bad = t.to_bytes();
        bad[79] ^= 1;
        assert!(Trailer::parse(&bad).is_err());
        assert_eq!(
            parse_header(&header(FLAG_ZSTD | FLAG_ENCRYPTED)).unwrap(),
            3
        );
        assert!(parse_header(b"WALVAULX\x01\x01\0\0\0\0\0\0").is_err());
        let mut v2 = header(FLAG_ZSTD);
        v2[8] = 2;
        assert!(parse_header(&v2).unwrap_err().contains("version 2"));
    }
}
