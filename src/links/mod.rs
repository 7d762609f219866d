//! Links: the service that creates them, admits public requests, settles what was delivered
//! and closes them, one file per activity. Decisions are made by the pure functions in
//! [`rules`]; the activities only load, store and act on them. Nothing here serves file bytes
//! (nginx does) or runs a command (the tunnel provider does).

mod admit;
mod archive;
pub mod bans;
mod busy;
mod create;
mod edit;
mod error;
mod event;
mod guard;
mod passwords;
mod peers;
pub mod rules;
mod schedule;
mod service;
mod settle;
mod sink;
mod teardown;
pub mod token;
mod upload;
mod view;

#[cfg(test)]
mod rules_props;
#[cfg(test)]
pub(crate) mod timed_tests;

pub use create::{Created, NewLink};
pub use edit::{LinkEdit, NewPolicy, Rotated};
pub use error::LinkError;
pub use event::{ClientView, Event, EventKind, PeerEvent, TunnelView};
pub use passwords::Visitor;
pub use schedule::FILE_WATCH;
pub use service::Links;
pub use upload::{BeginError, NewUpload, UploadCreated, partial_key};
