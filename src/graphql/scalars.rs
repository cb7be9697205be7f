//! Scalars GraphQL lacks: 64-bit unsigned counts (bytes, bandwidth), which
//! overflow GraphQL's 32-bit `Int`, and the event log's cursors.

use async_graphql::{InputValueError, InputValueResult, Number, Scalar, ScalarType, Value};

/// An unsigned 64-bit integer, as a JSON number. Values above 2^53 lose
/// precision in JavaScript; byte counts of real hosts stay far below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UInt64(pub u64);

#[Scalar(name = "UInt64")]
impl ScalarType for UInt64 {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_u64()
                .map(UInt64)
                .ok_or_else(|| InputValueError::custom("expected a non-negative integer")),
            Value::String(s) => s
                .parse()
                .map(UInt64)
                .map_err(|_| InputValueError::custom("expected a non-negative integer")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(Number::from(self.0))
    }
}

/// Where an event is in the event log: an opaque string, passed back as
/// `after` to page on or to resume a subscription from the event after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventCursor(pub crate::events::log::EventCursor);

#[Scalar(name = "EventCursor")]
impl ScalarType for EventCursor {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => crate::events::log::EventCursor::decode(s)
                .map(EventCursor)
                .map_err(|e| InputValueError::custom(e.to_string())),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.encode())
    }
}

impl From<u64> for UInt64 {
    fn from(v: u64) -> Self {
        UInt64(v)
    }
}

/// An unsigned 32-bit count as a scheduler sends it (`uint32` on the
/// wire), as a JSON number from 0 to 4294967295. GraphQL's `Int` stops at
/// 2147483647, so a count above it would break `Int`'s contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UInt32(pub u32);

#[Scalar(name = "UInt32")]
impl ScalarType for UInt32 {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(UInt32)
                .ok_or_else(|| InputValueError::custom("expected an integer from 0 to 4294967295")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(Number::from(self.0))
    }
}

impl From<u32> for UInt32 {
    fn from(v: u32) -> Self {
        UInt32(v)
    }
}
