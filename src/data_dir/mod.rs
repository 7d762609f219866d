//! Paths inside the data dir. A [`RelPath`] can only be built from a string that names a path
//! beneath the data dir in plain form; [`DataDir`] then resolves it with `openat2`
//! (`RESOLVE_BENEATH`), so no symlink, `..` or magic link can lead out of the data dir. Nothing
//! here creates or changes a file in the data dir.
//!
//! Linux names are bytes, and a NAS holds names that are not UTF-8 (old Samba shares, cameras,
//! archives made elsewhere). A [`RelPath`]'s text is exact: UTF-8 text stays as it is, and each
//! byte that is not part of UTF-8 text, each control byte and each backslash is written `\xHH` (so
//! a backslash appears in a path's text only in that form). For people, [`RelPath::display_name`]
//! writes such bytes as `%XX` instead, as ZIP member names do (SPEC §11).
//!
//! The data dir is opened again for every operation, never held: a disk mounted there after
//! ferry started, or mounted again after it went away, is what the next operation sees, and ferry
//! never keeps a mount busy. A data dir that was a mount point and no longer is, or that cannot be
//! opened, is unavailable ([`PathError::Unavailable`]).

use std::fmt::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags};
use serde::{Deserialize, Serialize};

mod collect;

pub use collect::{CollectError, Collected, CollectedFile, Skipped};

/// Longest path, and longest name, in bytes (Linux's `PATH_MAX` and `NAME_MAX`).
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;
/// A byte written `\xHH` takes four characters of a path's text.
const MAX_TEXT: usize = MAX_PATH * 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("absolute paths are not allowed; give a path relative to the data dir")]
    Absolute,
    #[error("path may not contain `..`")]
    Parent,
    #[error("path may not contain NUL or control characters, nor a backslash except in `\\xHH`")]
    BadChar,
    #[error("path may not contain percent-encoded separators or dots")]
    Encoded,
    #[error("`\\xHH` stands only for a byte that is not UTF-8 text, a control byte or a backslash")]
    BadEscape,
    #[error("path or one of its names is too long")]
    TooLong,
    #[error("no such file in the data dir")]
    NotFound,
    #[error("is a folder, not a file")]
    Folder,
    #[error("not a regular file")]
    NotRegular,
    #[error("path leads outside the data dir")]
    Escapes,
    #[error("not a folder")]
    NotFolder,
    #[error("the folder is reached through a symlink; give its real path")]
    Symlinked,
    #[error("data dir unavailable: {0}")]
    Unavailable(String),
    #[error("cannot read it: {0}")]
    Io(String),
}

/// A normalised path relative to the data dir: no leading `/`, no `.`/`..`, no empty names, in
/// its exact text (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

/// Whether `b` is written `\xHH` in a path's text when it is not part of UTF-8 text.
fn escapable(b: u8) -> bool {
    b >= 0x80 || (b != 0 && b < 0x20) || b == 0x7f || b == b'\\'
}

/// The bytes a path's text stands for.
fn unescape(s: &str) -> Result<Vec<u8>, PathError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let byte = match b.get(i + 1..i + 4) {
            Some([b'x', h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                hex(*h) << 4 | hex(*l)
            }
            _ => return Err(PathError::BadChar),
        };
        if !escapable(byte) {
            return Err(PathError::BadEscape);
        }
        out.push(byte);
        i += 4;
    }
    Ok(out)
}

/// Appends a name's exact text: UTF-8 as it is, other bytes, control characters and backslashes
/// as `\xHH`.
fn escape_into(name: &[u8], out: &mut String) {
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                // C1 controls (U+0080 to U+009F) take two bytes.
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// A name for people: UTF-8 as it is, each byte that is not UTF-8 text as `%XX`.
pub fn display_bytes(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl RelPath {
    /// The root of the data dir itself (for listing).
    pub fn root() -> Self {
        RelPath(String::new())
    }

    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.len() > MAX_TEXT {
            return Err(PathError::TooLong);
        }
        if s.bytes().any(|b| b == 0 || b < 0x20 || b == 0x7f) {
            return Err(PathError::BadChar);
        }
        if s.starts_with('/') || s.starts_with('~') {
            return Err(PathError::Absolute);
        }
        let lower = s.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c", "%00", "%25"].iter().any(|e| lower.contains(e)) {
            return Err(PathError::Encoded);
        }
        let raw = unescape(s)?;
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        let mut names = Vec::new();
        for name in raw.split(|&b| b == b'/') {
            match name {
                b"" | b"." => continue,
                b".." => return Err(PathError::Parent),
                n if n.len() > MAX_NAME => return Err(PathError::TooLong),
                n => names.push(n),
            }
        }
        // The normal form is checked too, because `./~` must not become `~`, which would not parse
        // again, and a stored link must always read back.
        if names.first().is_some_and(|n| n.starts_with(b"~")) {
            return Err(PathError::Absolute);
        }
        let mut text = String::with_capacity(s.len());
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                text.push('/');
            }
            escape_into(name, &mut text);
        }
        Ok(RelPath(text))
    }

    /// The exact text: what the API takes and returns.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes of the path, as the file system knows it.
    pub fn to_bytes(&self) -> Vec<u8> {
        unescape(&self.0).expect("a parsed path's text is valid")
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last name's exact text.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The last name's bytes.
    pub fn file_name_bytes(&self) -> Vec<u8> {
        unescape(self.file_name()).expect("a parsed path's text is valid")
    }

    /// The last name for people (and for a recipient's saved file): bytes that are not UTF-8
    /// text as `%XX`.
    pub fn display_name(&self) -> String {
        display_bytes(&self.file_name_bytes())
    }

    /// The path of the entry `name` (raw bytes, as a folder lists it) in this folder.
    pub fn child(&self, name: &[u8]) -> Result<RelPath, PathError> {
        if name.contains(&b'/') {
            return Err(PathError::BadChar);
        }
        let mut text = self.0.clone();
        if !self.is_root() {
            text.push('/');
        }
        escape_into(name, &mut text);
        RelPath::parse(&text)
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

/// What a file was when a link was made: compared again whenever the file is read.
///
/// The change time is part of it because a file can be rewritten with its old size and
/// modification time put back (`touch -r`), and only the change time then tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stamp {
    /// The stamp of an open file now.
    pub fn of(file: &std::fs::File) -> std::io::Result<Stamp> {
        Ok(stamp(&rfs::fstat(file)?))
    }
}

fn stamp(st: &rfs::Stat) -> Stamp {
    Stamp {
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
        ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
    }
}

/// A regular file found beneath the data dir.
pub struct Resolved {
    pub identity: FileIdentity,
    /// The file's real absolute path (inner symlinks already followed, all within the data dir).
    pub real_path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// The name for people (`%XX` for bytes that are not UTF-8 text); `path` is exact.
    pub name: String,
    pub path: RelPath,
    pub size: u64,
    pub is_dir: bool,
    pub modified_ns: i128,
}

/// One page of a folder, in order (folders first, then by name), and how many entries it has.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub total: usize,
}

/// What a search found, and whether it stopped before it had looked everywhere.
#[derive(Debug, Clone)]
pub struct Found {
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

/// The most folders one search opens.
const SEARCH_FOLDERS: usize = 10_000;

/// The data dir, found afresh for each operation (see the module's documentation).
pub struct DataDir {
    /// As configured (`NAS_MOUNT_PATH`); it may be a symlink.
    path: PathBuf,
    /// Whether the data dir has been the root of a mount. When it no longer is, its disk has gone
    /// away.
    was_mount: AtomicBool,
}

/// The data dir as one operation finds it: every lookup of that operation is relative to it.
struct Root {
    fd: OwnedFd,
    /// Its real absolute path (a symlinked data dir resolved).
    real: PathBuf,
}

/// An entry of a folder as read from the folder itself.
struct Listed {
    name: Vec<u8>,
    is_dir: bool,
    /// The entry's metadata, already known when the entry is a symlink (it is then the target's
    /// metadata).
    stat: Option<rfs::Stat>,
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
    // Kernels before 5.8 do not report the attribute. There, a mount's root is on another device
    // than its parent.
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
        let name = if rel.is_root() { b".".to_vec() } else { rel.to_bytes() };
        // O_PATH never blocks on a FIFO or device, and reads nothing.
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

    /// Opens a folder beneath the data dir for reading its entries.
    fn open_folder(&self, root: &Root, rel: &RelPath) -> Result<(OwnedFd, rfs::Stat), PathError> {
        let (fd, st) = self.open_beneath(root, rel)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(PathError::NotFolder);
        }
        let dir = rfs::openat(
            &fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok((dir, st))
    }

    /// Opens a folder beneath the data dir without following any symlink on the way (`O_PATH`),
    /// with its (device, inode). Upload links write into such a folder (see `crate::inbox`), and
    /// only a folder found this way can be checked again to be the same one.
    pub fn open_folder_exact(&self, rel: &RelPath) -> Result<(OwnedFd, (u64, u64)), PathError> {
        let root = self.root()?;
        let name = if rel.is_root() { b".".to_vec() } else { rel.to_bytes() };
        let fd = rfs::openat2(
            root.fd.as_fd(),
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => PathError::Symlinked,
            rustix::io::Errno::NOTDIR => PathError::NotFolder,
            e => io(e),
        })?;
        let st = rfs::fstat(&fd).map_err(io)?;
        Ok((fd, (st.st_dev, st.st_ino)))
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

    /// Whether `rel`, followed through symlinks as any lookup here follows them, lands beneath
    /// the folder `within` (or on it). Both must exist.
    pub fn lands_within(&self, rel: &RelPath, within: &RelPath) -> Result<bool, PathError> {
        let root = self.root()?;
        let (fd, _) = self.open_beneath(&root, rel)?;
        let (folder, _) = self.open_beneath(&root, within)?;
        Ok(real_path(&fd)?.starts_with(real_path(&folder)?))
    }

    /// The file's identity now, for comparison with the one recorded at creation. `resolve_file`
    /// checked that one for escapes, so the same identity means the same file.
    pub fn identity(&self, rel: &RelPath) -> Result<FileIdentity, PathError> {
        let root = self.root()?;
        self.open_file(&root, rel).map(|(_, st)| identity(&st))
    }

    /// Opens a regular file beneath the data dir for reading, with its stamp now.
    ///
    /// The file is found with `O_PATH`, which opens nothing, and only a regular file is then
    /// opened through `/proc/self/fd`: that reopens the very file found, so a FIFO (whose open
    /// would wait for a writer) or a device put in its place meanwhile is never opened.
    pub fn open_read(&self, rel: &RelPath) -> Result<(std::fs::File, Stamp), PathError> {
        let root = self.root()?;
        let (found, _) = self.open_file(&root, rel)?;
        let file = rfs::open(
            format!("/proc/self/fd/{}", found.as_raw_fd()),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // Without /proc the file is there, but it cannot be reopened.
            rustix::io::Errno::NOENT => PathError::Io(format!("cannot reopen it through /proc: {e}")),
            e => io(e),
        })?;
        let file = std::fs::File::from(file);
        let stamp = Stamp::of(&file).map_err(|e| PathError::Io(e.to_string()))?;
        Ok((file, stamp))
    }

    /// The identity of the regular file `path` leads to (symlinks followed), if there is one.
    pub fn identity_at(path: &Path) -> Option<FileIdentity> {
        let st = rfs::stat(path).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| identity(&st))
    }

    /// The folder's entries that can be listed: regular files and folders (symlinks to them
    /// beneath the data dir included), hidden ones left out. Only symlinks (and entries of file
    /// systems that do not say what they are) cost a lookup; the others are known from the
    /// folder itself. Stops early (`true`) once `deadline` has passed.
    fn read_folder(
        &self,
        root: &Root,
        rel: &RelPath,
        dir: OwnedFd,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Listed>, bool), PathError> {
        let mut out = Vec::new();
        let entries = rfs::Dir::new(dir).map_err(io)?;
        for (n, entry) in entries.enumerate() {
            if n % 1024 == 1023 && deadline.is_some_and(|d| Instant::now() > d) {
                return Ok((out, true));
            }
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_bytes();
            if name.starts_with(b".") {
                continue;
            }
            let (is_dir, stat) = match entry.file_type() {
                FileType::Directory => (true, None),
                FileType::RegularFile => (false, None),
                FileType::Symlink | FileType::Unknown => {
                    let Ok(path) = rel.child(name) else { continue };
                    let Ok((_, st)) = self.open_beneath(root, &path) else {
                        continue;
                    };
                    match FileType::from_raw_mode(st.st_mode) {
                        FileType::Directory => (true, Some(st)),
                        FileType::RegularFile => (false, Some(st)),
                        _ => continue,
                    }
                }
                _ => continue,
            };
            out.push(Listed {
                name: name.to_vec(),
                is_dir,
                stat,
            });
        }
        Ok((out, false))
    }

    /// An entry with its size and time (`None` if it went away or changed kind meanwhile).
    fn entry(&self, dir: &OwnedFd, rel: &RelPath, listed: Listed) -> Option<Entry> {
        let path = rel.child(&listed.name).ok()?;
        let st = match listed.stat {
            Some(st) => st,
            None => rfs::statat(dir, listed.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).ok()?,
        };
        let is_dir = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => true,
            FileType::RegularFile => false,
            _ => return None,
        };
        if is_dir != listed.is_dir {
            return None;
        }
        let id = identity(&st);
        Some(Entry {
            name: display_bytes(&listed.name),
            path,
            size: if is_dir { 0 } else { id.size },
            is_dir,
            modified_ns: id.mtime_ns,
        })
    }

    /// Lists `limit` entries of a folder beneath the data dir from `offset` on (folders first,
    /// then by name). Only the entries of the page are looked up, so a page of a huge folder
    /// costs one read of the folder's names.
    pub fn list(&self, rel: &RelPath, offset: usize, limit: usize) -> Result<Page, PathError> {
        let root = self.root()?;
        let (dir, _) = self.open_folder(&root, rel)?;
        let stat_dir = rfs::openat(&dir, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(io)?;
        let (mut all, _) = self.read_folder(&root, rel, dir, None)?;
        all.sort_unstable_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
        let total = all.len();
        let entries = all
            .into_iter()
            .skip(offset)
            .take(limit)
            .filter_map(|l| self.entry(&stat_dir, rel, l))
            .collect();
        Ok(Page { entries, total })
    }

    /// Finds entries whose name contains `q` (case-insensitive) below `rel`, breadth first, each
    /// folder once. It stops at `limit` results, after `SEARCH_FOLDERS` folders, or once
    /// `deadline` has passed, and then says it was `truncated`.
    pub fn search(&self, rel: &RelPath, q: &str, limit: usize, deadline: Instant) -> Result<Found, PathError> {
        let root = self.root()?;
        let q = q.to_lowercase();
        let mut queue = std::collections::VecDeque::from([rel.clone()]);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut folders = 0;
        while let Some(dir_rel) = queue.pop_front() {
            if folders >= SEARCH_FOLDERS || Instant::now() > deadline {
                return Ok(Found {
                    entries: out,
                    truncated: true,
                });
            }
            let (dir, st) = match self.open_folder(&root, &dir_rel) {
                Ok(d) => d,
                Err(e) if dir_rel == *rel => return Err(e),
                Err(_) => continue,
            };
            // A symlink back up the tree leads to a folder already searched.
            if !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            folders += 1;
            let stat_dir = rfs::openat(&dir, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(io)?;
            let (mut found, stopped) = self.read_folder(&root, &dir_rel, dir, Some(deadline))?;
            found.sort_unstable_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
            for l in found {
                if l.is_dir
                    && let Ok(p) = dir_rel.child(&l.name)
                {
                    queue.push_back(p);
                }
                if display_bytes(&l.name).to_lowercase().contains(&q)
                    && let Some(e) = self.entry(&stat_dir, &dir_rel, l)
                {
                    out.push(e);
                    if out.len() >= limit {
                        return Ok(Found {
                            entries: out,
                            truncated: true,
                        });
                    }
                }
            }
            if stopped {
                return Ok(Found {
                    entries: out,
                    truncated: true,
                });
            }
        }
        Ok(Found {
            entries: out,
            truncated: false,
        })
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
            // The `path` fuzz target found this: a `~` behind names that normalise away.
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

    #[test]
    fn bytes_that_are_not_utf8_text_are_written_as_escapes() {
        // (text given, exact text, bytes, name for people)
        let table: &[(&str, &str, &[u8], &str)] = &[
            ("caf\\xE9.txt", "caf\\xE9.txt", b"caf\xe9.txt", "caf%E9.txt"),
            ("old/caf\\xe9.txt", "old/caf\\xE9.txt", b"old/caf\xe9.txt", "caf%E9.txt"),
            // An escape of UTF-8 text is that text.
            (
                "\\xC3\\xA9t\\xC3\\xA9.txt",
                "\u{e9}t\u{e9}.txt",
                "\u{e9}t\u{e9}.txt".as_bytes(),
                "\u{e9}t\u{e9}.txt",
            ),
            ("tab\\x09.txt", "tab\\x09.txt", b"tab\t.txt", "tab\t.txt"),
            ("back\\x5Cslash", "back\\x5Cslash", b"back\\slash", "back\\slash"),
            (
                "\u{65e5}\\x82\\xA0.jpg",
                "\u{65e5}\\x82\\xA0.jpg",
                b"\xe6\x97\xa5\x82\xa0.jpg",
                "\u{65e5}%82%A0.jpg",
            ),
        ];
        for (given, exact, bytes, display) in table {
            let p = RelPath::parse(given).unwrap_or_else(|e| panic!("{given:?}: {e}"));
            assert_eq!(p.as_str(), *exact, "{given:?}");
            assert_eq!(p.to_bytes(), *bytes, "{given:?}");
            assert_eq!(p.display_name(), *display, "{given:?}");
            assert_eq!(
                RelPath::parse(p.as_str()),
                Ok(p.clone()),
                "{given:?} does not read back"
            );
        }
        let refused: &[(&str, PathError)] = &[
            ("a\\x2Fb", PathError::BadEscape),
            ("a\\x2e\\x2e", PathError::BadEscape),
            ("\\x41", PathError::BadEscape),
            ("a\\x00b", PathError::BadEscape),
            ("a\\x+fb", PathError::BadChar),
            ("a\\xE", PathError::BadChar),
            ("a\\", PathError::BadChar),
            ("a\\u00e9", PathError::BadChar),
        ];
        for (given, want) in refused {
            assert_eq!(RelPath::parse(given), Err(want.clone()), "{given:?}");
        }
        // A name of 255 bytes that are not UTF-8 is a name Linux allows: its text is longer.
        let long = "\\xFF".repeat(255);
        assert_eq!(RelPath::parse(&long).unwrap().to_bytes().len(), 255);
        assert_eq!(RelPath::parse(&format!("{long}\\xFF")), Err(PathError::TooLong));
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

    #[test]
    fn a_path_lands_within_a_folder_only_where_its_symlinks_stay_there() {
        let (_dir, data) = tree();
        std::fs::create_dir_all(data.join("private")).unwrap();
        std::fs::write(data.join("sub/a.txt"), "a").unwrap();
        std::fs::write(data.join("private/p.txt"), "p").unwrap();
        std::os::unix::fs::symlink("../private/p.txt", data.join("sub/out")).unwrap();
        std::os::unix::fs::symlink("a.txt", data.join("sub/in")).unwrap();
        std::os::unix::fs::symlink("sub", data.join("alias")).unwrap();
        let d = DataDir::open(&data).unwrap();
        let p = |s: &str| RelPath::parse(s).unwrap();
        let sub = p("sub");
        for (path, within) in [
            ("sub", true),
            ("sub/a.txt", true),
            ("sub/in", true),
            ("alias/a.txt", true),
        ] {
            assert_eq!(d.lands_within(&p(path), &sub), Ok(within), "{path}");
        }
        for path in ["sub/out", "private/p.txt", "private"] {
            assert_eq!(d.lands_within(&p(path), &sub), Ok(false), "{path}");
        }
        assert_eq!(d.lands_within(&p("alias"), &p("sub")), Ok(true), "the same folder");
        assert_eq!(d.lands_within(&p("sub/missing"), &sub), Err(PathError::NotFound));
        assert_eq!(d.lands_within(&p("private/p.txt"), &RelPath::root()), Ok(true));
    }

    /// Linux names are bytes: a name that is not UTF-8 is listed, searched and resolved by its
    /// exact text.
    #[test]
    fn a_name_that_is_not_utf8_is_listed_searched_and_resolved() {
        use std::os::unix::ffi::OsStrExt;
        let (_dir, data) = tree();
        let name = std::ffi::OsStr::from_bytes(b"Caf\xe9 menu.txt");
        std::fs::write(data.join("sub").join(name), "latin-1").unwrap();
        let d = DataDir::open(&data).unwrap();
        let page = d.list(&RelPath::parse("sub").unwrap(), 0, 10).unwrap();
        assert_eq!(page.total, 1);
        let e = &page.entries[0];
        assert_eq!(
            (e.name.as_str(), e.path.as_str()),
            ("Caf%E9 menu.txt", "sub/Caf\\xE9 menu.txt")
        );
        let found = d.resolve_file(&RelPath::parse(e.path.as_str()).unwrap()).unwrap();
        assert_eq!(found.identity.size, 7);
        assert!(
            found
                .real_path
                .as_os_str()
                .as_bytes()
                .ends_with(b"/sub/Caf\xe9 menu.txt")
        );
        let hits = d
            .search(
                &RelPath::root(),
                "caf%e9",
                10,
                Instant::now() + std::time::Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(hits.entries.len(), 1);
        assert!(!hits.truncated);
    }

    #[test]
    fn a_folder_is_listed_in_pages_folders_first() {
        let (_dir, data) = tree();
        for n in 0..25 {
            std::fs::write(data.join(format!("f{n:02}")), "x").unwrap();
        }
        std::fs::write(data.join(".hidden"), "x").unwrap();
        let d = DataDir::open(&data).unwrap();
        let mut seen = Vec::new();
        let mut offset = 0;
        for _ in 0..10 {
            let page = d.list(&RelPath::root(), offset, 10).unwrap();
            assert_eq!(page.total, 26, "25 files and one folder; hidden ones left out");
            seen.extend(page.entries.iter().map(|e| e.name.clone()));
            offset += 10;
            if offset >= page.total {
                break;
            }
        }
        let want: Vec<String> = std::iter::once("sub".to_string())
            .chain((0..25).map(|n| format!("f{n:02}")))
            .collect();
        assert_eq!(seen, want);
        assert!(d.list(&RelPath::root(), 26, 10).unwrap().entries.is_empty());
    }

    /// A symlink back up the tree is searched once, and a search stops at its limits and says so.
    #[test]
    fn a_search_enters_each_folder_once_and_says_when_it_stopped() {
        let (_dir, data) = tree();
        std::os::unix::fs::symlink("..", data.join("sub/up")).unwrap();
        std::fs::write(data.join("sub/match-1"), "x").unwrap();
        std::fs::write(data.join("match-2"), "x").unwrap();
        let d = DataDir::open(&data).unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(5);
        let all = d.search(&RelPath::root(), "MATCH", 10, later).unwrap();
        let mut paths: Vec<&str> = all.entries.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["match-2", "sub/match-1"]);
        assert!(!all.truncated);
        let one = d.search(&RelPath::root(), "match", 1, later).unwrap();
        assert_eq!((one.entries.len(), one.truncated), (1, true));
        let late = d.search(&RelPath::root(), "match", 10, Instant::now()).unwrap();
        assert!(late.truncated, "a search past its deadline did not say so");
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
                        "[a-z~. %]{1,6}", "(\\\\x[0-9a-fA-F]{2}|[a-z]){1,4}",
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

            /// Any name Linux allows reads back byte for byte from its exact text.
            #[test]
            fn any_name_reads_back_from_its_text(name in prop::collection::vec(1u8..=255, 1..=255)) {
                prop_assume!(!name.contains(&b'/') && name != b"." && name != b".." && !name.starts_with(b"~"));
                let text = String::from_utf8(name.clone()).ok();
                prop_assume!(text.is_none_or(|t| !["%2e", "%2f", "%5c", "%00", "%25"].iter().any(|e| t.to_ascii_lowercase().contains(e))));
                let p = RelPath::root().child(&name).unwrap();
                prop_assert_eq!(p.to_bytes(), name.clone());
                prop_assert_eq!(RelPath::parse(p.as_str()), Ok(p.clone()));
                prop_assert!(!p.as_str().chars().any(|c| c.is_control()));
            }
        }
    }
}
