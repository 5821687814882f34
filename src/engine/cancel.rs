//! request_id → cancel token, so `sdxl_cancel` from any thread reaches the running request. Ids cancelled before
//! their request starts are remembered (a bounded list), because a host may cancel a task that has not reached
//! the engine yet.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::runtime::CancelToken;

const REMEMBERED_EARLY_CANCELS: usize = 1024;

/// The running requests of one engine.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    running: HashMap<String, Vec<Arc<CancelToken>>>,
    early: VecDeque<String>,
}

/// Removes its token from the registry when the request ends.
pub struct Registration<'a> {
    registry: &'a CancelRegistry,
    id: String,
    /// The request's token.
    pub token: Arc<CancelToken>,
}

impl CancelRegistry {
    /// Register a starting request. Its token is already cancelled if `cancel(id)` came first.
    pub fn register(&self, id: &str) -> Registration<'_> {
        let token = Arc::new(CancelToken::new());
        let mut inner = self.inner.lock();
        if let Some(pos) = inner.early.iter().position(|e| e == id) {
            inner.early.remove(pos);
            token.cancel();
        }
        inner.running.entry(id.to_string()).or_default().push(token.clone());
        Registration { registry: self, id: id.to_string(), token }
    }

    /// Cancel every running request with this id, or remember the id for a request yet to start.
    pub fn cancel(&self, id: &str) {
        let mut inner = self.inner.lock();
        match inner.running.get(id) {
            Some(tokens) if !tokens.is_empty() => tokens.iter().for_each(|t| t.cancel()),
            _ => {
                if inner.early.len() == REMEMBERED_EARLY_CANCELS {
                    inner.early.pop_front();
                }
                inner.early.push_back(id.to_string());
            }
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock();
        if let Some(tokens) = inner.running.get_mut(&self.id) {
            tokens.retain(|t| !Arc::ptr_eq(t, &self.token));
            if tokens.is_empty() {
                inner.running.remove(&self.id);
            }
        }
    }
}
