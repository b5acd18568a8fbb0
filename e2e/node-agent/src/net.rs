//! Pod networking: one network namespace per pod, a veth pair to the host
//! bridge, an address from the pod CIDR. Done with `ip`, whose errors are clear.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use tokio::process::Command;

use crate::config::{Cidr, Config};

pub async fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn netns_name(uid: &str) -> String {
    format!("pc-{}", short(uid, 12))
}
fn veth_name(uid: &str) -> String {
    format!("pcv{}", short(uid, 11))
}
fn short(uid: &str, n: usize) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(n)
        .collect()
}
pub fn netns_path(uid: &str) -> String {
    format!("/var/run/netns/{}", netns_name(uid))
}

pub async fn setup_pod(cfg: &Config, uid: &str, addr: Ipv4Addr) -> Result<()> {
    let ns = netns_name(uid);
    let vh = veth_name(uid);
    // A leftover from an earlier attempt would make `add` fail: start clean.
    let _ = ip(&["netns", "del", &ns]).await;
    let _ = ip(&["link", "del", &vh]).await;
    ip(&["netns", "add", &ns]).await?;
    ip(&[
        "link", "add", &vh, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])
    .await?;
    ip(&["link", "set", &vh, "master", &cfg.bridge, "up"]).await?;
    let cidr = format!("{}/{}", addr, cfg.pod_cidr.len);
    let gw = cfg.gateway.to_string();
    ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
    ip(&["-n", &ns, "route", "add", "default", "via", &gw]).await?;
    Ok(())
}

pub async fn teardown_pod(uid: &str) {
    let _ = ip(&["netns", "del", &netns_name(uid)]).await;
    let _ = ip(&["link", "del", &veth_name(uid)]).await;
}

/// Hands out addresses of a CIDR, skipping network, broadcast and reserved ones.
pub struct Allocator {
    cidr: Cidr,
    reserved: Vec<Ipv4Addr>,
    used: Mutex<std::collections::BTreeSet<u32>>,
    next: Mutex<u32>,
}

impl Allocator {
    pub fn new(cidr: Cidr, reserved: Vec<Ipv4Addr>) -> Self {
        Allocator {
            cidr,
            reserved,
            used: Mutex::new(Default::default()),
            next: Mutex::new(1),
        }
    }
    /// Marks an address as used (e.g. one found on an existing object).
    pub fn claim(&self, ip: Ipv4Addr) -> bool {
        if !self.cidr.contains(ip) {
            return false;
        }
        self.used.lock().unwrap().insert(u32::from(ip))
    }
    pub fn allocate(&self) -> Option<Ipv4Addr> {
        let mut used = self.used.lock().unwrap();
        let mut next = self.next.lock().unwrap();
        let size = self.cidr.size();
        // Round robin through the range so a released address is not reused at once.
        for _ in 0..size {
            let i = *next;
            *next = if i + 1 >= size - 1 { 1 } else { i + 1 };
            let ip = self.cidr.nth(i);
            if self.reserved.contains(&ip) || used.contains(&u32::from(ip)) {
                continue;
            }
            used.insert(u32::from(ip));
            return Some(ip);
        }
        None
    }
    pub fn release(&self, ip: Ipv4Addr) {
        self.used.lock().unwrap().remove(&u32::from(ip));
    }
}
