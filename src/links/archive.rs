//! ZIP links (SPEC §11): what a folder or several paths become, and the archive each open one is
//! served from.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::error::LinkError;
use super::service::Links;
use crate::archive::{archive_name, member_names};
use crate::data_dir::{CollectError, RelPath, Skipped};
use crate::model::{ArchiveInfo, ArchiveMember, Link, TunnelId};
use crate::zip::Archive;

/// What several paths, or a folder, become: the archive's description and what was left out.
pub(super) struct Collected {
    /// The folder the paths lie in, which stands for the link in its `file_path`.
    pub folder: RelPath,
    pub info: ArchiveInfo,
    pub total: u64,
    pub skipped: Vec<Skipped>,
}

impl Links {
    /// Walks `paths` into one archive. `field` names the request's field in errors.
    pub(super) fn collect(&self, field: &'static str, paths: &[RelPath]) -> Result<Collected, LinkError> {
        let found = self.data.collect(paths, self.zip_max_files).map_err(|e| match e {
            CollectError::Path { error, .. } if field == "file_path" => LinkError::Path(error),
            CollectError::Path { path, error } => LinkError::PathOf { path, error },
            e => LinkError::Invalid {
                field,
                message: e.to_string(),
            },
        })?;
        let names = member_names(found.files.iter().map(|f| f.name.as_slice())).map_err(|e| LinkError::Invalid {
            field,
            message: e.to_string(),
        })?;
        let members: Vec<ArchiveMember> = found
            .files
            .into_iter()
            .zip(names)
            .map(|(f, name)| ArchiveMember {
                path: f.path,
                name,
                stamp: f.stamp,
            })
            .collect();
        let given: Vec<Vec<u8>> = paths.iter().map(RelPath::to_bytes).collect();
        let given: Vec<&[u8]> = given.iter().map(Vec::as_slice).collect();
        let info = ArchiveInfo {
            name: archive_name(&given, (self.clock.now_ms() / 1000) as i64),
            members,
        };
        let total = crate::zip::layout(&info)
            .map_err(|e| LinkError::Invalid {
                field,
                message: e.to_string(),
            })?
            .total_len();
        Ok(Collected {
            folder: common_folder(paths),
            info,
            total,
            skipped: found.skipped,
        })
    }

    /// The archive of an open ZIP link, with its hashing started if this instance has not
    /// started it yet (after a restart, or on another instance).
    pub fn archive(&self, link: &Link) -> Option<Arc<Archive>> {
        let info = link.archive.as_ref()?;
        match self.archives.get_or_start(&link.id, info) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(tunnel_id = %link.id, error = %e, "the link's archive has no layout");
                None
            }
        }
    }

    /// The archive of link `id` if this instance serves it now, without starting anything.
    pub fn archive_started(&self, id: &TunnelId) -> Option<Arc<Archive>> {
        self.archives.get(id)
    }

    pub fn archives(&self) -> &crate::zip::Archives {
        &self.archives
    }

    /// Closes, as `error`, every ZIP link whose member changed, as hashing or serving reports them.
    pub async fn run_archive_failures(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut failures) = self.archive_failures.lock().expect("failures mutex").take() else {
            return;
        };
        loop {
            let (id, why) = tokio::select! {
                _ = cancel.cancelled() => return,
                next = failures.recv() => match next {
                    Some(f) => f,
                    None => return,
                },
            };
            tracing::warn!(tunnel_id = %id, reason = %why, "a member of the archive changed; closing the link");
            if let Err(e) = self.close_error(&id, why).await {
                tracing::warn!(tunnel_id = %id, error = %e, "could not close the link; the file watch will retry");
            }
        }
    }
}

/// The deepest folder that holds every one of `paths` (for one folder, the folder itself).
fn common_folder(paths: &[RelPath]) -> RelPath {
    if let [one] = paths {
        return one.clone();
    }
    let parent = |p: &RelPath| -> Vec<String> {
        let mut parts: Vec<String> = p.as_str().split('/').map(String::from).collect();
        parts.pop();
        parts
    };
    let mut common = paths.first().map(parent).unwrap_or_default();
    for p in paths.iter().skip(1) {
        let other = parent(p);
        let same = common.iter().zip(&other).take_while(|(a, b)| a == b).count();
        common.truncate(same);
    }
    RelPath::parse(&common.join("/")).unwrap_or_else(|_| RelPath::root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_paths_stand_for_the_folder_they_share() {
        let p = |s: &str| RelPath::parse(s).unwrap();
        assert_eq!(common_folder(&[p("a/b")]), p("a/b"), "one folder is itself");
        assert_eq!(common_folder(&[p("a/b/x.jpg"), p("a/b/y.jpg")]), p("a/b"));
        assert_eq!(common_folder(&[p("a/b/x.jpg"), p("a/c")]), p("a"));
        assert!(common_folder(&[p("x.jpg"), p("y/z.jpg")]).is_root());
    }
}
