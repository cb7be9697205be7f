//! The live subscribers' websocket client: a plain TCP stream, RFC 6455
//! frames read in place from one buffer. At 10k subscribers and 100 events
//! a second the subscriber process reads a million messages a second on
//! the cores the gateway under test uses; a general client (tungstenite)
//! spends most of its time per message on bookkeeping (wakers, a buffer
//! split and a reference count per message). This one finds each frame in
//! what one read brought and hands out its text as a borrowed `&str`.
//!
//! Only what a subscriber needs: a client handshake, masked text frames
//! out, unfragmented frames in (the gateway writes each message as one
//! frame), pings answered.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frame opcode this client tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn of(byte: u8) -> Option<Opcode> {
        match byte & 0x0f {
            1 => Some(Opcode::Text),
            2 => Some(Opcode::Binary),
            8 => Some(Opcode::Close),
            9 => Some(Opcode::Ping),
            10 => Some(Opcode::Pong),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }
}

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad url {0:?}: {1}")]
    Url(String, &'static str),
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// Where a frame's header ends and how long its payload is, if `buf`
/// starts with a complete server frame.
fn parse_header(buf: &[u8]) -> Result<Option<(bool, u8, usize, usize)>, WsError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if second & 0x80 != 0 {
        return Err(WsError::Protocol("masked frame from the server"));
    }
    let (header, len) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as usize),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (10, u64::from_be_bytes(b) as usize),
            None => return Ok(None),
        },
        n => (2, n as usize),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some((first & 0x80 != 0, first, header, len)))
}

/// A client frame (masked, as RFC 6455 requires of clients).
pub fn client_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode.code());
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// One websocket, client side.
pub struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The unread part of `buf`.
    start: usize,
    end: usize,
}

impl WsClient {
    /// Connects to `url` (`ws://host:port/path`) and upgrades with
    /// sub-protocol `protocol`.
    pub async fn connect(url: &str, protocol: &str) -> Result<WsClient, WsError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| WsError::Url(url.into(), "only ws:// is served"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let key: [u8; 16] = rand::random();
        let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // Any 16 bytes base64-encoded: 24 characters ending in "==".
        let key = &format!("{}==", &key[..22]);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        let mut client = WsClient {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        };
        client.stream.write_all(request.as_bytes()).await?;
        loop {
            if let Some(at) = memchr::memmem::find(&client.buf[..client.end], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&client.buf[..at]).into_owned();
                if !head.starts_with("HTTP/1.1 101") {
                    return Err(WsError::Refused(head.lines().next().unwrap_or("").into()));
                }
                client.start = at + 4;
                return Ok(client);
            }
            if client.end == client.buf.len() {
                return Err(WsError::Protocol("upgrade response too long"));
            }
            let n = client.stream.read(&mut client.buf[client.end..]).await?;
            if n == 0 {
                return Err(WsError::Protocol("closed during the upgrade"));
            }
            client.end += n;
        }
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.stream
            .write_all(&client_frame(Opcode::Text, text.as_bytes()))
            .await?;
        Ok(())
    }

    /// The next frame: its opcode and payload (borrowed until the next
    /// call); `None` when the server closed the stream. Pings are answered
    /// here and returned too.
    pub async fn next(&mut self) -> Result<Option<(Opcode, &[u8])>, WsError> {
        loop {
            if let Some((fin, first, header, len)) = parse_header(&self.buf[self.start..self.end])?
            {
                let payload = self.start + header..self.start + header + len;
                self.start = payload.end;
                if !fin {
                    return Err(WsError::Protocol("fragmented message"));
                }
                let opcode = Opcode::of(first).ok_or(WsError::Protocol("unknown opcode"))?;
                if opcode == Opcode::Ping {
                    let pong = client_frame(Opcode::Pong, &self.buf[payload.clone()]);
                    self.stream.write_all(&pong).await?;
                }
                return Ok(Some((opcode, &self.buf[payload])));
            }
            // Keep the partial frame, at the front of the buffer; grow it
            // for a frame larger than the buffer.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let mask = &frame[at..at + 4];
        let payload = frame[at + 4..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect::<Vec<_>>();
        assert_eq!(payload.len(), len);
        (frame[0], payload)
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length_form() {
        for size in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let frame = client_frame(Opcode::Text, &payload);
            let (first, unmasked) = unmask(&frame);
            assert_eq!(first, 0x81);
            assert_eq!(unmasked, payload, "size {size}");
        }
    }

    #[test]
    fn server_frames_are_found_only_once_complete() {
        let short = [0x81, 3, b'a', b'b', b'c', 0x89];
        assert_eq!(
            parse_header(&short).unwrap(),
            Some((true, 0x81, 2, 3)),
            "a short text frame"
        );
        assert_eq!(parse_header(&short[..4]).unwrap(), None);
        let mut long = vec![0x81, 126, 0x01, 0x2c];
        long.extend(std::iter::repeat_n(b'x', 300));
        assert_eq!(parse_header(&long).unwrap(), Some((true, 0x81, 4, 300)));
        assert_eq!(parse_header(&long[..303]).unwrap(), None);
        let not_final = [0x01, 1, b'a'];
        assert_eq!(parse_header(&not_final).unwrap(), Some((false, 0x01, 2, 1)));
        assert!(parse_header(&[0x81, 0x81, 0, 0, 0, 0, b'a']).is_err());
    }
}
