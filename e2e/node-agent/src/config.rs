//! The agent's configuration file (JSON, written by e2e/scripts/cluster-up.sh).

use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub node_name: String,
    /// Everything the agent writes (pod logs, volumes) lives below this.
    pub state_dir: PathBuf,
    /// Host bridge every pod's veth is attached to; it carries `gateway`.
    pub bridge: String,
    pub gateway: Ipv4Addr,
    /// Pod addresses are taken from here (the gateway address is skipped).
    pub pod_cidr: Cidr,
    /// LoadBalancer ingress addresses are taken from here.
    pub lb_cidr: Cidr,
    /// Also proxy ClusterIP:port -> ready endpoints (a tiny userspace kube-proxy).
    #[serde(default = "yes")]
    pub proxy_cluster_ips: bool,
    /// What pods get as KUBERNETES_SERVICE_HOST/PORT (reachable from inside a pod).
    pub apiserver_host: String,
    pub apiserver_port: u16,
    pub kubelet_port: u16,
    pub kubelet_cert: PathBuf,
    pub kubelet_key: PathBuf,
    pub images: Vec<ImageMapping>,
}

fn yes() -> bool {
    true
}

/// An image reference prefix mapped to a local binary: the "image" is that binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMapping {
    /// Matches every image whose reference starts with this.
    pub prefix: String,
    /// The entrypoint of the image.
    pub binary: PathBuf,
    /// Arguments the image's entrypoint gets when the container sets no `args`.
    #[serde(default)]
    pub default_args: Vec<String>,
    /// Arguments that replace whatever the container asks for: for stand-ins
    /// of images whose real program is not available (they only idle).
    #[serde(default)]
    pub replace_args: Option<Vec<String>>,
    /// `command[0]` values that mean the entrypoint (e.g. "/portcullis").
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Ports the image serves on by default: with no readiness probe and no
    /// declared container ports, the container is Ready once one is open.
    #[serde(default)]
    pub ready_ports: Vec<u16>,
}

impl Config {
    pub fn load(path: &str) -> Result<Config> {
        let raw = std::fs::read(path).with_context(|| format!("reading config {path}"))?;
        let cfg: Config =
            serde_json::from_slice(&raw).with_context(|| format!("parsing config {path}"))?;
        for m in &cfg.images {
            if !m.binary.is_file() {
                // Not fatal: pods of that image report the error in their status.
                tracing::warn!(
                    "image {:?} maps to {} which does not exist (build it first)",
                    m.prefix,
                    m.binary.display()
                );
            }
        }
        Ok(cfg)
    }

    pub fn image(&self, image: &str) -> Option<&ImageMapping> {
        self.images
            .iter()
            .filter(|m| image.starts_with(&m.prefix))
            .max_by_key(|m| m.prefix.len())
    }
}

/// An IPv4 CIDR such as "198.18.0.0/16".
#[derive(Debug, Clone, Copy)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.len as u32)
    }
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + i)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len as u32)
        };
        u32::from(ip) & mask == u32::from(self.base) & mask
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| serde::de::Error::custom(format!("not a CIDR: {s}")))?;
        let base: Ipv4Addr = ip.parse().map_err(serde::de::Error::custom)?;
        let len: u8 = len.parse().map_err(serde::de::Error::custom)?;
        if len > 30 {
            return Err(serde::de::Error::custom(format!("CIDR too small: {s}")));
        }
        Ok(Cidr { base, len })
    }
}
