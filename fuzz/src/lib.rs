//! What the fuzz targets share: a link to apply facts to, and the books every link must keep
//! whatever is applied to it.

use ferry::data_dir::{FileIdentity, RelPath};
use ferry::links::rules::{self, MAX_CLIENTS_KEPT, MAX_FRAGMENTS, MAX_READERS_KEPT, MAX_REQUESTS_KEPT, Policy};
use ferry::model::coverage::Coverage;
use ferry::model::{Link, TunnelId};

/// The policy the targets apply facts under.
pub const POLICY: Policy = Policy {
    max_tunnel_s: 3600,
    grace_ms: 60_000,
    resume_ms: 30_000,
    stall_ms: 300_000,
    preview_bytes: 1 << 20,
    grace_bytes: 16 << 20,
    refetch_bytes: 16 << 20,
    default_expires_s: 3600,
    default_max_downloads: 1,
    max_downloads_limit: 100,
};

/// A fresh open link to a file of `size` bytes, expiring an hour after t = 0.
pub fn link(size: u64, max_downloads: u32) -> Link {
    let identity = FileIdentity {
        dev: 1,
        ino: 2,
        size,
        mtime_ns: 3,
    };
    Link::new(
        TunnelId::parse("fuzzfuzzfuzzfuzzfuzzfuzz").expect("a valid id"),
        RelPath::parse("f.bin").expect("a valid path"),
        identity,
        0,
        3_600_000,
        max_downloads,
    )
}

fn sane(c: &Coverage, size: u64) {
    let r = c.ranges();
    assert!(
        r.iter().all(|r| r.start < r.end && r.end <= size),
        "{c:?} outside a file of {size}"
    );
    assert!(
        r.windows(2).all(|w| w[0].end < w[1].start),
        "{c:?} not disjoint and sorted"
    );
}

/// What must hold after one fact was applied to a link that was `before`.
pub fn check_books(before: &Link, after: &Link) {
    assert!(
        after.state >= before.state,
        "{:?} went back to {:?}",
        before.state,
        after.state
    );
    assert!(after.downloads_completed <= after.max_downloads);
    assert!(after.downloads_completed >= before.downloads_completed);
    assert!(after.bytes_served >= before.bytes_served);
    assert!(after.requests.len() <= MAX_REQUESTS_KEPT);
    assert_eq!(after.slots.len(), after.max_downloads as usize);
    for s in &after.slots {
        sane(&s.coverage, after.file_size);
        assert!(s.coverage.ranges().len() <= MAX_FRAGMENTS);
    }
    let complete = after.slots.iter().filter(|s| s.complete).count() as u32;
    assert_eq!(after.downloads_completed, complete);
    assert!(after.claims.len() <= after.max_downloads as usize);
    assert!(after.claims.iter().all(|c| (c.slot as usize) < after.slots.len()));
    assert!(after.clients.len() <= MAX_CLIENTS_KEPT);
    assert!(after.reads.len() <= MAX_READERS_KEPT);
    assert!(after.grace_sent <= rules::grace_cap(after, &POLICY));
    let p = rules::progress(after);
    assert!((0.0..=1.0).contains(&p), "progress {p}");
}
