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

    /// How many bytes of `r` are already covered.
    pub fn overlap(&self, r: ByteRange) -> u64 {
        self.0
            .iter()
            .map(|x| x.end.min(r.end).saturating_sub(x.start.max(r.start)))
            .sum()
    }

    /// Whether inserting `r` would add a range of its own instead of growing or joining one.
    pub fn would_fragment(&self, r: ByteRange) -> bool {
        !self.0.iter().any(|x| x.start <= r.end && r.start <= x.end)
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

    mod props {
        //! Coverage against the simplest model there is: one flag per byte of a small file.
        use proptest::prelude::*;

        use super::super::*;

        const SIZE: u64 = 64;

        fn range() -> impl Strategy<Value = ByteRange> {
            (0..SIZE).prop_flat_map(|a| (a + 1..=SIZE).prop_map(move |b| ByteRange::new(a, b).unwrap()))
        }

        fn bitmap(rs: &[ByteRange]) -> Vec<bool> {
            let mut bits = vec![false; SIZE as usize];
            for r in rs {
                bits[r.start as usize..r.end as usize].fill(true);
            }
            bits
        }

        fn union(rs: &[ByteRange]) -> Coverage {
            let mut c = Coverage::default();
            for &r in rs {
                c.insert(r);
            }
            c
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever ranges arrive, the union holds exactly the bytes they name, kept as
            /// sorted, non-empty, disjoint and non-adjacent ranges.
            #[test]
            fn union_matches_a_bitmap(rs in prop::collection::vec(range(), 0..24)) {
                let c = union(&rs);
                let want = bitmap(&rs);
                prop_assert_eq!(bitmap(c.ranges()), want.clone());
                prop_assert_eq!(c.covered(), want.iter().filter(|b| **b).count() as u64);
                prop_assert_eq!(c.covers(SIZE), want.iter().all(|b| *b));
                prop_assert!(c.ranges().iter().all(|r| !r.is_empty()));
                prop_assert!(c.ranges().windows(2).all(|w| w[0].end < w[1].start), "{:?}", c);
                let f = c.fraction(SIZE);
                prop_assert!((f - c.covered() as f64 / SIZE as f64).abs() < 1e-12);
            }

            /// Out-of-order and repeated arrivals give the same union.
            #[test]
            fn order_and_repeats_do_not_matter(
                (rs, shuffled) in prop::collection::vec(range(), 0..16)
                    .prop_flat_map(|rs| (Just(rs.clone()), Just(rs).prop_shuffle())),
                again in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            ) {
                let mut replayed = shuffled.clone();
                if !rs.is_empty() {
                    replayed.extend(again.iter().map(|i| rs[i.index(rs.len())]));
                }
                prop_assert_eq!(union(&rs), union(&shuffled));
                prop_assert_eq!(union(&rs), union(&replayed));
            }

            /// A download resumed or segmented at any points, with overlaps, in any order, covers
            /// the file once: the union is the file, never more.
            #[test]
            fn resumed_segments_cover_once(
                cuts in prop::collection::btree_set(1..SIZE, 0..8),
                overlap in 0..8u64,
                seed in any::<u64>(),
            ) {
                let mut points: Vec<u64> = std::iter::once(0).chain(cuts).chain([SIZE]).collect();
                points.dedup();
                let mut segs: Vec<ByteRange> = points
                    .windows(2)
                    .map(|w| ByteRange::new(w[0], (w[1] + overlap).min(SIZE)).unwrap())
                    .collect();
                // A deterministic shuffle from the seed: out-of-order arrival.
                let n = segs.len();
                for i in (1..n).rev() {
                    segs.swap(i, (seed.rotate_left(i as u32) % (i as u64 + 1)) as usize);
                }
                let c = union(&segs);
                prop_assert!(c.covers(SIZE));
                prop_assert_eq!(c.covered(), SIZE);
                // Missing any one segment without overlap leaves a hole.
                if overlap == 0 && n > 1 {
                    let partial = union(&segs[1..]);
                    prop_assert!(!partial.covers(SIZE));
                    prop_assert_eq!(partial.covered(), SIZE - segs[0].len());
                }
            }

            /// Content-Range as nginx writes it parses back to the range it names; a range past
            /// the end or for another size is refused.
            #[test]
            fn content_range_round_trips(size in 1..u64::MAX, a in any::<u64>(), b in any::<u64>()) {
                let (a, b) = (a % size, b % size);
                let v = format!("bytes {a}-{b}/{size}");
                let got = ByteRange::from_content_range(&v, size);
                if a <= b {
                    prop_assert_eq!(got, Some(ByteRange { start: a, end: b + 1 }));
                    prop_assert_eq!(ByteRange::from_content_range(&format!("bytes {a}-{b}/*"), size), got);
                } else {
                    prop_assert_eq!(got, None);
                }
                prop_assert_eq!(ByteRange::from_content_range(&v, size - 1), None);
                let past = format!("bytes {a}-{size}/{size}");
                prop_assert_eq!(ByteRange::from_content_range(&past, size), None);
            }
        }
    }
}
