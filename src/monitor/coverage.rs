//! Byte-range coverage: the union of the ranges served, so a resumed or segmented download counts
//! once. Pure data; no I/O.

use serde::{Deserialize, Serialize};

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn new(start: u64, end: u64) -> Option<Self> {
        (start < end).then_some(ByteRange { start, end })
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Parses a `Content-Range` response header (`bytes 0-499/1234`) into the range it sent.
    pub fn from_content_range(v: &str, file_size: u64) -> Option<Self> {
        let rest = v.trim().strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        if total != "*" && total.parse::<u64>().ok()? != file_size {
            return None;
        }
        let (a, b) = range.split_once('-')?;
        let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        if b >= file_size {
            return None;
        }
        ByteRange::new(a, b.checked_add(1)?)
    }
}

/// A sorted set of disjoint, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage(Vec<ByteRange>);

impl Coverage {
    pub fn insert(&mut self, r: ByteRange) {
        let mut merged = r;
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &x in &self.0 {
            if x.end < merged.start {
                out.push(x);
            } else if merged.end < x.start {
                if !placed {
                    out.push(merged);
                    placed = true;
                }
                out.push(x);
            } else {
                merged = ByteRange {
                    start: merged.start.min(x.start),
                    end: merged.end.max(x.end),
                };
            }
        }
        if !placed {
            out.push(merged);
        }
        self.0 = out;
    }

    pub fn covered(&self) -> u64 {
        self.0.iter().map(ByteRange::len).sum()
    }

    /// Whether `[0, size)` is wholly covered. An empty file is covered by any completed request.
    pub fn covers(&self, size: u64) -> bool {
        match self.0.as_slice() {
            [only] => only.start == 0 && only.end >= size,
            _ => false,
        }
    }

    pub fn fraction(&self, size: u64) -> f64 {
        if size == 0 {
            return if self.0.is_empty() { 0.0 } else { 1.0 };
        }
        (self.covered() as f64 / size as f64).min(1.0)
    }

    pub fn ranges(&self) -> &[ByteRange] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cov(rs: &[(u64, u64)]) -> Coverage {
        let mut c = Coverage::default();
        for &(a, b) in rs {
            c.insert(ByteRange::new(a, b).unwrap());
        }
        c
    }

    #[test]
    fn union_not_sum() {
        type Case<'a> = (&'a [(u64, u64)], u64, bool);
        let table: &[Case] = &[
            (&[(0, 100)], 100, true),
            (&[(0, 50), (50, 100)], 100, true),
            (&[(50, 100), (0, 50)], 100, true),
            (&[(0, 60), (40, 100)], 100, true),
            (&[(0, 60), (0, 60)], 60, false),
            (&[(0, 10), (20, 30), (5, 25)], 30, false),
            (&[(10, 100)], 90, false),
            (&[(0, 10), (20, 100), (10, 20)], 100, true),
            (&[(0, 99)], 99, false),
        ];
        for (ranges, covered, whole) in table {
            let c = cov(ranges);
            assert_eq!(c.covered(), *covered, "{ranges:?}");
            assert_eq!(c.covers(100), *whole, "{ranges:?}");
        }
        assert_eq!(cov(&[(0, 10), (20, 30), (5, 25)]).ranges().len(), 1);
    }

    #[test]
    fn content_range_parsing() {
        let table: &[(&str, Option<(u64, u64)>)] = &[
            ("bytes 0-499/1000", Some((0, 500))),
            ("bytes 500-999/1000", Some((500, 1000))),
            ("bytes 500-999/*", Some((500, 1000))),
            ("bytes 500-1000/1000", None),
            ("bytes 500-999/999", None),
            ("bytes 9-3/1000", None),
            ("items 0-1/1000", None),
            ("bytes -1/1000", None),
            ("", None),
        ];
        for (v, want) in table {
            let got = ByteRange::from_content_range(v, 1000).map(|r| (r.start, r.end));
            assert_eq!(got, *want, "{v:?}");
        }
    }
}
