//! Natural batching of calls to one peer: the RPC-level twin of group
//! commit.
//!
//! Callers submit one item each. If fewer than `max_in_flight` batch RPCs
//! are under way, a sender starts at once with whatever is queued, so a
//! lone call (concurrency 1) goes out immediately, alone, with no timer and
//! no added latency. While batches are in flight, new items queue up and
//! leave together in the next RPC. Under load the number of RPCs per item
//! drops to 1 / batch size, which is where the throughput of a 2PC
//! coordinator comes from (every transaction costs an enlist, a prepare and
//! a commit per participant).
//!
//! Bounded: at most `max_batch` items and `max_bytes` encoded bytes per RPC
//! (an item that would push a batch past `max_bytes` opens the next one, and
//! an item bigger than `max_bytes` goes alone: [`crate::limits`], rule 2), and
//! `max_in_flight` RPCs; the queue itself is bounded by the callers (each
//! waits for its answer, and the coordinator bounds open transactions and
//! in-flight calls).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tonic::Status;

type Waiter<Resp> = oneshot::Sender<Result<Resp, Status>>;

struct Queue<Req, Resp> {
    items: Vec<(Req, Waiter<Resp>)>,
    senders: usize,
}

pub struct Batcher<Req, Resp> {
    queue: Mutex<Queue<Req, Resp>>,
    max_batch: usize,
    max_bytes: usize,
    max_in_flight: usize,
}

impl<Req: prost::Message + Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// At most `max_batch` items and `max_bytes` bytes of encoded items
    /// (see [`crate::limits::wire_size`]) per RPC, `max_in_flight` RPCs.
    pub fn new(max_batch: usize, max_bytes: usize, max_in_flight: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue { items: vec![], senders: 0 }),
            max_batch: max_batch.max(1),
            max_bytes,
            max_in_flight: max_in_flight.max(1),
        })
    }

    /// How many of the queued `items`, from the front, make the next batch:
    /// as many as fit `max_batch` and `max_bytes`, and always at least one.
    fn next_len(&self, items: &[(Req, Waiter<Resp>)]) -> usize {
        let mut bytes = 0usize;
        let fitting = items
            .iter()
            .take(self.max_batch)
            .take_while(|(r, _)| {
                bytes = bytes.saturating_add(crate::limits::wire_size(r));
                bytes <= self.max_bytes
            })
            .count();
        fitting.max(1).min(items.len())
    }

    /// Submits `req` and waits for its answer. `send` performs one batch
    /// RPC and returns one result per item, in order.
    pub async fn call<F, Fut>(self: &Arc<Self>, req: Req, send: F) -> Result<Resp, Status>
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<Resp, Status>>, Status>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start_sender = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.items.push((req, tx));
            let start = q.senders < self.max_in_flight;
            if start {
                q.senders += 1;
            }
            start
        };
        if start_sender {
            let this = self.clone();
            tokio::spawn(async move { this.send_loop(send).await });
        }
        rx.await.unwrap_or_else(|_| Err(Status::internal("batch sender stopped")))
    }

    async fn send_loop<F, Fut>(self: Arc<Self>, send: F)
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Result<Vec<Result<Resp, Status>>, Status>>,
    {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.items.is_empty() {
                    // Decided under the lock, so an item pushed after this
                    // point sees one sender fewer and starts its own.
                    q.senders -= 1;
                    return;
                }
                let n = self.next_len(&q.items);
                q.items.drain(..n).collect::<Vec<_>>()
            };
            let (reqs, waiters): (Vec<Req>, Vec<Waiter<Resp>>) = batch.into_iter().unzip();
            let n = reqs.len();
            match send(reqs).await {
                Ok(results) if results.len() == n => {
                    for (w, r) in waiters.into_iter().zip(results) {
                        let _ = w.send(r);
                    }
                }
                Ok(results) => {
                    let why = format!("batch answer has {} results for {n} items", results.len());
                    for w in waiters {
                        let _ = w.send(Err(Status::internal(why.clone())));
                    }
                }
                Err(status) => {
                    for w in waiters {
                        let _ = w.send(Err(status.clone()));
                    }
                }
            }
        }
    }
}

/// Group commit's intake, for a writer thread: blocks for the next
/// request, then takes every request already queued behind it (up to
/// `max`), so they share one durable write. A lone request is returned at
/// once. `None` once every sender is gone.
pub fn next_batch<T>(rx: &std::sync::mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// One item of a batch answer as its unary call would have answered:
/// `code` 0 is success, yielding `ok()`; any other code is that status.
pub fn item<T>(code: i32, message: String, ok: impl FnOnce() -> T) -> Result<T, Status> {
    match code {
        0 => Ok(ok()),
        code => Err(Status::new(tonic::Code::from(code), message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_lone_call_goes_alone_and_concurrent_calls_share_rpcs() {
        let b: Arc<Batcher<u32, u32>> = Batcher::new(64, usize::MAX, 1);
        let rpcs = Arc::new(AtomicUsize::new(0));
        let send = {
            let rpcs = rpcs.clone();
            move |items: Vec<u32>| {
                let rpcs = rpcs.clone();
                async move {
                    rpcs.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    Ok(items.into_iter().map(|i| Ok(i * 2)).collect())
                }
            }
        };
        assert_eq!(b.call(1, send.clone()).await.unwrap(), 2);
        assert_eq!(rpcs.load(Ordering::Relaxed), 1);
        let calls: Vec<_> = (0..100).map(|i| b.call(i, send.clone())).collect();
        // join_all polls every call once before any answer: all are queued.
        let out: Vec<u32> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        let rpcs = rpcs.load(Ordering::Relaxed);
        assert!(rpcs <= 5, "100 concurrent calls took {rpcs} RPCs");
    }

    /// Rule 2 of `limits`: items go in order, a batch never passes the byte
    /// bound, and an item bigger than the bound goes alone.
    #[tokio::test]
    async fn batches_are_bounded_by_bytes_and_a_big_item_goes_alone() {
        let b: Arc<Batcher<String, usize>> = Batcher::new(64, 1_000, 1);
        let batches = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let send = {
            let batches = batches.clone();
            move |items: Vec<String>| {
                let batches = batches.clone();
                async move {
                    tokio::task::yield_now().await;
                    let sizes: Vec<usize> = items.iter().map(String::len).collect();
                    batches.lock().unwrap().push(sizes.clone());
                    Ok(sizes.into_iter().map(Ok).collect())
                }
            }
        };
        // 400-byte items (404 on the wire): two per batch; the 5000-byte one alone.
        let sizes = [400, 400, 400, 5000, 400, 400];
        let calls: Vec<_> = sizes.iter().map(|&n| b.call("x".repeat(n), send.clone())).collect();
        let out: Vec<usize> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(out, sizes);
        let batches = batches.lock().unwrap().clone();
        for batch in &batches {
            let bytes: usize = batch.iter().map(|n| n + 4).sum();
            assert!(bytes <= 1_000 || batch.len() == 1, "{batches:?}");
        }
        assert!(batches.contains(&vec![5000]), "{batches:?}");
        assert_eq!(batches.concat(), sizes, "in order");
    }

    #[tokio::test]
    async fn a_failed_rpc_fails_every_item_of_its_batch() {
        let b: Arc<Batcher<u32, u32>> = Batcher::new(8, usize::MAX, 2);
        let r = b.call(1, |_items: Vec<u32>| async { Err(Status::unavailable("down")) }).await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unavailable);
    }
}
