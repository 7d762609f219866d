//! Archives built from real files and checked by ZIP readers nobody here wrote: Python's
//! `zipfile`, Info-ZIP's `unzip`, libarchive's `bsdtar` and 7-Zip's `7z`. Each test fails, naming
//! the package to install, when a tool is missing.
//!
//! The archives are written to disk only for the tools' sake; the member bytes come from
//! [`Piece::File`]s read from the source files, as the server will send them. Large members are
//! sparse files, and their holes stay holes in the archive, so they cost no disk.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::UNIX_EPOCH;

use rustix::fs::SeekFrom;

use super::layout::{Layout, Member, Piece};
use super::names::member_names;

/// Bytes read or written at a time while copying or hashing.
const CHUNK: usize = 16 << 20;

/// A source file and the name it has in the archive.
struct Source {
    path: PathBuf,
    name: String,
}

/// Writes each `(relative path, bytes)` beneath `dir`, and `(relative path, size)` of `sparse`
/// as sparse files with a few marked bytes; returns them in that order.
fn make_sources(dir: &Path, files: &[(&[u8], &[u8])], sparse: &[(&[u8], u64)]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (rel, bytes) in files {
        let path = dir.join(std::ffi::OsStr::from_bytes(rel));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    for (rel, size) in sparse {
        let path = dir.join(std::ffi::OsStr::from_bytes(rel));
        let file = File::create(&path).unwrap();
        file.set_len(*size).unwrap();
        // Marks at the start, across the 4 GiB boundary and at the end, so that a misplaced byte shows.
        for at in [0, size / 2, (1 << 32) - 3, size - 5] {
            if at + 5 <= *size {
                file.write_at(b"ferry", at).unwrap();
            }
        }
        paths.push(path);
    }
    paths
}

/// The layout of an archive of these files, their CRC-32s, and each one's name.
fn plan(rels: &[&[u8]], paths: &[PathBuf]) -> (Layout, Vec<Option<u32>>, Vec<Source>) {
    let names = member_names(rels.iter().copied()).unwrap();
    let mut members = Vec::new();
    let mut crcs = Vec::new();
    let mut sources = Vec::new();
    for (path, name) in paths.iter().zip(names) {
        let meta = std::fs::metadata(path).unwrap();
        let mtime = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        members.push(Member {
            name: name.clone(),
            size: meta.len(),
            mtime,
        });
        crcs.push(Some(crc_of(path)));
        sources.push(Source {
            path: path.clone(),
            name,
        });
    }
    (Layout::new(members).unwrap(), crcs, sources)
}

fn crc_of(path: &Path) -> u32 {
    let mut file = File::open(path).unwrap();
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finalize();
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes the archive to `out` from its pieces; holes in the files stay holes in the archive.
fn write_archive(layout: &Layout, crcs: &[Option<u32>], sources: &[Source], out: &Path) {
    let archive = File::create(out).unwrap();
    archive.set_len(layout.total_len()).unwrap();
    let mut at = 0;
    for piece in layout.pieces(0..layout.total_len(), crcs) {
        let piece = piece.expect("every CRC is known");
        match &piece {
            Piece::Bytes(bytes) => archive.write_all_at(bytes, at).unwrap(),
            Piece::File { member, offset, len } => {
                let file = File::open(&sources[*member].path).unwrap();
                copy_data(&file, *offset..offset + len, &archive, at);
            }
        }
        at += piece.len();
    }
    assert_eq!(at, layout.total_len());
}

/// Copies bytes `range` of `file` to `archive` at `at`, skipping the file's holes.
fn copy_data(file: &File, range: std::ops::Range<u64>, archive: &File, at: u64) {
    let mut buf = vec![0; CHUNK.min((range.end - range.start) as usize)];
    let mut pos = range.start;
    while pos < range.end {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(data) if data < range.end => data,
            Ok(_) | Err(rustix::io::Errno::NXIO) => return,
            Err(e) => panic!("SEEK_DATA: {e}"),
        };
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data)).unwrap().min(range.end);
        let mut from = data;
        while from < hole {
            let n = (hole - from).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], from).unwrap();
            archive.write_all_at(&buf[..n], at + (from - range.start)).unwrap();
            from += n as u64;
        }
        pos = hole;
    }
}

/// Runs a ZIP reader; a missing one fails the test with the package that provides it.
fn run(program: &str, package: &str, args: &[&std::ffi::OsStr]) -> Output {
    let output = Command::new(program)
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}); install the `{package}` package"));
    assert!(
        output.status.success(),
        "`{program}` failed on the archive:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// How much of each member Python's `zipfile` reads.
#[derive(Clone, Copy)]
enum Reading {
    /// Every byte, compared with the source, and `testzip()`.
    Bytes,
    /// Every byte, for its CRC-32.
    Crc,
    /// Only members under 64 MiB, for their CRC-32 (the rest are a header check).
    Small,
}

/// Checks the archive with Python's `zipfile` against `sources`: each member's name, size, DOS
/// time, UTF-8 flag and Unix attributes, and as `read` says its CRC-32 (read in chunks, which
/// `zipfile` also checks at the end) and bytes.
fn python_check(archive: &Path, sources: &[Source], read: Reading) {
    let mut args: Vec<std::ffi::OsString> = vec![PYTHON_CHECK.into(), archive.into()];
    args.push(
        match read {
            Reading::Bytes => "bytes",
            Reading::Crc => "crc",
            Reading::Small => "small",
        }
        .into(),
    );
    for s in sources {
        args.push(s.name.clone().into());
        args.push(hex(s.path.as_os_str().as_bytes()).into());
    }
    let args: Vec<&std::ffi::OsStr> = std::iter::once("-c".as_ref())
        .chain(args.iter().map(|a| a.as_os_str()))
        .collect();
    let out = run("python3", "python3", &args);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

const PYTHON_CHECK: &str = r#"
import os, sys, time, zipfile, zlib
archive, mode, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
compare = mode == "bytes"
want = [(rest[i], bytes.fromhex(rest[i + 1])) for i in range(0, len(rest), 2)]
with zipfile.ZipFile(archive) as z:
    infos = z.infolist()
    assert [i.filename for i in infos] == [n for n, _ in want], [i.filename for i in infos]
    for info, (name, path) in zip(infos, want):
        assert info.compress_type == zipfile.ZIP_STORED, name
        assert info.flag_bits & 0x800, name
        assert info.create_system == 3 and info.external_attr >> 16 == 0o100644, name
        assert info.file_size == info.compress_size == os.stat(path).st_size, name
        t = time.gmtime(os.stat(path).st_mtime)
        assert info.date_time == t[:5] + (t[5] // 2 * 2,), (name, info.date_time)
        if mode == "small" and info.file_size >= 1 << 26:
            continue
        with open(path, "rb") as src, z.open(info) as member:
            crc = 0
            while True:
                chunk = member.read(1 << 24)
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                if compare:
                    assert chunk == src.read(len(chunk)), name
            if compare:
                assert src.read(1) == b"", name
        assert crc == info.CRC, name
    if compare:
        assert z.testzip() is None
print("ok")
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Extracts the archive with `bsdtar` and compares each extracted file with its source.
fn bsdtar_check(archive: &Path, sources: &[Source], dir: &Path) {
    let listing = run("bsdtar", "libarchive-tools", &["-tf".as_ref(), archive.as_os_str()]);
    let listed: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed, names);
    let out = dir.join("bsdtar-out");
    std::fs::create_dir(&out).unwrap();
    run(
        "bsdtar",
        "libarchive-tools",
        &["-xf".as_ref(), archive.as_os_str(), "-C".as_ref(), out.as_os_str()],
    );
    for s in sources {
        let extracted = std::fs::read(out.join(&s.name)).unwrap();
        assert!(extracted == std::fs::read(&s.path).unwrap(), "{} differs", s.name);
    }
}

fn unzip_check(archive: &Path) {
    let out = run("unzip", "unzip", &["-t".as_ref(), archive.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No errors detected"), "{text}");
}

fn sevenzip_check(archive: &Path) {
    let out = run("7z", "p7zip-full", &["t".as_ref(), archive.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Everything is Ok"), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reader_opens_a_small_archive() {
        let dir = tempfile::tempdir().unwrap();
        let pattern: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files: &[(&[u8], &[u8])] = &[
            ("café/naïve – ü.txt".as_bytes(), b"bonjour\n"),
            (b"bad\xffname.bin", &pattern),
            (b"a.txt", b"a\n"),
            (b"sub/a.txt", b"b\n"),
            (b"back\\slash.txt", b"x"),
            (b"empty", b""),
            (b"dup\\x", b"1"),
            (b"dup_x", b"2"),
            (b".bashrc", b"PS1='$ '\n"),
        ];
        let paths = make_sources(&dir.path().join("src"), files, &[]);
        let rels: Vec<&[u8]> = files.iter().map(|f| f.0).collect();
        let (layout, crcs, sources) = plan(&rels, &paths);
        let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[1], "bad%FFname.bin");
        assert_eq!(names[6..8], ["dup_x", "dup_x (1)"]);
        let archive = dir.path().join("small.zip");
        write_archive(&layout, &crcs, &sources, &archive);
        assert!(!layout.has_zip64_end());
        python_check(&archive, &sources, Reading::Bytes);
        unzip_check(&archive);
        bsdtar_check(&archive, &sources, dir.path());
        sevenzip_check(&archive);
    }

    #[test]
    fn a_member_of_4_5_gib_uses_zip64() {
        let dir = tempfile::tempdir().unwrap();
        let paths = make_sources(dir.path(), &[(b"after.txt", b"after\n")], &[(b"big.bin", 4608 << 20)]);
        let paths = [paths[1].clone(), paths[0].clone()];
        let (layout, crcs, sources) = plan(&[b"big.bin", b"after.txt"], &paths);
        assert!(layout.has_zip64_end());
        let archive = dir.path().join("big.zip");
        write_archive(&layout, &crcs, &sources, &archive);
        python_check(&archive, &sources, Reading::Crc);
        sevenzip_check(&archive);
    }

    #[test]
    fn members_past_4_gib_in_all_use_zip64_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let sparse: &[(&[u8], u64)] = &[
            (b"one.bin", 1536 << 20),
            (b"two.bin", 1536 << 20),
            (b"three.bin", 1200 << 20),
        ];
        let paths = make_sources(dir.path(), &[(b"last.txt", b"last\n")], sparse);
        let paths = [paths[1].clone(), paths[2].clone(), paths[3].clone(), paths[0].clone()];
        let (layout, crcs, sources) = plan(&[b"one.bin", b"two.bin", b"three.bin", b"last.txt"], &paths);
        assert!(layout.member(3).size < 1 << 32 && layout.data_range(3).start > 1 << 32);
        let archive = dir.path().join("several.zip");
        write_archive(&layout, &crcs, &sources, &archive);
        python_check(&archive, &sources, Reading::Small);
        unzip_check(&archive);
    }

    #[test]
    fn sixty_five_thousand_members_use_the_zip64_end() {
        let dir = tempfile::tempdir().unwrap();
        let one = make_sources(dir.path(), &[(b"one", b"1")], &[]).remove(0);
        let rels: Vec<String> = (0..0xFFFF).map(|i| format!("d{}/f{i}", i % 16)).collect();
        let names = member_names(rels.iter().map(|r| r.as_bytes())).unwrap();
        let members = names
            .iter()
            .map(|name| Member {
                name: name.clone(),
                size: 1,
                mtime: 0,
            })
            .collect();
        let layout = Layout::new(members).unwrap();
        assert!(layout.has_zip64_end());
        let crcs = vec![Some(crc_of(&one)); names.len()];
        let sources: Vec<Source> = names
            .into_iter()
            .map(|name| Source {
                path: one.clone(),
                name,
            })
            .collect();
        let archive = dir.path().join("many.zip");
        write_archive(&layout, &crcs, &sources, &archive);
        let count = "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
                     assert len(z.infolist()) == 0xFFFF and z.testzip() is None; print('ok')";
        let out = run(
            "python3",
            "python3",
            &["-c".as_ref(), count.as_ref(), archive.as_os_str()],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        unzip_check(&archive);
        sevenzip_check(&archive);
    }
}
