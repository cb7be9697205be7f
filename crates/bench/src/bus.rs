//! The `bus` scenario: could the event log's stream also be the bus
//! between replicas? Against one Redis (`--redis`), the same events (1 KiB,
//! about a host event) at `--event-rate` for `--duration` go once through
//! pub/sub (`PUBLISH` to a `SUBSCRIBE`d connection, today's bus) and once
//! through a stream (`XADD`, read by an `XREAD BLOCK` loop), each
//! measured from send to receipt; then the stream is read back in pages of
//! 500 (`XRANGE`, what a replay does) for the replay rate, and its
//! `MEMORY USAGE` gives the log's bytes per event.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use redis::AsyncCommands;
use serde::Serialize;

use super::{BenchArgs, BenchError};

/// The bytes of one event.
const EVENT_BYTES: usize = 1024;
const CHANNEL: &str = "dfgraph-bench:bus";
const STREAM: &str = "dfgraph-bench:{bus}:events";

/// Latencies of one path, in microseconds.
#[derive(Debug, Serialize)]
pub struct PathReport {
    pub path: &'static str,
    pub sent: u64,
    pub received: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct BusReport {
    pub event_rate: u64,
    pub duration_s: f64,
    pub paths: Vec<PathReport>,
    /// Events read back from the stream per second (`XRANGE`, 500 a page).
    pub replay_events_per_s: f64,
    /// The stream's memory per event, and per million events.
    pub bytes_per_event: f64,
    pub mib_per_million: f64,
}

impl BusReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "bus: {} events/s of {EVENT_BYTES} B for {:.0}s\n",
            self.event_rate, self.duration_s
        );
        for p in &self.paths {
            out.push_str(&format!(
                "  {:<8} sent {:>7} received {:>7}  p50 {:>6} us  p99 {:>6} us  max {:>7} us\n",
                p.path, p.sent, p.received, p.p50_us, p.p99_us, p.max_us
            ));
        }
        out.push_str(&format!(
            "  replay {:.0} events/s; log {:.0} B/event = {:.0} MiB per million events\n",
            self.replay_events_per_s, self.bytes_per_event, self.mib_per_million
        ));
        out
    }
}

fn failed(what: &str) -> impl Fn(redis::RedisError) -> BenchError + '_ {
    move |e| BenchError::Scenario(format!("{what}: {e}"))
}

/// An event stamped with its send time (microseconds since `origin`).
fn event(origin: Instant) -> Vec<u8> {
    let mut bytes = vec![0x5a; EVENT_BYTES];
    let at = origin.elapsed().as_micros() as u64;
    bytes[..8].copy_from_slice(&at.to_be_bytes());
    bytes
}

/// Microseconds from the stamp in `bytes` to now.
fn latency(origin: Instant, bytes: &[u8]) -> Option<u64> {
    let stamp: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let sent = u64::from_be_bytes(stamp);
    Some((origin.elapsed().as_micros() as u64).saturating_sub(sent))
}

/// Sends `count` events at `rate` per second with `send`.
async fn pace<F, Fut>(rate: u64, count: u64, origin: Instant, mut send: F) -> Result<(), BenchError>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..count {
        tick.tick().await;
        send(event(origin)).await?;
    }
    Ok(())
}

fn report(path: &'static str, sent: u64, histogram: &Histogram<u64>) -> PathReport {
    PathReport {
        path,
        sent,
        received: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
    }
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new(3).map_err(|e| BenchError::Scenario(e.to_string()))
}

/// Today's bus: PUBLISH to a SUBSCRIBEd connection.
async fn pubsub(
    client: &redis::Client,
    args: &BenchArgs,
    count: u64,
) -> Result<PathReport, BenchError> {
    let origin = Instant::now();
    let mut subscriber = client
        .get_async_pubsub()
        .await
        .map_err(failed("subscribe"))?;
    subscriber
        .subscribe(CHANNEL)
        .await
        .map_err(failed("subscribe"))?;
    let receiver = tokio::spawn(async move {
        let mut histogram = histogram()?;
        let mut messages = subscriber.on_message();
        while (histogram.len()) < count {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(message)) = next else { break };
            if let Some(us) = latency(origin, message.get_payload_bytes()) {
                let _ = histogram.record(us);
            }
        }
        Ok::<_, BenchError>(histogram)
    });
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(failed("connect"))?;
    pace(args.event_rate, count, origin, |bytes| {
        let mut conn = conn.clone();
        async move {
            conn.publish::<_, _, ()>(CHANNEL, bytes)
                .await
                .map_err(failed("publish"))
        }
    })
    .await?;
    let _ = &mut conn;
    let histogram = receiver
        .await
        .map_err(|e| BenchError::Scenario(e.to_string()))??;
    Ok(report("pubsub", count, &histogram))
}

/// The stream as the bus: XADD, and a reader blocked in XREAD.
async fn stream(
    client: &redis::Client,
    args: &BenchArgs,
    count: u64,
) -> Result<PathReport, BenchError> {
    let origin = Instant::now();
    let mut setup = client
        .get_multiplexed_async_connection()
        .await
        .map_err(failed("connect"))?;
    let _: () = setup.del(STREAM).await.map_err(failed("DEL"))?;
    let mut reader = client
        .get_multiplexed_async_connection()
        .await
        .map_err(failed("connect"))?;
    let receiver = tokio::spawn(async move {
        let mut histogram = histogram()?;
        let mut last = "0-0".to_owned();
        while histogram.len() < count {
            let reply: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(5000)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&last)
                .query_async(&mut reader)
                .await
                .map_err(failed("XREAD"))?;
            let entries = stream_entries(reply);
            if entries.is_empty() {
                break;
            }
            for (id, bytes) in entries {
                if let Some(us) = latency(origin, &bytes) {
                    let _ = histogram.record(us);
                }
                last = id;
            }
        }
        Ok::<_, BenchError>(histogram)
    });
    pace(args.event_rate, count, origin, |bytes| {
        let mut conn = setup.clone();
        async move {
            redis::cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("e")
                .arg(bytes)
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(failed("XADD"))
        }
    })
    .await?;
    let histogram = receiver
        .await
        .map_err(|e| BenchError::Scenario(e.to_string()))??;
    Ok(report("stream", count, &histogram))
}

/// `(id, bytes of field e)` of each entry of an XREAD/XRANGE reply.
pub(crate) fn stream_entries(reply: redis::Value) -> Vec<(String, Vec<u8>)> {
    use redis::Value;
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn entries(items: Vec<Value>, out: &mut Vec<(String, Vec<u8>)>) {
        for item in items {
            let Value::Array(parts) = item else { continue };
            let (Some(id), Some(Value::Array(fields))) =
                (parts.first().and_then(text), parts.get(1))
            else {
                continue;
            };
            if let Some(Value::BulkString(bytes)) = fields.get(1) {
                out.push((id, bytes.clone()));
            }
        }
    }
    let mut out = Vec::new();
    match reply {
        // XREAD: [[stream, entries]]; XRANGE: entries.
        Value::Array(items) => {
            let is_xread = matches!(items.first(), Some(Value::Array(p)) if matches!(p.get(1), Some(Value::Array(e)) if matches!(e.first(), Some(Value::Array(_)))));
            if is_xread {
                for stream in items {
                    if let Value::Array(mut parts) = stream
                        && let Some(Value::Array(found)) = parts.pop()
                    {
                        entries(found, &mut out);
                    }
                }
            } else {
                entries(items, &mut out);
            }
        }
        Value::Map(streams) => {
            for (_, found) in streams {
                if let Value::Array(found) = found {
                    entries(found, &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

/// Reads the whole stream back in pages of 500: events per second.
async fn replay(conn: &mut redis::aio::MultiplexedConnection) -> Result<(u64, f64), BenchError> {
    let started = Instant::now();
    let mut from = "-".to_owned();
    let mut read = 0u64;
    loop {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await
            .map_err(failed("XRANGE"))?;
        let entries = stream_entries(reply);
        let Some((last, _)) = entries.last() else {
            break;
        };
        read += entries.len() as u64;
        from = format!("({last}");
        if entries.len() < 500 {
            break;
        }
    }
    Ok((read, read as f64 / started.elapsed().as_secs_f64()))
}

pub async fn run(args: &BenchArgs) -> Result<BusReport, BenchError> {
    let url = args
        .redis
        .as_deref()
        .ok_or_else(|| BenchError::Scenario("the bus scenario needs --redis URL".into()))?;
    let client = redis::Client::open(url).map_err(failed("redis URL"))?;
    let count = (args.event_rate as f64 * args.duration.as_secs_f64()).ceil() as u64;
    let pubsub = pubsub(&client, args, count).await?;
    let stream = stream(&client, args, count).await?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(failed("connect"))?;
    let (read, replay_events_per_s) = replay(&mut conn).await?;
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(STREAM)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .map_err(failed("MEMORY USAGE"))?;
    let _: () = conn.del(STREAM).await.map_err(failed("DEL"))?;
    let bytes_per_event = bytes as f64 / read.max(1) as f64;
    Ok(BusReport {
        event_rate: args.event_rate,
        duration_s: args.duration.as_secs_f64(),
        paths: vec![pubsub, stream],
        replay_events_per_s,
        bytes_per_event,
        mib_per_million: bytes_per_event * 1e6 / (1024.0 * 1024.0),
    })
}
