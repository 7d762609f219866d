//! The host ferry runs on, as `/admin/monitor/status` shows it: CPU, memory, and the free space
//! where the data dir lives.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use sysinfo::{Disks, System};
use utoipa::ToSchema;

/// The host sampler. CPU usage is the difference between two refreshes, so one `System` is kept
/// between samples.
/// `None` where the platform gives no system information.
pub struct Host(Mutex<Option<System>>);

impl Host {
    pub fn new() -> Arc<Self> {
        let sys = System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        Arc::new(Host(Mutex::new(sys)))
    }

    pub fn sample(&self, data_dir: &std::path::Path) -> HostSample {
        let (cpu, total, used) = match self.0.lock().expect("host mutex").as_mut() {
            Some(sys) => {
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                (
                    Some(sys.global_cpu_usage()),
                    Some(sys.total_memory()),
                    Some(sys.used_memory()),
                )
            }
            None => (None, None, None),
        };
        let disks = Disks::new_with_refreshed_list().ok();
        let disk = disks
            .iter()
            .flat_map(|d| d.iter())
            .filter(|d| data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        HostSample {
            cpu_percent: cpu.map(|c| (f64::from(c) * 10.0).round() / 10.0),
            memory_total_bytes: total,
            memory_used_bytes: used,
            data_dir_free_bytes: disk.map(|d| d.available_space()),
            data_dir_total_bytes: disk.map(|d| d.total_space()),
        }
    }
}

/// CPU, memory, and the space of the disk that holds the data dir; null where the platform
/// does not say.
#[derive(Serialize, ToSchema)]
pub struct HostSample {
    pub cpu_percent: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub data_dir_free_bytes: Option<u64>,
    pub data_dir_total_bytes: Option<u64>,
}
