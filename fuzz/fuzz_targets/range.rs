//! The byte-range parsers: the request's `Range` header (where a response starts) and the
//! response's `Content-Range` (what a log line proves was sent). Whatever the text, the result
//! lies inside the file, and a range that parses prints back to the same text's meaning. Input:
//! the file size in decimal, a newline, the header's text.
#![no_main]

use ferry::links::rules::range_start;
use ferry::model::coverage::{ByteRange, Coverage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Some((size, text)) = input.split_once('\n') else {
        return;
    };
    let Ok(size) = size.parse::<u64>() else { return };
    let start = range_start(Some(text), size);
    assert!(
        start == 0 || start < size,
        "{text:?} starts at {start} in a file of {size}"
    );

    let Some(r) = ByteRange::from_content_range(text, size) else {
        return;
    };
    assert!(
        r.start < r.end && r.end <= size,
        "{text:?} gave {r:?} for a file of {size}"
    );
    assert_eq!(r.len(), r.end - r.start);
    let again = format!("bytes {}-{}/{size}", r.start, r.end - 1);
    assert_eq!(ByteRange::from_content_range(&again, size), Some(r), "{text:?}");
    let mut c = Coverage::default();
    c.insert(r);
    c.insert(r);
    assert_eq!(c.covered(), r.len());
    assert_eq!(c.covers(size), r.start == 0 && r.end == size);
});
