//! The current snapshot, shared by every request and swapped atomically.
//!
//! A decision loads the snapshot once (`current`) and uses that one for its whole
//! life, so it never mixes two versions. Until the first snapshot is installed the
//! store is empty and the sidecar is not ready.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::snapshot::Snapshot;

#[derive(Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Installs a new snapshot; returns the one it replaces.
    pub fn install(&self, snapshot: Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        self.current.swap(Some(snapshot))
    }
}
