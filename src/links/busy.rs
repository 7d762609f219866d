//! Which uploads a request is writing to right now.

use std::collections::HashSet;
use std::sync::Mutex;

/// Uploads that a request is writing to right now: a second request for the same one waits its
/// turn by being refused (409), as tus asks.
#[derive(Default)]
pub struct Busy(Mutex<HashSet<String>>);

/// Marks an upload busy while it lives.
pub struct BusyGuard<'a> {
    busy: &'a Busy,
    key: String,
}

impl Busy {
    pub fn claim(&self, key: &str) -> Option<BusyGuard<'_>> {
        let fresh = self.0.lock().expect("busy mutex").insert(key.to_string());
        fresh.then(|| BusyGuard {
            busy: self,
            key: key.to_string(),
        })
    }

    pub fn is_busy(&self, key: &str) -> bool {
        self.0.lock().expect("busy mutex").contains(key)
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.busy.0.lock().expect("busy mutex").remove(&self.key);
    }
}
