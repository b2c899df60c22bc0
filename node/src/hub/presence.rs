//! Presence as the hub offers it: sessions report their joins and leaves of destinations whose
//! presence is kept, and the admin API reads the members. The engine keeps the members and
//! publishes the events ([`crate::engine::presence`]); the hub only passes them on, so the same
//! calls work on one node and across a cluster.

use super::Hub;
use crate::engine::{Engine, EngineError, Member};

impl Hub {
    /// The members of `destination` on every live node, sorted by user, then session; `None`
    /// when the `presence` setting does not name it.
    pub async fn presence(&self, destination: &str) -> Result<Option<Vec<Member>>, EngineError> {
        self.engine.presence(destination).await
    }

    /// `member`, a session of this node, subscribed to `destination` (its first subscription
    /// there): recorded, and its join event published, when presence is kept for it.
    pub async fn presence_join(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        self.engine.presence_join(destination, member).await
    }

    /// `member` no longer subscribes to `destination` (its last subscription there ended).
    pub async fn presence_leave(&self, destination: &str, member: Member) -> Result<(), EngineError> {
        self.engine.presence_leave(destination, member).await
    }
}
