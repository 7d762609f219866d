//! Upload links' side of the data dir (SPEC §12): the names received files get, and the one place
//! where ferry writes into the data dir, always into an upload link's own folder and nowhere else.

pub mod files;
pub mod names;

pub use files::{Inbox, InboxError, PARTIAL_DIR};
