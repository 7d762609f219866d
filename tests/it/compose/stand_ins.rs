//! The stand-in images of `tests/stand-ins/build` (no image can be pulled here), made once for
//! the tests that run at the same time and removed when the last of them is done: only the
//! images this test run made, only when no other test run on the machine holds stand-ins, and
//! only those no container uses. The Debian roots they are made from stay cached on the machine
//! (`/var/cache/ferry-tests/<suite>`), so only the first run on a machine fetches them.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use rustix::fs::{FlockOperation, flock};

pub struct StandIns {
    /// The images made for this run: (tag, image id), bases first.
    made: Vec<(String, String)>,
    /// A shared lock on the machine's stand-ins while this run uses them.
    lock: std::fs::File,
}

/// The stand-ins in use in this test binary, if any test holds them.
static CURRENT: Mutex<Weak<StandIns>> = Mutex::new(Weak::new());

/// The stand-ins for the whole compose stack (`debian:bookworm-slim` among them).
pub fn stack() -> Arc<StandIns> {
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = current.upgrade() {
        return s;
    }
    let cache = std::env::var("FERRY_TEST_CACHE").unwrap_or_else(|_| "/var/cache/ferry-tests".into());
    std::fs::create_dir_all(&cache).unwrap();
    let lock = std::fs::File::create(Path::new(&cache).join("stand-ins.lock")).unwrap();
    flock(&lock, FlockOperation::LockShared).unwrap();
    let built = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stand-ins/build"))
        .arg("stack")
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .arg(env!("CARGO_BIN_EXE_tailscale-emulator"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "stand-in images: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let made = String::from_utf8_lossy(&built.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(tag, id)| (tag.to_string(), id.to_string()))
        .collect();
    let s = Arc::new(StandIns { made, lock });
    *current = Arc::downgrade(&s);
    s
}

impl Drop for StandIns {
    fn drop(&mut self) {
        // Another run on this machine that holds the stand-ins keeps them; it removes its own.
        if flock(&self.lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        // Untagged images built on them (the build stages of ferry's image) first, then the
        // stand-ins by id, those built on others first; an image a container still uses stays.
        let ours: Vec<&str> = self.made.iter().map(|(_, id)| id.as_str()).collect();
        for id in dangling_descendants(&ours) {
            let _ = Command::new("docker").args(["image", "rm", &id]).output();
        }
        for id in ours.iter().rev() {
            let _ = Command::new("docker").args(["image", "rm", id]).output();
        }
    }
}

/// The untagged images whose ancestry (`Parent`, as the classic builder records it) reaches one
/// of `ours`, the youngest first.
fn dangling_descendants(ours: &[&str]) -> Vec<String> {
    let out = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let dangling = out(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    dangling
        .lines()
        .filter(|id| {
            let mut at = id.to_string();
            for _ in 0..64 {
                at = out(&["image", "inspect", "-f", "{{.Parent}}", &at]);
                if at.is_empty() || ours.contains(&at.as_str()) {
                    return !at.is_empty();
                }
            }
            false
        })
        .map(str::to_string)
        .collect()
}
