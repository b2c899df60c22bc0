//! CONNECT (and STOMP): version and heart-beat negotiation, authentication, CONNECTED; and the
//! token refresh a client SENDs to [`REFRESH_DESTINATION`] before its token expires.

use super::*;

impl<S: FrameSink> Session<S> {
    pub(super) async fn on_connect(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let version = match frame.get("accept-version") {
            None => Version::V1_0,
            Some(accepted) => accepted
                .split(',')
                .filter_map(|v| Version::parse(v.trim()))
                .max()
                .ok_or_else(|| SessionError::UnsupportedVersion(accepted.chars().take(64).collect()))?,
        };
        let (client_send, client_receive) = match frame.get("heart-beat") {
            Some(value) => parse_heart_beat(value)?,
            None => (0, 0),
        };
        let hb = &self.node.config().heartbeat;
        let server_send = hb.send.as_millis() as u64;
        let server_receive = hb.receive.as_millis() as u64;
        let outgoing = (server_send > 0 && client_receive > 0).then(|| server_send.max(client_receive));
        let incoming = (client_send > 0 && server_receive > 0).then(|| client_send.max(server_receive));
        self.heartbeat_out = outgoing.map(Duration::from_millis);
        let read_timeout = incoming.map(|ms| Duration::from_millis(ms).mul_f64(hb.grace));
        let bearer = self.bearer.take();
        let credentials = Credentials {
            login: frame.get("login"),
            passcode: frame.get("passcode"),
            bearer: bearer.as_deref(),
        };
        // The backend secret first (a backend must not depend on the hook), then the users
        // file or JWT, then the application's connect hook.
        let identity = match self.node.apps().backend_identity(credentials.login, credentials.passcode) {
            Some(backend) => backend,
            None => {
                let identity = self.node.auth().authenticate(credentials).await?;
                match self.node.apps().settings().connect_hook {
                    Some(_) => Box::pin(self.connect_hook(&frame, identity, bearer.as_deref())).await?,
                    None => identity,
                }
            }
        };
        self.adopt(identity);
        self.version = Some(version);
        if let Some(tx) = self.negotiated.take() {
            let _ = tx.send(Negotiated { version, read_timeout });
        }
        let connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("heart-beat", format!("{server_send},{server_receive}"))
            .with_header("server", SERVER)
            .with_header("session", self.session_id.to_string());
        let connected = match &self.user {
            Some(user) => connected.with_header("user-name", user.clone()),
            None => connected,
        };
        self.send_frame(&connected).await?;
        self.outbox.connected(self.user.as_deref(), crate::hub::sessions::now_ms());
        tracing::info!(user = self.user.as_deref(), version = version.as_str(), "connected");
        Box::pin(self.emit(crate::apps::events::Event::Connect)).await;
        Ok(Flow::Continue)
    }

    /// Takes on who the client now is, and when that runs out.
    pub(super) fn adopt(&mut self, identity: Identity) {
        self.user = identity.user.clone();
        self.token_deadline = identity.expires.and_then(|exp| {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default() + self.node.auth().leeway();
            tokio::time::Instant::now().checked_add(left)
        });
        self.identity = identity;
    }

    /// A SEND to [`REFRESH_DESTINATION`]: the body is a fresh token for the same user. Its
    /// roles and grants replace the old ones, so every subscription must still be allowed.
    pub(super) async fn on_refresh(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        if frame.get("transaction").is_some() {
            return Err(SessionError::invalid("a token refresh cannot be part of a transaction"));
        }
        let token =
            std::str::from_utf8(&frame.body).ok().map(str::trim).filter(|t| !t.is_empty()).ok_or_else(
                || {
                    AuthError::Refresh(format!(
                        "the body of a SEND to {REFRESH_DESTINATION} must be the new token"
                    ))
                },
            )?;
        let fresh = self.node.auth().refresh(&self.identity, token)?;
        for (id, subscription) in &self.subscriptions {
            if let Err(denied) = self.node.auth().may_subscribe(&fresh, &subscription.route) {
                return Err(AuthError::Refresh(format!(
                    "the new token does not keep subscription {id:?}: {denied}"
                ))
                .into());
            }
        }
        self.adopt(fresh);
        tracing::debug!(user = self.user.as_deref(), "token refreshed");
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }
}
