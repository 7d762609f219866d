//! The exact byte layout of a stored (uncompressed) ZIP, known before any CRC-32 is.
//!
//! The archive is, in order: for each member a local file header and the member's bytes as they
//! are, then the central directory (one entry per member), then the end records. Each entry has
//! the UTF-8 flag (bit 11), method 0 (stored), a DOS date and time from the member's mtime in UTC
//! (clamped to 1980..2107, to the even second), "version made by" Unix and the external
//! attributes of a regular file with permissions 0644. There is no data descriptor: the sizes and
//! the CRC-32 are in the local header, which is what macOS's Archive Utility and Java's
//! `ZipInputStream` need to read a stored member.
//!
//! ZIP64 is used only where a 32-bit field cannot hold a value: a member of 0xFFFFFFFF bytes or
//! more carries a ZIP64 extra field with its sizes (local header and central entry), a member
//! whose local header starts at or past byte 0xFFFFFFFF carries its offset in one (central entry
//! only), and the ZIP64 end record and locator come before the end record when there are 0xFFFF
//! members or more, or the central directory starts or ends at or past byte 0xFFFFFFFF.
//!
//! # What depends on a CRC-32
//! Only eight bytes per member: the four CRC bytes of its local header (bytes 14..18 of it) and
//! the four of its central directory entry (bytes 16..20 of it). Every other byte, the total length
//! included, follows from the names, sizes and mtimes alone. So a request can be answered up to
//! the CRC field of the first member whose hash is not done yet: the bytes of member `i`, and its
//! local header up to the CRC, need nothing, and the central directory needs every member's CRC.
//! [`Layout::piece_at`] says which CRC it waits for with [`NeedsCrc`] and never emits a wrong
//! byte.
//!
//! # Serving a range
//! A range is a sequence of [`Piece`]s: header bytes, built in memory (they are small), and spans
//! of a member's file, which the server copies from the file itself (`sendfile`, `splice`).

use std::ops::Range;

use super::names::MAX_NAME_LEN;
use super::time::Civil;

/// The largest value a 32-bit ZIP field holds; it is also the marker that says "see ZIP64".
const MAX32: u64 = 0xFFFF_FFFF;
/// The most members the end record counts; it is also the marker that says "see ZIP64".
const MAX16: usize = 0xFFFF;
const LOCAL_LEN: u64 = 30;
const CENTRAL_LEN: u64 = 46;
const END_LEN: u64 = 22;
const ZIP64_END_LEN: u64 = 56;
const ZIP64_LOCATOR_LEN: u64 = 20;
/// Where the CRC-32 sits in a local header and in a central directory entry.
const LOCAL_CRC_AT: u64 = 14;
const CENTRAL_CRC_AT: u64 = 16;
/// "Version needed to extract": 2.0 for a plain stored member, 4.5 for one that uses ZIP64.
const VERSION_PLAIN: u16 = 20;
const VERSION_ZIP64: u16 = 45;
/// "Version made by": Unix (3) in the high byte, ZIP specification 4.5 in the low byte.
const MADE_BY: u16 = (3 << 8) | 45;
/// General purpose flags: bit 11, names and comments are UTF-8.
const FLAGS: u16 = 1 << 11;
/// External attributes: a regular file (`S_IFREG`) with permissions 0644, in the Unix high half.
const EXTERNAL_ATTRS: u32 = 0o100_644 << 16;
/// Header bytes in one [`Piece::Bytes`] at most, so that a range over a large central
/// directory is built a part at a time.
const MAX_BYTES_PIECE: usize = 256 * 1024;
/// The first and last moments a DOS date can hold: 1980-01-01 00:00:00 and 2107-12-31 23:59:59.
const DOS_FIRST: i64 = 315_532_800;
const DOS_LAST: i64 = 4_354_819_199;

/// One file of the archive, as the layout needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The cleaned, unique name (see [`super::names`]).
    pub name: String,
    pub size: u64,
    /// Last modification, in Unix seconds.
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("an archive needs at least one member")]
    Empty,
    #[error("member {0}'s name is longer than a ZIP allows ({MAX_NAME_LEN} bytes)")]
    NameTooLong(usize),
    #[error("the archive would be larger than 2^64 bytes")]
    TooLarge,
}

/// A part of a byte range of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Header bytes, to send as they are.
    Bytes(Vec<u8>),
    /// `len` bytes of member `member`'s file, from `offset` in that file.
    File { member: usize, offset: u64, len: u64 },
}

impl Piece {
    /// How many bytes of the archive this piece is.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The next byte of a range depends on the CRC-32 of `member`, which is not known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("member {member}'s CRC-32 is not known yet")]
pub struct NeedsCrc {
    pub member: usize,
}

/// Where each member's structures lie, computed once when the link is created.
#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    /// DOS time and date.
    dos: (u16, u16),
    local_at: u64,
    central_at: u64,
}

impl Entry {
    /// Whether the sizes need the ZIP64 extra field.
    fn big(&self) -> bool {
        self.member.size >= MAX32
    }

    fn local_len(&self) -> u64 {
        LOCAL_LEN + self.member.name.len() as u64 + if self.big() { 20 } else { 0 }
    }

    fn data_at(&self) -> u64 {
        self.local_at + self.local_len()
    }

    /// The length of the central entry's ZIP64 extra field (0: none).
    fn central_extra_len(&self) -> u64 {
        let fields = if self.big() { 16 } else { 0 } + if self.local_at >= MAX32 { 8 } else { 0 };
        if fields == 0 { 0 } else { 4 + fields }
    }

    fn central_len(&self) -> u64 {
        CENTRAL_LEN + self.member.name.len() as u64 + self.central_extra_len()
    }

    fn version(&self) -> u16 {
        if self.big() || self.local_at >= MAX32 {
            VERSION_ZIP64
        } else {
            VERSION_PLAIN
        }
    }
}

/// Which structure a byte of the archive belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Local(usize),
    Data(usize),
    Central(usize),
    End,
}

/// The layout of one archive: where every header and every member's bytes lie.
#[derive(Debug, Clone)]
pub struct Layout {
    entries: Vec<Entry>,
    central_at: u64,
    end_at: u64,
    total: u64,
}

impl Layout {
    /// The layout of an archive of `members`, in this order. Their names must already be
    /// cleaned and unique ([`super::names::member_names`]).
    pub fn new(members: Vec<Member>) -> Result<Layout, LayoutError> {
        if members.is_empty() {
            return Err(LayoutError::Empty);
        }
        let mut entries = Vec::with_capacity(members.len());
        let mut at = 0u64;
        for (i, member) in members.into_iter().enumerate() {
            if member.name.len() > MAX_NAME_LEN {
                return Err(LayoutError::NameTooLong(i));
            }
            let dos = dos_time(member.mtime);
            let entry = Entry {
                member,
                dos,
                local_at: at,
                central_at: 0,
            };
            at = entry
                .data_at()
                .checked_add(entry.member.size)
                .ok_or(LayoutError::TooLarge)?;
            entries.push(entry);
        }
        let central_at = at;
        for entry in &mut entries {
            entry.central_at = at;
            at = at.checked_add(entry.central_len()).ok_or(LayoutError::TooLarge)?;
        }
        let mut layout = Layout {
            entries,
            central_at,
            end_at: at,
            total: 0,
        };
        layout.total = at.checked_add(layout.end_len()).ok_or(LayoutError::TooLarge)?;
        Ok(layout)
    }

    /// The archive's exact length in bytes.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// How many members the archive has (never 0).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.entries[i].member
    }

    /// Where member `i`'s own bytes lie in the archive.
    pub fn data_range(&self, i: usize) -> Range<u64> {
        let e = &self.entries[i];
        e.data_at()..e.data_at() + e.member.size
    }

    /// Whether the archive ends with the ZIP64 end record and locator.
    pub fn has_zip64_end(&self) -> bool {
        self.entries.len() >= MAX16 || self.central_at >= MAX32 || self.end_at - self.central_at >= MAX32
    }

    fn end_len(&self) -> u64 {
        END_LEN
            + if self.has_zip64_end() {
                ZIP64_END_LEN + ZIP64_LOCATOR_LEN
            } else {
                0
            }
    }

    /// The pieces of bytes `range` of the archive, given the CRC-32s known so far (`crcs[i]` is
    /// member `i`'s). The iterator ends after an `Err`: the caller waits for that CRC and asks
    /// again from where it stopped (see [`Layout::piece_at`]).
    pub fn pieces<'a>(&'a self, range: Range<u64>, crcs: &'a [Option<u32>]) -> Pieces<'a> {
        Pieces {
            layout: self,
            at: range.start,
            end: range.end,
            crcs,
            done: false,
        }
    }

    /// The first piece of bytes `at..end`: as many header bytes as can be built (up to 256 KiB),
    /// or a span of one member's file. `Err` when byte `at` depends on a CRC-32 not in `crcs`.
    ///
    /// Panics unless `at < end <= total_len()`.
    pub fn piece_at(&self, at: u64, end: u64, crcs: &[Option<u32>]) -> Result<Piece, NeedsCrc> {
        assert!(
            at < end && end <= self.total,
            "range {at}..{end} of a {}-byte archive",
            self.total
        );
        if let (Part::Data(i), span) = self.part(at) {
            let offset = at - span.start;
            return Ok(Piece::File {
                member: i,
                offset,
                len: end.min(span.end) - at,
            });
        }
        let mut out = Vec::new();
        let mut at = at;
        while at < end && out.len() < MAX_BYTES_PIECE {
            let (part, span) = self.part(at);
            let (bytes, crc) = match part {
                Part::Data(_) => break,
                Part::Local(i) => (self.local_header(i, crcs), Some((i, span.start + LOCAL_CRC_AT))),
                Part::Central(i) => (self.central_entry(i, crcs), Some((i, span.start + CENTRAL_CRC_AT))),
                Part::End => (self.end_records(), None),
            };
            let stop = end.min(span.end);
            if let Some((i, crc_at)) = crc
                && known(crcs, i).is_none()
                && crc_at < stop
                && at < crc_at + 4
            {
                // Only the bytes before the unknown CRC can go now.
                out.extend_from_slice(&bytes[(at - span.start) as usize..(crc_at.max(at) - span.start) as usize]);
                if out.is_empty() {
                    return Err(NeedsCrc { member: i });
                }
                break;
            }
            out.extend_from_slice(&bytes[(at - span.start) as usize..(stop - span.start) as usize]);
            at = stop;
        }
        Ok(Piece::Bytes(out))
    }

    /// The structure byte `at` belongs to, and the bytes that structure spans.
    fn part(&self, at: u64) -> (Part, Range<u64>) {
        if at >= self.end_at {
            return (Part::End, self.end_at..self.total);
        }
        if at >= self.central_at {
            let i = self.entries.partition_point(|e| e.central_at <= at) - 1;
            let e = &self.entries[i];
            return (Part::Central(i), e.central_at..e.central_at + e.central_len());
        }
        let i = self.entries.partition_point(|e| e.local_at <= at) - 1;
        let e = &self.entries[i];
        if at < e.data_at() {
            (Part::Local(i), e.local_at..e.data_at())
        } else {
            (Part::Data(i), e.data_at()..e.data_at() + e.member.size)
        }
    }

    /// The fields a local header and a central entry share, in the same order: version needed,
    /// flags, method, DOS time and date, CRC-32 (zeros while unknown), both sizes, name length.
    fn common_fields(&self, h: &mut Vec<u8>, i: usize, crcs: &[Option<u32>]) {
        let e = &self.entries[i];
        put16(h, e.version());
        put16(h, FLAGS);
        put16(h, 0); // stored
        put16(h, e.dos.0);
        put16(h, e.dos.1);
        put32(h, known(crcs, i).unwrap_or(0));
        let size32 = if e.big() { MAX32 } else { e.member.size } as u32;
        put32(h, size32); // compressed
        put32(h, size32); // uncompressed
        put16(h, e.member.name.len() as u16);
    }

    /// Member `i`'s local file header, with its CRC-32 or, while that is unknown, zeros.
    fn local_header(&self, i: usize, crcs: &[Option<u32>]) -> Vec<u8> {
        let e = &self.entries[i];
        let mut h = Vec::with_capacity(e.local_len() as usize);
        put32(&mut h, 0x0403_4b50);
        self.common_fields(&mut h, i, crcs);
        put16(&mut h, if e.big() { 20 } else { 0 });
        h.extend_from_slice(e.member.name.as_bytes());
        if e.big() {
            // The ZIP64 extra field of a local header holds both sizes, uncompressed first.
            put16(&mut h, 0x0001);
            put16(&mut h, 16);
            put64(&mut h, e.member.size);
            put64(&mut h, e.member.size);
        }
        h
    }

    /// Member `i`'s central directory entry, with its CRC-32 or, while that is unknown, zeros.
    fn central_entry(&self, i: usize, crcs: &[Option<u32>]) -> Vec<u8> {
        let e = &self.entries[i];
        let mut h = Vec::with_capacity(e.central_len() as usize);
        put32(&mut h, 0x0201_4b50);
        put16(&mut h, MADE_BY);
        self.common_fields(&mut h, i, crcs);
        put16(&mut h, e.central_extra_len() as u16);
        put16(&mut h, 0); // comment length
        put16(&mut h, 0); // disk number
        put16(&mut h, 0); // internal attributes
        put32(&mut h, EXTERNAL_ATTRS);
        put32(&mut h, e.local_at.min(MAX32) as u32);
        h.extend_from_slice(e.member.name.as_bytes());
        if e.central_extra_len() > 0 {
            // Only the fields marked 0xFFFFFFFF above, in this order.
            put16(&mut h, 0x0001);
            put16(&mut h, (e.central_extra_len() - 4) as u16);
            if e.big() {
                put64(&mut h, e.member.size);
                put64(&mut h, e.member.size);
            }
            if e.local_at >= MAX32 {
                put64(&mut h, e.local_at);
            }
        }
        h
    }

    /// The ZIP64 end record and locator when needed, then the end of central directory record.
    fn end_records(&self) -> Vec<u8> {
        let count = self.entries.len() as u64;
        let size = self.end_at - self.central_at;
        let mut h = Vec::with_capacity(self.end_len() as usize);
        if self.has_zip64_end() {
            put32(&mut h, 0x0606_4b50);
            put64(&mut h, ZIP64_END_LEN - 12); // the size of the rest of this record
            put16(&mut h, MADE_BY);
            put16(&mut h, VERSION_ZIP64);
            put32(&mut h, 0); // this disk
            put32(&mut h, 0); // the disk where the central directory starts
            put64(&mut h, count); // entries on this disk
            put64(&mut h, count); // entries in all
            put64(&mut h, size);
            put64(&mut h, self.central_at);
            put32(&mut h, 0x0706_4b50);
            put32(&mut h, 0); // the disk with the ZIP64 end record
            put64(&mut h, self.end_at); // where the ZIP64 end record starts
            put32(&mut h, 1); // disks in all
        }
        put32(&mut h, 0x0605_4b50);
        put16(&mut h, 0); // this disk
        put16(&mut h, 0); // the disk where the central directory starts
        let count16 = count.min(MAX16 as u64) as u16;
        put16(&mut h, count16); // entries on this disk
        put16(&mut h, count16); // entries in all
        put32(&mut h, size.min(MAX32) as u32);
        put32(&mut h, self.central_at.min(MAX32) as u32);
        put16(&mut h, 0); // comment length
        h
    }
}

/// The pieces of a byte range, in order (see [`Layout::pieces`]).
pub struct Pieces<'a> {
    layout: &'a Layout,
    at: u64,
    end: u64,
    crcs: &'a [Option<u32>],
    done: bool,
}

impl Iterator for Pieces<'_> {
    type Item = Result<Piece, NeedsCrc>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.end {
            return None;
        }
        let piece = self.layout.piece_at(self.at, self.end, self.crcs);
        match &piece {
            Ok(p) => self.at += p.len(),
            Err(_) => self.done = true,
        }
        Some(piece)
    }
}

fn known(crcs: &[Option<u32>], i: usize) -> Option<u32> {
    crcs.get(i).copied().flatten()
}

/// The DOS (time, date) of Unix seconds, in UTC, clamped to what a DOS date can hold.
fn dos_time(mtime: i64) -> (u16, u16) {
    let c = Civil::from_unix(mtime.clamp(DOS_FIRST, DOS_LAST));
    let time = (c.hour << 11) | (c.minute << 5) | (c.second / 2);
    let date = (((c.year - 1980) as u32) << 9) | (c.month << 5) | c.day;
    (time as u16, date as u16)
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(name: &str, size: u64) -> Member {
        Member {
            name: name.into(),
            size,
            mtime: 1_709_210_096,
        }
    }

    /// The bytes of member `i` in these tests: a pattern that differs by member and by offset.
    fn content(i: usize, size: u64) -> Vec<u8> {
        (0..size)
            .map(|o| (o as u8).wrapping_mul(31).wrapping_add(i as u8))
            .collect()
    }

    /// Bytes `range` of the archive, with every piece filled in.
    fn assemble(layout: &Layout, files: &[Vec<u8>], crcs: &[Option<u32>], range: Range<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in layout.pieces(range, crcs) {
            match piece.expect("every CRC is known") {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::File { member, offset, len } => {
                    out.extend_from_slice(&files[member][offset as usize..(offset + len) as usize]);
                }
            }
        }
        out
    }

    #[test]
    fn an_archive_needs_a_member() {
        assert_eq!(Layout::new(vec![]).unwrap_err(), LayoutError::Empty);
    }

    #[test]
    fn lengths_and_offsets_of_a_small_archive() {
        let layout = Layout::new(vec![member("a.txt", 5), member("dir/b", 0)]).unwrap();
        // Local headers: 30 + name each; central entries: 46 + name each; end record: 22.
        assert_eq!(layout.data_range(0), 35..40);
        assert_eq!(layout.data_range(1), 40 + 35..40 + 35);
        assert_eq!(layout.central_at, 75);
        assert_eq!(layout.end_at, 75 + 51 + 51);
        assert_eq!(layout.total_len(), 75 + 51 + 51 + 22);
        assert!(!layout.has_zip64_end());
        let all = assemble(
            &layout,
            &[b"hello".to_vec(), vec![]],
            &[Some(1), Some(0)],
            0..layout.total_len(),
        );
        assert_eq!(all.len() as u64, layout.total_len());
        assert_eq!(&all[..4], b"PK\x03\x04");
        assert_eq!(&all[35..40], b"hello");
        assert_eq!(&all[75..79], b"PK\x01\x02");
        assert_eq!(&all[all.len() - 22..all.len() - 18], b"PK\x05\x06");
    }

    #[test]
    fn zip64_only_where_a_field_overflows() {
        // The central directory starts at byte 0xFFFFFFFE: no ZIP64 anywhere.
        let just_under = Layout::new(vec![member("a", MAX32 - 1 - 31)]).unwrap();
        assert_eq!(just_under.central_at, MAX32 - 1);
        assert_eq!(just_under.entries[0].central_extra_len(), 0);
        assert!(!just_under.has_zip64_end());
        // One byte more, and only the end records need ZIP64, for the central directory's offset.
        let offset = Layout::new(vec![member("a", MAX32 - 31)]).unwrap();
        assert_eq!(offset.entries[0].central_extra_len(), 0);
        assert!(offset.has_zip64_end());
        // A member of exactly 0xFFFFFFFF bytes needs ZIP64: that value is the marker.
        let at = Layout::new(vec![member("a", MAX32)]).unwrap();
        assert_eq!(at.data_range(0).start, 31 + 20);
        assert!(at.has_zip64_end());
        assert_eq!(at.entries[0].central_len(), 46 + 1 + 20);
        // A small member after a big one keeps 32-bit sizes but needs its offset in ZIP64.
        let after = Layout::new(vec![member("a", 3), member("b", MAX32), member("c", 1)]).unwrap();
        let extras: Vec<u64> = after.entries.iter().map(Entry::central_extra_len).collect();
        assert_eq!(extras, [0, 20, 12]);
        assert_eq!(after.total_len(), after.end_at + 22 + 56 + 20);
        let many = Layout::new((0..MAX16).map(|i| member(&i.to_string(), 0)).collect()).unwrap();
        assert!(many.has_zip64_end());
        let fewer = Layout::new((0..MAX16 - 1).map(|i| member(&i.to_string(), 0)).collect()).unwrap();
        assert!(!fewer.has_zip64_end());
    }

    #[test]
    fn dos_times_are_clamped() {
        // 2024-02-29 12:34:56 UTC
        assert_eq!(
            dos_time(1_709_210_096),
            ((12 << 11) | (34 << 5) | 28, (44 << 9) | (2 << 5) | 29)
        );
        assert_eq!(dos_time(0), (0, (1 << 5) | 1));
        assert_eq!(dos_time(i64::MIN), dos_time(DOS_FIRST));
        assert_eq!(
            dos_time(i64::MAX),
            ((23 << 11) | (59 << 5) | 29, (127 << 9) | (12 << 5) | 31)
        );
    }

    #[test]
    fn waits_only_for_the_bytes_that_hold_a_crc() {
        let layout = Layout::new(vec![member("a", 10), member("b", 10)]).unwrap();
        let total = layout.total_len();
        let none = [None, None];
        // A local header up to its CRC, and every byte of a member, need no CRC.
        assert_eq!(layout.piece_at(0, total, &none).unwrap().len(), LOCAL_CRC_AT);
        assert_eq!(layout.piece_at(LOCAL_CRC_AT, total, &none), Err(NeedsCrc { member: 0 }));
        assert_eq!(layout.piece_at(17, total, &none), Err(NeedsCrc { member: 0 }));
        assert_eq!(layout.piece_at(18, 31, &none).unwrap().len(), 13);
        assert!(matches!(
            layout.piece_at(31, total, &none),
            Ok(Piece::File {
                member: 0,
                offset: 0,
                len: 10
            })
        ));
        // The second member's header waits for the second CRC only.
        let second = layout.entries[1].local_at;
        assert_eq!(
            layout.piece_at(second + 14, total, &[None, Some(7)]).unwrap().len(),
            31 - 14
        );
        assert_eq!(
            layout.piece_at(second + 14, total, &[Some(7), None]),
            Err(NeedsCrc { member: 1 })
        );
        // The central directory needs each CRC in turn, and the end record none.
        let central = layout.central_at;
        let piece = layout.piece_at(central, total, &[Some(1), None]).unwrap();
        assert_eq!(piece.len(), 47 + CENTRAL_CRC_AT);
        assert_eq!(layout.piece_at(layout.end_at, total, &none).unwrap().len(), 22);
        let collected: Vec<_> = layout.pieces(0..total, &none).collect();
        assert_eq!(collected.last(), Some(&Err(NeedsCrc { member: 0 })));
    }

    fn names_and_sizes() -> impl Strategy<Value = Vec<(String, u64)>> {
        proptest::collection::vec(("[a-zé/ ]{1,12}", 0u64..300), 1..6)
    }

    proptest! {
        #[test]
        fn any_split_of_a_range_gives_the_same_bytes(
            members in names_and_sizes(),
            cuts in proptest::collection::vec(any::<u64>(), 0..8),
        ) {
            let files: Vec<Vec<u8>> = members.iter().enumerate().map(|(i, (_, s))| content(i, *s)).collect();
            let crcs: Vec<Option<u32>> = (0..members.len()).map(|i| Some(0xDEAD_0000 + i as u32)).collect();
            let layout = Layout::new(members.iter().map(|(n, s)| member(n, *s)).collect()).unwrap();
            let total = layout.total_len();
            let whole = assemble(&layout, &files, &crcs, 0..total);
            prop_assert_eq!(whole.len() as u64, total);
            for step in [1, 7] {
                let mut joined = Vec::new();
                for at in (0..total).step_by(step) {
                    joined.extend(assemble(&layout, &files, &crcs, at..(at + step as u64).min(total)));
                }
                prop_assert_eq!(&joined, &whole);
            }
            let mut bounds: Vec<u64> = cuts.iter().map(|c| c % (total + 1)).chain([0, total]).collect();
            bounds.sort_unstable();
            let mut joined = Vec::new();
            for w in bounds.windows(2).filter(|w| w[0] < w[1]) {
                joined.extend(assemble(&layout, &files, &crcs, w[0]..w[1]));
            }
            prop_assert_eq!(joined, whole);
        }

        #[test]
        fn no_wrong_byte_while_crcs_are_missing(
            members in names_and_sizes(),
            known_mask in any::<u8>(),
            start in any::<u64>(),
        ) {
            let files: Vec<Vec<u8>> = members.iter().enumerate().map(|(i, (_, s))| content(i, *s)).collect();
            let all: Vec<Option<u32>> = (0..members.len()).map(|i| Some(0xBEEF_0000 + i as u32)).collect();
            let some: Vec<Option<u32>> = all.iter().enumerate().map(|(i, c)| c.filter(|_| known_mask >> i & 1 == 1)).collect();
            let layout = Layout::new(members.iter().map(|(n, s)| member(n, *s)).collect()).unwrap();
            let total = layout.total_len();
            let whole = assemble(&layout, &files, &all, 0..total);
            let start = start % total;
            let mut at = start;
            for piece in layout.pieces(start..total, &some) {
                match piece {
                    Ok(Piece::Bytes(b)) => {
                        prop_assert_eq!(&b[..], &whole[at as usize..at as usize + b.len()]);
                        at += b.len() as u64;
                    }
                    Ok(Piece::File { member, offset, len }) => {
                        prop_assert_eq!(layout.data_range(member).start + offset, at);
                        at += len;
                    }
                    // It stops at one of that member's CRC bytes, and only when that CRC is unknown.
                    Err(NeedsCrc { member }) => {
                        let e = &layout.entries[member];
                        let fields = [e.local_at + LOCAL_CRC_AT, e.central_at + CENTRAL_CRC_AT];
                        prop_assert!(some[member].is_none());
                        prop_assert!(fields.iter().any(|f| (*f..f + 4).contains(&at)), "stopped at {}", at);
                    }
                }
            }
            if some.iter().all(Option::is_some) {
                prop_assert_eq!(at, total);
            }
        }
    }
}
