//! Locking shared state. A panic aborts plainvm (panic = "abort"), so a poisoned lock can only
//! be seen in tests; its data is as usable as before, and `lock` takes it instead of unwrapping.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the data of a poisoned lock as it is.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
