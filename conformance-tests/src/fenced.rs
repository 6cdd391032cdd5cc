//! A fenced resource: what a lock's fencing token protects.
//!
//! Like a storage system that checks fencing tokens, it accepts a write to
//! a key only with a token at least as high as the highest it has accepted
//! for that key, and refuses a lower one: once a new holder has written, a
//! stale holder that wakes up (from a pause, a partition) and writes with
//! its old token is refused. It is in-process ([`FencedResource::write`])
//! and, for holders in other processes, served over TCP on 127.0.0.1
//! ([`FencedResource::serve`], [`write_remote`]) with a one-line protocol:
//! `WRITE <key> <fence> <writer>` answered by `ACCEPTED` or
//! `REFUSED <highest>`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use lockstore_api::FencingToken;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the resource did with a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Accepted: the token was the highest seen for the key, or equal to it.
    Accepted,
    /// Refused: a higher token had already written.
    Refused {
        /// The highest token accepted for the key.
        highest: u64,
    },
}

/// One write, as the resource saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key written.
    pub key: String,
    /// The token the writer gave.
    pub fence: u64,
    /// Who wrote (a label).
    pub writer: String,
    /// What the resource did.
    pub outcome: Write,
}

/// The resource; share it with `Arc`.
#[derive(Debug, Default)]
pub struct FencedResource {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    highest: HashMap<String, u64>,
    log: Vec<Entry>,
}

impl FencedResource {
    /// A resource that has seen no writes.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Writes to `key` with `fence`, refused if a higher token wrote first.
    pub fn write(&self, key: &str, fence: FencingToken, writer: &str) -> Write {
        self.write_raw(key, fence.get(), writer)
    }

    fn write_raw(&self, key: &str, fence: u64, writer: &str) -> Write {
        let mut state = self.state.lock().expect("not poisoned");
        let highest = state.highest.entry(key.to_owned()).or_insert(0);
        let outcome = if fence >= *highest {
            *highest = fence;
            Write::Accepted
        } else {
            Write::Refused { highest: *highest }
        };
        state.log.push(Entry {
            key: key.to_owned(),
            fence,
            writer: writer.to_owned(),
            outcome,
        });
        outcome
    }

    /// Every write so far, in the order the resource saw them.
    pub fn log(&self) -> Vec<Entry> {
        self.state.lock().expect("not poisoned").log.clone()
    }

    /// Serves the resource on 127.0.0.1 (a free port) until the runtime
    /// ends, for writers in other processes.
    ///
    /// # Panics
    /// If no local port can be bound: a test set-up failure.
    pub async fn serve(self: &Arc<Self>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fenced resource");
        let addr = listener.local_addr().expect("the resource's address");
        let resource = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let resource = Arc::clone(&resource);
                tokio::spawn(async move {
                    let (rx, mut tx) = socket.into_split();
                    let mut lines = BufReader::new(rx).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = match parse(&line) {
                            Some((key, fence, writer)) => {
                                match resource.write_raw(key, fence, writer) {
                                    Write::Accepted => "ACCEPTED\n".to_owned(),
                                    Write::Refused { highest } => format!("REFUSED {highest}\n"),
                                }
                            }
                            None => format!("ERROR unreadable request {line:?}\n"),
                        };
                        if tx.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }
}

fn parse(line: &str) -> Option<(&str, u64, &str)> {
    let mut parts = line.splitn(4, ' ');
    if parts.next()? != "WRITE" {
        return None;
    }
    let key = parts.next()?;
    let fence = parts.next()?.parse().ok()?;
    Some((key, fence, parts.next()?))
}

/// Writes to the resource served at `addr` (keys and writers without
/// spaces).
///
/// # Panics
/// When the resource cannot be reached or answers nonsense: a test set-up
/// failure, not an outcome.
pub async fn write_remote(addr: SocketAddr, key: &str, fence: FencingToken, writer: &str) -> Write {
    let mut socket = TcpStream::connect(addr)
        .await
        .expect("reach the fenced resource");
    socket
        .write_all(format!("WRITE {key} {} {writer}\n", fence.get()).as_bytes())
        .await
        .expect("send to the fenced resource");
    let mut reply = String::new();
    BufReader::new(socket)
        .read_line(&mut reply)
        .await
        .expect("read the fenced resource's reply");
    let reply = reply.trim_end();
    match reply.split_once(' ') {
        None if reply == "ACCEPTED" => Write::Accepted,
        Some(("REFUSED", highest)) => Write::Refused {
            highest: highest.parse().expect("a number"),
        },
        _ => panic!("the fenced resource answered {reply:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_lower_token_after_a_higher_one_wrote() {
        let resource = FencedResource::new();
        let addr = resource.serve().await;
        let (old, new) = (FencingToken::new(5), FencingToken::new(9));
        assert_eq!(resource.write("k", old, "a"), Write::Accepted);
        assert_eq!(resource.write("k", old, "a"), Write::Accepted);
        assert_eq!(write_remote(addr, "k", new, "b").await, Write::Accepted);
        assert_eq!(
            write_remote(addr, "k", old, "a").await,
            Write::Refused { highest: 9 }
        );
        assert_eq!(resource.write("other", old, "a"), Write::Accepted);
        assert_eq!(resource.log().len(), 5);
    }
}
