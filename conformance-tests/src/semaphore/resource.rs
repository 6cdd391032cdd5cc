//! A resource guarded by a semaphore's fences, served over TCP to holder
//! processes: it counts who is inside and refuses writes from permits that
//! `limit` later grants have superseded.
//!
//! A holder **writes** with its permit's fence (entering, if it is not
//! inside yet) and **leaves** before it releases the permit. The resource
//! keeps the fences inside (written, not left) and refuses a write when
//! `limit` fences higher than the writer's are inside — the rule of
//! CONTRACT.md Part 4, "Fenced writes with permits". It also counts what a
//! case asserts: the most holders inside at once, and a fence that enters
//! again after it left (one fence granted twice).
//!
//! One line per request on a connection a holder keeps:
//! `WRITE <fence> <writer>` is answered `ACCEPTED <inside>` or
//! `REFUSED <higher fences inside>`; `LEAVE <fence>` is answered
//! `LEFT <inside>`.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use lockstore_api::FencingToken;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What the resource did with a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Accepted; this many holders are inside now.
    Accepted { inside: usize },
    /// Refused: `limit` fences higher than the writer's are inside.
    Refused { higher: Vec<u64> },
}

/// The counts a case asserts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// The most holders inside at once.
    pub most: usize,
    /// Accepted writes that entered (a holder not inside yet).
    pub entries: u64,
    /// Holders inside now.
    pub inside: usize,
    /// Fences that entered again after they had left.
    pub reentered: Vec<u64>,
    /// `(fence, writer)` of every refused write.
    pub refused: Vec<(u64, String)>,
    /// `(writer, fence, accepted)` of every write, in order.
    pub log: Vec<(String, u64, bool)>,
}

#[derive(Debug)]
pub(crate) struct PermitResource {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    inside: BTreeSet<u64>,
    seen: HashSet<u64>,
    counts: Counts,
}

impl PermitResource {
    /// A resource for one semaphore key whose limit is `limit`.
    pub(crate) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit: usize::try_from(limit).expect("limits fit usize"),
            state: Mutex::default(),
        })
    }

    /// Writes with `fence`, as a holder in this process.
    pub(crate) fn write(&self, fence: FencingToken, writer: &str) -> Entry {
        self.write_raw(fence.get(), writer)
    }

    fn write_raw(&self, fence: u64, writer: &str) -> Entry {
        let mut state = self.state.lock().expect("not poisoned");
        let higher: Vec<u64> = state
            .inside
            .range(fence.saturating_add(1)..)
            .copied()
            .collect();
        let accepted = higher.len() < self.limit;
        state.counts.log.push((writer.to_owned(), fence, accepted));
        if !accepted {
            state.counts.refused.push((fence, writer.to_owned()));
            return Entry::Refused { higher };
        }
        if state.inside.insert(fence) {
            if !state.seen.insert(fence) {
                state.counts.reentered.push(fence);
            }
            state.counts.entries += 1;
        }
        let inside = state.inside.len();
        state.counts.most = state.counts.most.max(inside);
        Entry::Accepted { inside }
    }

    fn leave(&self, fence: u64) -> usize {
        let mut state = self.state.lock().expect("not poisoned");
        state.inside.remove(&fence);
        state.inside.len()
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> Counts {
        let state = self.state.lock().expect("not poisoned");
        Counts {
            inside: state.inside.len(),
            ..state.counts.clone()
        }
    }

    /// Serves the resource on 127.0.0.1 (a free port) until the runtime
    /// ends.
    pub(crate) async fn serve(self: &Arc<Self>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the permit resource");
        let addr = listener.local_addr().expect("the resource's address");
        let resource = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let resource = Arc::clone(&resource);
                tokio::spawn(async move {
                    let (rx, mut tx) = socket.into_split();
                    let mut lines = BufReader::new(rx).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = resource.answer(&line);
                        if tx.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn answer(&self, line: &str) -> String {
        let mut words = line.splitn(3, ' ');
        let (verb, fence) = (words.next(), words.next().and_then(|f| f.parse().ok()));
        match (verb, fence, words.next()) {
            (Some("WRITE"), Some(fence), Some(writer)) => match self.write_raw(fence, writer) {
                Entry::Accepted { inside } => format!("ACCEPTED {inside}"),
                Entry::Refused { higher } => format!("REFUSED {}", join(&higher)),
            },
            (Some("LEAVE"), Some(fence), None) => format!("LEFT {}", self.leave(fence)),
            _ => format!("ERROR unreadable request {line:?}"),
        }
    }
}

/// Fences as `a,b,c`.
pub(crate) fn join(fences: &[u64]) -> String {
    fences
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A holder's connection to a [`PermitResource`] in another process.
pub(crate) struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
    tx: OwnedWriteHalf,
}

impl Connection {
    /// Connects to the resource at `addr`.
    ///
    /// # Panics
    /// When it cannot be reached: a test set-up failure.
    pub(crate) async fn open(addr: SocketAddr) -> Self {
        let (rx, tx) = TcpStream::connect(addr)
            .await
            .expect("reach the permit resource")
            .into_split();
        Self {
            lines: BufReader::new(rx).lines(),
            tx,
        }
    }

    async fn ask(&mut self, line: String) -> String {
        self.tx
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send to the permit resource");
        self.lines
            .next_line()
            .await
            .expect("read the permit resource's reply")
            .expect("the permit resource closed the connection")
    }

    /// Writes with `fence` (a writer label without spaces).
    pub(crate) async fn write(&mut self, fence: FencingToken, writer: &str) -> Entry {
        let reply = self.ask(format!("WRITE {} {writer}", fence.get())).await;
        match reply.split_once(' ') {
            Some(("ACCEPTED", inside)) => Entry::Accepted {
                inside: inside.parse().expect("a count"),
            },
            Some(("REFUSED", higher)) => Entry::Refused {
                higher: higher
                    .split(',')
                    .map(|f| f.parse().expect("a fence"))
                    .collect(),
            },
            _ => panic!("the permit resource answered {reply:?}"),
        }
    }

    /// Leaves, before the permit of `fence` is released.
    pub(crate) async fn leave(&mut self, fence: FencingToken) {
        let reply = self.ask(format!("LEAVE {}", fence.get())).await;
        assert!(
            reply.starts_with("LEFT "),
            "the permit resource answered {reply:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_writer_once_limit_higher_fences_are_inside() {
        let resource = PermitResource::new(2);
        let addr = resource.serve().await;
        let mut old = Connection::open(addr).await;
        let f = FencingToken::new;
        assert_eq!(old.write(f(3), "old").await, Entry::Accepted { inside: 1 });
        assert_eq!(resource.write(f(5), "a"), Entry::Accepted { inside: 2 });
        // One higher fence inside is not `limit` of them: 3 may still be live.
        assert_eq!(old.write(f(3), "old").await, Entry::Accepted { inside: 2 });
        assert_eq!(resource.write(f(7), "b"), Entry::Accepted { inside: 3 });
        assert_eq!(
            old.write(f(3), "old").await,
            Entry::Refused { higher: vec![5, 7] }
        );
        old.leave(f(5)).await;
        assert_eq!(old.write(f(3), "old").await, Entry::Accepted { inside: 2 });
        assert_eq!(resource.write(f(5), "again"), Entry::Accepted { inside: 3 });
        let counts = resource.counts();
        assert_eq!(counts.most, 3);
        assert_eq!(counts.reentered, [5]);
        assert_eq!(counts.refused, [(3, "old".to_owned())]);
    }
}
