//! Follows nginx's access log and turns each line into a fact about a link.
//!
//! The follower reads `logs/access.log` from where it left off (the offset is kept in the state
//! dir, so a restart neither loses nor repeats lines) and hands each complete line to
//! [`crate::links::Links::apply_log`]. It never decides anything itself; it never writes to the
//! log.

pub use crate::model::coverage;
pub mod follow;
pub mod logwrites;
pub mod record;
pub mod sockdiag;
pub mod steps;
