//! A folder, or several files, as one ZIP archive whose every byte is known in advance (SPEC §11).
//!
//! This module only computes: member names ([`names`]), the archive's exact layout and the pieces
//! that make up any byte range of it ([`layout`]), and calendar dates ([`time`]). It never opens a
//! file, reads a clock or computes a CRC-32; the caller reads the members' bytes, hashes them, and
//! sends what the pieces say. It imports nothing of the rest of ferry.

pub mod layout;
pub mod names;
pub mod time;
#[cfg(test)]
mod tool_tests;

pub use layout::{Layout, LayoutError, Member, NeedsCrc, Piece, Pieces};
pub use names::{NameError, archive_name, member_name, member_names};
