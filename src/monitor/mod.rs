//! Watches what nginx did: this module follows nginx's access log line by line, and tracks how far
//! a transfer got.
//!
//! - [`follow`] reads nginx's log files (`logs/access-<slot>.log`, a new one each slot) from
//!   where it left off, and hands each complete line, parsed, to a [`follow::RecordSink`] (the
//!   links). Its position is kept in the state dir, so a restart neither loses nor repeats a line.
//! - [`steps`] decides, without I/O, which file the follower reads and what it does after a read.
//! - [`record`] parses one line.
//! - [`logwrites`] tells whether nginx can write its log at all.
//! - [`sockdiag`] asks the kernel how many bytes a client acknowledged while a transfer runs.
//!
//! Nothing here decides anything about a link, and nothing here writes to nginx's log.

pub mod follow;
pub mod logwrites;
pub mod record;
pub mod sockdiag;
pub mod steps;
