//! The one way this crate takes a lock: a panic on another thread (already logged, and answered as
//! INTERNAL by the server) must not make every later RPC panic too, so a poisoned lock is used as is.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
