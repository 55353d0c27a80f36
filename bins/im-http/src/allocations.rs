//! Allocation counting for the benchmark build (`--features count-allocations`): the system
//! allocator wrapped by `stats_alloc`, and its count of allocations (and reallocations) written
//! to the file named by `IM_ALLOCATIONS_FILE` ten times a second, where `cargo xtask bench` reads
//! it around a run to print allocations per proxied request. Every other build keeps the system
//! allocator, untouched.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// The process's allocator in the benchmark build.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Write the count to `IM_ALLOCATIONS_FILE` ten times a second, from a thread of its own.
pub fn report() {
    let Some(path) = std::env::var_os("IM_ALLOCATIONS_FILE") else {
        return;
    };
    let region = Region::new(ALLOCATOR);
    std::thread::spawn(move || {
        let tmp = std::path::PathBuf::from(format!("{}.tmp", path.to_string_lossy()));
        loop {
            let s = region.change();
            let n = s.allocations + s.reallocations;
            if std::fs::write(&tmp, n.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
}
