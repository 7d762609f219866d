//! What a link previewer is shown, and how a file's name goes out in `Content-Disposition`.

use crate::data_dir::display_bytes;
use crate::model::Link;
use crate::model::format::{URL_SEGMENT, html_escape, human_size};

/// The HTML a link previewer gets: the file's name and size, nothing external, no referrer.
pub fn preview_html(link: &Link) -> String {
    let name = html_escape(&link.display_name());
    let size = human_size(link.file_size);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta name=\"robots\" content=\"noindex\"><meta property=\"og:title\" content=\"{name}\">\
         <meta property=\"og:description\" content=\"{size}\"><title>{name}</title></head>\
         <body><h1>{name}</h1><p>{size}</p></body></html>\n"
    )
}

/// Builds the `Content-Disposition` for a file name from its raw bytes. A UTF-8 name goes out
/// exactly, as `filename*=UTF-8''...`. Other bytes cannot be declared as UTF-8 there (RFC 8187),
/// and browsers would drop the parameter, so such a name's bytes go out percent-encoded as
/// ISO-8859-1. That is the charset of most names that old Samba shares wrote, and it maps every
/// byte to one character, so a Latin-1 `caf\xE9` is saved as `café`. `filename` carries the
/// readable form (`caf%E9`) for clients that read only that parameter.
pub fn content_disposition_bytes(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(text) => content_disposition(text),
        Err(_) => {
            let readable = display_bytes(name);
            let exact = percent_encoding::percent_encode(name, URL_SEGMENT);
            format!(
                "attachment; filename=\"{}\"; filename*=ISO-8859-1''{exact}",
                ascii_fallback(&readable)
            )
        }
    }
}

/// `Content-Disposition` for the file's real name: an ASCII fallback and the exact UTF-8 name.
pub fn content_disposition(name: &str) -> String {
    let exact = percent_encoding::utf8_percent_encode(name, URL_SEGMENT);
    format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{exact}",
        ascii_fallback(name)
    )
}

/// Turns a name into printable ASCII for `filename="..."`, writing every other character, and
/// quotes and backslashes, as `_`.
fn ascii_fallback(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_dir::RelPath;
    use crate::model::link::test_link;

    #[test]
    fn previews_escape_the_name() {
        let mut l = test_link(1_500_000, 1);
        l.file_path = RelPath::parse("<b>\"x\"&.txt").unwrap();
        let html = preview_html(&l);
        assert!(html.contains("content=\"&lt;b&gt;&quot;x&quot;&amp;.txt\""), "{html}");
        assert!(html.contains("1.5 MB"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn disposition_carries_a_name_that_is_not_utf8_as_its_bytes() {
        assert_eq!(
            content_disposition_bytes(b"men\xfc caf\xe9.pdf"),
            "attachment; filename=\"men%FC caf%E9.pdf\"; filename*=ISO-8859-1''men%FC%20caf%E9.pdf"
        );
        assert_eq!(
            content_disposition_bytes("café.pdf".as_bytes()),
            content_disposition("café.pdf")
        );
    }

    #[test]
    fn disposition_carries_the_real_name() {
        assert_eq!(
            content_disposition("résumé \"v2\".pdf"),
            "attachment; filename=\"r_sum_ _v2_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.pdf"
        );
    }
}
