//! The stream objects: what `wal-receive` stores of a segment not yet stored
//! whole, and how readers put it back together.
//!
//! Each flush stores only the bytes received since the one before, as
//! `stream/<segment>.<from>-<to>` (offsets into the segment, 8 hex digits
//! each; encoded like a segment). A new name per flush, so nothing stored is
//! ever replaced. From time to time the receiver also stores the segment from
//! its start (`<segment>.00000000-<to>`) and deletes the pieces it covers, so
//! a reader fetches a few objects, not thousands.
//!
//! A reader chains pieces from offset 0, each starting where the one before
//! ended, and takes the chain that reaches furthest. Pieces may overlap (a
//! receiver restarted re-streams the segment from its start): on one
//! timeline, the bytes at an offset of a segment are the same in every piece,
//! because a server sends only WAL it has flushed.

use super::names::{SegmentName, WalFile};
use crate::codec::{Codec, Limited};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;

/// Where the stream objects are kept.
pub const PREFIX: &str = "stream/";

/// One stream object: bytes `from..to` of segment `seg`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Piece {
    pub seg: SegmentName,
    pub from: u64,
    pub to: u64,
    pub key: String,
}

/// The key of the piece holding bytes `from..to` of `seg`.
pub fn key(seg: &SegmentName, from: u64, to: u64) -> String {
    format!("{PREFIX}{seg}.{from:08X}-{to:08X}")
}

/// The listing prefix of `seg`'s pieces.
pub fn segment_prefix(seg: &SegmentName) -> String {
    format!("{PREFIX}{seg}.")
}

/// A stream object's key back to what it holds; `None` for anything else.
pub fn parse(key: &str) -> Option<Piece> {
    let rest = key.strip_prefix(PREFIX)?;
    let (seg, range) = rest.split_once('.')?;
    let seg = match WalFile::parse(seg).ok()? {
        WalFile::Segment(s) => s,
        _ => return None,
    };
    let (from, to) = range.split_once('-')?;
    let offset = |h: &str| match h.len() {
        8 => u64::from_str_radix(h, 16).ok(),
        _ => None,
    };
    let (from, to) = (offset(from)?, offset(to)?);
    if to <= from {
        return None;
    }
    Some(Piece {
        seg,
        from,
        to,
        key: key.to_string(),
    })
}

/// Of one segment's pieces, the chain from offset 0 that reaches furthest
/// (empty when none starts at 0), in order.
pub fn chain(pieces: &[Piece]) -> Vec<Piece> {
    let mut by_from: BTreeMap<u64, Vec<&Piece>> = BTreeMap::new();
    for p in pieces {
        by_from.entry(p.from).or_default().push(p);
    }
    // Offsets in increasing order: every piece ends past where it starts,
    // so an offset's best way in is known before it is left.
    let mut reached: BTreeMap<u64, Option<&Piece>> = BTreeMap::new();
    if by_from.contains_key(&0) {
        reached.insert(0, None);
    }
    for (&from, starting) in &by_from {
        if !reached.contains_key(&from) {
            continue;
        }
        for &p in starting {
            reached.entry(p.to).or_insert(Some(p));
        }
    }
    let Some((&end, _)) = reached.iter().next_back() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = end;
    while let Some(Some(p)) = reached.get(&at) {
        out.push((*p).clone());
        at = p.from;
    }
    out.reverse();
    out
}

/// How far each segment's pieces reach from its start, by segment.
pub fn reach<I: IntoIterator<Item = Piece>>(pieces: I) -> BTreeMap<SegmentName, u64> {
    let mut by_seg: BTreeMap<SegmentName, Vec<Piece>> = BTreeMap::new();
    for p in pieces {
        by_seg.entry(p.seg).or_default().push(p);
    }
    by_seg
        .into_iter()
        .filter_map(|(seg, ps)| chain(&ps).last().map(|p| (seg, p.to)))
        .collect()
}

/// The pieces of `seg` in the repository.
pub async fn list(store: &dyn Store, seg: &SegmentName) -> Result<Vec<Piece>> {
    Ok(store
        .list(&segment_prefix(seg))
        .await?
        .iter()
        .filter_map(|o| parse(&o.key))
        .filter(|p| p.seg == *seg)
        .collect())
}

/// Decodes `chain` (from [`chain`]) into `dest`, each piece checked to hold
/// exactly the bytes its name says. `Ok(None)`: a piece went meanwhile (the
/// whole segment was stored and its pieces removed).
pub async fn assemble<W: Write + Send + 'static>(
    store: &dyn Store,
    codec: &Codec,
    chain: &[Piece],
    mut dest: W,
) -> Result<Option<W>> {
    for p in chain {
        let want = p.to - p.from;
        let Some((_, out)) = codec
            .download(store, &p.key, Limited::new(dest, want))
            .await
            .with_context(|| format!("reading {}", store.locate(&p.key)))?
        else {
            return Ok(None);
        };
        if out.written() != want {
            bail!(
                "{} holds {} bytes, its name says {want}: not a stream object walvault wrote",
                store.locate(&p.key),
                out.written()
            );
        }
        dest = out.into_inner();
    }
    Ok(Some(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(from: u64, to: u64) -> Piece {
        let seg = SegmentName::from_segno(2, 0x105, 16 << 20);
        parse(&key(&seg, from, to)).unwrap()
    }

    #[test]
    fn keys_name_their_segment_and_range() {
        let seg = SegmentName::from_segno(2, 0x105, 16 << 20);
        let k = key(&seg, 0x100, 0x2000);
        assert_eq!(k, "stream/000000020000000100000005.00000100-00002000");
        let p = parse(&k).unwrap();
        assert_eq!((p.seg, p.from, p.to), (seg, 0x100, 0x2000));
        for bad in [
            "stream/000000020000000100000005",
            "stream/000000020000000100000005.00002000",
            "stream/00000002.history.00000000-00002000",
            "stream/000000020000000100000005.00000000-2000",
            "stream/000000020000000100000005.00002000-00002000",
            "stream/000000020000000100000005.00003000-00002000",
            "wal/000000020000000100000005.00000000-00002000",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_chain_from_the_start_that_reaches_furthest() {
        let ends = |ps: &[Piece]| chain(ps).iter().map(|p| (p.from, p.to)).collect::<Vec<_>>();
        // Deltas one after another.
        assert_eq!(
            ends(&[piece(0, 10), piece(10, 25), piece(25, 40)]),
            [(0, 10), (10, 25), (25, 40)]
        );
        // A prefix stored since covers its deltas.
        assert_eq!(
            ends(&[piece(0, 10), piece(10, 25), piece(0, 25), piece(25, 40)]).last(),
            Some(&(25, 40))
        );
        // A restarted receiver's overlap, where the greedy longest first step
        // (0-18) would dead-end at 20.
        assert_eq!(
            ends(&[
                piece(0, 18),
                piece(18, 20),
                piece(0, 10),
                piece(10, 25),
                piece(25, 40)
            ]),
            [(0, 10), (10, 25), (25, 40)]
        );
        // A gap: the chain stops before it.
        assert_eq!(ends(&[piece(0, 10), piece(12, 30)]), [(0, 10)]);
        // Nothing from the start: nothing.
        assert!(ends(&[piece(10, 25)]).is_empty());
        assert!(ends(&[]).is_empty());
    }
}
