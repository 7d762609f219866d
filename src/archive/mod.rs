//! A folder, or several files, as one ZIP archive whose every byte is known in advance (SPEC §11).
//!
//! This module only computes: member names ([`names`]) and calendar dates ([`time`]). It never
//! opens a file or reads a clock. It imports nothing of the rest of ferry.

pub mod names;
pub mod time;

pub use names::{NameError, archive_name, member_name, member_names};
