//! The link state machine as pure functions of (link, fact, now): who may be served, what a log
//! line or a socket sample settles, when a link is due, when it has stalled. No I/O and no clock
//! here, so every rule is tested with explicit times.
//!
//! The ledger (SPEC §2): a link has `max_downloads` slots. A request that would send body bytes
//! is either a read (a few bytes a previewer or scanner takes, charged to its address at the
//! check) or runs under a claim on one slot. The check names what it admitted in the answer it
//! gives nginx (`Use::header`), nginx writes that into the request's log line, and the line is
//! credited according to that value. Bytes are never attributed by reading a client's headers a
//! second time.
//! Every body byte handed out is then one of: new coverage of a slot (at most the file's size per
//! slot), a re-sent byte drawn from the link's re-send budget, a read under the reads' cap, or a
//! grace byte under the grace cap. Each of these is reserved or checked before nginx may send it,
//! which is what bounds what any set of clients can take.
//!
//! `request.rs` holds what the check is told and can answer; `policy.rs` the limits and budgets;
//! `admit.rs` the check's decision; `allowance.rs` an owner's change of `max_downloads`; `settle.rs` what log lines and socket samples settle;
//! `due.rs` when a link closes or has stalled.

mod admit;
mod allowance;
mod due;
mod policy;
mod request;
mod settle;
#[cfg(test)]
mod tests;

pub use admit::*;
pub use allowance::*;
pub use due::*;
pub use policy::*;
pub use request::*;
pub use settle::*;
