//! Giving memory back to the OS after a configuration change.
//!
//! Compiling a large configuration allocates a lot for a short time (route
//! sources, compiled rules, statuses, the previous table still referenced
//! by in-flight requests). glibc keeps what is freed in its heaps, so the
//! process would keep its compile-time peak as RSS for good: with 10,000
//! routes, about a third of it. `malloc_trim` returns the free pages.

use std::sync::Arc;
use std::time::Duration;

use portcullis_model::RouteTable;
use tokio::sync::watch;

/// Trims the heap once the current table has settled, and again after
/// each new one (once changes have settled for a moment and the table
/// before it has had time to drain).
pub fn trim_after_changes(mut tables: watch::Receiver<Arc<RouteTable>>) {
    tokio::spawn(async move {
        loop {
            // Coalesce bursts of changes; let requests holding the old
            // table finish so that it is actually freed.
            loop {
                tokio::select! {
                    changed = tables.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => break,
                }
            }
            trim();
            if tables.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free
    // memory; it has no preconditions and is thread-safe in glibc.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        "heap trimmed after a configuration change"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
