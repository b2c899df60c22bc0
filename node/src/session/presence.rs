//! Presence from the session's side: who may SUBSCRIBE to `/presence<destination>` (whoever may
//! subscribe to the destination, when its presence is kept), and the session's joins and leaves.
//! A session is one member of a destination however many times it subscribes there: it joins
//! at its first subscription and leaves at its last UNSUBSCRIBE or when it ends.

use super::*;
use crate::engine::Member;

impl<S: FrameSink> Session<S> {
    /// Whether the client may SUBSCRIBE to `route`: the access rules; for
    /// `/presence<destination>`, those of the destination, whose presence must be kept.
    pub(super) fn may_subscribe(&self, route: &Route) -> Result<(), SessionError> {
        let Some(target) = destination::presence_target(route) else {
            return Ok(self.node.auth().may_subscribe(&self.identity, route)?);
        };
        self.node.auth().may_subscribe(&self.identity, &target)?;
        if !self.node.config().presence_for(&target.name) {
            return Err(SessionError::invalid(format!(
                "no presence is kept for {}: no pattern of the presence setting matches it",
                destination::as_seen_by_subscriber(&target.name)
            )));
        }
        Ok(())
    }

    fn member(&self) -> Member {
        Member {
            user: self.user.clone(),
            session: self.session_id.to_string(),
            node: self.node.config().node_id.clone(),
        }
    }

    /// After a SUBSCRIBE to `name` went live: the session joins, if presence is kept there and
    /// this is its only subscription there. A failure (the store unreachable) is logged; the
    /// engine records the member again once it can.
    pub(super) async fn join_presence(&mut self, name: &str) {
        if !self.node.config().presence_for(name)
            || self.subscriptions.values().filter(|s| s.route.name == name).count() > 1
        {
            return;
        }
        if let Err(error) = self.node.hub().presence_join(name, self.member()).await {
            tracing::warn!(%error, destination = %name, "presence join not recorded");
        }
    }

    /// After a subscription to `name` ended: the session leaves, if presence is kept there and
    /// it has no other subscription there.
    pub(super) async fn leave_presence(&mut self, name: &str) {
        if !self.node.config().presence_for(name) || self.subscriptions.values().any(|s| s.route.name == name)
        {
            return;
        }
        if let Err(error) = self.node.hub().presence_leave(name, self.member()).await {
            tracing::warn!(%error, destination = %name, "presence leave not recorded");
        }
    }

    /// The destinations the session is a presence member of, before its subscriptions end.
    pub(super) fn presence_memberships(&self) -> Vec<String> {
        let config = self.node.config();
        let mut names: Vec<String> = self
            .subscriptions
            .values()
            .filter(|s| config.presence_for(&s.route.name))
            .map(|s| s.route.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
