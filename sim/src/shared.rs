//! State that the tasks of a run and the harness share: [`Shared`], one lock around it.

use std::sync::{Arc, Mutex, MutexGuard};

/// A value shared by clones, behind one lock. A panic while it was held (the way a run stops
/// at a broken invariant) leaves it readable: the harness still reports what it holds.
#[derive(Debug, Default)]
pub struct Shared<T>(Arc<Mutex<T>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> Shared<T> {
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
