//! A WebSocket client over a raw TCP stream, enough to prove tunnels:
//! the opening handshake (checking `Sec-WebSocket-Accept`) and masked text
//! frames echoed back (the echo server's `/` speaks WebSocket).

use std::time::Duration;

use portcullis::websocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Connects to `port` on loopback and upgrades `path` for host `host`;
/// panics unless the answer is a 101 with the right accept key.
pub async fn connect(port: u16, host: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the gateway");
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte))
            .await
            .expect("response head in time")
            .expect("response head");
        head.push(byte[0]);
        assert!(head.len() < 8192, "response head too long");
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let accept = websocket::accept_key(KEY.as_bytes()).to_ascii_lowercase();
    assert!(
        head.contains(&format!("sec-websocket-accept: {accept}")),
        "{head}"
    );
    stream
}

/// Sends `message` as a masked text frame and returns the payload of the
/// frame that comes back.
pub async fn round_trip(stream: &mut TcpStream, message: &str) -> String {
    stream
        .write_all(&websocket::encode_frame(
            websocket::OPCODE_TEXT,
            message.as_bytes(),
            Some([7, 1, 9, 3]),
        ))
        .await
        .expect("send a frame");
    let frame = tokio::time::timeout(Duration::from_secs(5), websocket::read_frame(stream))
        .await
        .expect("a frame back in time")
        .expect("read a frame")
        .expect("a frame, not the end of the stream");
    assert_eq!(frame.opcode, websocket::OPCODE_TEXT);
    String::from_utf8_lossy(&frame.payload).into_owned()
}
