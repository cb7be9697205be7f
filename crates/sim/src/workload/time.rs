//! Protobuf timestamps and durations from the wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::{Duration as PbDuration, Timestamp};

pub(super) fn now_ts() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub(super) fn ts_minus(ts: &Timestamp, secs: i64) -> Timestamp {
    Timestamp {
        seconds: ts.seconds - secs,
        nanos: ts.nanos,
    }
}

pub(super) fn elapsed(from: Option<&Timestamp>, to: &Timestamp) -> PbDuration {
    let Some(from) = from else {
        return PbDuration::default();
    };
    let mut seconds = to.seconds - from.seconds;
    let mut nanos = to.nanos - from.nanos;
    if nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    if seconds < 0 {
        return PbDuration::default();
    }
    PbDuration { seconds, nanos }
}
