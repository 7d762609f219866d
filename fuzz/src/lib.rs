//! What the fuzz targets share: a link to apply facts to, and the books every link must keep
//! whatever is applied to it.

use ferry::links::path::{FileIdentity, RelPath};
use ferry::links::rules::{self, MAX_REQUESTS_KEPT};
use ferry::links::{Link, LinkState, TunnelId};
use ferry::monitor::coverage::Coverage;

/// A fresh open link to a file of `size` bytes, expiring an hour after t = 0.
pub fn link(size: u64, max_downloads: u32) -> Link {
    Link {
        id: TunnelId::parse("fuzzfuzzfuzzfuzzfuzzfuzz").expect("a valid id"),
        file_path: RelPath::parse("f.bin").expect("a valid path"),
        file_size: size,
        identity: FileIdentity {
            dev: 1,
            ino: 2,
            size,
            mtime_ns: 3,
        },
        state: LinkState::Open,
        created_at_ms: 0,
        issued_at_s: 0,
        expires_at_ms: 3_600_000,
        max_downloads,
        downloads_completed: 0,
        bytes_served: 0,
        coverage: Coverage::default(),
        claims: vec![],
        inflight: vec![],
        clients: vec![],
        requests: vec![],
        last_activity_ms: None,
        last_progress_ms: None,
        completer: None,
        grace_until_ms: None,
        close_reason: None,
        closed_at_ms: None,
        note: None,
        rate_limit_bytes_per_second: None,
    }
}

fn rank(s: LinkState) -> u8 {
    match s {
        LinkState::Open => 0,
        LinkState::Downloading => 1,
        LinkState::Completed => 2,
        LinkState::Closed => 3,
    }
}

fn sane(c: &Coverage, size: u64) {
    let r = c.ranges();
    assert!(r.iter().all(|r| r.start < r.end && r.end <= size), "{c:?} outside a file of {size}");
    assert!(r.windows(2).all(|w| w[0].end < w[1].start), "{c:?} not disjoint and sorted");
}

/// What must hold after one fact was applied to a link that was `before`.
pub fn check_books(before: &Link, after: &Link) {
    assert!(rank(after.state) >= rank(before.state), "{:?} went back to {:?}", before.state, after.state);
    assert!(after.downloads_completed <= after.max_downloads);
    assert!(after.downloads_completed >= before.downloads_completed);
    assert!(after.bytes_served >= before.bytes_served);
    assert!(after.requests.len() <= MAX_REQUESTS_KEPT);
    sane(&after.coverage, after.file_size);
    for c in &after.claims {
        sane(&c.coverage, after.file_size);
    }
    let p = rules::progress(after);
    assert!((0.0..=1.0).contains(&p), "progress {p}");
}
