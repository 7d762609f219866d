//! Path resolution: a string from the API (`file_path`, `path`) becomes a `RelPath`, which is
//! then resolved beneath the data dir with `openat2(RESOLVE_BENEATH)`. The data dir here is a
//! real folder holding the traps SPEC §9 names: symlinks out of it (relative and absolute), a
//! dangling one, a loop, a folder, a FIFO. Whatever the string, a file it resolves to is a regular
//! file inside the data dir and never the secret beside it.
#![no_main]

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::PathBuf;
use std::sync::OnceLock;

use ferry::data_dir::{DataDir, RelPath};
use libfuzzer_sys::fuzz_target;

struct Tree {
    _dir: tempfile::TempDir,
    data: DataDir,
    root: PathBuf,
    secret_ino: u64,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let base = dir.path().canonicalize().expect("canonical temp dir");
        let root = base.join("data");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(base.join("secret"), "outside the data dir").unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join("sub/b.txt"), "b").unwrap();
        std::fs::write(root.join("sub/deeper/c d.txt"), "c").unwrap();
        symlink("../secret", root.join("out")).unwrap();
        symlink(base.join("secret"), root.join("abs")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        symlink("../../..", root.join("sub/deeper/way-up")).unwrap();
        symlink("a.txt", root.join("inside")).unwrap();
        symlink("missing", root.join("dangling")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(root.join("fifo")).status();
        assert!(fifo.is_ok_and(|s| s.success()), "mkfifo is needed for the path target");
        let secret_ino = std::fs::metadata(base.join("secret")).unwrap().ino();
        Tree {
            data: DataDir::open(&root).expect("open the data dir"),
            root,
            secret_ino,
            _dir: dir,
        }
    })
}

fuzz_target!(|s: &str| {
    let Ok(rel) = RelPath::parse(s) else { return };
    let p = rel.as_str();
    // The normal form: relative, no `.`/`..`/empty names, nothing a shell or nginx would decode.
    assert!(!p.starts_with('/') && !p.starts_with('~'), "{s:?} -> {p:?}");
    assert!(
        p.split('/').all(|n| !n.is_empty() && n != "." && n != "..") || rel.is_root(),
        "{s:?} -> {p:?}"
    );
    assert!(!p.chars().any(char::is_control), "{s:?} -> {p:?}");
    // A backslash only begins `\xHH`, a byte of a name that is not UTF-8 text.
    assert!(
        p.split('\\')
            .skip(1)
            .all(|rest| matches!(rest.as_bytes(), [b'x', h, l, ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit())),
        "{s:?} -> {p:?}"
    );
    // Only a control character grows, into `\xHH` per byte: at most four times the input.
    assert!(p.len() <= 4 * s.len());
    assert_eq!(
        RelPath::parse(p).as_ref(),
        Ok(&rel),
        "normalising {s:?} is not idempotent"
    );
    assert!(rel.is_root() || !rel.file_name().is_empty());

    let t = tree();
    if let Ok(found) = t.data.resolve_file(&rel) {
        assert!(
            found.real_path.starts_with(&t.root),
            "{s:?} resolved to {:?}",
            found.real_path
        );
        assert!(found.identity.ino != t.secret_ino, "{s:?} reached the secret");
        assert!(std::fs::metadata(&found.real_path).unwrap().is_file());
    }
    if let Ok(page) = t.data.list(&rel, 0, usize::MAX) {
        for e in page.entries {
            assert!(!e.name.starts_with('.'));
            assert_eq!(RelPath::parse(e.path.as_str()).as_ref(), Ok(&e.path));
        }
    }
});
