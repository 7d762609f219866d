//! One ZIP link's archive: its layout, the CRC-32s of its members' blocks as hashing finds them,
//! and reading a block back checked against them.

use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::archive::{Layout, LayoutError, Member, Piece};
use crate::data_dir::{DataDir, Stamp};
use crate::model::{ArchiveInfo, TunnelId};

/// The size of the blocks a member is hashed and checked in.
pub const BLOCK: usize = 1 << 20;

/// How far hashing has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Members whose every block and whole CRC-32 are known.
    pub members: usize,
    /// Bytes hashed of the member after those.
    pub partial: u64,
    /// Bytes hashed in all, of every member.
    pub bytes: u64,
    /// Hashing stopped for good: the link closed, or a member changed.
    pub stopped: bool,
}

/// Why bytes of an archive cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A member is not what was hashed: the link must close as `error`.
    #[error("{0}")]
    Changed(String),
    /// The archive was dropped (its link closed) or its hashing failed.
    #[error("the archive is no longer served")]
    Stopped,
}

/// The CRC-32s known so far.
#[derive(Default)]
struct Hashes {
    /// Each member's blocks' CRC-32s, in order.
    blocks: Vec<Vec<u32>>,
    /// Each member's whole CRC-32, once all its blocks are known.
    crcs: Vec<Option<u32>>,
}

/// One ZIP link's archive.
pub struct Archive {
    pub id: TunnelId,
    pub layout: Layout,
    pub info: Arc<ArchiveInfo>,
    hashes: Mutex<Hashes>,
    progress: watch::Sender<Progress>,
}

impl Archive {
    /// The archive of `info`, with nothing hashed yet.
    pub fn new(id: TunnelId, info: Arc<ArchiveInfo>) -> Result<Archive, LayoutError> {
        let layout = layout(&info)?;
        let n = info.members.len();
        Ok(Archive {
            id,
            layout,
            info,
            hashes: Mutex::new(Hashes {
                blocks: vec![Vec::new(); n],
                crcs: vec![None; n],
            }),
            progress: watch::channel(Progress::default()).0,
        })
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// The bytes of all members together: what hashing must get through.
    pub fn data_len(&self) -> u64 {
        self.info.members.iter().map(|m| m.stamp.size).sum()
    }

    /// Tells everyone waiting on this archive that it will not be served any more.
    pub fn stop(&self) {
        self.progress.send_modify(|p| p.stopped = true);
    }

    /// The next piece of `at..end`, waiting until every CRC-32 its header bytes carry is known.
    /// A piece of member bytes comes at once: wait for its blocks with [`Self::hashed_to`].
    pub async fn piece(&self, at: u64, end: u64) -> Result<Piece, ReadError> {
        let mut progress = self.progress.subscribe();
        loop {
            let piece = {
                let hashes = self.hashes.lock().expect("hashes mutex");
                self.layout.piece_at(at, end, &hashes.crcs)
            };
            if let Ok(piece) = piece {
                return Ok(piece);
            }
            wait(&mut progress).await?;
        }
    }

    /// Waits until member `m`'s blocks are hashed up to byte `end` of it.
    pub async fn hashed_to(&self, m: usize, end: u64) -> Result<(), ReadError> {
        let mut progress = self.progress.subscribe();
        loop {
            let p = *progress.borrow_and_update();
            if p.members > m || (p.members == m && p.partial >= end) {
                return Ok(());
            }
            wait(&mut progress).await?;
        }
    }

    /// Hashes every member in order, publishing each block's CRC-32 as it is known. Returns why
    /// it could not (a member changed or cannot be read); stops quietly once the archive is
    /// stopped. Blocking: it runs on a thread of its own.
    pub(super) fn hash_all(&self, data: &DataDir) -> Result<(), String> {
        let mut buf = vec![0u8; BLOCK];
        for (m, member) in self.info.members.iter().enumerate() {
            let file = match self.open(data, m) {
                Ok(f) => f,
                Err(e) => return Err(e.to_string()),
            };
            let mut whole = crc32fast::Hasher::new();
            let mut at = 0u64;
            while at < member.stamp.size {
                if self.progress().stopped {
                    return Ok(());
                }
                let n = (member.stamp.size - at).min(BLOCK as u64) as usize;
                let block = &mut buf[..n];
                file.read_exact_at(block, at)
                    .map_err(|e| format!("{}: cannot be read: {e}", member.path))?;
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(block);
                whole.combine(&hasher);
                self.hashes.lock().expect("hashes mutex").blocks[m].push(hasher.finalize());
                at += n as u64;
                self.progress.send_modify(|p| {
                    p.partial = at;
                    p.bytes += n as u64;
                });
            }
            // A change made while the member was read shows in its stamp.
            let now = Stamp::of(&file).map_err(|e| format!("{}: {e}", member.path))?;
            same(member, now).map_err(|e| e.to_string())?;
            self.hashes.lock().expect("hashes mutex").crcs[m] = Some(whole.finalize());
            self.progress.send_modify(|p| {
                p.members = m + 1;
                p.partial = 0;
            });
        }
        Ok(())
    }

    /// Opens member `m` for reading, checking that it is the file that was hashed.
    pub fn open(&self, data: &DataDir, m: usize) -> Result<std::fs::File, ReadError> {
        let member = &self.info.members[m];
        let (file, stamp) = data
            .open_read(&member.path)
            .map_err(|e| changed(member, &e.to_string()))?;
        same(member, stamp)?;
        Ok(file)
    }

    /// Reads block `block` of member `m` from `file` into `buf` (resized to the block's length),
    /// checked against its CRC-32 and the member's stamp. Blocking: run it off the async threads.
    pub fn read_block(&self, file: &std::fs::File, m: usize, block: u64, buf: &mut Vec<u8>) -> Result<(), ReadError> {
        let member = &self.info.members[m];
        let start = block * BLOCK as u64;
        let len = (member.stamp.size - start).min(BLOCK as u64) as usize;
        buf.resize(len, 0);
        file.read_exact_at(buf, start)
            .map_err(|e| changed(member, &format!("cannot be read: {e}")))?;
        let want = self.hashes.lock().expect("hashes mutex").blocks[m]
            .get(block as usize)
            .copied();
        let Some(want) = want else {
            return Err(ReadError::Stopped);
        };
        if crc32fast::hash(buf) != want {
            return Err(changed(member, "changed since it was hashed"));
        }
        same(member, Stamp::of(file).map_err(|e| changed(member, &e.to_string()))?)
    }
}

/// Waits for hashing to move on, or says that it never will.
async fn wait(progress: &mut watch::Receiver<Progress>) -> Result<(), ReadError> {
    if progress.borrow().stopped || progress.changed().await.is_err() {
        return Err(ReadError::Stopped);
    }
    Ok(())
}

fn changed(member: &crate::model::ArchiveMember, what: &str) -> ReadError {
    ReadError::Changed(format!("{}: {what}", member.path))
}

/// Whether a member's stamp now is the one recorded when the link was made.
fn same(member: &crate::model::ArchiveMember, now: Stamp) -> Result<(), ReadError> {
    if now == member.stamp {
        Ok(())
    } else {
        Err(changed(member, "changed or was replaced since the link was made"))
    }
}

/// The layout of the archive `info` describes.
pub fn layout(info: &ArchiveInfo) -> Result<Layout, LayoutError> {
    Layout::new(
        info.members
            .iter()
            .map(|m| Member {
                name: m.name.clone(),
                size: m.stamp.size,
                mtime: m.stamp.mtime_ns.div_euclid(1_000_000_000) as i64,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_dir::RelPath;
    use crate::model::ArchiveMember;

    /// An archive of `sizes` (pseudo-random files `f0`, `f1`, ... in a temp data dir).
    fn fixture(sizes: &[usize]) -> (tempfile::TempDir, DataDir, Arc<Archive>, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..n).map(|j| (j * 31 + i * 7 + j / 997) as u8).collect();
            std::fs::write(dir.path().join(format!("f{i}")), &bytes).unwrap();
            contents.push(bytes);
        }
        let data = DataDir::open(dir.path()).unwrap();
        let found = data.collect(&[RelPath::root()], 100).unwrap();
        let members = found
            .files
            .into_iter()
            .map(|f| ArchiveMember {
                name: String::from_utf8(f.name).unwrap(),
                path: f.path,
                stamp: f.stamp,
            })
            .collect();
        let info = Arc::new(ArchiveInfo {
            name: "t.zip".into(),
            members,
        });
        let archive = Arc::new(Archive::new(TunnelId::random(), info).unwrap());
        (dir, data, archive, contents)
    }

    /// The whole archive, read the way the byte server reads it.
    async fn read_all(archive: &Archive, data: &DataDir) -> Result<Vec<u8>, ReadError> {
        let (mut at, end) = (0, archive.layout.total_len());
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while at < end {
            let piece = archive.piece(at, end).await?;
            at += piece.len();
            match piece {
                Piece::Bytes(b) => out.extend_from_slice(&b),
                Piece::File { member, offset, len } => {
                    let file = archive.open(data, member)?;
                    let mut pos = offset;
                    while pos < offset + len {
                        let block = pos / BLOCK as u64;
                        archive.read_block(&file, member, block, &mut buf)?;
                        let from = (pos - block * BLOCK as u64) as usize;
                        let to = ((offset + len - block * BLOCK as u64) as usize).min(buf.len());
                        out.extend_from_slice(&buf[from..to]);
                        pos = block * BLOCK as u64 + to as u64;
                    }
                }
            }
        }
        Ok(out)
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[tokio::test]
    async fn the_headers_carry_each_members_crc_once_hashing_reaches_it() {
        let (_dir, data, archive, contents) = fixture(&[BLOCK * 2 + 12_345, 10, 0]);
        archive.hash_all(&data).unwrap();
        let zip = read_all(&archive, &data).await.unwrap();
        assert_eq!(zip.len() as u64, archive.layout.total_len());
        assert_eq!(archive.progress().bytes, archive.data_len());
        // Each local header is followed by its member's bytes; its CRC-32 is at byte 14.
        let mut at = 0;
        for (m, bytes) in contents.iter().enumerate() {
            let name_len = archive.info.members[m].name.len();
            assert_eq!(u32_at(&zip, at), 0x0403_4b50, "local header {m}");
            assert_eq!(u32_at(&zip, at + 14), crc32fast::hash(bytes), "member {m}'s CRC-32");
            let data_at = at + 30 + name_len;
            assert_eq!(
                &zip[data_at..data_at + bytes.len()],
                bytes.as_slice(),
                "member {m}'s bytes"
            );
            at = data_at + bytes.len();
        }
    }

    #[tokio::test]
    async fn a_request_past_the_hashing_waits_for_it_and_a_stop_ends_the_wait() {
        let (_dir, data, archive, _) = fixture(&[3 * BLOCK, 100]);
        let end = archive.layout.total_len();
        let waiting = tokio::spawn({
            let a = archive.clone();
            async move { a.piece(end - 100, end).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the central directory needs the CRC-32s");
        archive.hash_all(&data).unwrap();
        let piece = waiting.await.unwrap().unwrap();
        assert!(matches!(piece, Piece::Bytes(b) if !b.is_empty()));

        let (_dir, _data, archive, _) = fixture(&[BLOCK]);
        let waiting = tokio::spawn({
            let a = archive.clone();
            async move { a.hashed_to(0, 10).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        archive.stop();
        assert_eq!(waiting.await.unwrap(), Err(ReadError::Stopped));
    }

    #[tokio::test]
    async fn a_member_changed_after_hashing_is_never_read() {
        let (dir, data, archive, _) = fixture(&[2 * BLOCK]);
        archive.hash_all(&data).unwrap();
        let file = archive.open(&data, 0).unwrap();
        let mut buf = Vec::new();
        archive.read_block(&file, 0, 1, &mut buf).unwrap();
        // The same length, other bytes: the CRC-32 or the stamp tells.
        use std::os::unix::fs::FileExt as _;
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f0"))
            .unwrap();
        w.write_all_at(b"changed", BLOCK as u64 + 5).unwrap();
        let err = archive.read_block(&file, 0, 1, &mut buf).unwrap_err();
        assert!(
            matches!(&err, ReadError::Changed(why) if why.starts_with("f0: ")),
            "{err}"
        );
        assert!(matches!(archive.open(&data, 0), Err(ReadError::Changed(_))));
        // Hashing it again finds the change too.
        let again = Archive::new(archive.id.clone(), archive.info.clone()).unwrap();
        assert!(again.hash_all(&data).unwrap_err().contains("f0"));
        drop(dir);
    }
}
