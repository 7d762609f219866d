//! Where an upload link's bytes are written: a partial file in a hidden folder beside the target
//! (same file system, never listed or shared), moved into the target folder only when complete.
//!
//! Every operation goes through the target folder's own descriptor, found without following any
//! symlink, so nothing is ever written outside that folder. A finished file moves in with
//! `renameat2(RENAME_NOREPLACE)` (or `linkat` where a file system refuses the flag): a name that is
//! taken is never overwritten, the next ` (n)` is tried instead.

use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::names::numbered;
use crate::data_dir::{DataDir, PathError, RelPath};

/// The hidden folder, inside the target folder, that holds partial uploads.
pub const PARTIAL_DIR: &str = ".ferry-partial";
/// How many ` (n)` alternatives of a name are tried before giving up.
const MAX_ALTERNATIVES: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    #[error("{0}")]
    Path(PathError),
    #[error("the folder is no longer the one the link was made for")]
    Replaced,
    #[error("ferry cannot write to the folder: {0}")]
    NotWritable(String),
    #[error("writing failed: {0}")]
    Io(String),
}

fn io_err(e: impl std::fmt::Display) -> InboxError {
    InboxError::Io(e.to_string())
}

/// An upload link's target folder, held open for one operation.
pub struct Inbox {
    folder: OwnedFd,
    /// The folder's (device, inode).
    pub id: (u64, u64),
}

impl Inbox {
    /// Opens the folder `rel` beneath the data dir; with `expect`, it must still be that folder.
    pub fn open(data: &DataDir, rel: &RelPath, expect: Option<(u64, u64)>) -> Result<Inbox, InboxError> {
        let (folder, id) = data.open_folder_exact(rel).map_err(InboxError::Path)?;
        if expect.is_some_and(|e| e != id) {
            return Err(InboxError::Replaced);
        }
        Ok(Inbox { folder, id })
    }

    /// The folder of partial uploads, made if need be. Making it is also the test that ferry can
    /// write to the folder at all.
    fn partial_dir(&self) -> Result<OwnedFd, InboxError> {
        match rfs::mkdirat(&self.folder, PARTIAL_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e @ (Errno::ROFS | Errno::ACCESS | Errno::PERM)) => return Err(InboxError::NotWritable(e.to_string())),
            Err(e) => return Err(io_err(e)),
        }
        rfs::openat(
            &self.folder,
            PARTIAL_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)
    }

    /// Checks that ferry can write here, by making the partial folder (and removing it again
    /// when it was not there before).
    pub fn writable(&self) -> Result<(), InboxError> {
        match rfs::mkdirat(&self.folder, PARTIAL_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let _ = rfs::unlinkat(&self.folder, PARTIAL_DIR, AtFlags::REMOVEDIR);
                Ok(())
            }
            Err(Errno::EXIST) => Ok(()),
            Err(e @ (Errno::ROFS | Errno::ACCESS | Errno::PERM)) => Err(InboxError::NotWritable(e.to_string())),
            Err(e) => Err(io_err(e)),
        }
    }

    /// The partial file `key`, created empty if `create` and it is not there.
    pub fn partial(&self, key: &str, create: bool) -> Result<std::fs::File, InboxError> {
        let dir = self.partial_dir()?;
        let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if create {
            flags |= OFlags::CREATE;
        }
        let fd = rfs::openat(&dir, key, flags, Mode::from_raw_mode(0o644)).map_err(io_err)?;
        Ok(std::fs::File::from(fd))
    }

    /// How many bytes the partial file `key` holds (0 when there is none).
    pub fn partial_len(&self, key: &str) -> u64 {
        let Ok(dir) = self.partial_dir() else { return 0 };
        rfs::statat(&dir, key, AtFlags::SYMLINK_NOFOLLOW).map_or(0, |st| st.st_size as u64)
    }

    /// Removes the partial files whose names start with `prefix`, and the partial folder when
    /// it is left empty.
    pub fn remove_partials(&self, prefix: &str) {
        let Ok(dir) = self.partial_dir() else { return };
        let mut left = 0;
        if let Ok(reader) = rfs::openat(
            &dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) && let Ok(entries) = rfs::Dir::new(reader)
        {
            for entry in entries.flatten() {
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                if name.starts_with(prefix.as_bytes()) {
                    let _ = rfs::unlinkat(&dir, entry.file_name(), AtFlags::empty());
                } else {
                    left += 1;
                }
            }
        }
        if left == 0 {
            let _ = rfs::unlinkat(&self.folder, PARTIAL_DIR, AtFlags::REMOVEDIR);
        }
    }

    /// The SHA-256 of the partial file `key`, in hex.
    pub fn sha256(&self, key: &str) -> Result<String, InboxError> {
        use sha2::Digest as _;
        let mut file = self.partial(key, false)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Moves the complete partial file `key` into the folder as `name` (cleaned already), or as
    /// the first free ` (n)` alternative. Returns the name it got.
    pub fn finish(&self, key: &str, name: &str) -> Result<String, InboxError> {
        let dir = self.partial_dir()?;
        let file = self.partial(key, false)?;
        rfs::fchmod(&file, Mode::from_raw_mode(0o644)).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        for n in 0..=MAX_ALTERNATIVES {
            let candidate = if n == 0 { name.to_string() } else { numbered(name, n) };
            match move_in(&dir, key, &self.folder, &candidate) {
                Ok(()) => {
                    // An empty partial folder goes; one that still holds uploads stays.
                    let _ = rfs::unlinkat(&self.folder, PARTIAL_DIR, AtFlags::REMOVEDIR);
                    // The new entry must survive a crash, as the file's bytes do.
                    if let Ok(f) = rfs::openat(
                        &self.folder,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        let _ = rfs::fsync(&f);
                    }
                    return Ok(candidate);
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(InboxError::Io(format!("no free name like {name}")))
    }

    /// Bytes free for ferry in the folder's file system.
    pub fn free_bytes(&self) -> Option<u64> {
        let st = rfs::fstatvfs(self.folder.as_fd()).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// Moves `key` from the partial folder to `name` in the folder, never replacing what is there.
fn move_in(partial: &OwnedFd, key: &str, folder: &OwnedFd, name: &str) -> Result<(), Errno> {
    match rfs::renameat_with(partial, key, folder, name, RenameFlags::NOREPLACE) {
        // File systems without RENAME_NOREPLACE (some network and FUSE ones): a hard link fails
        // on a taken name just the same.
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            rfs::linkat(partial, key, folder, name, AtFlags::empty())?;
            let _ = rfs::unlinkat(partial, key, AtFlags::empty());
            Ok(())
        }
        other => other,
    }
}
