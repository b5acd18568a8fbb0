//! e2e node agent: a kubelet stand-in for the Portcullis e2e cluster.
//!
//! Registers one Node, binds every pending pod to it, runs each pod's
//! containers as local processes in the pod's own network namespace (address
//! from the pod CIDR on a host bridge), reports pod status, serves container
//! logs through the kubelet API, and implements LoadBalancer Services.
//! Usage: e2e-node-agent <config.json>   (kubeconfig from $KUBECONFIG)

mod config;
mod env;
mod kubelet;
mod lb;
mod logs;
mod net;
mod node;
mod pod;
mod probe;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tracing::{error, info, warn};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run().await {
        error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: e2e-node-agent <config.json>")?;
    let cfg = Arc::new(config::Config::load(&path)?);
    let client = Client::try_default()
        .await
        .context("connecting to the API server ($KUBECONFIG)")?;
    std::fs::create_dir_all(cfg.state_dir.join("pods"))?;
    node::register(&client, &cfg).await?;

    let sh = Arc::new(pod::Shared {
        client: client.clone(),
        cfg: cfg.clone(),
        ips: net::Allocator::new(cfg.pod_cidr, vec![cfg.gateway]),
        logs: Mutex::new(HashMap::new()),
    });
    tokio::spawn(node::heartbeat(client.clone(), cfg.clone()));
    tokio::spawn(node::binder(client.clone(), cfg.clone()));
    let kaddr = SocketAddr::from((cfg.gateway, cfg.kubelet_port));
    let ksh = sh.clone();
    tokio::spawn(async move {
        if let Err(e) = kubelet::serve(ksh, kaddr).await {
            error!("kubelet API: {e:#}");
        }
    });
    let lcl = client.clone();
    let lcfg = cfg.clone();
    tokio::spawn(async move {
        if let Err(e) = lb::run(lcl, lcfg).await {
            error!("service proxy: {e:#}");
        }
    });

    let mut workers: HashMap<String, Worker> = HashMap::new();
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let stream = watcher(pods, wc);
    futures_util::pin_mut!(stream);
    let mut relist: Option<Vec<Pod>> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(ev) = ev else { break };
        match ev {
            Ok(watcher::Event::Init) => relist = Some(Vec::new()),
            Ok(watcher::Event::InitApply(p)) => match relist.as_mut() {
                Some(r) => r.push(p),
                None => upsert(&sh, &mut workers, p),
            },
            Ok(watcher::Event::InitDone) => {
                if let Some(listed) = relist.take() {
                    let seen: HashSet<String> = listed.iter().filter_map(|p| p.uid()).collect();
                    workers.retain(|uid, (tx, _)| {
                        if seen.contains(uid) {
                            true
                        } else {
                            let _ = tx.send(pod::Msg::Gone);
                            false
                        }
                    });
                    // Addresses already reported first, then everything else.
                    let mut claimed = HashMap::new();
                    for p in &listed {
                        let uid = p.uid().unwrap_or_default();
                        if !workers.contains_key(&uid) {
                            if let Some(ip) = pod::preclaim(&sh, p) {
                                claimed.insert(uid, ip);
                            }
                        }
                    }
                    for p in listed {
                        let ip = claimed.get(&p.uid().unwrap_or_default()).copied();
                        upsert_with_ip(&sh, &mut workers, p, ip);
                    }
                }
            }
            Ok(watcher::Event::Apply(p)) => upsert(&sh, &mut workers, p),
            Ok(watcher::Event::Delete(p)) => {
                if let Some((tx, _)) = workers.remove(&p.uid().unwrap_or_default()) {
                    let _ = tx.send(pod::Msg::Gone);
                }
            }
            Err(e) => {
                warn!("pod watch: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    info!("shutting down: stopping every pod");
    let mut handles = vec![];
    for (_, (tx, h)) in workers.drain() {
        let _ = tx.send(pod::Msg::Gone);
        handles.push(h);
    }
    // Bounded: the workers kill their process groups and delete their netns.
    let all = futures_util::future::join_all(handles);
    if tokio::time::timeout(std::time::Duration::from_secs(10), all)
        .await
        .is_err()
    {
        warn!("some pods did not stop within 10s");
    }
    Ok(())
}

type Worker = (
    tokio::sync::mpsc::UnboundedSender<pod::Msg>,
    tokio::task::JoinHandle<()>,
);

fn upsert(sh: &Arc<pod::Shared>, workers: &mut HashMap<String, Worker>, p: Pod) {
    upsert_with_ip(sh, workers, p, None)
}

fn upsert_with_ip(
    sh: &Arc<pod::Shared>,
    workers: &mut HashMap<String, Worker>,
    p: Pod,
    ip: Option<std::net::Ipv4Addr>,
) {
    let uid = p.uid().unwrap_or_default();
    if let Some((tx, _)) = workers.get(&uid) {
        if tx.send(pod::Msg::Update(Box::new(p.clone()))).is_ok() {
            return;
        }
        // The worker finished (pod terminated or deleted): nothing more to run.
        return;
    }
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        if p.metadata.deletion_timestamp.is_some() {
            // Nothing runs for a finished pod: complete its deletion at once, as kubelet does.
            let api: Api<Pod> =
                Api::namespaced(sh.client.clone(), &p.namespace().unwrap_or_default());
            let name = p.name_any();
            let dp = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            tokio::spawn(async move {
                let _ = api.delete(&name, &dp).await;
            });
        }
        return;
    }
    workers.insert(uid, pod::spawn(sh.clone(), p, ip));
}
