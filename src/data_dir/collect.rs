//! The members of one ZIP archive (SPEC §11): the regular files beneath the folders and files a
//! link shares, each with its name in the archive and its stamp. A shared folder is walked from
//! its own descriptor, so a symlink inside it is followed only where it stays beneath that folder,
//! and each folder is entered once.
//!
//! This never reads a file's bytes, never writes anything, and keeps no descriptor past the call.
//! Every entry is found with `O_PATH`, which opens nothing, so a FIFO cannot make the walk wait.

use std::collections::HashSet;
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::Serialize;

use super::{DataDir, PathError, RelPath, Stamp, escape_into, stamp};

/// The members of one archive, in order, and what was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub files: Vec<CollectedFile>,
    pub skipped: Vec<Skipped>,
}

/// One regular file of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedFile {
    /// Exact path beneath the data dir, as reached (through any symlink inside the shared folder).
    pub path: RelPath,
    /// The member's name in bytes, relative to the shared folder, '/'-separated. It is the file
    /// system's name, not yet cleaned for a ZIP.
    pub name: Vec<u8>,
    pub stamp: Stamp,
}

/// An entry left out of an archive, and why, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Skipped {
    /// The entry's path beneath the data dir, in a path's exact text.
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    /// A path given to share is bad, missing, or neither a regular file nor a folder.
    #[error("{path}: {error}")]
    Path { path: String, error: PathError },
    #[error("nothing to share: no regular file found")]
    Empty,
    #[error("more than {max} files (FERRY_ZIP_MAX_FILES)")]
    TooMany { max: usize },
}

/// A folder being walked: where it is, and its entries not yet looked at.
struct Frame {
    /// Its path relative to the shared folder (empty for the shared folder itself).
    inner: Vec<u8>,
    rel: RelPath,
    entries: std::vec::IntoIter<(Vec<u8>, FileType)>,
}

/// What one entry of a folder turned out to be.
enum Kind {
    File(Stamp),
    Folder(OwnedFd),
}

/// One call's progress: the members so far, and every folder entered.
struct Walk {
    max_files: usize,
    seen: HashSet<(u64, u64)>,
    out: Collected,
}

impl DataDir {
    /// Walks `paths` (files and folders beneath the data dir) into the members of one archive.
    ///
    /// A single folder's members are named relative to it (`a.jpg`, `sub/b.jpg`). With several
    /// paths, each file is named by its file name and each folder's name prefixes its members
    /// (`photos/a.jpg`). Within a folder entries come in the order of their names' bytes, and a
    /// folder's members stand at the folder's place. More than `max_files` regular files is an
    /// error, and the walk stops there.
    pub fn collect(&self, paths: &[RelPath], max_files: usize) -> Result<Collected, CollectError> {
        let bad = |rel: &RelPath, error| CollectError::Path {
            path: rel.as_str().to_string(),
            error,
        };
        let root = self
            .root()
            .map_err(|e| bad(paths.first().unwrap_or(&RelPath::root()), e))?;
        let mut walk = Walk {
            max_files,
            seen: HashSet::new(),
            out: Collected {
                files: Vec::new(),
                skipped: Vec::new(),
            },
        };
        for rel in paths {
            let (fd, st) = self.open_beneath(&root, rel).map_err(|e| bad(rel, e))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => walk.add(rel.clone(), rel.file_name_bytes(), stamp(&st))?,
                FileType::Directory => {
                    let mut prefix = if paths.len() == 1 {
                        Vec::new()
                    } else {
                        rel.file_name_bytes()
                    };
                    if !prefix.is_empty() {
                        prefix.push(b'/');
                    }
                    walk.folder(&fd, &st, rel, &prefix)?;
                }
                _ => return Err(bad(rel, PathError::NotRegular)),
            }
        }
        if walk.out.files.is_empty() {
            return Err(CollectError::Empty);
        }
        Ok(walk.out)
    }
}

impl Walk {
    fn add(&mut self, path: RelPath, name: Vec<u8>, stamp: Stamp) -> Result<(), CollectError> {
        if self.out.files.len() >= self.max_files {
            return Err(CollectError::TooMany { max: self.max_files });
        }
        self.out.files.push(CollectedFile { path, name, stamp });
        Ok(())
    }

    fn skip(&mut self, path: String, reason: impl Into<String>) {
        self.out.skipped.push(Skipped {
            path,
            reason: reason.into(),
        });
    }

    /// Walks the shared folder `top` (found at `rel`), depth first, naming its members
    /// `prefix` followed by their paths inside it. Every entry is resolved from `top` with
    /// `RESOLVE_BENEATH`, so a symlink that leads out of the shared folder is refused by the
    /// kernel, however it is written. Folders reached through a symlink are walked last, so that
    /// a folder reached both ways keeps its own name and the symlink is the one left out.
    fn folder(&mut self, top: &OwnedFd, st: &rfs::Stat, rel: &RelPath, prefix: &[u8]) -> Result<(), CollectError> {
        if !self.seen.insert((st.st_dev, st.st_ino)) {
            self.skip(rel.to_string(), "folder already included");
            return Ok(());
        }
        let entries = read_entries(top).map_err(|e| CollectError::Path {
            path: rel.to_string(),
            error: super::io(e),
        })?;
        let mut stack = vec![Frame {
            inner: Vec::new(),
            rel: rel.clone(),
            entries: entries.into_iter(),
        }];
        let mut symlinked = std::collections::VecDeque::new();
        loop {
            self.walk(top, prefix, &mut stack, &mut symlinked)?;
            let Some((inner, path, fd)) = symlinked.pop_front() else {
                return Ok(());
            };
            self.enter(&mut stack, inner, path, fd);
        }
    }

    /// Walks what `stack` holds, setting folders reached through a symlink aside in `symlinked`.
    fn walk(
        &mut self,
        top: &OwnedFd,
        prefix: &[u8],
        stack: &mut Vec<Frame>,
        symlinked: &mut std::collections::VecDeque<(Vec<u8>, RelPath, OwnedFd)>,
    ) -> Result<(), CollectError> {
        while let Some(frame) = stack.last_mut() {
            let Some((name, listed)) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            // ferry's listing hides these names too.
            if name.starts_with(b".") {
                self.skip(child_text(&frame.rel, &name), "hidden");
                continue;
            }
            let path = match frame.rel.child(&name) {
                Ok(path) => path,
                Err(e) => {
                    self.skip(child_text(&frame.rel, &name), format!("name cannot be shared: {e}"));
                    continue;
                }
            };
            let mut inner = frame.inner.clone();
            if !inner.is_empty() {
                inner.push(b'/');
            }
            inner.extend_from_slice(&name);
            match look_up(top, &inner, listed) {
                Ok(Kind::File(stamp)) => self.add(path, [prefix, &inner].concat(), stamp)?,
                Ok(Kind::Folder(fd)) if listed == FileType::Symlink => symlinked.push_back((inner, path, fd)),
                Ok(Kind::Folder(fd)) => self.enter(stack, inner, path, fd),
                Err(reason) => self.skip(path.to_string(), reason),
            }
        }
        Ok(())
    }

    /// Puts the folder `fd` on the stack, unless it was entered before or cannot be read.
    fn enter(&mut self, stack: &mut Vec<Frame>, inner: Vec<u8>, path: RelPath, fd: OwnedFd) {
        let Ok(st) = rfs::fstat(&fd) else {
            return self.skip(path.to_string(), "removed while the folder was read");
        };
        if !self.seen.insert((st.st_dev, st.st_ino)) {
            return self.skip(path.to_string(), "folder already included");
        }
        match read_entries(&fd) {
            Ok(entries) => stack.push(Frame {
                inner,
                rel: path,
                entries: entries.into_iter(),
            }),
            Err(e) => self.skip(path.to_string(), format!("unreadable: {e}")),
        }
    }
}

/// The exact text of the entry `name` of the folder `rel`, even where it is no [`RelPath`] (a path
/// too long, or a name a path may not hold).
fn child_text(rel: &RelPath, name: &[u8]) -> String {
    let mut text = rel.as_str().to_string();
    if !rel.is_root() {
        text.push('/');
    }
    escape_into(name, &mut text);
    text
}

/// Finds the entry `inner` beneath the shared folder `top`, following symlinks only while they
/// stay beneath it. `listed` is what the folder said the entry is, for the reason it is left out.
fn look_up(top: &OwnedFd, inner: &[u8], listed: FileType) -> Result<Kind, String> {
    let fd = rfs::openat2(
        top,
        inner,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        Errno::XDEV => "symlink leads out of the shared folder".to_string(),
        Errno::NOENT if listed == FileType::Symlink => "broken symlink".to_string(),
        Errno::NOENT => "removed while the folder was read".to_string(),
        Errno::LOOP => "symlink loop".to_string(),
        e => format!("unreadable: {e}"),
    })?;
    let st = rfs::fstat(&fd).map_err(|e| format!("unreadable: {e}"))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(Kind::File(stamp(&st))),
        FileType::Directory => Ok(Kind::Folder(fd)),
        _ => Err("not a regular file".to_string()),
    }
}

/// A folder's entries (but `.` and `..`), sorted by their names' bytes, with what the folder says
/// each is. `dir` may be an `O_PATH` descriptor: the folder is opened again for reading.
fn read_entries(dir: &OwnedFd) -> Result<Vec<(Vec<u8>, FileType)>, Errno> {
    let readable = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in rfs::Dir::new(readable)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push((name.to_vec(), entry.file_type()));
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        (dir, data)
    }

    /// Writes a file (and the folders it needs) whose content is its own path.
    fn put(data: &Path, path: &str) {
        let file = data.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, path).unwrap();
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn collect(data: &Path, paths: &[&str]) -> Result<Collected, CollectError> {
        let paths: Vec<RelPath> = paths.iter().map(|p| rel(p)).collect();
        DataDir::open(data).unwrap().collect(&paths, 100)
    }

    /// (member name, path beneath the data dir) of each member, in order.
    fn members(c: &Collected) -> Vec<(String, String)> {
        c.files
            .iter()
            .map(|f| (String::from_utf8(f.name.clone()).unwrap(), f.path.to_string()))
            .collect()
    }

    fn skipped(c: &Collected) -> Vec<(&str, &str)> {
        c.skipped.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect()
    }

    /// Runs `f` on another thread and fails if it has not returned within a few seconds: what a
    /// FIFO opened for reading would do is wait forever for a writer.
    fn without_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("it blocked (a FIFO was opened?)")
    }

    fn mkfifo(path: &Path) {
        rfs::mkfifoat(rfs::CWD, path, Mode::from_raw_mode(0o644)).unwrap();
    }

    #[test]
    fn one_folder_names_its_members_relative_to_itself_depth_first() {
        let (_dir, data) = tree();
        for p in [
            "photos/z.jpg",
            "photos/m/x.jpg",
            "photos/m/deeper/y.jpg",
            "photos/a.jpg",
        ] {
            put(&data, p);
        }
        let c = collect(&data, &["photos"]).unwrap();
        let want = [
            ("a.jpg", "photos/a.jpg"),
            ("m/deeper/y.jpg", "photos/m/deeper/y.jpg"),
            ("m/x.jpg", "photos/m/x.jpg"),
            ("z.jpg", "photos/z.jpg"),
        ];
        assert_eq!(members(&c), want.map(|(n, p)| (n.to_string(), p.to_string())));
        assert!(c.skipped.is_empty(), "{:?}", c.skipped);
        // The stamp recorded by the walk is the one a read finds.
        let d = DataDir::open(&data).unwrap();
        for f in &c.files {
            let (_, now) = d.open_read(&f.path).unwrap();
            assert_eq!(f.stamp, now, "{}", f.path);
            assert_eq!(f.stamp.size, f.path.as_str().len() as u64);
        }
    }

    #[test]
    fn several_paths_name_files_by_their_name_and_prefix_folders_with_theirs() {
        let (_dir, data) = tree();
        for p in ["photos/a.jpg", "photos/sub/b.jpg", "docs/notes.txt", "docs/old/c.txt"] {
            put(&data, p);
        }
        let c = collect(&data, &["photos", "docs/notes.txt", "docs/old"]).unwrap();
        let want = [
            ("photos/a.jpg", "photos/a.jpg"),
            ("photos/sub/b.jpg", "photos/sub/b.jpg"),
            ("notes.txt", "docs/notes.txt"),
            ("old/c.txt", "docs/old/c.txt"),
        ];
        assert_eq!(members(&c), want.map(|(n, p)| (n.to_string(), p.to_string())));
        // One path that is a file is an archive of that file alone.
        let one = collect(&data, &["docs/notes.txt"]).unwrap();
        assert_eq!(members(&one), [("notes.txt".to_string(), "docs/notes.txt".to_string())]);
        // A folder given twice, or inside one given already, is walked once.
        let twice = collect(&data, &["photos", "photos/sub", "photos"]).unwrap();
        assert_eq!(twice.files.len(), 2);
        assert_eq!(
            skipped(&twice),
            [
                ("photos/sub", "folder already included"),
                ("photos", "folder already included")
            ]
        );
    }

    #[test]
    fn a_symlink_is_followed_only_where_it_stays_beneath_the_shared_folder() {
        let (dir, data) = tree();
        put(&data, "Public/a.txt");
        put(&data, "Public/sub/b.txt");
        put(&data, "Private/secret.txt");
        std::fs::write(dir.path().join("outside.txt"), "outside").unwrap();
        symlink("sub/b.txt", data.join("Public/link.txt")).unwrap();
        symlink("../sub/b.txt", data.join("Public/sub/up.txt")).unwrap();
        symlink("../Private", data.join("Public/x")).unwrap();
        symlink("../Private/secret.txt", data.join("Public/y.txt")).unwrap();
        symlink(dir.path().join("outside.txt"), data.join("Public/abs.txt")).unwrap();
        symlink(data.join("Public/a.txt"), data.join("Public/abs-inside.txt")).unwrap();
        symlink("nowhere", data.join("Public/broken")).unwrap();
        let c = collect(&data, &["Public"]).unwrap();
        let want = [
            ("a.txt", "Public/a.txt"),
            ("link.txt", "Public/link.txt"),
            ("sub/b.txt", "Public/sub/b.txt"),
            ("sub/up.txt", "Public/sub/up.txt"),
        ];
        assert_eq!(members(&c), want.map(|(n, p)| (n.to_string(), p.to_string())));
        let out = "symlink leads out of the shared folder";
        assert_eq!(
            skipped(&c),
            [
                // An absolute symlink is refused even where it names a file inside.
                ("Public/abs-inside.txt", out),
                ("Public/abs.txt", out),
                ("Public/broken", "broken symlink"),
                ("Public/x", out),
                ("Public/y.txt", out),
            ]
        );
        // The symlinked member is the file it leads to.
        let b = DataDir::open(&data)
            .unwrap()
            .open_read(&rel("Public/sub/b.txt"))
            .unwrap()
            .1;
        assert_eq!(c.files[1].stamp, b);
        // Shared on its own, Private's file is there: it was left out above only for the symlink.
        assert_eq!(collect(&data, &["Private"]).unwrap().files.len(), 1);
    }

    #[test]
    fn a_symlink_loop_enters_each_folder_once() {
        let (_dir, data) = tree();
        put(&data, "top/a/f.txt");
        put(&data, "top/g.txt");
        symlink("..", data.join("top/a/loop")).unwrap();
        symlink(".", data.join("top/a/self")).unwrap();
        symlink("a", data.join("top/b")).unwrap();
        let c = collect(&data, &["top"]).unwrap();
        let want = [("a/f.txt", "top/a/f.txt"), ("g.txt", "top/g.txt")];
        assert_eq!(members(&c), want.map(|(n, p)| (n.to_string(), p.to_string())));
        let again = "folder already included";
        assert_eq!(
            skipped(&c),
            [("top/a/loop", again), ("top/a/self", again), ("top/b", again)]
        );
    }

    #[test]
    fn a_folder_reached_directly_and_through_a_symlink_keeps_its_own_name() {
        let (_dir, data) = tree();
        put(&data, "top/sub/b.txt");
        put(&data, "top/other/c.txt");
        // Both symlinks sort before the folders they lead to.
        symlink("sub", data.join("top/again")).unwrap();
        symlink("../sub", data.join("top/other/0-up")).unwrap();
        let c = collect(&data, &["top"]).unwrap();
        let want = [("other/c.txt", "top/other/c.txt"), ("sub/b.txt", "top/sub/b.txt")];
        assert_eq!(members(&c), want.map(|(n, p)| (n.to_string(), p.to_string())));
        let again = "folder already included";
        assert_eq!(skipped(&c), [("top/again", again), ("top/other/0-up", again)]);
    }

    #[test]
    fn a_fifo_is_skipped_without_blocking_the_walk() {
        let (_dir, data) = tree();
        put(&data, "box/a.txt");
        mkfifo(&data.join("box/pipe"));
        let walked = data.clone();
        let c = without_blocking(move || collect(&walked, &["box"])).unwrap();
        assert_eq!(members(&c), [("a.txt".to_string(), "box/a.txt".to_string())]);
        assert_eq!(skipped(&c), [("box/pipe", "not a regular file")]);
        // Given as a path of its own, it is refused.
        let walked = data.clone();
        let err = without_blocking(move || collect(&walked, &["box/pipe"])).unwrap_err();
        assert_eq!(
            err,
            CollectError::Path {
                path: "box/pipe".into(),
                error: PathError::NotRegular
            }
        );
    }

    #[test]
    fn hidden_entries_are_skipped() {
        let (_dir, data) = tree();
        put(&data, "box/a.txt");
        put(&data, "box/.env");
        put(&data, "box/.git/config");
        let c = collect(&data, &["box"]).unwrap();
        assert_eq!(members(&c), [("a.txt".to_string(), "box/a.txt".to_string())]);
        assert_eq!(skipped(&c), [("box/.env", "hidden"), ("box/.git", "hidden")]);
    }

    #[test]
    fn a_name_that_is_not_utf8_is_kept_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt;
        let (_dir, data) = tree();
        std::fs::create_dir(data.join("old")).unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(data.join("old").join(name), "latin-1").unwrap();
        let c = collect(&data, &["old"]).unwrap();
        assert_eq!(c.files.len(), 1);
        assert_eq!(c.files[0].name, b"caf\xe9.txt");
        assert_eq!(c.files[0].path.as_str(), "old/caf\\xE9.txt");
        assert_eq!(c.files[0].stamp.size, 7);
        let several = collect(&data, &["old", "old/caf\\xE9.txt"]).unwrap();
        let names: Vec<&[u8]> = several.files.iter().map(|f| f.name.as_slice()).collect();
        assert_eq!(names, [&b"old/caf\xe9.txt"[..], &b"caf\xe9.txt"[..]]);
    }

    #[test]
    fn a_folder_without_a_regular_file_is_nothing_to_share() {
        let (_dir, data) = tree();
        std::fs::create_dir_all(data.join("empty/inner")).unwrap();
        put(&data, "empty/.hidden");
        assert_eq!(collect(&data, &["empty"]), Err(CollectError::Empty));
        assert_eq!(
            collect(&data, &["missing"]),
            Err(CollectError::Path {
                path: "missing".into(),
                error: PathError::NotFound
            })
        );
    }

    #[test]
    fn more_files_than_allowed_stop_the_walk() {
        let (_dir, data) = tree();
        for p in ["many/1", "many/2", "many/3"] {
            put(&data, p);
        }
        let d = DataDir::open(&data).unwrap();
        assert_eq!(d.collect(&[rel("many")], 3).unwrap().files.len(), 3);
        assert_eq!(d.collect(&[rel("many")], 2), Err(CollectError::TooMany { max: 2 }));
        assert_eq!(
            d.collect(&[rel("many"), rel("many/1")], 3),
            Err(CollectError::TooMany { max: 3 })
        );
    }

    #[test]
    fn open_read_refuses_a_fifo_without_blocking() {
        let (_dir, data) = tree();
        mkfifo(&data.join("pipe"));
        let got = without_blocking(move || DataDir::open(&data).unwrap().open_read(&rel("pipe")).map(|_| ()));
        assert_eq!(got, Err(PathError::NotRegular));
    }

    #[test]
    fn open_read_gives_the_file_and_its_stamp() {
        use std::io::Read;
        let (_dir, data) = tree();
        put(&data, "sub/a.txt");
        // A modification time put back in the past leaves the change time as the only sign.
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let f = std::fs::File::options()
            .write(true)
            .open(data.join("sub/a.txt"))
            .unwrap();
        f.set_modified(old).unwrap();
        drop(f);
        let meta = std::fs::metadata(data.join("sub/a.txt")).unwrap();
        let d = DataDir::open(&data).unwrap();
        let (mut file, stamp) = d.open_read(&rel("sub/a.txt")).unwrap();
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        let want = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: 9,
            mtime_ns: 1_000_000_000 * 1_000_000_000,
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        };
        assert_eq!(stamp, want);
        assert_ne!(stamp.ctime_ns, stamp.mtime_ns);
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "sub/a.txt");
        assert_eq!(Stamp::of(&file).unwrap(), stamp);
        assert_eq!(d.open_read(&rel("sub")).map(|_| ()), Err(PathError::Folder));
    }

    #[test]
    fn open_read_refuses_a_symlink_out_of_the_data_dir() {
        let (dir, data) = tree();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        symlink(dir.path().join("secret"), data.join("abs")).unwrap();
        symlink("../secret", data.join("rel")).unwrap();
        let d = DataDir::open(&data).unwrap();
        assert_eq!(d.open_read(&rel("abs")).map(|_| ()), Err(PathError::Escapes));
        assert_eq!(d.open_read(&rel("rel")).map(|_| ()), Err(PathError::Escapes));
    }
}
