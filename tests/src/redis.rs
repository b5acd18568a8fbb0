//! A real `redis-server` (Debian's package, installed by
//! `scripts/install-deps.sh test`) on a free loopback port, in a temporary
//! directory, killed on drop. Can be killed and restarted on the same port
//! to test outages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_listener, LOOPBACK};

/// TLS files for a TLS-only server.
pub struct RedisTlsFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
    password: Option<String>,
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Plain TCP, no password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None, None)
    }

    /// With `requirepass` and/or TLS only (`--port 0 --tls-port N`).
    pub fn start_with(password: Option<&str>, tls: Option<RedisTlsFiles>) -> RedisServer {
        let dir = tempfile::tempdir().expect("redis tempdir");
        if let Some(files) = &tls {
            std::fs::write(dir.path().join("server.crt"), &files.cert_pem).expect("write cert");
            std::fs::write(dir.path().join("server.key"), &files.key_pem).expect("write key");
            std::fs::write(dir.path().join("ca.crt"), &files.ca_pem).expect("write ca");
        }
        // Take a free port, release it, and let redis bind it (a race with
        // other processes is possible but unlikely; start() retries).
        let port = free_listener().local_addr().expect("addr").port();
        let mut server = RedisServer {
            dir,
            port,
            password: password.map(str::to_string),
            tls: tls.is_some(),
            child: None,
        };
        server.spawn();
        server
    }

    fn binary() -> PathBuf {
        for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
            let p = PathBuf::from(candidate);
            if p.exists() {
                return p;
            }
        }
        panic!("redis-server is not installed: run `bash scripts/install-deps.sh test` (make test does)");
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(RedisServer::binary());
        cmd.current_dir(self.dir.path())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        self.wait_listening();
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr()).is_ok() {
                if self.tls {
                    return;
                }
                if self.ping() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// PING over plain TCP (not for TLS servers).
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut cmd = String::new();
        if let Some(p) = &self.password {
            cmd.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
        }
        cmd.push_str("*1\r\n$4\r\nPING\r\n");
        if s.write_all(cmd.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("PONG") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOOPBACK, self.port)
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server vanishes with its data, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty, like a restarted cache).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
