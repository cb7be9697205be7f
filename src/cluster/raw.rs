//! A unary gRPC call whose answer is read as it arrives: the request goes
//! out encoded as usual, and the one response message is handed over in
//! the pieces its HTTP/2 DATA frames bring, never held whole. The watcher
//! reads `ListHosts` this way: a 50k-host answer is ~20 MB, and receiving
//! it into a buffer of its own each poll cost a copy, page faults and the
//! buffer's memory (see BENCHMARKS.md S9).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http_body_util::BodyExt;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

/// gRPC's length prefix: a compression flag and a big-endian `u32`.
const PREFIX_LEN: usize = 5;

/// Calls `path` with `request` on `service` (a channel to a gRPC server)
/// and gives each piece of the response message to `piece`, in order;
/// returns the message's length. Errors as tonic reports them: the
/// server's status, a transport failure, or `INTERNAL` for an answer that
/// breaks the protocol (no message, two messages, a compressed one: none
/// is accepted) or that `piece` refuses. Messages over `max_len` bytes
/// are refused (`OUT_OF_RANGE`) before a byte of them is read.
pub async fn unary_in_pieces<S, B>(
    service: &mut S,
    method: tonic::GrpcMethod<'static>,
    path: &'static str,
    request: &impl prost::Message,
    max_len: usize,
    mut piece: impl FnMut(&[u8]) -> Result<(), Status>,
) -> Result<usize, Status>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: Into<tonic::codegen::StdError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    let len = request.encoded_len();
    let mut body = BytesMut::with_capacity(PREFIX_LEN + len);
    body.put_u8(0);
    body.put_u32(u32::try_from(len).map_err(|_| Status::out_of_range("request too large"))?);
    request
        .encode(&mut body)
        .map_err(|e| Status::internal(format!("encoding the request: {e}")))?;
    let mut http_request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .version(http::Version::HTTP_2)
        .header(TE, "trailers")
        .header(CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.freeze(),
        )))
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    http_request.extensions_mut().insert(method);

    let ready = service
        .ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = ready
        .call(http_request)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let (parts, body) = response.into_parts();
    let mut body = std::pin::pin!(body);
    // A status in the headers ("trailers-only") ends the call at once.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return Err(if status.code() == Code::Ok {
            Status::internal("the answer has no message")
        } else {
            status
        });
    }
    if parts.status != http::StatusCode::OK {
        return Err(status_of_http(parts.status));
    }
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::internal(format!(
            "the answer is compressed ({encoding:?}), which was not asked for"
        )));
    }

    let mut message = Message::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        match frame.into_data() {
            Ok(data) => message.read(&data, max_len, &mut piece)?,
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers = Some(map);
                }
            }
        }
    }
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => message.len(),
        Some(status) => Err(status),
        None => Err(Status::internal("the answer ended without a grpc-status")),
    }
}

/// Where the reading of the one response message is.
#[derive(Default)]
struct Message {
    prefix: [u8; PREFIX_LEN],
    /// Bytes of the prefix read.
    prefix_read: usize,
    /// The message's length once its prefix is read.
    len: Option<usize>,
    /// Bytes of the message read.
    read: usize,
}

impl Message {
    fn read(
        &mut self,
        mut data: &[u8],
        max_len: usize,
        piece: &mut impl FnMut(&[u8]) -> Result<(), Status>,
    ) -> Result<(), Status> {
        while !data.is_empty() {
            match self.len {
                None => {
                    let take = (PREFIX_LEN - self.prefix_read).min(data.len());
                    self.prefix[self.prefix_read..self.prefix_read + take]
                        .copy_from_slice(&data[..take]);
                    self.prefix_read += take;
                    data = &data[take..];
                    if self.prefix_read == PREFIX_LEN {
                        self.len = Some(self.start(max_len)?);
                    }
                }
                Some(len) if self.read == len => {
                    return Err(Status::internal("the answer has more than one message"));
                }
                Some(len) => {
                    let take = (len - self.read).min(data.len());
                    piece(&data[..take])?;
                    self.read += take;
                    data = &data[take..];
                }
            }
        }
        Ok(())
    }

    /// The length the prefix announces, if it can be taken.
    fn start(&self, max_len: usize) -> Result<usize, Status> {
        if self.prefix[0] != 0 {
            return Err(Status::internal(
                "the answer is compressed, which was not asked for",
            ));
        }
        let [_, a, b, c, d] = self.prefix;
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > max_len {
            return Err(Status::out_of_range(format!(
                "the answer is {len} bytes, over the limit of {max_len}"
            )));
        }
        Ok(len)
    }

    /// The whole message's length, once it has all arrived.
    fn len(&self) -> Result<usize, Status> {
        match self.len {
            Some(len) if self.read == len => Ok(len),
            Some(len) => Err(Status::internal(format!(
                "the answer ended {} bytes into a message of {len}",
                self.read
            ))),
            None => Err(Status::internal("the answer has no message")),
        }
    }
}

/// The status a reply without `grpc-status` gets for its HTTP status, as
/// gRPC's "HTTP to gRPC status code mapping" says.
fn status_of_http(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the server answered HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Message` hands over of `wire` arriving in pieces cut at
    /// `cuts`, and its length at the end.
    fn read(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize), Status> {
        let mut message = Message::default();
        let mut got = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&wire.len()]) {
            message.read(&wire[at..end], 1 << 20, &mut |piece: &[u8]| {
                got.extend_from_slice(piece);
                Ok(())
            })?;
            at = end;
        }
        Ok((got, message.len()?))
    }

    fn framed(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut wire = vec![flag];
        wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.extend_from_slice(payload);
        wire
    }

    #[test]
    fn a_message_arrives_whole_however_its_frames_cut_it() {
        let payload: Vec<u8> = (0..=255).collect();
        let wire = framed(0, &payload);
        for cuts in [
            vec![],
            vec![1],
            vec![3, 5],
            vec![5, 6, 100],
            (1..wire.len()).collect(),
        ] {
            let (got, len) = read(&wire, &cuts).unwrap();
            assert_eq!(got, payload, "cut at {cuts:?}");
            assert_eq!(len, payload.len());
        }
        assert_eq!(read(&framed(0, &[]), &[2]).unwrap(), (Vec::new(), 0));
    }

    #[test]
    fn what_breaks_the_protocol_is_an_error() {
        let one = framed(0, b"abc");
        // Nothing, a cut prefix, a cut message.
        assert_eq!(read(&[], &[]).unwrap_err().code(), Code::Internal);
        assert_eq!(read(&one[..3], &[]).unwrap_err().code(), Code::Internal);
        assert_eq!(read(&one[..7], &[]).unwrap_err().code(), Code::Internal);
        // Two messages, a compressed one, one over the limit.
        let two = [one.clone(), framed(0, b"d")].concat();
        assert_eq!(read(&two, &[4]).unwrap_err().code(), Code::Internal);
        assert_eq!(
            read(&framed(1, b"abc"), &[]).unwrap_err().code(),
            Code::Internal
        );
        let mut huge = framed(0, b"");
        huge[1..5].copy_from_slice(&(2u32 << 20).to_be_bytes());
        assert_eq!(read(&huge, &[]).unwrap_err().code(), Code::OutOfRange);
    }

    #[test]
    fn a_reply_without_grpc_status_is_mapped_from_http() {
        assert_eq!(
            status_of_http(http::StatusCode::NOT_FOUND).code(),
            Code::Unimplemented
        );
        assert_eq!(
            status_of_http(http::StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(
            status_of_http(http::StatusCode::IM_A_TEAPOT).code(),
            Code::Unknown
        );
    }
}
