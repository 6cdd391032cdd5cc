//! lockctl's stderr while a lease is held, written by a thread of its own.
//!
//! The lease is renewed on the runtime's one thread; a blocking write to a
//! stderr nobody reads (a stuck log pipe) would stop the renewals, and the
//! timer that stops the command when the lease is lost. Writes here only
//! queue, up to [`QUEUED_CHUNKS`] chunks; past that, output is dropped and
//! a note says how much, once the reader takes some again.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How many chunks (each at most one read of the command's stderr, 8 KiB)
/// wait for a slow reader before output is dropped.
const QUEUED_CHUNKS: usize = 128;

enum Item {
    Bytes(Vec<u8>),
    /// Answered once everything queued before it is written.
    Flush(SyncSender<()>),
}

struct Queue {
    sender: SyncSender<Item>,
    dropped: u64,
}

/// Started by the first write, so a run that writes nothing starts no
/// thread.
static QUEUE: OnceLock<Mutex<Queue>> = OnceLock::new();

fn queue() -> &'static Mutex<Queue> {
    QUEUE.get_or_init(|| {
        let (sender, receiver) = sync_channel(QUEUED_CHUNKS);
        std::thread::Builder::new()
            .name("lockctl-stderr".into())
            .spawn(move || write_all(&receiver))
            .ok();
        Mutex::new(Queue { sender, dropped: 0 })
    })
}

fn write_all(receiver: &Receiver<Item>) {
    while let Ok(item) = receiver.recv() {
        match item {
            Item::Bytes(bytes) => {
                let mut out = std::io::stderr().lock();
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
            Item::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Queues `bytes` for stderr without blocking; drops them (counted, and
/// said later) when the queue is full.
pub fn write(bytes: &[u8]) {
    let mut queue = queue().lock().unwrap_or_else(|p| p.into_inner());
    if queue.dropped > 0 {
        let note = dropped_note(queue.dropped);
        match queue.sender.try_send(Item::Bytes(note)) {
            Ok(()) => queue.dropped = 0,
            Err(_) => {
                queue.dropped = queue.dropped.saturating_add(bytes.len() as u64);
                return;
            }
        }
    }
    match queue.sender.try_send(Item::Bytes(bytes.to_vec())) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            queue.dropped = queue.dropped.saturating_add(bytes.len() as u64);
        }
    }
}

/// Queues `lockctl: MESSAGE` and a newline.
pub fn say(message: &str) {
    write(format!("lockctl: {message}\n").as_bytes());
}

/// Waits, at most `limit`, until what is queued is written (with the
/// note of anything dropped): before lockctl writes stderr directly (its
/// last message), so the order holds.
pub fn flush(limit: Duration) {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let until = Instant::now() + limit;
    let (done, wait) = sync_channel(1);
    let mut flush = Some(Item::Flush(done));
    while let Some(item) = flush.take() {
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.dropped > 0 {
            let note = dropped_note(queue.dropped);
            if queue.sender.try_send(Item::Bytes(note)).is_ok() {
                queue.dropped = 0;
            }
        }
        if queue.dropped > 0 {
            flush = Some(item);
        } else if let Err(TrySendError::Full(item)) = queue.sender.try_send(item) {
            flush = Some(item);
        }
        drop(queue);
        if flush.is_some() {
            if Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = wait.recv_timeout(until.saturating_duration_since(Instant::now()));
}

fn dropped_note(bytes: u64) -> Vec<u8> {
    format!("\n[lockctl: {bytes} bytes of output dropped: stderr was not read fast enough]\n")
        .into_bytes()
}
