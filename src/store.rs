//! The current snapshot, shared by every request and swapped atomically.
//!
//! A decision loads the snapshot once (`current`) and uses that one for its whole
//! life, so it never mixes two versions. Until the first snapshot is installed the
//! store is empty and the sidecar is not ready.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};

use crate::snapshot::Snapshot;

/// Why the last reload was refused.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadFailure {
    pub at: DateTime<Utc>,
    /// The rendered load error, with file, line and column.
    pub message: String,
}

#[derive(Default)]
pub struct Store {
    current: ArcSwapOption<Snapshot>,
    last_error: ArcSwapOption<ReloadFailure>,
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

    /// The last refused reload, cleared by the next good one.
    pub fn last_error(&self) -> Option<Arc<ReloadFailure>> {
        self.last_error.load_full()
    }

    pub fn set_last_error(&self, failure: Option<ReloadFailure>) {
        self.last_error.store(failure.map(Arc::new));
    }
}
