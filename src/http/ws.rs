//! `/graphql/ws`: GraphQL over websocket, in graphql-transport-ws (the
//! `graphql-ws` library's protocol) and the legacy graphql-ws protocol of
//! subscriptions-transport-ws, chosen by the client's sub-protocol.
//!
//! Written here rather than taken from async-graphql because the spec's
//! close codes matter to clients: init timeout (4408), subscribe before ack
//! (4401), duplicate id (4409), second init (4429), bad message (4400).
//! Each connection has a bounded send queue; a client that stops reading is
//! disconnected instead of buffered for.
//!
//! A connection's socket is split: tungstenite reads the client's frames
//! (and makes the pongs and close replies the protocol owes), one writer
//! task writes everything the server sends, as whole frames it puts
//! together itself, so a burst of events is one write of ready bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::{CancellationToken, PollSender};

use super::AppState;
use super::fanout;
use super::ws_upgrade::Socket;
use crate::clock::{Clock, SystemClock};
use crate::events::metric;
use crate::graphql::subscription::DeliveryStamp;
use crate::setting::{Invalid, positive};

/// The close codes a connection ends with: the websocket standard's
/// (RFC 6455) and graphql-transport-ws's own (4400-4499).
pub mod close_code {
    /// The client said goodbye, or went silent past `idle_timeout`.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A message that breaks the protocol.
    pub const BAD_REQUEST: u16 = 4400;
    /// `subscribe` before `connection_ack`.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Credentials refused, or expired while the connection was open.
    pub const FORBIDDEN: u16 = 4403;
    /// No `connection_init` within `init_timeout`.
    pub const INIT_TIMEOUT: u16 = 4408;
    /// `subscribe` with the id of an operation still running.
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    /// A second `connection_init`.
    pub const TOO_MANY_INIT: u16 = 4429;
}

/// Sub-protocols served, in order of preference.
pub const PROTOCOLS: [&str; 2] = ["graphql-transport-ws", "graphql-ws"];

/// The `connection_init` payload of a connection, reachable from resolvers
/// (where an auth token will be read).
#[derive(Clone, Debug, Default)]
pub struct ConnectionInitPayload(pub Value);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// graphql-transport-ws.
    Transport,
    /// Legacy graphql-ws (subscriptions-transport-ws).
    Legacy,
}

impl Protocol {
    pub fn from_header(value: Option<&str>) -> Protocol {
        match value {
            Some("graphql-ws") => Protocol::Legacy,
            _ => Protocol::Transport,
        }
    }
}

/// The `[subscriptions]` settings: bounds on `/graphql/ws`, what one
/// connection and the whole process may hold, and how long a silent or
/// slow client is kept.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionLimits {
    /// Operations one connection may run at once.
    pub per_connection: usize,
    /// Operations all connections may run at once.
    pub total: usize,
    /// A connection that sends no `connection_init` within this is closed
    /// (4408).
    #[serde(with = "humantime_serde")]
    pub init_timeout: Duration,
    /// How often the server pings (protocol `ping`/`ka` and a websocket
    /// ping frame).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// A connection that sends nothing (not even a pong) for this long is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Messages queued toward one client before it counts as slow.
    pub send_queue: usize,
    /// A client whose queue stays full this long is disconnected (its
    /// socket is closed; it reads no close frame, since it reads nothing).
    #[serde(with = "humantime_serde")]
    pub slow_consumer_timeout: Duration,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        Self {
            per_connection: 100,
            total: 20_000,
            init_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            send_queue: 256,
            slow_consumer_timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024,
        }
    }
}

impl SubscriptionLimits {
    /// Counts of at least one; a connection pinged before it is dropped
    /// for idling.
    pub fn validate(&self) -> Result<(), Invalid> {
        positive("per_connection", self.per_connection)?;
        positive("total", self.total)?;
        positive("send_queue", self.send_queue)?;
        positive("init_timeout", self.init_timeout)?;
        positive("keep_alive", self.keep_alive)?;
        if self.idle_timeout <= self.keep_alive {
            return Err(Invalid::new(
                "idle_timeout",
                "must be longer than keep_alive, or a healthy client is dropped between two pings",
            ));
        }
        Ok(())
    }
}

/// The subscription limits and the process-wide count of operations.
#[derive(Clone)]
pub struct Limits {
    pub config: SubscriptionLimits,
    active: Arc<AtomicUsize>,
}

impl Limits {
    pub fn new(config: SubscriptionLimits) -> Limits {
        Limits {
            config,
            active: Arc::default(),
        }
    }

    /// Operations running on every connection.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// One operation's share of `total`, unless all are taken.
    pub(crate) fn try_take(&self) -> Option<Slot> {
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.total).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(self.active.clone()))
    }
}

/// One operation's share of the global limit.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Out {
    /// A message, with the observation time of the event behind it.
    Text(String, Option<i64>),
    Ping,
    Close(u16, String),
    /// Whole frames tungstenite wrote while reading (a pong, the reply to
    /// the client's close), to go out as they are.
    Reply(Vec<u8>),
}

/// Why the connection ends.
enum End {
    Close(u16, String),
    /// The client went away or the socket failed: nothing to say.
    Gone,
}

/// Serves one upgraded connection until either side ends it.
///
/// The caller authenticates before `connection_ack`: with the token of the
/// `connection_init` payload (`Authorization`), else the one the upgrade
/// request carried; a refused token closes with 4403, and so does the
/// connection when its token expires.
pub async fn serve(
    socket: Socket,
    protocol: Protocol,
    app: AppState,
    stop: CancellationToken,
    upgrade_token: Option<String>,
    client: Option<std::net::IpAddr>,
) {
    let limits = app.subscriptions.clone();
    let (read, socket) = tokio::io::split(socket);
    let (out_tx, out_rx) = mpsc::channel::<Out>(limits.config.send_queue);
    let max = limits.config.max_message_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        // tungstenite reserves 128 KiB per connection for reading by
        // default; clients send little (larger messages still arrive, in
        // more reads), and 10k idle subscribers should not cost 1.3 GiB.
        .read_buffer_size(4 * 1024);
    let mut incoming = WebSocketStream::from_raw_socket(
        ReadSide {
            read,
            replies: PollSender::new(out_tx.clone()),
        },
        Role::Server,
        Some(config),
    )
    .await;
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Ctl>();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
    let slow = CancellationToken::new();
    let writer = tokio::spawn(
        Writer {
            socket,
            out: out_rx,
            ctl: ctl_rx,
            done: done_tx.clone(),
            shared: Vec::new(),
            protocol,
            slow: slow.clone(),
            slow_after: limits.config.slow_consumer_timeout,
            send_queue: limits.config.send_queue,
        }
        .run(),
    );
    let mut conn = Connection {
        protocol,
        app,
        limits,
        out: out_tx,
        ctl: ctl_tx,
        ops: HashMap::new(),
        init: None,
        upgrade_token,
        principal: None,
        client,
        slow,
    };
    let end = conn.run(&mut incoming, &stop, done_tx, done_rx).await;
    // Its way to the writer goes too, so the writer ends once the
    // connection's queue is drained.
    drop(incoming);
    Box::pin(conn.close(end, writer)).await;
}

/// The socket as the reading side's tungstenite sees it: it reads the
/// client's frames, and what it writes (a pong, the reply to a close) goes
/// to the connection's writer, the only one that writes to the socket, so
/// no frame ever lands inside another.
struct ReadSide {
    read: ReadHalf<Socket>,
    replies: PollSender<Out>,
}

impl AsyncRead for ReadSide {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadSide {
    /// Takes all of `buf` or nothing: tungstenite writes out whole frames,
    /// and a part of one must never reach the writer.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let gone = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.replies.poll_reserve(cx)).map_err(gone)?;
        self.replies
            .send_item(Out::Reply(buf.to_vec()))
            .map_err(gone)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Messages (and close) one write to the socket carries at most.
const WRITE_BATCH: usize = 256;

/// What the connection tells its writer besides messages.
enum Ctl {
    /// Write this shared operation's responses from now on.
    Attach(Box<SharedOp>),
    /// The client stopped the operation with this serial: drop it.
    Detach(u64),
}

/// A subscription fed by a shared execution. The connection's writer reads
/// its responses straight off the execution's broadcast and writes them,
/// already framed for this operation id: no task, queue or wake-up per
/// message between the execution and the socket.
struct SharedOp {
    serial: u64,
    /// The operation id as a JSON string.
    id_json: String,
    /// What each of its messages starts with, up to the payload
    /// (`{"type":"next","id":"1","payload":`): the only part of a shared
    /// message that differs between subscribers.
    head: Box<[u8]>,
    frames: broadcast::Receiver<fanout::Frame>,
    /// Set by the connection when the client stopped the operation: not one
    /// more of its messages is written (the `Detach` that follows may come
    /// after a message the connection queued since, such as `complete`).
    stopped: Arc<AtomicBool>,
    _shared: Arc<fanout::Shared>,
    _slot: Slot,
    _live: Option<crate::events::LiveSubscription>,
}

/// The first thing a writer woke up for.
enum Woke {
    Out(Out),
    Frame(usize, Result<fanout::Frame, RecvError>),
}

/// What one write holds: whole frames in order, the observation time of
/// each event among them, and whether a close frame ends it.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    messages: usize,
    stamps: Vec<i64>,
    close: bool,
}

/// Bytes a connection's batch keeps between writes: enough for control
/// messages; a burst's buffer goes back to its worker thread's spare after
/// the write, so an idle subscriber holds none of it.
const KEEP_BYTES: usize = 1024;

/// The largest spare buffer a worker thread keeps for the next burst.
const SPARE_BYTES: usize = 256 * 1024;

thread_local! {
    /// A burst's buffer, kept for the next connection this thread writes
    /// to: 10k subscribers each framing a burst into a fresh allocation
    /// had the kernel zeroing new pages for a tenth of the writers' time.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Batch {
    fn full(&self) -> bool {
        self.close || self.messages >= WRITE_BATCH
    }

    fn text(&mut self, text: &str, stamp: Option<i64>) {
        text_frame(&mut self.bytes, &[text.as_bytes()]);
        self.messages += 1;
        self.stamps.extend(stamp);
    }

    fn push(&mut self, out: Out) {
        match out {
            Out::Text(text, stamp) => return self.text(&text, stamp),
            Out::Ping => control_frame(&mut self.bytes, Frame::ping(Vec::new())),
            Out::Close(code, reason) => {
                let close = CloseFrame {
                    code: code.into(),
                    reason: close_reason(reason).into(),
                };
                control_frame(&mut self.bytes, Frame::close(Some(close)));
                self.close = true;
            }
            Out::Reply(frames) => self.bytes.extend_from_slice(&frames),
        }
        self.messages += 1;
    }

    /// Empty again, after a write.
    fn clear(&mut self) {
        self.bytes.clear();
        if self.bytes.capacity() > KEEP_BYTES {
            let bytes = std::mem::take(&mut self.bytes);
            if bytes.capacity() <= SPARE_BYTES {
                SPARE.with(|spare| {
                    // The larger one stays.
                    let kept = spare.take();
                    spare.set(if kept.capacity() >= bytes.capacity() {
                        kept
                    } else {
                        bytes
                    });
                });
            }
        }
        self.messages = 0;
    }
}

/// Appends one final, unmasked text frame whose payload is `parts` in a
/// row: the server's frames are never masked (RFC 6455 5.1), so a frame is
/// its header and the bytes as they are.
fn text_frame(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    buf.reserve(header.len(len as u64) + len);
    // Writing into a Vec cannot fail.
    let _ = header.format(len as u64, buf);
    for part in parts {
        buf.extend_from_slice(part);
    }
}

/// Appends a ping or close frame.
fn control_frame(buf: &mut Vec<u8>, frame: Frame) {
    // Writing into a Vec cannot fail.
    let _ = frame.format(buf);
}

/// How a write ended.
enum Wrote {
    Flushed,
    /// A close frame went out (or failed to): the connection is over.
    Closed,
    /// The socket failed.
    Failed,
    /// The client has not read for `slow_consumer_timeout` while its
    /// queue was full.
    Slow,
}

/// The one task that writes to a connection's socket: control messages
/// and the responses of its own executions from `out`, the responses of
/// its shared subscriptions straight from their executions. Whatever is
/// ready when it wakes goes out in one write and one flush (one syscall
/// for a burst of events, not one per message).
struct Writer {
    socket: WriteHalf<Socket>,
    out: mpsc::Receiver<Out>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    done: mpsc::UnboundedSender<Done>,
    shared: Vec<SharedOp>,
    protocol: Protocol,
    slow: CancellationToken,
    slow_after: Duration,
    send_queue: usize,
}

impl Writer {
    /// Writes until the connection queues a close, goes away, or the
    /// socket fails; records each event's delivery lag.
    async fn run(mut self) {
        let delivery_lag = metrics::histogram!(metric::DELIVERY_LAG);
        let mut batch = Batch::default();
        loop {
            let woke = tokio::select! {
                biased;
                Some(ctl) = self.ctl.recv() => {
                    self.apply(ctl);
                    continue;
                }
                out = self.out.recv() => match out {
                    Some(out) => Woke::Out(out),
                    None => break,
                },
                (index, frame) = recv_any(&mut self.shared), if !self.shared.is_empty() => {
                    Woke::Frame(index, frame)
                }
            };
            match woke {
                Woke::Out(out) => batch.push(out),
                Woke::Frame(index, frame) => {
                    if self.take(index, frame, &mut batch) {
                        self.shared.swap_remove(index);
                    }
                }
            }
            self.collect(&mut batch);
            match self.write(&mut batch).await {
                Wrote::Flushed => {}
                Wrote::Closed | Wrote::Failed => break,
                Wrote::Slow => {
                    tracing::info!("websocket client stopped reading; disconnecting it");
                    self.slow.cancel();
                    return;
                }
            }
            record_lags(&delivery_lag, &mut batch.stamps);
        }
        let _ = self.socket.shutdown().await;
    }

    fn apply(&mut self, ctl: Ctl) {
        match ctl {
            Ctl::Attach(op) => self.shared.push(*op),
            Ctl::Detach(serial) => self.shared.retain(|op| op.serial != serial),
        }
    }

    /// Adds to `batch` whatever else is ready now, up to its bound:
    /// queued messages first (an acknowledgement before the events of the
    /// operations it allowed), then each shared operation's responses.
    fn collect(&mut self, batch: &mut Batch) {
        while let Ok(ctl) = self.ctl.try_recv() {
            self.apply(ctl);
        }
        while !batch.full() {
            match self.out.try_recv() {
                Ok(out) => batch.push(out),
                Err(_) => break,
            }
        }
        let mut index = 0;
        while index < self.shared.len() {
            let mut ended = false;
            while !batch.full() && !ended {
                let frame = match self.shared[index].frames.try_recv() {
                    Ok(frame) => Ok(frame),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                };
                ended = self.take(index, frame, batch);
            }
            if ended {
                self.shared.swap_remove(index);
            } else {
                index += 1;
            }
        }
    }

    /// Adds what shared operation `index` says with `frame` to `batch`;
    /// true when the operation is over (its last messages are in `batch`,
    /// and the connection has been told).
    fn take(
        &self,
        index: usize,
        frame: Result<fanout::Frame, RecvError>,
        batch: &mut Batch,
    ) -> bool {
        let op = &self.shared[index];
        if op.stopped.load(Ordering::Acquire) {
            return true;
        }
        let ended = match frame {
            Ok(fanout::Frame::Next(payloads)) => {
                if batch.bytes.is_empty() {
                    // Room for this item and as many again for each
                    // queued one, in one buffer.
                    let bytes: usize = payloads
                        .iter()
                        .map(|p| op.head.len() + p.json().len() + 16)
                        .sum();
                    let room = (bytes * (op.frames.len().min(WRITE_BATCH) + 1)).min(SPARE_BYTES);
                    if batch.bytes.capacity() < room {
                        batch.bytes = SPARE.with(|spare| spare.take());
                    }
                    batch.bytes.reserve(room);
                }
                for payload in payloads.iter() {
                    text_frame(
                        &mut batch.bytes,
                        &[&op.head, payload.json().as_bytes(), b"}"],
                    );
                    batch.stamps.extend(payload.stamp());
                }
                batch.messages += payloads.len();
                return false;
            }
            Ok(fanout::Frame::Refused { errors }) => refusal(self.protocol, &op.id_json, &errors),
            Ok(fanout::Frame::End) | Err(RecvError::Closed) => Ended::Completed { last: None },
            Err(RecvError::Lagged(missed)) => lagged(self.protocol, &op.id_json, missed),
        };
        // Gone before its last messages can be read, so a client that
        // reuses the id as soon as it reads `complete` is not told it exists.
        let _ = self.done.send(Done {
            serial: op.serial,
            ended: true,
        });
        match ended {
            Ended::Completed { last } => {
                if let Some(last) = last {
                    batch.text(&last, None);
                }
                batch.text(&complete(&op.id_json), None);
            }
            Ended::Refused(error) => batch.text(&error, None),
            Ended::Quietly => {}
        }
        true
    }

    /// Writes `batch` and flushes; gives up on a client that reads
    /// nothing while its queue is full for `slow_after`.
    async fn write(&mut self, batch: &mut Batch) -> Wrote {
        let write = write_batch(&mut self.socket, batch);
        tokio::pin!(write);
        // Most writes finish at once: no timer for them.
        if let std::task::Poll::Ready(wrote) = futures::poll!(&mut write) {
            return wrote;
        }
        let mut check = tokio::time::interval((self.slow_after / 4).max(Duration::from_millis(5)));
        let mut full_since: Option<Instant> = None;
        loop {
            tokio::select! {
                wrote = &mut write => return wrote,
                _ = check.tick() => {
                    let queued: usize = self.shared.iter().map(|op| op.frames.len()).sum();
                    if queued < self.send_queue {
                        full_since = None;
                    } else if full_since.get_or_insert_with(Instant::now).elapsed() >= self.slow_after {
                        return Wrote::Slow;
                    }
                }
            }
        }
    }
}

/// Waits for the next response of any of `ops` (not empty).
async fn recv_any(ops: &mut [SharedOp]) -> (usize, Result<fanout::Frame, RecvError>) {
    if let [op] = ops {
        return (0, op.frames.recv().await);
    }
    let waiting = ops
        .iter_mut()
        .enumerate()
        .map(|(index, op)| Box::pin(async move { (index, op.frames.recv().await) }));
    futures::future::select_all(waiting).await.0
}

/// Writes a batch's frames to the socket in one write (more only when the
/// socket takes part of it) and flushes (TLS keeps what it encrypts until
/// then).
async fn write_batch(socket: &mut WriteHalf<Socket>, batch: &mut Batch) -> Wrote {
    let wrote = match socket.write_all(&batch.bytes).await {
        Ok(()) => socket.flush().await,
        Err(e) => Err(e),
    };
    let closed = batch.close;
    batch.clear();
    match wrote {
        Ok(()) if closed => {
            let _ = socket.shutdown().await;
            Wrote::Closed
        }
        Ok(()) => Wrote::Flushed,
        Err(_) if closed => Wrote::Closed,
        Err(_) => Wrote::Failed,
    }
}

/// Records the delivery lag of the events just written: one sample per
/// observation time in the write, however many of its events it carried.
/// The events of one poll share their observation time and a client gets
/// them in one write, all with the same lag; a sample per message would
/// be a million per burst at 10k subscribers, and the Prometheus recorder
/// takes the clock and stores every one until its upkeep folds them.
fn record_lags(histogram: &metrics::Histogram, stamps: &mut Vec<i64>) {
    if stamps.is_empty() {
        return;
    }
    let now = SystemClock.now_ms_signed();
    let mut last = None;
    for observed in stamps.drain(..) {
        if last != Some(observed) {
            histogram.record((now - observed).max(0) as f64 / 1000.0);
            last = Some(observed);
        }
    }
}

/// Ends a connection over a message that breaks the protocol.
fn invalid(why: &str) -> Option<End> {
    Some(End::Close(close_code::BAD_REQUEST, why.to_string()))
}

/// An operation of a connection.
struct Operation {
    /// Tells a finished operation from a later one under the same id.
    serial: u64,
    runs: Runs,
    /// Its stream ended; it is only telling its client so.
    finishing: bool,
}

/// Where an operation runs, and so how it is stopped.
enum Runs {
    /// A task of its own.
    Task(AbortHandle),
    /// In the connection's writer, off a shared execution.
    Shared(Arc<AtomicBool>),
}

impl Operation {
    /// Stops the operation: nothing more of it reaches the client.
    fn stop(&self, ctl: &mpsc::UnboundedSender<Ctl>) {
        match &self.runs {
            Runs::Task(task) => task.abort(),
            Runs::Shared(stopped) => {
                stopped.store(true, Ordering::Release);
                let _ = ctl.send(Ctl::Detach(self.serial));
            }
        }
    }
}

/// What an operation's task reports to its connection. Small: every
/// connection holds a block of these from its first operation on.
struct Done {
    /// The operation's serial (unique within its connection).
    serial: u64,
    /// false: finishing (its last messages are being queued); true: gone.
    ended: bool,
}

struct Connection {
    protocol: Protocol,
    app: AppState,
    limits: Limits,
    out: mpsc::Sender<Out>,
    /// Shared operations handed to the writer, and stopped.
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Running operations by client id, with a serial number so a late
    /// "done" of a replaced operation does not remove its successor.
    ops: HashMap<String, Operation>,
    init: Option<ConnectionInitPayload>,
    /// The token of the upgrade request (header or session cookie).
    upgrade_token: Option<String>,
    /// Who the connection runs as, once `connection_init` authenticated.
    principal: Option<crate::auth::Principal>,
    /// The address the upgrade came from (after trusted proxies).
    client: Option<std::net::IpAddr>,
    /// Cancelled when the client stopped reading.
    slow: CancellationToken,
}

impl Connection {
    /// Answers the client, pings it and watches its deadlines until
    /// something ends the connection.
    async fn run(
        &mut self,
        incoming: &mut WebSocketStream<ReadSide>,
        stop: &CancellationToken,
        done_tx: mpsc::UnboundedSender<Done>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
    ) -> End {
        let init_deadline = tokio::time::sleep(self.limits.config.init_timeout);
        tokio::pin!(init_deadline);
        let keep_alive = self.limits.config.keep_alive;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut last_heard = Instant::now();
        let mut next_op = 0u64;

        loop {
            tokio::select! {
                // Finished operations first, so a client that reuses an id
                // right after `complete` is not told it already exists.
                biased;
                Some(Done { serial, ended }) = done_rx.recv() => {
                    if ended {
                        self.ops.retain(|_, op| op.serial != serial);
                    } else if let Some(op) = self.ops.values_mut().find(|op| op.serial == serial) {
                        op.finishing = true;
                    }
                }
                _ = &mut init_deadline, if self.init.is_none() => {
                    break End::Close(close_code::INIT_TIMEOUT, "Connection initialisation timeout".into());
                }
                _ = stop.cancelled() => break End::Close(close_code::GOING_AWAY, "server shutting down".into()),
                _ = until(self.expires_at()) => break End::Close(close_code::FORBIDDEN, "Forbidden: the token has expired".into()),
                _ = self.slow.cancelled() => break End::Gone,
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.limits.config.idle_timeout {
                        break End::Close(close_code::NORMAL, "idle timeout: nothing received".into());
                    }
                    let keepalive = match self.protocol {
                        Protocol::Transport => json!({"type": "ping"}),
                        Protocol::Legacy => json!({"type": "ka"}),
                    };
                    // Both: the protocol ping for clients that expect one, a
                    // websocket ping for liveness (browsers answer it).
                    if self.init.is_some() || self.protocol == Protocol::Transport {
                        self.send_now(keepalive);
                    }
                    let _ = self.out.try_send(Out::Ping);
                }
                frame = incoming.next() => {
                    let Some(Ok(frame)) = frame else {
                        // A frame over the size limit also ends up here.
                        break End::Gone;
                    };
                    last_heard = Instant::now();
                    let text = match frame {
                        Message::Text(text) => text,
                        Message::Binary(_) => break End::Close(close_code::BAD_REQUEST, "binary messages are not part of the protocol".into()),
                        Message::Close(_) => {
                            // tungstenite made the reply when it read the
                            // close; this hands it to the writer.
                            let _ = tokio::time::timeout(Duration::from_secs(1), incoming.flush()).await;
                            break End::Gone;
                        }
                        // Pongs are owed, and tungstenite makes them.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    // Boxed: authentication and persisted-query lookups are
                    // large futures; inline, every idle connection would
                    // carry their size for its whole life.
                    if let Some(end) = Box::pin(self.handle(text.as_str(), &done_tx, &mut next_op)).await {
                        break end;
                    }
                }
            }
        }
    }

    /// Stops the operations, says goodbye when there is something to say,
    /// and gives the writer a moment to flush it.
    async fn close(mut self, end: End, writer: tokio::task::JoinHandle<()>) {
        for (_, op) in self.ops.drain() {
            op.stop(&self.ctl);
        }
        if let End::Close(code, reason) = end {
            tracing::debug!(code, %reason, "closing websocket");
            // Behind whatever is queued: a client that is reading gets it.
            let _ = self
                .out
                .send_timeout(Out::Close(code, reason), Duration::from_secs(1))
                .await;
        }
        let slow_after = self.limits.config.slow_consumer_timeout;
        drop(self);
        // A writer stuck on a client that does not read would hold the socket
        // and its buffers forever: give it a moment to say goodbye, then end it.
        let writer_abort = writer.abort_handle();
        if tokio::time::timeout(slow_after.min(Duration::from_secs(2)), writer)
            .await
            .is_err()
        {
            writer_abort.abort();
            tracing::debug!("websocket writer did not finish in time; aborted");
        }
    }

    /// Queues a control message; a full queue means a client that does
    /// not read, which the forwarders notice and disconnect.
    fn send_now(&self, message: Value) {
        let _ = self.out.try_send(Out::Text(message.to_string(), None));
    }

    /// Tells the client one operation will not run.
    fn refuse_operation(&self, id: &str, error: Value) {
        self.send_now(match self.protocol {
            Protocol::Transport => json!({"type": "error", "id": id, "payload": [error]}),
            Protocol::Legacy => json!({"type": "error", "id": id, "payload": error}),
        });
    }

    /// When the connection's credential expires.
    fn expires_at(&self) -> Option<tokio::time::Instant> {
        let left = self.principal.as_ref()?.expires_in()?;
        Some(tokio::time::Instant::now() + left)
    }

    /// Handles one client message; `Some` ends the connection.
    async fn handle(
        &mut self,
        text: &str,
        done: &mpsc::UnboundedSender<Done>,
        next_op: &mut u64,
    ) -> Option<End> {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return invalid("Invalid message received: not a JSON object");
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return invalid("Invalid message received: no type");
        };
        let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
        let payload = message.get("payload").cloned().unwrap_or(Value::Null);
        match (self.protocol, kind) {
            (_, "connection_init") => self.connection_init(payload).await,
            (Protocol::Transport, "ping") => {
                let mut pong = json!({"type": "pong"});
                if !payload.is_null() {
                    pong["payload"] = payload;
                }
                self.send_now(pong);
                None
            }
            (Protocol::Transport, "pong") => None,
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                self.subscribe(id, payload, done, next_op).await
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                let Some(id) = id else {
                    return Some(End::Close(
                        close_code::BAD_REQUEST,
                        format!("{kind} without an id"),
                    ));
                };
                if let Some(op) = self.ops.remove(&id) {
                    op.stop(&self.ctl);
                    if self.protocol == Protocol::Legacy {
                        self.send_now(json!({"type": "complete", "id": id}));
                    }
                }
                None
            }
            (Protocol::Legacy, "connection_terminate") => {
                Some(End::Close(close_code::NORMAL, "terminated".into()))
            }
            (_, other) => Some(End::Close(
                close_code::BAD_REQUEST,
                format!("Invalid message received: unknown type {other:?}"),
            )),
        }
    }

    /// `connection_init`: authenticates the caller and acknowledges.
    async fn connection_init(&mut self, payload: Value) -> Option<End> {
        if self.init.is_some() {
            return Some(End::Close(
                close_code::TOO_MANY_INIT,
                "Too many initialisation requests".into(),
            ));
        }
        if !matches!(payload, Value::Object(_) | Value::Null) {
            return invalid("Invalid message received: connection_init payload must be an object");
        }
        let token = init_token(&payload).or_else(|| self.upgrade_token.clone());
        match self.app.auth.authenticate(token.as_deref()).await {
            Ok(principal) => self.principal = Some(principal),
            Err(e) => return Some(End::Close(close_code::FORBIDDEN, format!("Forbidden: {e}"))),
        }
        self.init = Some(ConnectionInitPayload(payload));
        self.send_now(json!({"type": "connection_ack"}));
        if self.protocol == Protocol::Legacy {
            self.send_now(json!({"type": "ka"}));
        }
        None
    }

    /// `subscribe` (`start`): checks the id, the rate limit and the
    /// safelist, then starts the operation.
    async fn subscribe(
        &mut self,
        id: Option<String>,
        payload: Value,
        done: &mpsc::UnboundedSender<Done>,
        next_op: &mut u64,
    ) -> Option<End> {
        if self.init.is_none() {
            return Some(End::Close(close_code::UNAUTHORIZED, "Unauthorized".into()));
        }
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return invalid("Invalid message received: subscribe without an id");
        };
        let mut request = match serde_json::from_value::<async_graphql::Request>(payload) {
            Ok(request) => request,
            Err(e) => {
                return Some(End::Close(
                    close_code::BAD_REQUEST,
                    format!("Invalid message received: payload: {e}"),
                ));
            }
        };
        if let Some(running) = self.ops.get(&id) {
            // One that is only telling its client it ended has
            // told it already (or the client moved on): the id is
            // free again.
            if self.protocol == Protocol::Transport && !running.finishing {
                return Some(End::Close(
                    close_code::SUBSCRIBER_EXISTS,
                    format!("Subscriber for {id} already exists"),
                ));
            }
            // subscriptions-transport-ws replaced the old operation.
            running.stop(&self.ctl);
            self.ops.remove(&id);
        }
        // Each operation draws from the client's bucket, as an
        // HTTP request does: one socket is no way around the limit.
        if let Some(client) = self.client {
            let key = super::rate_limit::ClientKey::new(self.principal.as_ref(), client);
            if let Err(wait) = self.app.rate_limit.check(&key) {
                super::rate_limit::count_refusal("subscribe");
                self.refuse_operation(&id, super::rate_limit::error(wait));
                return None;
            }
        }
        // The safelist holds here as over HTTP.
        if let Err(e) = self.app.persisted.resolve(&mut request).await {
            let error = json!({"message": e.to_string(), "extensions": {"code": e.code()}});
            self.refuse_operation(&id, error);
            return None;
        }
        self.start(id, request, done, next_op);
        None
    }

    /// A subscription slot for operation `id`, within the connection's and
    /// the server's limits; refuses the operation when there is none.
    fn take_slot(&self, id: &str) -> Option<Slot> {
        let limit = self.limits.config.per_connection;
        let slot = if self.ops.len() >= limit {
            None
        } else {
            self.limits.try_take()
        };
        if slot.is_none() {
            let why = if self.ops.len() >= limit {
                format!("at most {limit} operations per connection")
            } else {
                "the server runs as many subscriptions as it may; try again later".to_string()
            };
            let error = json!({"message": why, "extensions": {"code": "TOO_MANY_SUBSCRIPTIONS"}});
            self.refuse_operation(id, error);
        }
        slot
    }

    fn start(
        &mut self,
        id: String,
        request: async_graphql::Request,
        done: &mpsc::UnboundedSender<Done>,
        next_op: &mut u64,
    ) {
        let Some(slot) = self.take_slot(&id) else {
            return;
        };
        *next_op += 1;
        let serial = *next_op;
        // A connection runs many operations over time: loaders batch
        // within one but memoize nothing across them.
        let loaders = self.app.gateway.loaders();
        loaders.disable_request_cache();
        let principal = self
            .principal
            .clone()
            .unwrap_or_else(crate::auth::Principal::anonymous_viewer);
        let role = principal.role;
        let request = request
            .data(loaders)
            .data(principal)
            .data(self.init.clone().unwrap_or_default());
        // Counted here, per client subscription, whether or not its
        // execution is shared.
        let live =
            fanout::is_subscription(&request).then(|| self.app.gateway.events.live_subscription());
        // Shared only among callers of the same role: an execution never
        // serves a principal with other permissions.
        let outline = self.app.outlines.of(&request);
        let id_json = serde_json::Value::String(id.clone()).to_string();
        let runs = match fanout::share_key(&request, role) {
            Some(key) => {
                let (shared, frames) =
                    self.app
                        .fanout
                        .join(key, &self.app.schema, request, outline);
                let stopped = Arc::new(AtomicBool::new(false));
                let kind = next_kind(self.protocol);
                let head = format!(r#"{{"type":"{kind}","id":{id_json},"payload":"#);
                let op = SharedOp {
                    serial,
                    head: head.into_bytes().into(),
                    id_json,
                    frames,
                    stopped: stopped.clone(),
                    _shared: shared,
                    _slot: slot,
                    _live: live,
                };
                if self.ctl.send(Ctl::Attach(Box::new(op))).is_err() {
                    // The writer is gone: so is the connection.
                    return;
                }
                Runs::Shared(stopped)
            }
            None => {
                let sender = Sender {
                    out: self.out.clone(),
                    slow: self.slow.clone(),
                    slow_after: self.limits.config.slow_consumer_timeout,
                    protocol: self.protocol,
                    id_json,
                };
                let done = done.clone();
                // Boxed: an execution of its own is a large future.
                let own = Box::new((self.app.schema.clone(), request, outline));
                let task = tokio::spawn(async move {
                    let (_slot, _live) = (slot, live);
                    sender.deliver(own, done, serial).await;
                });
                Runs::Task(task.abort_handle())
            }
        };
        self.ops.insert(
            id,
            Operation {
                serial,
                runs,
                finishing: false,
            },
        );
    }
}

/// How an operation ended, and what its client is still to be told.
enum Ended {
    /// Its stream ended: the client gets `last` (if any), then `complete`.
    Completed { last: Option<String> },
    /// Refused before running: an `error` message, no `complete`.
    Refused(String),
    /// The client stopped reading.
    Quietly,
}

/// A message of operation `id_json` (a JSON string) with a JSON payload.
fn message(id_json: &str, kind: &str, payload: &str) -> String {
    format!(r#"{{"type":"{kind}","id":{id_json},"payload":{payload}}}"#)
}

fn complete(id_json: &str) -> String {
    format!(r#"{{"type":"complete","id":{id_json}}}"#)
}

/// The type of a message carrying a response.
fn next_kind(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Transport => "next",
        Protocol::Legacy => "data",
    }
}

/// A refusal: graphql-transport-ws has an `error` message for it (and no
/// `complete` after); the legacy protocol sends the errors as data.
fn refusal(protocol: Protocol, id_json: &str, errors: &str) -> Ended {
    match protocol {
        Protocol::Transport => Ended::Refused(message(id_json, "error", errors)),
        Protocol::Legacy => {
            let payload = format!(r#"{{"data":null,"errors":{errors}}}"#);
            Ended::Completed {
                last: Some(message(id_json, "data", &payload)),
            }
        }
    }
}

/// A shared subscriber that fell further behind than its execution keeps
/// responses for: told so, then completed.
fn lagged(protocol: Protocol, id_json: &str, missed: u64) -> Ended {
    let errors = json!([{
        "message": format!("this subscription fell behind by at least {missed} events and was ended; subscribe again"),
        "extensions": {"code": "SLOW_CONSUMER"},
    }]);
    let payload = json!({"data": null, "errors": errors}).to_string();
    Ended::Completed {
        last: Some(message(id_json, next_kind(protocol), &payload)),
    }
}

/// The way to its client of an operation with an execution of its own.
struct Sender {
    out: mpsc::Sender<Out>,
    slow: CancellationToken,
    slow_after: Duration,
    protocol: Protocol,
    /// The operation id as a JSON string.
    id_json: String,
}

/// An execution of its own: the schema, the request and the outline of
/// its document (for the order of its responses' keys).
type Own = (
    crate::graphql::DfSchema,
    async_graphql::Request,
    Option<Arc<super::document::Outline>>,
);

impl Sender {
    /// Runs one operation to its end and tells the connection when it is
    /// finishing and when it is gone.
    async fn deliver(self, own: Box<Own>, done: mpsc::UnboundedSender<Done>, serial: u64) {
        let (schema, request, outline) = *own;
        let ended = Box::pin(self.own(&schema, request, outline)).await;
        // Finishing before the last message is queued, so a client
        // that reuses the id as soon as it reads it is not told it
        // exists; still abortable until the very end.
        let _ = done.send(Done {
            serial,
            ended: false,
        });
        match ended {
            Ended::Completed { last } => {
                let delivered = match last {
                    Some(last) => self.queue(last, None).await,
                    None => true,
                };
                if delivered {
                    self.queue(complete(&self.id_json), None).await;
                }
            }
            Ended::Refused(error) => {
                self.queue(error, None).await;
            }
            Ended::Quietly => {}
        }
        let _ = done.send(Done {
            serial,
            ended: true,
        });
    }

    /// Queues a message; false (and the connection marked slow) when the
    /// client has not made room within the slow-consumer timeout.
    async fn queue(&self, text: String, stamp: Option<i64>) -> bool {
        // The common case, without arming a timer.
        let out = match self.out.try_send(Out::Text(text, stamp)) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(out)) => out,
        };
        if self.out.send_timeout(out, self.slow_after).await.is_err() {
            tracing::info!(id = %self.id_json, "websocket client stopped reading; disconnecting it");
            self.slow.cancel();
            return false;
        }
        true
    }

    async fn own(
        &self,
        schema: &crate::graphql::DfSchema,
        request: async_graphql::Request,
        outline: Option<Arc<super::document::Outline>>,
    ) -> Ended {
        let stamp = DeliveryStamp::default();
        let mut responses = schema.execute_stream(request.data(stamp.clone()));
        let mut first = true;
        while let Some(mut response) = responses.next().await {
            // Errors before execution (validation, bad variables).
            if first && response.data == async_graphql::Value::Null && response.is_err() {
                return refusal(self.protocol, &self.id_json, &to_json(&response.errors));
            }
            first = false;
            if let Some(outline) = &outline {
                outline.shape.apply(&mut response.data);
            }
            let text = message(&self.id_json, next_kind(self.protocol), &to_json(&response));
            if !self.queue(text, stamp.take()).await {
                return Ended::Quietly;
            }
        }
        Ended::Completed { last: None }
    }
}

/// Sleeps until `at`; forever when there is none.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The token of a `connection_init` payload: `Authorization` (or
/// `authorization`), with or without `Bearer`.
fn init_token(payload: &Value) -> Option<String> {
    let value = payload
        .get("Authorization")
        .or_else(|| payload.get("authorization"))?
        .as_str()?;
    Some(
        super::access::strip_bearer(value)
            .unwrap_or(value)
            .trim()
            .to_owned(),
    )
}

/// A value as JSON text (a response or an errors array), straight from
/// its serializer: this runs once per message.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        json!({"errors": [{"message": format!("response not serializable: {e}")}]}).to_string()
    })
}

/// A close reason within the 123 bytes a close frame may carry (reasons
/// can quote client input), cut at a character boundary.
fn close_reason(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::{close_reason, text_frame};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn text_frames_read_back_whole_at_every_length_encoding() {
        let mut buf = Vec::new();
        // 7-bit, 16-bit and 64-bit lengths, in a row as a burst writes them.
        let sizes = [0, 125, 126, 65_535, 65_536, 70_000];
        for (n, size) in sizes.iter().enumerate() {
            let body = "x".repeat(*size);
            let id = format!("\"{n}\"");
            text_frame(&mut buf, &[id.as_bytes(), body.as_bytes(), b"}"]);
        }
        let mut cursor = std::io::Cursor::new(&buf);
        for (n, size) in sizes.iter().enumerate() {
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            let start = cursor.position() as usize;
            let payload = &buf[start..start + len as usize];
            assert_eq!(
                payload,
                format!("\"{n}\"{}}}", "x".repeat(*size)).as_bytes()
            );
            cursor.set_position((start + len as usize) as u64);
        }
        assert_eq!(cursor.position() as usize, buf.len());
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert_eq!(close_reason("short".into()), "short");
        let long = format!("Subscriber for {} already exists", "é".repeat(100));
        let cut = close_reason(long);
        assert!(cut.len() <= 123 && cut.starts_with("Subscriber for é"));
    }
}
