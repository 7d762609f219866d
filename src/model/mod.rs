//! The ground floor: what a link is, and the small values every part of ferry speaks in. Nothing
//! here imports the rest of ferry, does I/O or decides anything; the parts above build on it.

pub mod cidr;
pub mod client;
pub mod clock;
pub mod conn;
pub mod coverage;
pub mod format;
pub mod id;
pub mod link;

pub use cidr::Cidr;
pub use client::ClientKey;
pub use clock::{Clock, Every, now_ms, rfc3339};
pub use conn::Conn;
pub use id::{BadTunnelId, TunnelId, random_token};
pub use link::{
    ArchiveInfo, ArchiveMember, Claim, ClientSeen, CloseReason, InFlight, Incoming, IncomingState, Link, LinkPolicy,
    LinkState, Read, ReceivedFile, RequestSeen, Slot, UploadInfo, Use,
};
