//! The worker's resource monitor: cores, total and available memory, CPU load and load average of the
//! machine, read with `sysinfo` and reported at registration and with every heartbeat.

use hivemind_proto::api::Resources;
use parking_lot::Mutex;

pub(crate) struct Monitor {
    system: Mutex<sysinfo::System>,
}

impl Monitor {
    pub(crate) fn new() -> Self {
        let mut system = sysinfo::System::new();
        // The first CPU reading needs an earlier sample to compare with.
        system.refresh_cpu_usage();
        Monitor { system: Mutex::new(system) }
    }

    /// A fresh reading; CPU load covers the time since the previous one.
    pub(crate) fn read(&self) -> Resources {
        let mut system = self.system.lock();
        system.refresh_memory();
        system.refresh_cpu_usage();
        Resources {
            cores: system.cpus().len().max(1) as u32,
            total_memory_bytes: system.total_memory(),
            available_memory_bytes: system.available_memory(),
            cpu_load: (system.global_cpu_usage() / 100.0).clamp(0.0, 1.0),
            load_average: sysinfo::System::load_average().one,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_is_plausible() {
        let monitor = Monitor::new();
        let r = monitor.read();
        assert!(r.cores >= 1);
        assert!(r.total_memory_bytes > 0 && r.available_memory_bytes <= r.total_memory_bytes, "{r:?}");
        assert!((0.0..=1.0).contains(&r.cpu_load));
    }
}
