//! One task per pod: network namespace, volumes, containers as process groups
//! (restarted per restartPolicy), probes, status, graceful termination.

use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;
use crate::env::{self, Mount};
use crate::net::{self, Allocator};

pub struct Shared {
    pub client: Client,
    pub cfg: Arc<Config>,
    pub ips: Allocator,
    /// (namespace, pod name) -> where its container logs are, for the kubelet API.
    pub logs: Mutex<HashMap<(String, String), LogInfo>>,
}

#[derive(Clone, Debug)]
pub struct LogInfo {
    pub dir: PathBuf,
    /// container name -> (restart count of the current instance, running)
    pub containers: HashMap<String, (i32, bool)>,
}

pub fn log_path(dir: &std::path::Path, container: &str, restart: i32) -> PathBuf {
    dir.join(format!("{container}-{restart}.log"))
}

pub enum Msg {
    Update(Box<Pod>),
    /// The object is gone from the API server: stop at once.
    Gone,
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

#[derive(Clone)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Option<Time>,
    finished_at: Time,
}

#[derive(Clone)]
enum State {
    Waiting(String, Option<String>),
    Running(Time),
    Terminated(Term),
}

struct Ctr {
    spec: Container,
    init: bool,
    restarts: i32,
    state: State,
    last_term: Option<Term>,
    ready: bool,
    started: bool,
    pgid: Option<i32>,
    run_id: u64,
    restart_at: Option<Instant>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ready_ok: i32,
    ready_fail: i32,
    live_fail: i32,
    start_ok: i32,
    start_fail: i32,
    binary: Option<PathBuf>,
}

impl Ctr {
    fn new(spec: Container, init: bool) -> Self {
        Ctr {
            spec,
            init,
            restarts: 0,
            state: State::Waiting("ContainerCreating".into(), None),
            last_term: None,
            ready: false,
            started: false,
            pgid: None,
            run_id: 0,
            restart_at: None,
            tasks: vec![],
            ready_ok: 0,
            ready_fail: 0,
            live_fail: 0,
            start_ok: 0,
            start_fail: 0,
            binary: None,
        }
    }
    fn running(&self) -> bool {
        matches!(self.state, State::Running(_))
    }
    fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Readiness,
    Liveness,
    Startup,
    /// No readiness probe: one of the declared ports is open.
    PortsOpen,
}

enum Ev {
    Exited {
        idx: usize,
        run_id: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Probe {
        idx: usize,
        run_id: u64,
        kind: Kind,
        ok: bool,
    },
}

pub struct Worker {
    sh: Arc<Shared>,
    pod: Pod,
    uid: String,
    ns: String,
    name: String,
    ip: Option<Ipv4Addr>,
    net_ready: bool,
    dir: PathBuf,
    volumes: Option<BTreeMap<String, PathBuf>>,
    ctrs: Vec<Ctr>,
    ev_tx: mpsc::UnboundedSender<Ev>,
    ev_rx: mpsc::UnboundedReceiver<Ev>,
    last_status: Option<serde_json::Value>,
    cond_times: HashMap<String, (String, Time)>,
    start_time: Time,
    setup_error: Option<(String, String)>,
    next_setup: Instant,
    created_paths: Vec<PathBuf>,
    status_retry_at: Instant,
}

/// A pod keeps the address it already reports (the agent was restarted): pod
/// IPs cannot change once set. Claim them all before any new pod allocates.
pub fn preclaim(sh: &Shared, pod: &Pod) -> Option<Ipv4Addr> {
    let st = pod.status.as_ref()?;
    if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None; // nothing will run for it
    }
    let ip = st.pod_ip.as_deref()?.parse::<Ipv4Addr>().ok()?;
    sh.ips.claim(ip).then_some(ip)
}

pub fn spawn(
    sh: Arc<Shared>,
    pod: Pod,
    ip: Option<Ipv4Addr>,
) -> (mpsc::UnboundedSender<Msg>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ctrs: Vec<Ctr> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| Ctr::new(c, true))
        .collect();
    ctrs.extend(spec.containers.into_iter().map(|c| Ctr::new(c, false)));
    let dir = sh.cfg.state_dir.join("pods").join(&uid);
    let w = Worker {
        sh,
        pod,
        uid,
        ns,
        name,
        ip,
        net_ready: false,
        dir,
        volumes: None,
        ctrs,
        ev_tx,
        ev_rx,
        last_status: None,
        cond_times: HashMap::new(),
        start_time: now(),
        setup_error: None,
        next_setup: Instant::now(),
        created_paths: vec![],
        status_retry_at: Instant::now(),
    };
    let handle = tokio::spawn(w.run(rx));
    (tx, handle)
}

impl Worker {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
    }
    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        info!(pod = %self.key(), uid = %self.uid, "pod assigned to this node");
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Msg::Update(p)) => self.pod = *p,
                    Some(Msg::Gone) | None => { self.stop(Duration::ZERO).await; self.cleanup().await; return; }
                },
                Some(ev) = self.ev_rx.recv() => self.handle(ev),
                _ = tick.tick() => {}
            }
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .clamp(0, 30) as u64;
                info!(pod = %self.key(), grace, "pod is being deleted: stopping containers");
                self.stop(Duration::from_secs(grace)).await;
                self.cleanup().await;
                self.final_delete().await;
                return;
            }
            if let Err(e) = self.step().await {
                warn!(pod = %self.key(), "{e:#}");
            }
            self.sync_status().await;
        }
    }

    async fn setup(&mut self) -> Result<()> {
        if self.host_network() {
            // The node's network: the pod's address is the node's.
            self.ip = Some(self.sh.cfg.gateway);
            self.net_ready = true;
        }
        if self.ip.is_none() {
            self.ip = Some(
                self.sh
                    .ips
                    .allocate()
                    .ok_or_else(|| anyhow!("pod CIDR exhausted"))?,
            );
        }
        if !self.net_ready {
            let ip = self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            net::setup_pod(&self.sh.cfg, &self.uid, ip)
                .await
                .context("setting up the pod network")?;
            self.net_ready = true;
            info!(pod = %self.key(), %ip, netns = %net::netns_name(&self.uid), "pod network ready");
        }
        if self.volumes.is_none() {
            std::fs::create_dir_all(self.dir.join("logs"))?;
            let v = env::materialize_volumes(
                &self.sh.client,
                &self.sh.cfg,
                &self.pod,
                &self.dir.join("volumes"),
            )
            .await?;
            self.volumes = Some(v);
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<()> {
        if !self.net_ready || self.volumes.is_none() {
            if Instant::now() < self.next_setup {
                return Ok(());
            }
            if let Err(e) = self.setup().await {
                self.setup_error = Some(("CreateContainerConfigError".into(), format!("{e:#}")));
                self.next_setup = Instant::now() + Duration::from_secs(2);
                return Err(e);
            }
            self.setup_error = None;
        }
        let policy = self.restart_policy();
        // Init containers first, one at a time, each must succeed.
        for i in 0..self.ctrs.len() {
            if !self.ctrs[i].init {
                continue;
            }
            match &self.ctrs[i].state {
                State::Terminated(t) if t.exit_code == 0 => continue,
                State::Running(_) => return Ok(()),
                State::Terminated(_) if policy == "Never" => return Ok(()),
                _ => {
                    if self.ctrs[i].restart_at.is_none_or(|t| Instant::now() >= t) {
                        self.start(i).await;
                    }
                    return Ok(());
                }
            }
        }
        for i in 0..self.ctrs.len() {
            if self.ctrs[i].init || self.ctrs[i].running() {
                continue;
            }
            let want = match &self.ctrs[i].state {
                State::Waiting(..) => true,
                State::Terminated(t) => {
                    policy == "Always" || (policy == "OnFailure" && t.exit_code != 0)
                }
                State::Running(_) => false,
            };
            if want && self.ctrs[i].restart_at.is_none_or(|t| Instant::now() >= t) {
                self.start(i).await;
            }
        }
        Ok(())
    }

    fn resolve(&self, c: &Container) -> Result<(PathBuf, Vec<String>)> {
        let image = c.image.clone().unwrap_or_default();
        let m = self.sh.cfg.image(&image).ok_or_else(|| {
            anyhow!("image {image:?} is not mapped to a local binary (see the images of the node-agent config)")
        })?;
        if let Some(args) = &m.replace_args {
            return Ok((m.binary.clone(), args.clone()));
        }
        let bin_name = m
            .binary
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args = c.args.clone();
        match c.command.as_deref() {
            Some([cmd0, rest @ ..]) => {
                let base = cmd0.rsplit('/').next().unwrap_or(cmd0);
                let exe = if base == bin_name || m.aliases.iter().any(|a| a == cmd0) {
                    m.binary.clone()
                } else {
                    // Anything else is taken from the host (e.g. "sleep", "sh").
                    PathBuf::from(cmd0)
                };
                let mut argv = rest.to_vec();
                argv.extend(args.unwrap_or_default());
                Ok((exe, argv))
            }
            _ => Ok((
                m.binary.clone(),
                args.unwrap_or_else(|| m.default_args.clone()),
            )),
        }
    }

    async fn start(&mut self, idx: usize) {
        let spec = self.ctrs[idx].spec.clone();
        match self.try_start(idx, &spec).await {
            Ok(()) => {}
            Err(e) => {
                let c = &mut self.ctrs[idx];
                warn!(pod = %format!("{}/{}", self.ns, self.name), container = %spec.name, "cannot start: {e:#}");
                let reason = if e.to_string().contains("not mapped") {
                    "ErrImageNeverPull"
                } else {
                    "CreateContainerError"
                };
                c.state = State::Waiting(reason.into(), Some(format!("{e:#}")));
                c.restart_at = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    async fn try_start(&mut self, idx: usize, c: &Container) -> Result<()> {
        let ip = self.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let (exe, argv) = self.resolve(c)?;
        let envv = env::container_env(&self.sh.client, &self.sh.cfg, &self.pod, c, &ip.to_string())
            .await?;
        let exe = PathBuf::from(env::expand(&exe.to_string_lossy(), &envv));
        let argv: Vec<String> = argv.iter().map(|a| env::expand(a, &envv)).collect();
        let mounts = env::mounts_for(c, self.volumes.as_ref().unwrap_or(&BTreeMap::new()))?;
        let restarts = self.ctrs[idx].restarts;
        let log = log_path(&self.dir.join("logs"), &c.name, restarts);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let host_net = self.host_network();
        let netns = if host_net {
            None
        } else {
            Some(
                std::fs::File::open(net::netns_path(&self.uid))
                    .context("opening the pod's netns")?,
            )
        };
        let mut mnts: Vec<(CString, CString, bool)> = vec![];
        for m in &mounts {
            let created = prepare_mount_point(m)?;
            self.created_paths.extend(created);
            mnts.push((
                cstr(m.src.as_os_str().as_bytes())?,
                cstr(m.dst.as_os_str().as_bytes())?,
                m.read_only,
            ));
        }
        let hostname = cstr(self.name.as_bytes())?;
        let root = cstr(b"/")?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&argv)
            .env_clear()
            .envs(envv.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(
                c.working_dir
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .unwrap_or("/"),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let fd = netns.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let ns_flags = if host_net {
            libc::CLONE_NEWNS
        } else {
            libc::CLONE_NEWNS | libc::CLONE_NEWUTS
        };
        // SAFETY: only async-signal-safe syscalls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if fd >= 0 && libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::unshare(ns_flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if fd >= 0 {
                    let _ = libc::sethostname(hostname.as_ptr(), hostname.as_bytes().len());
                }
                for (src, dst, ro) in &mnts {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    if *ro {
                        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                        let _ = libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            flags,
                            std::ptr::null(),
                        );
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {:?}", exe.display(), argv))?;
        let sink = Arc::new(tokio::sync::Mutex::new(tokio::fs::File::from_std(out)));
        if let Some(o) = child.stdout.take() {
            tokio::spawn(crate::logs::capture(o, "stdout", sink.clone()));
        }
        if let Some(e) = child.stderr.take() {
            tokio::spawn(crate::logs::capture(e, "stderr", sink));
        }
        drop(netns);
        let pid = child.id().map(|p| p as i32);
        let ctr = &mut self.ctrs[idx];
        ctr.run_id += 1;
        ctr.pgid = pid;
        ctr.state = State::Running(now());
        ctr.ready = false;
        ctr.started = false;
        ctr.ready_ok = 0;
        ctr.ready_fail = 0;
        ctr.live_fail = 0;
        ctr.start_ok = 0;
        ctr.start_fail = 0;
        ctr.restart_at = None;
        ctr.binary = Some(exe.clone());
        info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.name, pid = ?pid, exe = %exe.display(), args = ?argv, restarts, "container started");
        let run_id = ctr.run_id;
        let tx = self.ev_tx.clone();
        ctr.tasks.push(tokio::spawn(async move {
            let st = child.wait().await;
            let (code, signal) = match st {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (s.code(), s.signal())
                }
                Err(_) => (None, None),
            };
            // Whatever the container left behind in its process group goes too.
            if let Some(p) = pid {
                unsafe { libc::kill(-p, libc::SIGKILL) };
            }
            let _ = tx.send(Ev::Exited {
                idx,
                run_id,
                code,
                signal,
            });
        }));
        if !ctr.init {
            let ns = if host_net {
                String::new()
            } else {
                net::netns_name(&self.uid)
            };
            let image_ports = self
                .sh
                .cfg
                .image(c.image.as_deref().unwrap_or(""))
                .map(|m| m.ready_ports.clone())
                .unwrap_or_default();
            let ports = crate::probe::readiness_ports(c, &image_ports);
            let mk = |kind: Kind, probe: Option<Probe>| {
                let tx = self.ev_tx.clone();
                let spec = c.clone();
                let ns = ns.clone();
                tokio::spawn(probe_loop(
                    idx,
                    run_id,
                    kind,
                    probe,
                    spec,
                    ip,
                    ns,
                    ports.clone(),
                    tx,
                ))
            };
            if c.startup_probe.is_some() {
                ctr.tasks.push(mk(Kind::Startup, c.startup_probe.clone()));
            } else {
                ctr.started = true;
            }
            match &c.readiness_probe {
                Some(p) => ctr.tasks.push(mk(Kind::Readiness, Some(p.clone()))),
                None => ctr.tasks.push(mk(Kind::PortsOpen, None)),
            }
            if let Some(p) = &c.liveness_probe {
                ctr.tasks.push(mk(Kind::Liveness, Some(p.clone())));
            }
        }
        self.update_logs();
        Ok(())
    }

    fn handle(&mut self, ev: Ev) {
        let key = self.key();
        match ev {
            Ev::Exited {
                idx,
                run_id,
                code,
                signal,
            } => {
                let Some(c) = self.ctrs.get_mut(idx) else {
                    return;
                };
                if c.run_id != run_id {
                    return;
                }
                let started_at = match &c.state {
                    State::Running(t) => Some(t.clone()),
                    _ => None,
                };
                c.stop_tasks();
                let exit_code = code.unwrap_or(128 + signal.unwrap_or(9));
                let reason = if exit_code == 0 { "Completed" } else { "Error" };
                info!(pod = %key, container = %c.spec.name, exit_code, ?signal, "container exited");
                let t = Term {
                    exit_code,
                    signal,
                    reason: reason.into(),
                    message: None,
                    started_at,
                    finished_at: now(),
                };
                c.state = State::Terminated(t.clone());
                c.last_term = Some(t);
                c.ready = false;
                c.pgid = None;
                let policy = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.restart_policy.clone())
                    .unwrap_or_else(|| "Always".into());
                let again = if c.init {
                    exit_code != 0 && policy != "Never"
                } else {
                    policy == "Always" || (policy == "OnFailure" && exit_code != 0)
                };
                if again {
                    c.restarts += 1;
                    // Short back-off: this is a test cluster, a crash loop should show quickly.
                    let backoff = Duration::from_millis(500u64 << c.restarts.clamp(0, 4));
                    c.restart_at = Some(Instant::now() + backoff);
                }
                self.update_logs();
            }
            Ev::Probe {
                idx,
                run_id,
                kind,
                ok,
            } => {
                let Some(c) = self.ctrs.get_mut(idx) else {
                    return;
                };
                if c.run_id != run_id || !c.running() {
                    return;
                }
                let th = |p: &Option<Probe>, ok: bool| -> i32 {
                    let p = p.as_ref();
                    if ok {
                        p.and_then(|p| p.success_threshold).unwrap_or(1).max(1)
                    } else {
                        p.and_then(|p| p.failure_threshold).unwrap_or(3).max(1)
                    }
                };
                match kind {
                    Kind::Startup => {
                        if ok {
                            c.started = true;
                        } else {
                            c.start_fail += 1;
                            if c.start_fail >= th(&c.spec.startup_probe, false) {
                                warn!(pod = %key, container = %c.spec.name, "startup probe failed: killing");
                                if let Some(p) = c.pgid {
                                    unsafe { libc::kill(-p, libc::SIGKILL) };
                                }
                            }
                        }
                    }
                    Kind::Liveness => {
                        if !c.started {
                            return;
                        }
                        if ok {
                            c.live_fail = 0;
                        } else {
                            c.live_fail += 1;
                            if c.live_fail >= th(&c.spec.liveness_probe, false) {
                                warn!(pod = %key, container = %c.spec.name, "liveness probe failed: restarting");
                                c.live_fail = 0;
                                if let Some(p) = c.pgid {
                                    unsafe { libc::kill(-p, libc::SIGTERM) };
                                }
                            }
                        }
                    }
                    Kind::Readiness | Kind::PortsOpen => {
                        if !c.started {
                            return;
                        }
                        if ok {
                            c.ready_fail = 0;
                            c.ready_ok += 1;
                            if c.ready_ok >= th(&c.spec.readiness_probe, true) {
                                c.ready = true;
                            }
                        } else {
                            c.ready_ok = 0;
                            c.ready_fail += 1;
                            if c.ready_fail >= th(&c.spec.readiness_probe, false)
                                || matches!(kind, Kind::PortsOpen)
                            {
                                c.ready = false;
                            }
                        }
                    }
                }
            }
        }
    }

    fn update_logs(&self) {
        let mut m = self.sh.logs.lock().unwrap();
        let info = m
            .entry((self.ns.clone(), self.name.clone()))
            .or_insert_with(|| LogInfo {
                dir: self.dir.join("logs"),
                containers: HashMap::new(),
            });
        info.dir = self.dir.join("logs");
        for c in &self.ctrs {
            info.containers
                .insert(c.spec.name.clone(), (c.restarts, c.running()));
        }
    }

    fn build_status(&mut self) -> PodStatus {
        let policy = self.restart_policy();
        let inits: Vec<&Ctr> = self.ctrs.iter().filter(|c| c.init).collect();
        let mains: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        let init_done = inits
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(t) if t.exit_code == 0));
        let init_failed = inits
            .iter()
            .any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0))
            && policy == "Never";
        let all_ready = !mains.is_empty() && mains.iter().all(|c| c.ready && c.running());
        let all_term = mains
            .iter()
            .all(|c| matches!(c.state, State::Terminated(_)) && c.restart_at.is_none());
        let phase = if init_failed {
            "Failed"
        } else if !init_done {
            "Pending"
        } else if policy != "Always" && all_term && !mains.is_empty() {
            if mains
                .iter()
                .all(|c| matches!(&c.state, State::Terminated(t) if t.exit_code == 0))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if mains.iter().any(|c| {
            c.running() || c.restart_at.is_some() || matches!(c.state, State::Terminated(_))
        }) {
            "Running"
        } else {
            "Pending"
        };
        let b = |v: bool| if v { "True" } else { "False" }.to_string();
        let conds = vec![
            ("PodReadyToStartContainers", b(self.net_ready)),
            ("Initialized", b(init_done)),
            ("Ready", b(all_ready)),
            ("ContainersReady", b(all_ready)),
            ("PodScheduled", b(true)),
        ];
        let mut conditions = vec![];
        for (t, s) in conds {
            let time = match self.cond_times.get(t) {
                Some((old, time)) if *old == s => time.clone(),
                _ => now(),
            };
            self.cond_times
                .insert(t.to_string(), (s.clone(), time.clone()));
            conditions.push(PodCondition {
                type_: t.into(),
                status: s,
                last_transition_time: Some(time),
                ..Default::default()
            });
        }
        let uid = self.uid.clone();
        let setup_error = self.setup_error.clone();
        let cs = |c: &Ctr| -> ContainerStatus {
            let state = match (&c.state, &setup_error) {
                (State::Waiting(..), Some((r, m))) => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(r.clone()),
                        message: Some(m.clone()),
                    }),
                    ..Default::default()
                },
                (State::Terminated(_), _) if c.restart_at.is_some() => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off restarting failed container {}",
                            c.spec.name
                        )),
                    }),
                    ..Default::default()
                },
                (s, _) => state_of(s),
            };
            ContainerStatus {
                name: c.spec.name.clone(),
                image: c.spec.image.clone().unwrap_or_default(),
                image_id: c
                    .binary
                    .as_ref()
                    .map(|b| format!("local://{}", b.display()))
                    .unwrap_or_default(),
                container_id: c
                    .pgid
                    .map(|p| format!("local://{uid}/{}/{}/{p}", c.spec.name, c.restarts)),
                ready: c.ready && c.running(),
                started: Some(c.running() && c.started),
                restart_count: c.restarts,
                state: Some(state),
                last_state: c
                    .last_term
                    .as_ref()
                    .filter(|_| !matches!(c.state, State::Terminated(_)) || c.restart_at.is_some())
                    .map(|t| state_of(&State::Terminated(t.clone()))),
                ..Default::default()
            }
        };
        let ip = self.ip.filter(|_| self.net_ready).map(|i| i.to_string());
        let host = self.sh.cfg.gateway.to_string();
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            host_ip: Some(host.clone()),
            host_ips: Some(vec![HostIP { ip: host }]),
            pod_ip: ip.clone(),
            pod_ips: ip.map(|ip| vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            // Set by the API server at creation and immutable: keep it.
            qos_class: self.pod.status.as_ref().and_then(|s| s.qos_class.clone()),
            container_statuses: Some(mains.iter().map(|c| cs(c)).collect()),
            init_container_statuses: if inits.is_empty() {
                None
            } else {
                Some(inits.iter().map(|c| cs(c)).collect())
            },
            ..Default::default()
        }
    }

    async fn sync_status(&mut self) {
        if Instant::now() < self.status_retry_at {
            return;
        }
        let st = self.build_status();
        let mut v = match serde_json::to_value(&st) {
            Ok(v) => v,
            Err(_) => return,
        };
        // Compare without transition times (they only change with statuses).
        let mut cmp = v.clone();
        if let Some(cs) = cmp.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
        if self.last_status.as_ref() == Some(&cmp) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), &self.ns);
        if let Some(o) = v.as_object_mut() {
            // A merge patch replaces lists whole, which is what we want here.
            o.retain(|_, val| !val.is_null());
        }
        let patch = serde_json::json!({ "status": v });
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = Some(cmp),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(pod = %self.key(), "status update failed (will retry in 1s): {e}");
                self.status_retry_at = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// SIGTERM every running container, SIGKILL what is left after `grace`.
    async fn stop(&mut self, grace: Duration) {
        let pgids: Vec<i32> = self.ctrs.iter().filter_map(|c| c.pgid).collect();
        for c in self.ctrs.iter_mut() {
            c.restart_at = None;
            // Probe tasks stop; exit watchers keep running to report the exit.
            let keep: Vec<_> = c.tasks.drain(..).collect();
            for (i, t) in keep.into_iter().enumerate() {
                if i == 0 {
                    c.tasks.push(t);
                } else {
                    t.abort();
                }
            }
        }
        if pgids.is_empty() {
            return;
        }
        for p in &pgids {
            unsafe {
                libc::kill(
                    -p,
                    if grace.is_zero() {
                        libc::SIGKILL
                    } else {
                        libc::SIGTERM
                    },
                )
            };
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.ctrs.iter().any(|c| c.pgid.is_some()) {
            match tokio::time::timeout_at(deadline, self.ev_rx.recv()).await {
                Ok(Some(ev @ Ev::Exited { .. })) => {
                    self.handle(ev);
                    for c in self.ctrs.iter_mut() {
                        c.restart_at = None;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    for c in &self.ctrs {
                        if let Some(p) = c.pgid {
                            if !grace.is_zero() {
                                warn!(pod = %self.key(), container = %c.spec.name, "did not stop in time: SIGKILL");
                            }
                            unsafe { libc::kill(-p, libc::SIGKILL) };
                        }
                    }
                    // Reap: bounded wait for the exit watchers.
                    let until = tokio::time::Instant::now() + Duration::from_secs(5);
                    while self.ctrs.iter().any(|c| c.pgid.is_some()) {
                        match tokio::time::timeout_at(until, self.ev_rx.recv()).await {
                            Ok(Some(ev @ Ev::Exited { .. })) => self.handle(ev),
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                    }
                    break;
                }
            }
        }
    }

    async fn cleanup(&mut self) {
        for c in self.ctrs.iter_mut() {
            c.stop_tasks();
        }
        if !self.host_network() {
            net::teardown_pod(&self.uid).await;
        }
        remove_mount_points(&self.created_paths);
        // Volumes go; container logs stay in the state dir for post-mortems.
        let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
        if let Some(ip) = self.ip.take() {
            if ip != self.sh.cfg.gateway {
                self.sh.ips.release(ip);
            }
        }
        self.sh
            .logs
            .lock()
            .unwrap()
            .remove(&(self.ns.clone(), self.name.clone()));
        info!(pod = %self.key(), "pod stopped and cleaned up");
    }

    async fn final_delete(&self) {
        let api: Api<Pod> = Api::namespaced(self.sh.client.clone(), &self.ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %self.key(), "final delete failed: {e}"),
        }
    }
}

fn state_of(s: &State) -> ContainerState {
    match s {
        State::Waiting(r, m) => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(r.clone()),
                message: m.clone(),
            }),
            ..Default::default()
        },
        State::Running(t) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(t.clone()),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: t.exit_code,
                signal: t.signal,
                reason: Some(t.reason.clone()),
                message: t.message.clone(),
                started_at: t.started_at.clone(),
                finished_at: Some(t.finished_at.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn cstr(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| anyhow!("path with a NUL byte"))
}

/// The mount point must exist (on the host; the mount itself is private to
/// the container): a directory for a directory, an empty file for a file.
/// Returns what it created, so that it can be removed when the pod goes.
fn prepare_mount_point(m: &Mount) -> Result<Vec<PathBuf>> {
    let mut created = vec![];
    if m.dst.exists() {
        return Ok(created);
    }
    let dir = if m.src.is_dir() {
        m.dst.as_path()
    } else {
        m.dst.parent().unwrap_or(std::path::Path::new("/"))
    };
    let mut missing = vec![];
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(&d).with_context(|| format!("creating mount point {}", d.display()))?;
        created.push(d);
    }
    if !m.src.is_dir() {
        std::fs::write(&m.dst, b"")
            .with_context(|| format!("creating mount point {}", m.dst.display()))?;
        created.push(m.dst.clone());
    }
    Ok(created)
}

/// Removes mount points created for a pod, deepest first, only while they are
/// still empty (another pod may be using the same path: then they stay).
fn remove_mount_points(paths: &[PathBuf]) {
    for p in paths.iter().rev() {
        if p.is_dir() {
            let _ = std::fs::remove_dir(p);
        } else if std::fs::metadata(p).map(|m| m.len() == 0).unwrap_or(false) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    idx: usize,
    run_id: u64,
    kind: Kind,
    probe: Option<Probe>,
    c: Container,
    ip: Ipv4Addr,
    netns: String,
    ports: Vec<u16>,
    tx: mpsc::UnboundedSender<Ev>,
) {
    let (initial, period) = match &probe {
        Some(p) => (
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64 * 1000,
            p.period_seconds.unwrap_or(10).max(1) as u64 * 1000,
        ),
        None => (0, 1000),
    };
    // Until the first success, probe often: readiness should not lag start-up
    // by a whole period (kubelet does the same for startup probes).
    tokio::time::sleep(Duration::from_millis(initial)).await;
    let mut succeeded = false;
    let t0 = Instant::now();
    loop {
        let ok = match &probe {
            Some(p) => crate::probe::check(p, &c, ip, &netns).await,
            None => {
                // A process that never opens the ports it is expected to still
                // counts as ready after 10 s (and says so), like kubelet would.
                let open = crate::probe::any_port_open(&ports, ip).await;
                if !open && !succeeded && t0.elapsed() > Duration::from_secs(10) {
                    warn!(container = %c.name, ?ports, "no port opened within 10s: marking ready anyway");
                    true
                } else {
                    open || succeeded
                }
            }
        };
        if tx
            .send(Ev::Probe {
                idx,
                run_id,
                kind,
                ok,
            })
            .is_err()
        {
            return;
        }
        succeeded |= ok;
        let fast = matches!(kind, Kind::Readiness | Kind::PortsOpen) && !succeeded;
        let wait = if fast { period.min(250) } else { period };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
