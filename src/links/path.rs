//! Paths inside the data dir. A [`RelPath`] can only be built from a string that names a path
//! beneath the data dir in plain form; [`DataDir`] then resolves it with `openat2`
//! (`RESOLVE_BENEATH`), so no symlink, `..` or magic link can lead out of the data dir. Nothing
//! here creates or changes a file in the data dir.
//!
//! The data dir is opened again for every operation, never held: a disk mounted there after
//! ferry started, or mounted again after it went away, is what the next operation sees, and ferry
//! never keeps a mount busy. A data dir that was a mount point and no longer is, or that cannot be
//! opened, is unavailable ([`PathError::Unavailable`]).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags};
use serde::{Deserialize, Serialize};

const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("absolute paths are not allowed; give a path relative to the data dir")]
    Absolute,
    #[error("path may not contain `..`")]
    Parent,
    #[error("path may not contain NUL, backslashes or control characters")]
    BadChar,
    #[error("path may not contain percent-encoded separators or dots")]
    Encoded,
    #[error("path or one of its names is too long")]
    TooLong,
    #[error("no such file in the data dir")]
    NotFound,
    #[error("folders are not supported")]
    Folder,
    #[error("not a regular file")]
    NotRegular,
    #[error("path leads outside the data dir")]
    Escapes,
    #[error("not a folder")]
    NotFolder,
    #[error("data dir unavailable: {0}")]
    Unavailable(String),
    #[error("cannot read it: {0}")]
    Io(String),
}

/// A normalised path relative to the data dir: no leading `/`, no `.`/`..`, no empty names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

impl RelPath {
    /// The root of the data dir itself (for listing).
    pub fn root() -> Self {
        RelPath(String::new())
    }

    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if s.bytes().any(|b| b == 0 || b == b'\\' || b < 0x20 || b == 0x7f) {
            return Err(PathError::BadChar);
        }
        if s.starts_with('/') || s.starts_with('~') {
            return Err(PathError::Absolute);
        }
        let lower = s.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c", "%00", "%25"].iter().any(|e| lower.contains(e)) {
            return Err(PathError::Encoded);
        }
        let mut names = Vec::new();
        for name in s.split('/') {
            match name {
                "" | "." => continue,
                ".." => return Err(PathError::Parent),
                n if n.len() > MAX_NAME => return Err(PathError::TooLong),
                n => names.push(n),
            }
        }
        // Checked on the normal form too: `./~` must not become `~`, which would not parse again
        // (and a stored link must always read back).
        if names.first().is_some_and(|n| n.starts_with('~')) {
            return Err(PathError::Absolute);
        }
        Ok(RelPath(names.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        if self.is_root() {
            RelPath::parse(name)
        } else {
            RelPath::parse(&format!("{}/{name}", self.0))
        }
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RelPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        RelPath::parse(&s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

/// What a shared file was when the link was made; every check compares the file against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

/// A regular file found beneath the data dir.
pub struct Resolved {
    pub identity: FileIdentity,
    /// The file's real absolute path (inner symlinks already followed, all within the data dir).
    pub real_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: RelPath,
    pub size: u64,
    pub is_dir: bool,
    pub modified_ns: i128,
}

/// The data dir, found afresh for each operation (see the module's documentation).
pub struct DataDir {
    /// As configured (`NAS_MOUNT_PATH`); it may be a symlink.
    path: PathBuf,
    /// The data dir has been the root of a mount: when it no longer is, its disk went away.
    was_mount: AtomicBool,
}

/// The data dir as one operation finds it: every lookup of that operation is relative to it.
struct Root {
    fd: OwnedFd,
    /// Its real absolute path (a symlinked data dir resolved).
    real: PathBuf,
}

fn identity(st: &rfs::Stat) -> FileIdentity {
    FileIdentity {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
    }
}

fn io(e: rustix::io::Errno) -> PathError {
    use rustix::io::Errno;
    match e {
        Errno::NOENT | Errno::LOOP => PathError::NotFound,
        Errno::XDEV => PathError::Escapes,
        Errno::NOTDIR => PathError::NotFound,
        Errno::NAMETOOLONG => PathError::TooLong,
        // What a network or FUSE mount answers once its server is gone.
        Errno::STALE | Errno::NOTCONN | Errno::HOSTDOWN | Errno::HOSTUNREACH | Errno::NODEV | Errno::TIMEDOUT => {
            PathError::Unavailable(e.to_string())
        }
        e => PathError::Io(e.to_string()),
    }
}

fn real_path(fd: &OwnedFd) -> Result<PathBuf, PathError> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| PathError::Io(e.to_string()))
}

/// Whether the folder behind `fd` is the root of a mount.
fn is_mount_root(fd: &OwnedFd) -> Option<bool> {
    let stx = rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).ok()?;
    if stx.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return Some(stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    // Kernels before 5.8: a mount's root is on another device than its parent.
    let parent = rfs::statat(fd, "..", AtFlags::empty()).ok()?;
    let me = rfs::fstat(fd).ok()?;
    Some(me.st_dev != parent.st_dev || me.st_ino == parent.st_ino)
}

impl DataDir {
    /// The data dir at `path`; it must be there now.
    pub fn open(path: &Path) -> Result<Self, PathError> {
        let data = DataDir {
            path: path.to_path_buf(),
            was_mount: AtomicBool::new(false),
        };
        data.root()?;
        Ok(data)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the data dir is there: `Err(Unavailable)` says why not.
    pub fn available(&self) -> Result<(), PathError> {
        self.root().map(drop)
    }

    /// The data dir's real path now (a symlinked data dir resolved).
    pub fn real_path(&self) -> Result<PathBuf, PathError> {
        self.root().map(|r| r.real)
    }

    fn root(&self) -> Result<Root, PathError> {
        let unavailable =
            |e: rustix::io::Errno| PathError::Unavailable(format!("cannot open {}: {e}", self.path.display()));
        let fd = rfs::open(
            &self.path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(unavailable)?;
        match is_mount_root(&fd) {
            Some(true) => self.was_mount.store(true, Ordering::Relaxed),
            Some(false) if self.was_mount.load(Ordering::Relaxed) => {
                return Err(PathError::Unavailable(format!(
                    "{} was a mount point and nothing is mounted there now",
                    self.path.display()
                )));
            }
            _ => {}
        }
        let real = real_path(&fd)?;
        Ok(Root { fd, real })
    }

    fn open_beneath(&self, root: &Root, rel: &RelPath) -> Result<(OwnedFd, rfs::Stat), PathError> {
        let name = if rel.is_root() { "." } else { rel.as_str() };
        // O_PATH: never blocks on a FIFO or device, and reads nothing.
        let fd = rfs::openat2(
            root.fd.as_fd(),
            name,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(io)?;
        let st = rfs::fstat(&fd).map_err(io)?;
        Ok((fd, st))
    }

    /// Opens a regular file beneath the data dir (O_PATH).
    fn open_file(&self, root: &Root, rel: &RelPath) -> Result<(OwnedFd, rfs::Stat), PathError> {
        if rel.is_root() {
            return Err(PathError::Folder);
        }
        let (fd, st) = self.open_beneath(root, rel)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok((fd, st)),
            FileType::Directory => Err(PathError::Folder),
            _ => Err(PathError::NotRegular),
        }
    }

    /// Resolves a path to a regular file beneath the data dir.
    pub fn resolve_file(&self, rel: &RelPath) -> Result<Resolved, PathError> {
        let root = self.root()?;
        let (fd, st) = self.open_file(&root, rel)?;
        let real_path = real_path(&fd)?;
        if !real_path.starts_with(&root.real) {
            return Err(PathError::Escapes);
        }
        Ok(Resolved {
            identity: identity(&st),
            real_path,
        })
    }

    /// The file's identity now, for comparison with the one recorded at creation (which
    /// `resolve_file` checked for escapes: the same identity is the same file).
    pub fn identity(&self, rel: &RelPath) -> Result<FileIdentity, PathError> {
        let root = self.root()?;
        self.open_file(&root, rel).map(|(_, st)| identity(&st))
    }

    /// The identity of the regular file `path` leads to (symlinks followed), if there is one.
    pub fn identity_at(path: &Path) -> Option<FileIdentity> {
        let st = rfs::stat(path).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| identity(&st))
    }

    /// Lists a folder beneath the data dir (hidden entries and non-regular files left out).
    pub fn list(&self, rel: &RelPath) -> Result<Vec<Entry>, PathError> {
        let root = self.root()?;
        let (fd, st) = self.open_beneath(&root, rel)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(PathError::NotFolder);
        }
        let real = real_path(&fd)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(|e| PathError::Io(e.to_string()))? {
            let Ok(entry) = entry else { continue };
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(path) = rel.join(&name) else { continue };
            let Ok((_, st)) = self.open_beneath(&root, &path) else {
                continue;
            };
            let is_dir = match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => true,
                FileType::RegularFile => false,
                _ => continue,
            };
            let id = identity(&st);
            out.push(Entry {
                name,
                path,
                size: if is_dir { 0 } else { id.size },
                is_dir,
                modified_ns: id.mtime_ns,
            });
        }
        out.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Finds entries whose name contains `q` (case-insensitive) below `rel`, breadth first,
    /// stopping at `limit` results.
    pub fn search(&self, rel: &RelPath, q: &str, limit: usize) -> Result<Vec<Entry>, PathError> {
        let q = q.to_lowercase();
        let mut queue = std::collections::VecDeque::from([rel.clone()]);
        let mut out = Vec::new();
        let mut visited = 0;
        while let Some(dir) = queue.pop_front() {
            visited += 1;
            if visited > 10_000 {
                break;
            }
            let Ok(entries) = self.list(&dir) else { continue };
            for e in entries {
                if e.is_dir {
                    queue.push_back(e.path.clone());
                }
                if e.name.to_lowercase().contains(&q) {
                    out.push(e);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_refused() {
        let long = "a".repeat(256);
        let table: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../etc/passwd", PathError::Parent),
            ("a/../../b", PathError::Parent),
            ("a/..", PathError::Parent),
            ("a\0b", PathError::BadChar),
            ("a\\..\\b", PathError::BadChar),
            ("%2e%2e/etc", PathError::Encoded),
            ("a%2Fb", PathError::Encoded),
            ("%252e%252e", PathError::Encoded),
            ("~root/x", PathError::Absolute),
            (&long, PathError::TooLong),
            ("line\nbreak", PathError::BadChar),
            // Found by the `path` fuzz target: `~` behind names that normalise away.
            ("./~/./.", PathError::Absolute),
            ("//~x", PathError::Absolute),
        ];
        for (s, want) in table {
            let got = RelPath::parse(s).map_err(|e| e.to_string());
            // Empty normalises to the root, which is never a file: resolve_file refuses it.
            if *want == PathError::Empty {
                assert!(got.unwrap().is_root());
                continue;
            }
            assert_eq!(got, Err(want.to_string()), "{s:?}");
        }
    }

    #[test]
    fn a_parsed_path_reads_back() {
        for s in ["a//b/./c.txt", "./~/x", "x/~", "./a", "~"] {
            if let Ok(p) = RelPath::parse(s) {
                let json = serde_json::to_string(&p).unwrap();
                assert_eq!(serde_json::from_str::<RelPath>(&json).unwrap(), p, "{s:?}");
            }
        }
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        (dir, data)
    }

    /// The usual NAS layout: the configured data dir is a symlink to the pool's folder.
    #[test]
    fn a_symlinked_data_dir_resolves_its_files() {
        let (dir, data) = tree();
        std::fs::write(data.join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../../secret", data.join("sub/out")).unwrap();
        let link = dir.path().join("share");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let d = DataDir::open(&link).unwrap();
        let found = d.resolve_file(&RelPath::parse("sub/a.txt").unwrap()).unwrap();
        assert_eq!(found.real_path, data.canonicalize().unwrap().join("sub/a.txt"));
        assert_eq!(found.identity.size, 1);
        assert_eq!(d.real_path().unwrap(), data.canonicalize().unwrap());
        assert!(d.resolve_file(&RelPath::parse("sub/out").unwrap()).is_err());
    }

    /// A data dir that was a mount point and is not one any more is unavailable, and a disk
    /// mounted there again is seen without reopening anything.
    #[test]
    fn an_unmounted_data_dir_is_unavailable_until_it_is_mounted_again() {
        let (_dir, data) = tree();
        let mount = |on: bool| {
            let mut c = std::process::Command::new(if on { "mount" } else { "umount" });
            if on {
                c.args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]);
            }
            let ok = c.arg(&data).status().is_ok_and(|s| s.success());
            assert!(ok, "this test mounts a tmpfs: run it as root (CI does)");
        };
        mount(true);
        std::fs::write(data.join("a.txt"), "a").unwrap();
        let d = DataDir::open(&data).unwrap();
        let a = RelPath::parse("a.txt").unwrap();
        assert!(d.resolve_file(&a).is_ok());
        mount(false);
        assert!(
            matches!(d.available(), Err(PathError::Unavailable(_))),
            "{:?}",
            d.available()
        );
        assert!(matches!(d.resolve_file(&a), Err(PathError::Unavailable(_))));
        mount(true);
        std::fs::write(data.join("a.txt"), "again").unwrap();
        assert_eq!(d.available(), Ok(()));
        assert_eq!(d.resolve_file(&a).unwrap().identity.size, 5);
        mount(false);
    }

    #[test]
    fn plain_paths_normalise() {
        assert_eq!(RelPath::parse("a//b/./c.txt").unwrap().as_str(), "a/b/c.txt");
        assert_eq!(
            RelPath::parse("dir/file name.iso").unwrap().file_name(),
            "file name.iso"
        );
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any string built from path-like pieces either is refused or normalises to a
            /// relative path of plain names that parses again to itself (and so reads back from
            /// the store).
            #[test]
            fn the_normal_form_is_a_fixed_point(
                parts in prop::collection::vec(
                    prop_oneof![
                        Just(String::new()), Just(".".to_string()), Just("..".to_string()),
                        Just("~".to_string()), Just("%2e".to_string()), Just("a\\b".to_string()),
                        "[a-z~. %]{1,6}",
                    ],
                    0..6,
                ),
                lead in prop::bool::ANY,
            ) {
                let s = format!("{}{}", if lead { "/" } else { "" }, parts.join("/"));
                if let Ok(p) = RelPath::parse(&s) {
                    let n = p.as_str();
                    prop_assert_eq!(RelPath::parse(n), Ok(p.clone()), "{:?}", s);
                    prop_assert!(!n.starts_with('/') && !n.starts_with('~'), "{:?} -> {:?}", s, n);
                    prop_assert!(p.is_root() || n.split('/').all(|x| !x.is_empty() && x != "." && x != ".."));
                    prop_assert!(!lead);
                }
            }
        }
    }
}
