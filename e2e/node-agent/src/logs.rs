//! Container logs: each line a container writes is stored with its time and
//! stream, "<RFC 3339 time> <stdout|stderr> <line>", so that the kubelet API
//! can honour sinceTime / sinceSeconds / timestamps like kubelet does.

use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};

/// Copies one output stream of a container into its log file, line by line.
pub async fn capture<R: AsyncRead + Unpin>(
    r: R,
    stream: &'static str,
    sink: Arc<tokio::sync::Mutex<tokio::fs::File>>,
) {
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // Bounded lines: a container that never writes a newline still gets logged.
        match (&mut r).take(64 * 1024).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut rec = format!("{} {stream} ", jiff::Timestamp::now()).into_bytes();
        rec.extend_from_slice(&line);
        let mut f = sink.lock().await;
        if f.write_all(&rec).await.is_err() {
            return;
        }
    }
}

/// Options of a log read (the query of /containerLogs).
#[derive(Default, Clone)]
pub struct Query {
    pub since: Option<jiff::Timestamp>,
    pub timestamps: bool,
}

/// Renders stored records as the kubelet API does: the line, or
/// "<time> <line>" with timestamps; records older than `since` are skipped.
pub fn render(stored: &[u8], q: &Query) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len());
    for rec in stored.split_inclusive(|&b| b == b'\n') {
        let Some((ts, rest)) = split_space(rec) else {
            continue;
        };
        let Some((_stream, line)) = split_space(rest) else {
            continue;
        };
        if let Some(since) = q.since {
            match std::str::from_utf8(ts)
                .ok()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                Some(t) if t < since => continue,
                _ => {}
            }
        }
        if q.timestamps {
            out.extend_from_slice(ts);
            out.push(b' ');
        }
        out.extend_from_slice(line);
    }
    out
}

fn split_space(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b' ')?;
    Some((&b[..i], &b[i + 1..]))
}

/// The last `n` lines of `b`.
pub fn tail(b: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &b[b.len()..];
    }
    let end = if b.ends_with(b"\n") {
        b.len() - 1
    } else {
        b.len()
    };
    let mut seen = 0;
    for i in (0..end).rev() {
        if b[i] == b'\n' {
            seen += 1;
            if seen == n {
                return &b[i + 1..];
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_filters_and_stamps() {
        let stored = b"2026-01-01T00:00:01Z stdout a\n2026-01-01T00:00:03Z stderr b c\n";
        assert_eq!(render(stored, &Query::default()), b"a\nb c\n");
        let q = Query {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            timestamps: true,
        };
        assert_eq!(render(stored, &q), b"2026-01-01T00:00:03Z b c\n");
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(tail(b"a\n", 0), b"");
    }
}
