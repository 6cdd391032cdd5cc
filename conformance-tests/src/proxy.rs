//! A TCP proxy that injects faults between a store and its server.
//!
//! A test points a store at [`FaultProxy::addr`] instead of the server, then
//! breaks the path under it: [`reset_all`](FaultProxy::reset_all) kills
//! every open connection with a TCP reset (what a load balancer's "reset on
//! idle" or a firewall's `REJECT --reject-with tcp-reset` does, and the
//! `ECONNRESET` a client then reads), and
//! [`blackhole_open`](FaultProxy::blackhole_open) silently stops forwarding
//! on every open connection while keeping its sockets open (a NAT or load
//! balancer that dropped an idle flow: no error, just silence). New
//! connections after either fault go through untouched, as after a real
//! network hiccup.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Forward both ways.
    None,
    /// Stop forwarding; keep both sockets open.
    Blackhole,
    /// Close the client's socket with a reset, and the server's.
    Reset,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<watch::Sender<Fault>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) to `upstream` (`host:port`).
    ///
    /// # Panics
    /// If no local port can be bound: a test set-up failure.
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let connections: Arc<Mutex<Vec<watch::Sender<Fault>>>> = Arc::default();
        let registry = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue; // the client sees its connection closed
                };
                let (tx, rx) = watch::channel(Fault::None);
                let mut open = registry.lock().expect("not poisoned");
                open.retain(|tx| !tx.is_closed());
                open.push(tx);
                tokio::spawn(forward(client, server, rx));
            }
        });
        Self {
            addr,
            connections,
            accept,
        }
    }

    /// Where to point the store.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every connection open now.
    pub fn reset_all(&self) {
        self.apply(Fault::Reset);
    }

    /// Stops forwarding on every connection open now, without closing it.
    pub fn blackhole_open(&self) {
        self.apply(Fault::Blackhole);
    }

    /// How many connections are open through the proxy (neither reset nor
    /// closed by either side).
    pub fn open_connections(&self) -> usize {
        let mut open = self.connections.lock().expect("not poisoned");
        open.retain(|tx| !tx.is_closed());
        open.len()
    }

    fn apply(&self, fault: Fault) {
        let mut open = self.connections.lock().expect("not poisoned");
        open.retain(|tx| tx.send(fault).is_ok());
        if fault == Fault::Reset {
            open.clear();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.apply(Fault::Reset);
    }
}

/// Copies bytes both ways until either side closes or a fault arrives.
async fn forward(mut client: TcpStream, mut server: TcpStream, mut fault: watch::Receiver<Fault>) {
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server.write_all(&from_client[..n]).await.is_err() { return },
            },
            read = server.read(&mut from_server) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if client.write_all(&from_server[..n]).await.is_err() { return },
            },
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                match *fault.borrow_and_update() {
                    Fault::None => {}
                    Fault::Blackhole => break,
                    Fault::Reset => return reset(client, server),
                }
            }
        }
    }
    // Blackholed: hold both sockets, forward nothing, until reset or the
    // proxy goes away.
    while fault.changed().await.is_ok() {
        if *fault.borrow_and_update() == Fault::Reset {
            return reset(client, server);
        }
    }
}

/// Closes with RST (zero linger) rather than FIN.
fn reset(client: TcpStream, server: TcpStream) {
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    drop((client, server));
}
