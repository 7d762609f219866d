//! The archives of open ZIP links (SPEC §11): each one's layout, its CRC-32s as a background task
//! computes them, and reading a member's bytes back checked against them.
//!
//! Every member is hashed in blocks of [`BLOCK`] bytes, and each block's CRC-32 is kept. A
//! member's own CRC-32, which the archive's headers carry, is the blocks' CRC-32s combined. When
//! the archive is served, every block is read whole and its CRC-32 computed again before any of
//! its bytes go out, and the file's stamp (device, inode, size, mtime, ctime) is compared after
//! each read. So a recipient only ever gets bytes of the version that was hashed: a member that
//! changed makes the read fail, and the link closes as `error`.
//!
//! Nothing here decides about a link or speaks HTTP; the link service owns the registry
//! ([`Archives`]) and the byte server (`http/zip.rs`) reads through it.

mod archive;
mod registry;

pub use archive::{Archive, BLOCK, Progress, ReadError, layout};
pub use registry::Archives;
