//! Sources of local exports: the only code that reads services files or talks to the
//! Kubernetes API. Each publishes a [`SourceState`] on a watch channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{ClusterId, LocalExports};

pub mod file;
pub mod kube;
pub mod lease;
pub mod watch;

/// What a source has read so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceState {
    /// The latest good exports of every cluster whose source has loaded at least once.
    pub loaded: BTreeMap<ClusterId, Arc<LocalExports>>,
    /// Clusters whose source has never loaded, with why ("not read yet", the error,
    /// "waiting for the first list of Services").
    pub pending: BTreeMap<ClusterId, String>,
}

impl SourceState {
    /// Every cluster has loaded once: the source's first full sync is done.
    pub fn complete(&self) -> bool {
        self.pending.is_empty()
    }
}
