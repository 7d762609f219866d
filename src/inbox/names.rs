//! The names received files get (SPEC §12). A sender chooses a file's name, so it is cleaned
//! before it comes near the file system: Unicode NFC; no separators, `..`, control or bidi
//! characters, nor `<>:"|?*\`; no leading `.` or `-`, no trailing dot or space; at most 255 bytes.
//! A name already taken gets ` (1)`, ` (2)`, ... before its extension, so nothing is overwritten.

use unicode_normalization::UnicodeNormalization as _;

/// The longest name most Linux file systems hold, in bytes.
const MAX_NAME: usize = 255;
/// What a name that cleans down to nothing becomes.
const FALLBACK: &str = "upload";

/// Characters that change the direction of text, which can make `txt.exe` look like `exe.txt`.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The cleaned form of a name a sender gave. Never empty, never a path.
pub fn clean(raw: &str) -> String {
    let mut name: String = raw
        .nfc()
        .map(|c| match c {
            '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
            c if c.is_control() || is_bidi(c) => '_',
            c => c,
        })
        .collect();
    while name.contains("..") {
        name = name.replace("..", "_");
    }
    let name = name.trim_start_matches(['.', '-', ' ']).trim_end_matches(['.', ' ']);
    let name = if name.is_empty() { FALLBACK } else { name };
    fit(name, MAX_NAME)
}

/// `name` cut to at most `max` bytes, keeping a short extension and never splitting a character.
fn fit(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let (stem, ext) = split_extension(name);
    let ext = if ext.len() <= 16 { ext } else { "" };
    let mut cut = max - ext.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = stem[..cut].trim_end_matches(['.', ' ']);
    format!("{}{ext}", if stem.is_empty() { FALLBACK } else { stem })
}

/// `("photo", ".jpg")` for `photo.jpg`; a name without a dot (past its first character) has an
/// empty extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// The `n`th alternative of a cleaned name: `photo (1).jpg`, `photo (2).jpg`, ... (`n` ≥ 1),
/// still within 255 bytes.
pub fn numbered(name: &str, n: u32) -> String {
    let (stem, ext) = split_extension(name);
    let suffix = format!(" ({n}){ext}");
    let mut cut = stem.len().min(MAX_NAME.saturating_sub(suffix.len()));
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &stem[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_names_are_cleaned() {
        let table: &[(&str, &str)] = &[
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "____etc_passwd"),
            ("a/b\\c.txt", "a_b_c.txt"),
            ("..", "_"),
            ("", FALLBACK),
            (".bashrc", "bashrc"),
            ("-rf", "rf"),
            ("name. . ", "name"),
            ("tab\there\n.txt", "tab_here_.txt"),
            ("evil\u{202E}gpj.exe", "evil_gpj.exe"),
            ("what?<>:\"|*.txt", "what_______.txt"),
            ("a..b.txt", "a_b.txt"),
            // NFD (e + combining acute) becomes NFC (é).
            ("cafe\u{0301}.txt", "caf\u{e9}.txt"),
            ("日本語.jpg", "日本語.jpg"),
        ];
        for (raw, want) in table {
            assert_eq!(clean(raw), *want, "{raw:?}");
        }
    }

    #[test]
    fn a_long_name_keeps_its_extension_within_255_bytes() {
        let long = format!("{}.jpeg", "é".repeat(200));
        let c = clean(&long);
        assert!(c.len() <= 255 && c.ends_with(".jpeg"), "{} bytes: {c}", c.len());
        assert_eq!(clean(&"x".repeat(300)).len(), 255);
        let n = numbered(&c, 12);
        assert!(n.len() <= 255 && n.ends_with(" (12).jpeg"), "{n}");
    }

    #[test]
    fn alternatives_go_before_the_extension() {
        assert_eq!(numbered("photo.jpg", 1), "photo (1).jpg");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered("README", 3), "README (3)");
    }

    proptest! {
        #[test]
        fn any_name_cleans_to_one_safe_component(raw in "\\PC{0,300}") {
            let c = clean(&raw);
            prop_assert!(!c.is_empty() && c.len() <= 255);
            prop_assert!(!c.contains('/') && !c.contains('\\') && !c.contains(".."));
            prop_assert!(!c.starts_with('.') && !c.starts_with('-'));
            prop_assert!(!c.ends_with('.') && !c.ends_with(' '));
            prop_assert!(!c.chars().any(|ch| ch.is_control() || is_bidi(ch)));
            prop_assert_eq!(clean(&c), c.clone(), "cleaning is idempotent");
        }
    }
}
