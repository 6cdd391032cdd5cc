//! Release notifications: one pub/sub connection per store, shared by all of
//! its waiters.
//!
//! The release script publishes the released key on the store's channel
//! (`<prefix>released`). A background task, started by the first waiter,
//! holds the only subscription and wakes the local waiters of that key
//! through a `tokio::sync::watch` channel per key.
//!
//! Nothing here can make a waiter miss a release for good, because waking
//! early is harmless (the waiter just tries again):
//! * a waiter registers *before* its acquire attempt, so a release after the
//!   refusal finds it registered;
//! * when the subscription is (re)established, every registered waiter is
//!   woken, since a release may have been published while nobody listened;
//! * when the connection drops, or cannot be made, every waiter is woken,
//!   and until it is back they fall back to the client's jittered backoff.
//!
//! On a Redis Cluster the subscription is on one node: a cluster forwards
//! every `PUBLISH` to all its nodes, so any node hears every release. When
//! subscribing fails, the next attempt goes to the next node given.
//!
//! A connection that dies *silently* (a NAT or load balancer dropped the
//! flow, a server or proxy that accepts but never answers) gives no error.
//! Every wait on the server is therefore bounded: connecting and
//! subscribing by the store's connect + response timeouts, and an idle
//! subscription is checked with a `PING` every [`HEALTH_CHECK_EVERY`] that
//! must answer within the response timeout. A release published while the
//! socket is silently dead is lost, but the failed check wakes every waiter
//! and the listener subscribes again. So a lost release keeps a waiter at
//! most until the first of: the health check failing (5 s + the response
//! timeout, 10 s with the defaults), its own backoff ceiling, or the
//! holder's time left (the client never sleeps past it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often an idle subscription is checked with `PING`, so a connection
/// that died silently (no reset) is noticed. It answers within the store's
/// response timeout or counts as dead.
pub(crate) const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The shared subscriber of one store.
pub(crate) struct Listener {
    /// Where to subscribe: one server, or some nodes of a cluster.
    clients: Vec<redis::Client>,
    /// Which of `clients` the next subscription tries.
    next_client: AtomicUsize,
    channel: String,
    timeouts: ListenerTimeouts,
    waiters: Mutex<Waiters>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Cancelled when the store (its last clone) is dropped.
    stop: CancellationToken,
}

#[derive(Default)]
struct Waiters {
    by_key: HashMap<String, watch::Sender<()>>,
    /// Size after the last sweep of keys nobody waits for any more.
    swept_len: usize,
}

/// How long the listener waits on the server, so that one that accepts a
/// connection but never answers cannot park it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerTimeouts {
    /// Connecting, then `SUBSCRIBE` answering.
    pub(crate) subscribe: Duration,
    /// A health-check `PING` answering.
    pub(crate) ping: Duration,
}

impl Listener {
    /// A listener on `channel`, subscribing through `clients` (at least one).
    pub(crate) fn new(
        clients: Vec<redis::Client>,
        channel: String,
        timeouts: ListenerTimeouts,
    ) -> Arc<Self> {
        Arc::new(Self {
            clients,
            next_client: AtomicUsize::new(0),
            channel,
            timeouts,
            waiters: Mutex::default(),
            task: Mutex::default(),
            stop: CancellationToken::new(),
        })
    }

    /// Stops the background task; called when the store is dropped.
    pub(crate) fn shut_down(&self) {
        self.stop.cancel();
    }

    /// A receiver that changes on the next release of `key` (or on any
    /// loss or gain of the subscription). `None` outside a tokio runtime,
    /// where no listener can run: the caller then polls.
    pub(crate) fn register(self: &Arc<Self>, key: &str) -> Option<watch::Receiver<()>> {
        self.ensure_running()?;
        let mut waiters = lock(&self.waiters);
        if waiters.by_key.len() >= (2 * waiters.swept_len).max(64) {
            // Amortised cleanup: entries whose waiters all left.
            waiters.by_key.retain(|_, tx| tx.receiver_count() > 0);
            waiters.swept_len = waiters.by_key.len();
        }
        let receiver = match waiters.by_key.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                waiters.by_key.insert(key.to_owned(), tx);
                rx
            }
        };
        Some(receiver)
    }

    /// Whether a task of this process waits for the next release of `key`
    /// (holds a receiver from [`Listener::register`]).
    pub(crate) fn has_waiters(&self, key: &str) -> bool {
        lock(&self.waiters)
            .by_key
            .get(key)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Starts the subscriber task if it is not running (first use, or its
    /// runtime went away).
    fn ensure_running(self: &Arc<Self>) -> Option<()> {
        let mut task = lock(&self.task);
        if task.as_ref().is_some_and(|handle| !handle.is_finished()) {
            return Some(());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let listener = Arc::clone(self);
        *task = Some(runtime.spawn(async move { listener.run().await }));
        Some(())
    }

    fn wake(&self, key: &str) {
        let mut waiters = lock(&self.waiters);
        if let Some(tx) = waiters.by_key.get(key) {
            tx.send_replace(());
            if tx.receiver_count() == 0 {
                waiters.by_key.remove(key);
            }
        }
    }

    fn wake_all(&self) {
        let mut waiters = lock(&self.waiters);
        for tx in waiters.by_key.values() {
            tx.send_replace(());
        }
        waiters.by_key.retain(|_, tx| tx.receiver_count() > 0);
        waiters.swept_len = waiters.by_key.len();
    }

    async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let subscribed = tokio::select! {
                () = self.stop.cancelled() => return,
                subscribed = tokio::time::timeout(self.timeouts.subscribe, self.subscribe()) => {
                    subscribed.unwrap_or_else(|_| Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer to connect and SUBSCRIBE within the connect + response timeouts",
                    ))))
                }
            };
            match subscribed {
                Ok(pubsub) => {
                    failures = 0;
                    debug!(channel = %self.channel, "release listener subscribed");
                    self.wake_all();
                    self.pump(pubsub).await;
                    self.wake_all();
                    if self.stop.is_cancelled() {
                        return;
                    }
                    warn!(channel = %self.channel, "release listener lost its connection; reconnecting");
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    // Perhaps that node is down: try the next one.
                    self.next_client.fetch_add(1, Ordering::Relaxed);
                    warn!(channel = %self.channel, error = %err, failures, "release listener cannot subscribe; waiters poll meanwhile");
                    // Nobody listens: a waiter that registered since the
                    // last wake must not count on a signal.
                    self.wake_all();
                }
            }
            let pause = Duration::from_millis(50u64.saturating_mul(1 << failures.min(6)));
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let client = &self.clients[self.next_client.load(Ordering::Relaxed) % self.clients.len()];
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&self.channel).await?;
        Ok(pubsub)
    }

    /// Dispatches messages until the connection fails or the store is gone.
    async fn pump(&self, pubsub: redis::aio::PubSub) {
        let (mut sink, mut stream) = pubsub.split();
        let mut health = tokio::time::interval(HEALTH_CHECK_EVERY);
        health.reset();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                message = stream.next() => match message {
                    Some(message) => match std::str::from_utf8(message.get_payload_bytes()) {
                        Ok(key) => self.wake(key),
                        // Not from our script; wake everyone rather than guess.
                        Err(_) => self.wake_all(),
                    },
                    None => return,
                },
                _ = health.tick() => {
                    let ping = tokio::time::timeout(self.timeouts.ping, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }
}

/// A poisoned mutex only means a thread panicked while holding it; every
/// update here leaves the map consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
