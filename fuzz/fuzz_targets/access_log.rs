//! The access-log line parser, then the line applied to a link twice (a replayed line), as the
//! follower and `Links::apply_log` do. A line either parses into a record whose fields are what
//! the parser promises, or is refused with an error naming what was wrong; applying it never
//! panics and never breaks the link's books.
#![no_main]

use ferry::links::rules::{self, Admission, Method};
use ferry::model::ClientKey;
use ferry::monitor::record::AccessRecord;
use ferry_fuzz::POLICY;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As the follower reads a line: bytes that are not UTF-8 (a raw User-Agent) decoded lossily.
    let line = String::from_utf8_lossy(data);
    let rec = match AccessRecord::parse(&line) {
        Ok(rec) => rec,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("access log line "), "{msg}");
            return;
        }
    };
    assert_eq!(rec.request_id.len(), 32);
    assert!(rec.request_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(rec.content_range.as_deref() != Some(""));

    let Some(client) = ClientKey::new(&rec.client, &rec.user_agent) else {
        return;
    };
    for size in [0, 1000, u64::MAX] {
        for max_downloads in [1, 3] {
            let mut link = ferry_fuzz::link(size, max_downloads);
            let now = 1_000_000;
            let a = Admission {
                request_id: rec.request_id.as_str().into(),
                method: Method::parse(&rec.method),
                range: Some("bytes=0-".into()),
                if_range: None,
                client: client.clone(),
                conn: None,
                first_on_connection: false,
            };
            let _ = rules::admit(&mut link, &a, now, &POLICY);
            rules::sample(&mut link, &rec.request_id, Some(rec.bytes_sent), now + 1);
            // Settled with the socket's last word, then replayed without it.
            for (t, acked) in [(now + 2, Some(rec.bytes_sent)), (now + 3, None)] {
                let before = link.clone();
                rules::settle(&mut link, &rec, client.clone(), acked, t, &POLICY);
                ferry_fuzz::check_books(&before, &link);
            }
        }
    }
});
