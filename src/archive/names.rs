//! Member names, and the archive's own name (SPEC §11).
//!
//! A member's name is its path relative to the shared folder, made safe to extract anywhere:
//! bytes that are not UTF-8 are written `%XX` (the ZIP says its names are UTF-8, flag bit 11), a
//! backslash becomes `_` (Windows tools read it as a folder separator), and there is no leading
//! `/`, no `.` and no `..`. Two members whose names end up equal, or a member named like a folder
//! another member lies in, would overwrite each other when extracted, so all but the first get
//! ` (n)` before the extension: `a.txt`, `a (1).txt`, `a (2).txt`. Names are compared exactly, byte
//! for byte.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::time::Civil;

/// The longest member name a ZIP header can hold, in bytes.
pub const MAX_NAME_LEN: usize = 0xFFFF;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a member's path is empty")]
    Empty,
    #[error("a member's path may not contain `..`")]
    Parent,
    #[error("a member's name is longer than a ZIP allows ({MAX_NAME_LEN} bytes)")]
    TooLong,
}

/// The cleaned name of the member at `rel`, a path relative to the shared folder in exact bytes.
/// It does not make the name unique; [`member_names`] does.
pub fn member_name(rel: &[u8]) -> Result<String, NameError> {
    let mut out = String::with_capacity(rel.len());
    for part in rel.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err(NameError::Parent),
            _ => {}
        }
        if !out.is_empty() {
            out.push('/');
        }
        clean_component(part, &mut out);
    }
    if out.is_empty() {
        return Err(NameError::Empty);
    }
    if out.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    Ok(out)
}

/// The members' names, in the order of `paths`, cleaned and made unique.
pub fn member_names<'a>(paths: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<String>, NameError> {
    let cleaned = paths.into_iter().map(member_name).collect::<Result<Vec<_>, _>>()?;
    let folders: HashSet<&str> = cleaned.iter().flat_map(|n| folders_of(n)).collect();
    // A renamed member must not take the name of any other member, nor of a folder.
    let avoid: HashSet<&str> = cleaned
        .iter()
        .map(String::as_str)
        .chain(folders.iter().copied())
        .collect();
    let mut taken: HashSet<String> = HashSet::with_capacity(cleaned.len());
    // The next number to try for each name, so that many duplicates cost no repeated search.
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut out = Vec::with_capacity(cleaned.len());
    for name in &cleaned {
        if !folders.contains(name.as_str()) && taken.insert(name.clone()) {
            out.push(name.clone());
            continue;
        }
        let n = next.entry(name).or_insert(1);
        let renamed = loop {
            let candidate = numbered(name, *n);
            *n += 1;
            if !avoid.contains(candidate.as_str()) && !taken.contains(&candidate) {
                break candidate;
            }
        };
        if renamed.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        taken.insert(renamed.clone());
        out.push(renamed);
    }
    Ok(out)
}

/// The archive's file name: the shared folder's (or file's) name and `.zip` when one path is
/// shared, else `ferry-<YYYY-MM-DD>.zip` with the UTC date of `now_secs` (Unix seconds).
pub fn archive_name(paths: &[&[u8]], now_secs: i64) -> String {
    let last = match paths {
        [one] => one.split(|&b| b == b'/').rfind(|p| !p.is_empty() && *p != b"."),
        _ => None,
    };
    match last {
        Some(name) if name != b".." => {
            let mut out = String::with_capacity(name.len() + 4);
            clean_component(name, &mut out);
            out.push_str(".zip");
            out
        }
        _ => format!("ferry-{}.zip", Civil::from_unix(now_secs).date()),
    }
}

/// Appends one path component: UTF-8 text as it is, other bytes as `%XX`, `\` as `_`.
fn clean_component(part: &[u8], out: &mut String) {
    for chunk in part.utf8_chunks() {
        out.extend(chunk.valid().chars().map(|c| if c == '\\' { '_' } else { c }));
        for b in chunk.invalid() {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The folders a member lies in: `a/b/c` lies in `a` and `a/b`.
fn folders_of(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(|(i, _)| &name[..i])
}

/// `name` with ` (n)` before its extension. The extension is what follows the last dot of the
/// last component, unless that dot starts it (`.bashrc` has none); `.tar.gz` and the like count
/// as one extension.
fn numbered(name: &str, n: u64) -> String {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    let file = &name[base..];
    let ext = match file.rfind('.') {
        Some(0) | None => file.len(),
        Some(dot) => {
            let stem = &file[..dot];
            match stem.rfind('.') {
                Some(inner) if inner > 0 && stem[inner..].eq_ignore_ascii_case(".tar") => inner,
                _ => dot,
            }
        }
    };
    let split = base + ext;
    format!("{} ({n}){}", &name[..split], &name[split..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_one_name() {
        let cases: &[(&[u8], Result<&str, NameError>)] = &[
            (b"a.txt", Ok("a.txt")),
            (b"dir/sub/a.txt", Ok("dir/sub/a.txt")),
            (b"/etc/passwd", Ok("etc/passwd")),
            (b"./a//b/./c", Ok("a/b/c")),
            (b"dir/", Ok("dir")),
            (b"back\\slash\\name", Ok("back_slash_name")),
            ("café/naïve – ü.txt".as_bytes(), Ok("café/naïve – ü.txt")),
            (b"bad\xffname\xc3.txt", Ok("bad%FFname%C3.txt")),
            (b"50%.txt", Ok("50%.txt")),
            (b"", Err(NameError::Empty)),
            (b"/", Err(NameError::Empty)),
            (b"./.", Err(NameError::Empty)),
            (b"..", Err(NameError::Parent)),
            (b"a/../b", Err(NameError::Parent)),
            (b"..a/b..", Ok("..a/b..")),
        ];
        for (input, want) in cases {
            let got = member_name(input);
            assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{}", input.escape_ascii());
        }
        assert_eq!(member_name(&[b'a'; MAX_NAME_LEN]).map(|n| n.len()), Ok(MAX_NAME_LEN));
        assert_eq!(member_name(&[b'a'; MAX_NAME_LEN + 1]), Err(NameError::TooLong));
    }

    fn names(paths: &[&str]) -> Vec<String> {
        member_names(paths.iter().map(|p| p.as_bytes())).unwrap()
    }

    #[test]
    fn duplicates_get_a_number_before_the_extension() {
        assert_eq!(names(&["a.txt", "a.txt", "a.txt"]), ["a.txt", "a (1).txt", "a (2).txt"]);
        assert_eq!(names(&[".bashrc", ".bashrc"]), [".bashrc", ".bashrc (1)"]);
        assert_eq!(names(&["README", "README"]), ["README", "README (1)"]);
        assert_eq!(names(&["d.x/f", "d.x/f"]), ["d.x/f", "d.x/f (1)"]);
        assert_eq!(names(&["s.tar.gz", "s.tar.gz"]), ["s.tar.gz", "s (1).tar.gz"]);
        assert_eq!(names(&["v1.2.zip", "v1.2.zip"]), ["v1.2.zip", "v1.2 (1).zip"]);
        assert_eq!(names(&["dots.", "dots."]), ["dots.", "dots (1)."]);
    }

    #[test]
    fn cleaning_can_make_duplicates() {
        let paths: [&[u8]; 4] = [b"a\\b", b"a_b", b"x\xff", b"x%FF"];
        assert_eq!(member_names(paths).unwrap(), ["a_b", "a_b (1)", "x%FF", "x%FF (1)"]);
    }

    #[test]
    fn a_renamed_member_takes_no_other_members_name() {
        // `a (1).txt` exists already, so the second `a.txt` becomes `a (2).txt`, wherever it is.
        assert_eq!(
            names(&["a.txt", "a.txt", "a (1).txt"]),
            ["a.txt", "a (2).txt", "a (1).txt"]
        );
        assert_eq!(names(&["A.txt", "a.txt"]), ["A.txt", "a.txt"]);
    }

    #[test]
    fn a_member_named_like_a_folder_is_renamed() {
        // `x\y` cleans to `x_y`, the name of a folder another member lies in.
        let paths: [&[u8]; 2] = [b"x\\y", b"x_y/file"];
        assert_eq!(member_names(paths).unwrap(), ["x_y (1)", "x_y/file"]);
    }

    #[test]
    fn names_the_archive() {
        let day = 1_709_210_096; // 2024-02-29 UTC
        assert_eq!(archive_name(&[b"Photos/2023"], day), "2023.zip");
        assert_eq!(archive_name(&[b"Photos/2023/"], day), "2023.zip");
        assert_eq!(archive_name(&[b"caf\xe9"], day), "caf%E9.zip");
        assert_eq!(archive_name(&[b"a", b"b"], day), "ferry-2024-02-29.zip");
        assert_eq!(archive_name(&[b""], day), "ferry-2024-02-29.zip");
        assert_eq!(archive_name(&[b".."], day), "ferry-2024-02-29.zip");
        assert_eq!(archive_name(&[], day), "ferry-2024-02-29.zip");
    }
}
