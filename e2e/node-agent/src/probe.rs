//! Readiness/liveness/startup probes, run from the host against the pod IP.
//! httpGet (HTTP; HTTPS is checked as a TCP connect), tcpSocket, exec (inside
//! the pod's network namespace) and grpc (checked as a TCP connect).

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(i) => u16::try_from(*i).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs a probe once; true on success.
pub async fn check(p: &Probe, c: &Container, pod_ip: Ipv4Addr, netns: &str) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(h) = &p.http_get {
            let Some(port) = port(c, &h.port) else {
                return false;
            };
            let host = h
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(pod_ip);
            let addr = SocketAddr::from((host, port));
            if h.scheme.as_deref() == Some("HTTPS") {
                return TcpStream::connect(addr).await.is_ok();
            }
            http_get(
                addr,
                h.path.as_deref().unwrap_or("/"),
                h.http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.as_str(), h.value.as_str())),
            )
            .await
        } else if let Some(t) = &p.tcp_socket {
            let Some(port) = port(c, &t.port) else {
                return false;
            };
            TcpStream::connect((pod_ip, port)).await.is_ok()
        } else if let Some(g) = &p.grpc {
            TcpStream::connect((pod_ip, g.port as u16)).await.is_ok()
        } else if let Some(e) = &p.exec {
            let cmd = e.command.clone().unwrap_or_default();
            if cmd.is_empty() {
                return true;
            }
            // Host-network pods have no namespace of their own.
            let mut c = if netns.is_empty() {
                let mut c = tokio::process::Command::new(&cmd[0]);
                c.args(&cmd[1..]);
                c
            } else {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", netns]).args(&cmd);
                c
            };
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false)
        } else {
            true
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}

async fn http_get<'a>(
    addr: SocketAddr,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let mut have_host = false;
    let mut extra = String::new();
    for (k, v) in headers {
        have_host |= k.eq_ignore_ascii_case("host");
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    if !have_host {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    req.push_str("User-Agent: kube-probe/1.35\r\nAccept: */*\r\nConnection: close\r\n");
    req.push_str(&extra);
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (200..400).contains(&code)
}

/// Without a readiness probe a container is Ready once one of `ports`
/// (its declared TCP ports, else the image's default ports) accepts
/// connections, or at once when there are none: ready means "can serve",
/// which avoids a start-up race. Any, not all: manifests may declare ports
/// that only open with options.
pub async fn any_port_open(ports: &[u16], pod_ip: Ipv4Addr) -> bool {
    for &port in ports {
        let ok =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((pod_ip, port))).await;
        if matches!(ok, Ok(Ok(_))) {
            return true;
        }
    }
    ports.is_empty()
}

pub fn readiness_ports(c: &Container, image_default: &[u16]) -> Vec<u16> {
    let declared: Vec<u16> = c
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    if declared.is_empty() {
        image_default.to_vec()
    } else {
        declared
    }
}
