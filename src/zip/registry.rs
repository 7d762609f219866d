//! The archives of the open ZIP links this instance serves, and the hashing behind them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::archive::Archive;
use crate::archive::LayoutError;
use crate::data_dir::DataDir;
use crate::model::{ArchiveInfo, TunnelId};

/// The archives of the open ZIP links this instance serves, and the hashing behind them.
pub struct Archives {
    data: Arc<DataDir>,
    open: Mutex<HashMap<TunnelId, Arc<Archive>>>,
    /// Where a member that changed is reported, so that its link closes as `error`.
    failures: mpsc::UnboundedSender<(TunnelId, String)>,
}

impl Archives {
    /// The registry, and the receiving end of its failure reports.
    pub fn new(data: Arc<DataDir>) -> (Archives, mpsc::UnboundedReceiver<(TunnelId, String)>) {
        let (failures, rx) = mpsc::unbounded_channel();
        let archives = Archives {
            data,
            open: Default::default(),
            failures,
        };
        (archives, rx)
    }

    /// The archive of link `id`, started (hashing in the background) if it is not yet.
    pub fn get_or_start(&self, id: &TunnelId, info: &Arc<ArchiveInfo>) -> Result<Arc<Archive>, LayoutError> {
        let mut open = self.open.lock().expect("archives mutex");
        if let Some(a) = open.get(id) {
            return Ok(a.clone());
        }
        let archive = Arc::new(Archive::new(id.clone(), info.clone())?);
        open.insert(id.clone(), archive.clone());
        drop(open);
        let (data, failures, hashing) = (self.data.clone(), self.failures.clone(), archive.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(why) = hashing.hash_all(&data) {
                hashing.stop();
                let _ = failures.send((hashing.id.clone(), why));
            }
        });
        Ok(archive)
    }

    /// The archive of link `id`, if it has been started.
    pub fn get(&self, id: &TunnelId) -> Option<Arc<Archive>> {
        self.open.lock().expect("archives mutex").get(id).cloned()
    }

    /// Forgets link `id`'s archive: its hashing stops and its waiting readers give up.
    pub fn stop(&self, id: &TunnelId) {
        if let Some(a) = self.open.lock().expect("archives mutex").remove(id) {
            a.stop();
        }
    }

    /// Reports that a member of link `id` changed.
    pub fn report(&self, id: &TunnelId, why: String) {
        let _ = self.failures.send((id.clone(), why));
    }

    /// The data dir the members are read from.
    pub fn data_dir(&self) -> Arc<DataDir> {
        self.data.clone()
    }
}
