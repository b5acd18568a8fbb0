//! Services: LoadBalancer ingress addresses and a small userspace proxy.
//!
//! Every LoadBalancer Service (without a loadBalancerClass) gets an address
//! from the LB CIDR, written to status.loadBalancer.ingress. That address is
//! added (/32) to the host bridge, so it is local to the host and reachable
//! from every pod too, and for each Service port a listener on it forwards TCP
//! connections round-robin to the ready endpoints of the Service's
//! EndpointSlices (targetPort resolved by port name, as kube-proxy does).
//! ClusterIPs get the same proxy (optional), so in-cluster clients that use a
//! Service's ClusterIP work without kube-proxy. TCP only.

use anyhow::Result;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::net::{self, Allocator};

type Backends = Arc<RwLock<Vec<SocketAddr>>>;

struct Listener {
    backends: Backends,
    task: tokio::task::JoinHandle<()>,
}

pub async fn run(client: Client, cfg: Arc<Config>) -> Result<()> {
    let svc_api: Api<Service> = Api::all(client.clone());
    let eps_api: Api<EndpointSlice> = Api::all(client.clone());
    let (svc_store, svc_w) = reflector::store();
    let (eps_store, eps_w) = reflector::store();
    let changed = Arc::new(Notify::new());
    let c1 = changed.clone();
    tokio::spawn(async move {
        let s = reflector::reflector(svc_w, watcher(svc_api, watcher::Config::default()))
            .default_backoff();
        futures_util::pin_mut!(s);
        while let Some(r) = s.next().await {
            if let Err(e) = r {
                warn!("service watch: {e}");
            }
            c1.notify_one();
        }
    });
    let c2 = changed.clone();
    tokio::spawn(async move {
        let s = reflector::reflector(eps_w, watcher(eps_api, watcher::Config::default()))
            .default_backoff();
        futures_util::pin_mut!(s);
        while let Some(r) = s.next().await {
            if let Err(e) = r {
                warn!("endpointslice watch: {e}");
            }
            c2.notify_one();
        }
    });
    // A periodic resync as a safety net (e.g. a failed status write).
    let c3 = changed.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            c3.notify_one();
        }
    });
    svc_store.wait_until_ready().await?;
    eps_store.wait_until_ready().await?;

    let lb_ips = Allocator::new(cfg.lb_cidr, vec![]);
    let mut assigned: HashMap<String, Ipv4Addr> = HashMap::new(); // service uid -> LB address
    let mut listeners: HashMap<SocketAddr, Listener> = HashMap::new();
    let mut addrs: BTreeSet<Ipv4Addr> = BTreeSet::new(); // addresses we put on the bridge
    let mut reported: HashMap<String, Ipv4Addr> = HashMap::new();
    loop {
        changed.notified().await;
        // Debounce bursts of events.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let svcs = svc_store.state();
        let slices = eps_store.state();
        let mut by_svc: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
        for s in slices {
            if let Some(name) = s.labels().get("kubernetes.io/service-name") {
                by_svc
                    .entry((s.namespace().unwrap_or_default(), name.clone()))
                    .or_default()
                    .push(s);
            }
        }
        let mut want: BTreeMap<SocketAddr, Vec<SocketAddr>> = BTreeMap::new();
        let mut live_uids = BTreeSet::new();
        for svc in &svcs {
            let Some(spec) = &svc.spec else { continue };
            let uid = svc.uid().unwrap_or_default();
            let ns = svc.namespace().unwrap_or_default();
            let mut ips: Vec<Ipv4Addr> = vec![];
            if cfg.proxy_cluster_ips {
                if let Some(ip) = spec.cluster_ip.as_deref().and_then(|i| i.parse().ok()) {
                    ips.push(ip);
                }
            }
            let is_lb =
                spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.is_none();
            if is_lb {
                live_uids.insert(uid.clone());
                let ip = match assigned.get(&uid) {
                    Some(ip) => Some(*ip),
                    None => {
                        // Keep an address already reported (agent restart), else allocate.
                        let existing = svc
                            .status
                            .as_ref()
                            .and_then(|s| s.load_balancer.as_ref())
                            .and_then(|lb| lb.ingress.as_ref())
                            .and_then(|i| i.first())
                            .and_then(|i| i.ip.as_deref())
                            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                            .filter(|ip| lb_ips.claim(*ip));
                        let ip = existing.or_else(|| lb_ips.allocate());
                        if let Some(ip) = ip {
                            assigned.insert(uid.clone(), ip);
                        }
                        ip
                    }
                };
                match ip {
                    Some(ip) => {
                        ips.push(ip);
                        if reported.get(&uid) != Some(&ip) {
                            let api: Api<Service> = Api::namespaced(client.clone(), &ns);
                            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
                            match api
                                .patch_status(
                                    &svc.name_any(),
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch),
                                )
                                .await
                            {
                                Ok(_) => {
                                    info!(service = %format!("{ns}/{}", svc.name_any()), %ip, "LoadBalancer address assigned");
                                    reported.insert(uid.clone(), ip);
                                }
                                Err(e) => warn!(
                                    "cannot set LoadBalancer status of {ns}/{}: {e}",
                                    svc.name_any()
                                ),
                            }
                        }
                    }
                    None => warn!("LoadBalancer CIDR exhausted"),
                }
            }
            let slices = by_svc
                .get(&(ns.clone(), svc.name_any()))
                .cloned()
                .unwrap_or_default();
            for sp in spec.ports.iter().flatten() {
                if sp.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let Ok(port) = u16::try_from(sp.port) else {
                    continue;
                };
                let mut backends = vec![];
                for sl in &slices {
                    if sl.address_type != "IPv4" {
                        continue;
                    }
                    let tp = sl
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| {
                            p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or("")
                                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                        })
                        .and_then(|p| p.port);
                    let Some(tp) = tp.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    for ep in &sl.endpoints {
                        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                        if !ready {
                            continue;
                        }
                        for a in &ep.addresses {
                            if let Ok(ip) = a.parse::<Ipv4Addr>() {
                                backends.push(SocketAddr::from((ip, tp)));
                            }
                        }
                    }
                }
                backends.sort();
                backends.dedup();
                for ip in &ips {
                    want.insert(SocketAddr::from((*ip, port)), backends.clone());
                }
            }
        }
        // Forget LB addresses of Services that are gone or no longer LoadBalancers.
        let gone: Vec<String> = assigned
            .keys()
            .filter(|u| !live_uids.contains(*u))
            .cloned()
            .collect();
        for u in gone {
            if let Some(ip) = assigned.remove(&u) {
                lb_ips.release(ip);
            }
            reported.remove(&u);
        }
        // Listeners: stop the unwanted, update the kept, start the new.
        listeners.retain(|a, l| {
            if want.contains_key(a) {
                true
            } else {
                l.task.abort();
                false
            }
        });
        let want_ips: BTreeSet<Ipv4Addr> = want
            .keys()
            .filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(ip) => Some(ip),
                _ => None,
            })
            .collect();
        for ip in addrs.difference(&want_ips).cloned().collect::<Vec<_>>() {
            let _ = net::ip(&["addr", "del", &format!("{ip}/32"), "dev", &cfg.bridge]).await;
            addrs.remove(&ip);
        }
        for ip in &want_ips {
            if !addrs.contains(ip) {
                match net::ip(&["addr", "replace", &format!("{ip}/32"), "dev", &cfg.bridge]).await {
                    Ok(()) => {
                        addrs.insert(*ip);
                    }
                    Err(e) => warn!("{e:#}"),
                }
            }
        }
        for (a, backends) in want {
            if let Some(l) = listeners.get(&a) {
                *l.backends.write().unwrap() = backends;
                continue;
            }
            let ip = match a.ip() {
                std::net::IpAddr::V4(ip) => ip,
                _ => continue,
            };
            if !addrs.contains(&ip) {
                continue;
            }
            match TcpListener::bind(a).await {
                Ok(l) => {
                    let b: Backends = Arc::new(RwLock::new(backends));
                    let task = tokio::spawn(accept_loop(l, b.clone()));
                    listeners.insert(a, Listener { backends: b, task });
                }
                Err(e) => warn!("cannot listen on {a} for a Service: {e}"),
            }
        }
    }
}

async fn accept_loop(l: TcpListener, backends: Backends) {
    let rr = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut down, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let list = backends.read().unwrap().clone();
        let rr = rr.clone();
        tokio::spawn(async move {
            if list.is_empty() {
                return; // no ready endpoint: refuse by closing
            }
            let start = rr.fetch_add(1, Ordering::Relaxed);
            for i in 0..list.len() {
                let b = list[(start + i) % list.len()];
                if let Ok(Ok(mut up)) =
                    tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(b)).await
                {
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    return;
                }
            }
        });
    }
}
