//! The live event stream: status changes and workflow progress, as they happen.
//!
//! A broadcast channel fans events out to every `GET /v1/events` subscriber (Server-Sent
//! Events). A slow subscriber that falls behind is told how many events it missed rather
//! than slowing the conductor down.

use tokio::sync::broadcast;

pub use tandem_api::ApiEvent;

pub struct Events {
    tx: broadcast::Sender<ApiEvent>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events { tx }
    }
}

impl Events {
    pub fn publish(&self, event: ApiEvent) {
        // No subscriber is fine: events are a view, not a record (the store is).
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ApiEvent> {
        self.tx.subscribe()
    }
}
