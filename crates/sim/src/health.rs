//! The simulated dfdaemons' gRPC health service (`grpc.health.v1.Health`,
//! the one a real dfdaemon serves with tonic-health on its Host entry's
//! `ip:port`): one listener per host on its own loopback address, and the
//! faults a real host has that its scheduler does not see: stopped
//! silently (the process is gone, connections are refused, the scheduler
//! keeps listing it), frozen (TCP is accepted by the kernel, nothing
//! answers) and back again. Every `Check` is counted per host.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// What a simulated host's health service does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMode {
    /// Answers `SERVING`.
    Serving,
    /// Gone: its port refuses connections (a crashed dfdaemon).
    Stopped,
    /// Hung: connections are accepted, no call is ever answered (a
    /// frozen process or a black-holed network).
    Frozen,
}

/// How long a stopping health server may take to close its connections
/// before it is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// File descriptors kept for everything but health listeners: the
/// schedulers' and manager's listeners and the gateways' connections.
const RESERVED_FDS: usize = 4096;

/// Health listeners bound while hosts are generated (synchronously, under
/// the workload's lock), waiting to be served. One per host until the
/// process's open-file limit (less [`RESERVED_FDS`]) would be reached;
/// hosts beyond it get port 0, which a prober does not dial (their
/// liveness is unknown), instead of starving the schedulers of sockets.
#[derive(Default)]
pub(crate) struct Binder {
    pending: Mutex<Vec<(String, SocketAddr, std::net::TcpListener)>>,
    bound: AtomicU64,
    /// Set once a host went without a listener, so that is said once.
    exhausted: std::sync::atomic::AtomicBool,
}

/// How many health listeners this process may hold: its soft open-file
/// limit (from /proc; 8192 where that cannot be read) less [`RESERVED_FDS`].
fn listener_capacity() -> u64 {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<u64>().ok()
        })
        .unwrap_or(8192 + RESERVED_FDS as u64);
    soft.saturating_sub(RESERVED_FDS as u64)
}

impl Binder {
    /// Binds a listener for host `host_id` on `ip` (an ephemeral port, so
    /// simulators with the same seed do not collide); its port, or `None`
    /// (logged) when the address cannot be bound.
    pub(crate) fn bind(&self, host_id: &str, ip: Ipv4Addr) -> Option<i32> {
        static CAPACITY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let capacity = *CAPACITY.get_or_init(listener_capacity);
        if self.bound.load(Ordering::Relaxed) >= capacity {
            if !self.exhausted.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    listeners = capacity,
                    "open-file limit: further simulated hosts get no health service (port 0, liveness unknown)"
                );
            }
            return Some(0);
        }
        let bound = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(|l| l.local_addr().map(|a| (l, a)));
        match bound {
            Ok((listener, addr)) => {
                self.bound.fetch_add(1, Ordering::Relaxed);
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((host_id.to_owned(), addr, listener));
                Some(i32::from(addr.port()))
            }
            Err(error) => {
                tracing::warn!(%ip, %error, "no health listener for a simulated host");
                None
            }
        }
    }

    fn take(&self) -> Vec<(String, SocketAddr, std::net::TcpListener)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One host's health endpoint.
struct Endpoint {
    addr: SocketAddr,
    mode: Arc<watch::Sender<HostMode>>,
    checks: Arc<AtomicU64>,
    /// Checks still to fail (`UNAVAILABLE`) before answering again.
    lose: Arc<AtomicU64>,
    server: Option<JoinHandle<()>>,
}

/// Every simulated host's health endpoint.
pub(crate) struct Hosts {
    binder: Arc<Binder>,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    shutdown: watch::Receiver<bool>,
}

/// The health service of one host.
struct HostHealth {
    mode: Arc<watch::Sender<HostMode>>,
    checks: Arc<AtomicU64>,
    lose: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Health for HostHealth {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let lost = self
            .lose
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(Status::unavailable("simulated lost probe"));
        }
        let mut mode = self.mode.subscribe();
        loop {
            match *mode.borrow_and_update() {
                HostMode::Serving => break,
                HostMode::Stopped => return Err(Status::unavailable("simulated host stopped")),
                HostMode::Frozen => {}
            }
            if mode.changed().await.is_err() {
                return Err(Status::unavailable("simulated host stopped"));
            }
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let first = self.check(request).await?.into_inner();
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(first)
        }))))
    }
}

/// Serves `listener` until the host stops or the simulator shuts down;
/// takes no new connection while frozen.
fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    service: HostHealth,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut stopped = service.mode.subscribe();
    let gate = service.mode.subscribe();
    tokio::spawn(async move {
        let incoming =
            futures::stream::unfold((listener, gate), |(listener, mut gate)| async move {
                // Frozen: the kernel still completes handshakes into the
                // backlog, nobody reads them.
                gate.wait_for(|m| *m != HostMode::Frozen).await.ok()?;
                let accepted = listener.accept().await.map(|(stream, _)| {
                    let _ = stream.set_nodelay(true);
                    stream
                });
                Some((accepted, (listener, gate)))
            });
        let signal = async move {
            tokio::select! {
                _ = stopped.wait_for(|m| *m == HostMode::Stopped) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        };
        let serving = Server::builder()
            .add_service(HealthServer::new(service))
            .serve_with_incoming_shutdown(incoming, signal);
        if let Err(error) = serving.await {
            tracing::debug!(%addr, %error, "simulated host's health service ended with an error");
        }
    })
}

impl Endpoint {
    fn service(&self) -> HostHealth {
        HostHealth {
            mode: Arc::clone(&self.mode),
            checks: Arc::clone(&self.checks),
            lose: Arc::clone(&self.lose),
        }
    }
}

impl Hosts {
    /// Makes a host's next `n` checks fail with `UNAVAILABLE` (lost
    /// probes); false for a host without a health service.
    pub(crate) fn lose_checks(&self, host_id: &str, n: u64) -> bool {
        self.endpoints()
            .get(host_id)
            .map(|e| e.lose.store(n, Ordering::Relaxed))
            .is_some()
    }

    pub(crate) fn new(shutdown: watch::Receiver<bool>) -> Self {
        Self {
            binder: Arc::default(),
            endpoints: Mutex::default(),
            shutdown,
        }
    }

    pub(crate) fn binder(&self) -> Arc<Binder> {
        Arc::clone(&self.binder)
    }

    fn endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<String, Endpoint>> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves the listeners bound since the last call and closes those of
    /// hosts no longer in `listed` (they left their cluster). Outside a
    /// runtime new listeners wait for the next call.
    pub(crate) fn sync(&self, listed: &HashSet<String>) {
        let fresh = if tokio::runtime::Handle::try_current().is_ok() {
            self.binder.take()
        } else {
            Vec::new()
        };
        let mut endpoints = self.endpoints();
        for (host_id, addr, listener) in fresh {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(%addr, %error, "cannot serve a simulated host's health");
                    continue;
                }
            };
            let mut endpoint = Endpoint {
                addr,
                mode: Arc::new(watch::Sender::new(HostMode::Serving)),
                checks: Arc::default(),
                lose: Arc::default(),
                server: None,
            };
            endpoint.server = Some(serve(
                listener,
                addr,
                endpoint.service(),
                self.shutdown.clone(),
            ));
            endpoints.insert(host_id, endpoint);
        }
        endpoints.retain(|host_id, endpoint| {
            let keep = listed.contains(host_id);
            if !keep {
                endpoint.mode.send_replace(HostMode::Stopped);
            }
            keep
        });
        // Hosts that left gave their listeners back.
        let pending = self
            .binder
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.binder
            .bound
            .store((endpoints.len() + pending) as u64, Ordering::Relaxed);
    }

    /// The address of a host's health service.
    pub(crate) fn addr(&self, host_id: &str) -> Option<SocketAddr> {
        self.endpoints().get(host_id).map(|e| e.addr)
    }

    /// What a host's health service does now.
    pub(crate) fn mode(&self, host_id: &str) -> Option<HostMode> {
        self.endpoints().get(host_id).map(|e| *e.mode.borrow())
    }

    /// `Check` calls a host received (also those it never answered).
    pub(crate) fn checks(&self, host_id: &str) -> u64 {
        self.endpoints()
            .get(host_id)
            .map_or(0, |e| e.checks.load(Ordering::Relaxed))
    }

    /// `Check` calls received by every host.
    pub(crate) fn total_checks(&self) -> u64 {
        self.endpoints()
            .values()
            .map(|e| e.checks.load(Ordering::Relaxed))
            .sum()
    }

    /// Zeroes every host's count.
    pub(crate) fn reset_checks(&self) {
        self.endpoints()
            .values()
            .for_each(|e| e.checks.store(0, Ordering::Relaxed));
    }

    /// Puts a host in `to`; false for a host without a health service.
    /// Returns once the change holds: a stopped host refuses connections,
    /// a host back from being stopped accepts them.
    pub(crate) async fn set_mode(&self, host_id: &str, to: HostMode) -> bool {
        let (from, old_server, addr, service) = {
            let mut endpoints = self.endpoints();
            let Some(endpoint) = endpoints.get_mut(host_id) else {
                return false;
            };
            let from = endpoint.mode.send_replace(to);
            let old_server = (to == HostMode::Stopped)
                .then(|| endpoint.server.take())
                .flatten();
            (from, old_server, endpoint.addr, endpoint.service())
        };
        if let Some(mut server) = old_server
            && tokio::time::timeout(STOP_GRACE, &mut server).await.is_err()
        {
            server.abort();
        }
        if from == HostMode::Stopped && to != HostMode::Stopped {
            let listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(%addr, %error, "a simulated host cannot come back");
                    service.mode.send_replace(HostMode::Stopped);
                    return false;
                }
            };
            let server = serve(listener, addr, service, self.shutdown.clone());
            if let Some(endpoint) = self.endpoints().get_mut(host_id) {
                endpoint.server = Some(server);
            } else {
                server.abort();
            }
        }
        true
    }

    /// Stops every health service and waits for them.
    pub(crate) async fn shutdown(&self) {
        let servers: Vec<JoinHandle<()>> = self
            .endpoints()
            .values_mut()
            .filter_map(|e| {
                e.mode.send_replace(HostMode::Stopped);
                e.server.take()
            })
            .collect();
        for mut server in servers {
            if tokio::time::timeout(STOP_GRACE, &mut server).await.is_err() {
                server.abort();
            }
        }
    }
}
