//! BEGIN, COMMIT and ABORT: frames of a transaction are held until COMMIT (at most
//! [`MAX_TRANSACTION_FRAMES`]), then handled in order as if just received.

use super::*;

impl<S: FrameSink> Session<S> {
    pub(super) fn transaction_of(&mut self, frame: &Frame) -> Result<Option<&mut Vec<Frame>>, SessionError> {
        let Some(tx) = frame.get("transaction") else { return Ok(None) };
        match self.transactions.get_mut(tx) {
            Some(frames) if frames.len() >= MAX_TRANSACTION_FRAMES => Err(SessionError::limit(format!(
                "transaction {tx:?} holds too many frames (at most {MAX_TRANSACTION_FRAMES})"
            ))),
            Some(frames) => Ok(Some(frames)),
            None => Err(SessionError::invalid(format!("unknown transaction {tx:?}"))),
        }
    }

    pub(super) async fn on_begin(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let tx = required(&frame, "transaction")?;
        if self.transactions.contains_key(tx) {
            return Err(SessionError::invalid(format!("transaction {tx:?} is already open")));
        }
        let max = self.node.config().limits.max_transactions;
        if self.transactions.len() >= max {
            return Err(SessionError::limit(format!(
                "too many open transactions (max-transactions is {max})"
            )));
        }
        self.transactions.insert(tx.to_owned(), Vec::new());
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn on_commit(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let tx = required(&frame, "transaction")?;
        let frames = self
            .transactions
            .remove(tx)
            .ok_or_else(|| SessionError::invalid(format!("unknown transaction {tx:?}")))?;
        // The publishes go out pipelined; the commit's receipt waits for all of them.
        let mut published = Vec::new();
        for held in frames {
            match held.command {
                Command::Send => {
                    let route = destination::for_send(required(&held, "destination")?)?;
                    published.push(self.node.hub().publish(route.kind, message(&route, held)).await);
                }
                Command::Ack | Command::Nack => {
                    let seq = self.acked_seq(&held)?;
                    self.settle(seq, held.command == Command::Ack).await?;
                }
                _ => {}
            }
        }
        for published in published {
            published.outcome().await?;
        }
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }

    pub(super) async fn on_abort(&mut self, frame: Frame) -> Result<Flow, SessionError> {
        let tx = required(&frame, "transaction")?;
        if self.transactions.remove(tx).is_none() {
            return Err(SessionError::invalid(format!("unknown transaction {tx:?}")));
        }
        self.send_receipt(frame.get("receipt").map(str::to_owned)).await?;
        Ok(Flow::Continue)
    }
}
