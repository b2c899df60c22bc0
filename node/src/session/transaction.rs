//! BEGIN, COMMIT and ABORT: frames of a transaction are held until COMMIT (at most
//! [`MAX_TRANSACTION_FRAMES`]), then handled in order as if just received.
//!
//! A held frame's receipt is a promise about what the frame did, so it waits with the frame: a
//! SEND's RECEIPT is sent once COMMIT has published or stored its message, an ACK's or NACK's
//! once COMMIT has settled it, in the order the frames came, and the COMMIT's own RECEIPT after
//! all of them (as RabbitMQ does). ABORT discards the frames and their receipts: no RECEIPT ever
//! says a discarded SEND was published; the ABORT's RECEIPT is the answer for all of them.

use super::application::Outgoing;
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
        // The publishes go out pipelined; each held frame's receipt waits for its own outcome (and,
        // being in order, for those before it), the commit's for all of them.
        let mut done: Vec<(Option<String>, Option<PendingPublish>)> = Vec::with_capacity(frames.len());
        for held in frames {
            let receipt = held.get("receipt").map(str::to_owned);
            match held.command {
                Command::Send => {
                    let target = self.send_target(&held)?;
                    match self.outgoing(target, held)? {
                        Outgoing::Publish(kind, message) => {
                            let published = self.node.hub().publish(kind, message).await;
                            done.push((receipt, Some(published)));
                        }
                        elsewhere => {
                            Box::pin(self.send_elsewhere(elsewhere, None)).await?;
                            done.push((receipt, None));
                        }
                    }
                }
                Command::Ack | Command::Nack => {
                    let seq = self.acked_seq(&held)?;
                    self.settle(seq, Settle::of(&held)?).await?;
                    done.push((receipt, None));
                }
                _ => {}
            }
        }
        for (receipt, published) in done {
            if let Some(published) = published {
                published.outcome().await?;
            }
            self.send_receipt(receipt).await?;
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
