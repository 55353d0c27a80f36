//! Allocation counting for the benchmark build (`--features count-allocations`): im-http's
//! allocator (jemalloc) wrapped by `stats_alloc`, and its count of allocations (and
//! reallocations) and the bytes live on the heap written to the file named by
//! `IM_ALLOCATIONS_FILE` ten times a second, where `cargo xtask bench` reads them around a run to
//! print allocations per proxied request and the heap a queued request holds. Every other build
//! uses jemalloc as it is.

use stats_alloc::{Region, StatsAlloc};
use tikv_jemallocator::Jemalloc;

/// The process's allocator in the benchmark build.
#[global_allocator]
static ALLOCATOR: StatsAlloc<Jemalloc> = StatsAlloc::new(Jemalloc);

/// Write `<allocations> <live bytes>` to `IM_ALLOCATIONS_FILE` ten times a second, from a thread of its own.
pub fn report() {
    let Some(path) = std::env::var_os("IM_ALLOCATIONS_FILE") else {
        return;
    };
    let region = Region::new(&ALLOCATOR);
    std::thread::spawn(move || {
        let tmp = std::path::PathBuf::from(format!("{}.tmp", path.to_string_lossy()));
        loop {
            let s = region.change();
            let n = s.allocations + s.reallocations;
            // A reallocation's growth is counted in `bytes_allocated`, its shrinking in
            // `bytes_deallocated`.
            let live = s.bytes_allocated as i128 - s.bytes_deallocated as i128;
            if std::fs::write(&tmp, format!("{n} {live}")).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
}
