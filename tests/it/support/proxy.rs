//! A fault-injecting TCP proxy (tc netem is not available here): listens
//! on 127.0.0.1:0 and forwards to a target, in a mode switchable at run
//! time, for new and open connections alike:
//!
//! - `Pass`: forward.
//! - `Delay(d)`: forward each chunk `d` late.
//! - `Blackhole`: accept, read and discard, never answer. A connection
//!   that lost data this way stays a black hole until its client closes
//!   it (its byte stream is broken), as a real dead peer would.
//! - `Reset`: answer with a TCP RST (linger 0, then close).
//! - `CloseAfter(n)`: close a connection cleanly once `n` bytes went
//!   through it (both directions together).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Reset,
    CloseAfter(usize),
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    accepted: AtomicU64,
    open: AtomicUsize,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Counts a connection open while it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Pass),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept_shared.accepted.fetch_add(1, Ordering::SeqCst);
                accept_shared.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(accept_shared.clone());
                tokio::spawn(connection(client, accept_shared.clone(), guard));
            }
        });
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Connections currently open (client side).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

/// Closes `stream` with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    #[allow(deprecated)] // linger 0 does not block on drop
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Reads and drops everything until the client goes away.
async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn connection(client: TcpStream, shared: Arc<Shared>, _guard: OpenGuard) {
    match shared.mode() {
        Mode::Reset => return reset(client),
        Mode::Blackhole => return swallow(client).await,
        _ => {}
    }
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    pump(client, upstream, &shared).await;
}

/// Moves bytes both ways, consulting the mode for every chunk.
async fn pump(mut client: TcpStream, mut upstream: TcpStream, shared: &Shared) {
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let mut forwarded = 0usize;
    let mut broken = false;
    loop {
        // Which side spoke, and how much.
        let (to_upstream, n) = tokio::select! {
            r = client.read(&mut from_client) => (true, r.unwrap_or(0)),
            r = upstream.read(&mut from_upstream) => (false, r.unwrap_or(0)),
        };
        if n == 0 {
            // One side closed: close the other (FIN), unless blackholed,
            // where the client learns nothing until it gives up.
            if broken && !to_upstream {
                return swallow(client).await;
            }
            return;
        }
        let mode = if broken {
            Mode::Blackhole
        } else {
            shared.mode()
        };
        let mut chunk = if to_upstream {
            &from_client[..n]
        } else {
            &from_upstream[..n]
        };
        match mode {
            Mode::Pass => {}
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Blackhole => {
                broken = true;
                continue;
            }
            Mode::Reset => {
                reset(client);
                reset(upstream);
                return;
            }
            Mode::CloseAfter(limit) => {
                let left = limit.saturating_sub(forwarded);
                if left < chunk.len() {
                    chunk = &chunk[..left];
                    let writer = if to_upstream {
                        &mut upstream
                    } else {
                        &mut client
                    };
                    let _ = writer.write_all(chunk).await;
                    return;
                }
            }
        }
        forwarded += chunk.len();
        let writer = if to_upstream {
            &mut upstream
        } else {
            &mut client
        };
        if writer.write_all(chunk).await.is_err() {
            return;
        }
    }
}
