//! The YAML directory provider (standalone mode).
//!
//! Reads every `*.yaml` / `*.yml` file of a directory (not recursive;
//! hidden files skipped), each holding any number of `---`-separated
//! Kubernetes objects, exactly as `kubectl apply -f DIR` would take them.
//! [`FileProvider`] polls the directory for changes (modification time,
//! size and inode of each file; a cheap `stat` per file every
//! [`POLL_INTERVAL`]) and, once a change has been stable for one interval,
//! recompiles and publishes the new table and statuses.
//!
//! A file that fails to load is reported (log + a [`StatusKind::ConfigFile`]
//! status) and the objects it held the last time it loaded are kept, so the
//! last good configuration keeps serving.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use portcullis_model::RouteTable;
use tokio::sync::watch;

use crate::snapshot::{KubeObject, ObjectError, Snapshot};
use crate::status::{StatusKind, StatusUpdate};
use crate::{compile, CompileOptions};

/// How often the directory is checked. A change is picked up once it has
/// been stable for one interval: between one and two intervals after the
/// last write.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A file that could not be loaded (or the directory itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// Loads every YAML file of `dir` into a snapshot, once. Files that fail to
/// load are reported and skipped; the rest is still loaded.
pub fn load_dir(dir: &Path) -> (Snapshot, Vec<LoadProblem>) {
    let mut state = DirState::default();
    let problems = state.reload(dir);
    let (snapshot, mut duplicates) = state.snapshot();
    let mut all = problems;
    all.append(&mut duplicates);
    (snapshot, all)
}

/// Reads one file's objects. Any document that is not valid YAML, or is a
/// kind we read but does not match its schema, fails the whole file: a
/// half-applied file is harder to reason about than the previous version.
pub fn load_file(path: &Path) -> Result<Vec<KubeObject>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    parse_documents(&text)
}

/// Parses a multi-document YAML text into the objects the controller reads;
/// other kinds are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<KubeObject>, String> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: {e}", index + 1))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let json =
            serde_json::to_value(&value).map_err(|e| format!("document {}: {e}", index + 1))?;
        match KubeObject::from_value(json) {
            Ok(object) => objects.push(object),
            Err(ObjectError::Ignored { api_version, kind }) => {
                tracing::debug!(%api_version, %kind, "skipping an object of a kind Portcullis does not read");
            }
            Err(ObjectError::Invalid(message)) => {
                return Err(format!("document {}: {message}", index + 1))
            }
        }
    }
    // Kept for as long as the file is unchanged: without the growth slack
    // (up to half of it with thousands of objects in one file).
    objects.shrink_to_fit();
    Ok(objects)
}

/// Identifies one version of a file cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    /// Objects of the last successful load.
    objects: Vec<KubeObject>,
    /// Why the current version does not load.
    error: Option<String>,
}

/// The directory as last loaded.
#[derive(Debug, Default)]
struct DirState {
    files: BTreeMap<PathBuf, FileState>,
}

fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// The current fingerprints of the config files of `dir`.
fn scan(dir: &Path) -> io::Result<BTreeMap<PathBuf, Fingerprint>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_config_file(&path) {
            if let Some(fp) = fingerprint(&path) {
                out.insert(path, fp);
            }
        }
    }
    Ok(out)
}

impl DirState {
    /// Reloads changed files; returns the current load problems.
    fn reload(&mut self, dir: &Path) -> Vec<LoadProblem> {
        let current = match scan(dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the config directory; keeping the last configuration");
                return vec![LoadProblem {
                    file: dir.to_path_buf(),
                    message: format!("cannot read directory: {e}"),
                }];
            }
        };
        self.files.retain(|path, _| current.contains_key(path));
        for (path, fp) in current {
            let state = self.files.entry(path.clone()).or_default();
            if state.fingerprint.as_ref() == Some(&fp) {
                continue;
            }
            state.fingerprint = Some(fp);
            match load_file(&path) {
                Ok(objects) => {
                    state.objects = objects;
                    state.error = None;
                }
                Err(message) => {
                    tracing::error!(file = %path.display(), error = %message, "config file does not load; keeping its last good objects");
                    state.error = Some(message);
                }
            }
        }
        self.problems()
    }

    fn problems(&self) -> Vec<LoadProblem> {
        self.files
            .iter()
            .filter_map(|(path, s)| {
                s.error.as_ref().map(|m| LoadProblem {
                    file: path.clone(),
                    message: m.clone(),
                })
            })
            .collect()
    }

    /// All objects, files in name order; an object defined twice is
    /// reported and the later definition wins.
    fn snapshot(&self) -> (Snapshot, Vec<LoadProblem>) {
        let mut snapshot = Snapshot::default();
        let mut problems = Vec::new();
        for (path, state) in &self.files {
            for object in &state.objects {
                if let Some(name) = snapshot.insert(object.clone()) {
                    problems.push(LoadProblem {
                        file: path.clone(),
                        message: format!(
                            "{name} is defined more than once; this later definition is used"
                        ),
                    });
                }
            }
        }
        (snapshot, problems)
    }
}

/// What the admin `/status` shows for a route without problems in
/// standalone mode.
pub const HEALTHY_ROUTE_STATUS: &str = "every condition True";

/// No status is written in standalone mode: statuses are kept for the
/// admin `/status` page and logs only. A route without problems (every
/// condition True) keeps its name and a one-line summary instead of its
/// conditions: with 10,000 routes the full JSON statuses would be the
/// largest thing in memory (~30 MB). Gateways, policies and routes with
/// problems keep their whole status; `portcullis validate` prints all.
fn slim_if_healthy(s: &mut StatusUpdate) {
    if matches!(s.kind, StatusKind::HttpRoute | StatusKind::GrpcRoute) && s.problems.is_empty() {
        s.status = serde_json::Value::String(HEALTHY_ROUTE_STATUS.to_string());
    }
}

/// Compiles a snapshot and adds the load problems as statuses.
fn compile_with_problems(
    snapshot: &Snapshot,
    options: &CompileOptions,
    problems: &[LoadProblem],
) -> (RouteTable, Vec<StatusUpdate>) {
    let compiling = std::time::Instant::now();
    let compiled = compile(snapshot, options);
    crate::metrics::global().record_compile(compiling.elapsed());
    let mut statuses = compiled.statuses;
    for s in &mut statuses {
        slim_if_healthy(s);
    }
    statuses.extend(problems.iter().map(|p| StatusUpdate {
        kind: StatusKind::ConfigFile,
        namespace: None,
        name: p.file.display().to_string(),
        status: serde_json::Value::Null,
        problems: vec![p.message.clone()],
    }));
    (compiled.table, statuses)
}

/// Receivers of what the provider publishes. Dropping the handle stops the
/// watcher thread.
#[derive(Debug)]
pub struct FileProviderHandle {
    pub tables: watch::Receiver<Arc<RouteTable>>,
    pub statuses: watch::Receiver<Arc<Vec<StatusUpdate>>>,
    stop: Arc<AtomicBool>,
}

impl FileProviderHandle {
    /// Stops watching (also done on drop).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for FileProviderHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Watches a directory and publishes compiled tables.
pub struct FileProvider;

impl FileProvider {
    /// Loads and compiles `dir` synchronously (so the first table is
    /// complete), then watches it on a background thread. Each publish
    /// increases the table generation by one, starting at
    /// `options.generation + 1`. Fails only if `dir` is not a readable
    /// directory.
    pub fn spawn(dir: PathBuf, options: CompileOptions) -> io::Result<FileProviderHandle> {
        if !std::fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let mut state = DirState::default();
        let mut options = options;
        options.generation += 1;
        let (table, statuses) = state.compile(&dir, &options);
        let (table_tx, table_rx) = watch::channel(Arc::new(table));
        let (status_tx, status_rx) = watch::channel(Arc::new(statuses));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        thread::Builder::new()
            .name("portcullis-config-watch".into())
            .spawn(move || {
                watch_loop(&dir, state, options, table_tx, status_tx, &thread_stop);
            })?;
        Ok(FileProviderHandle {
            tables: table_rx,
            statuses: status_rx,
            stop,
        })
    }
}

impl DirState {
    fn compile(&mut self, dir: &Path, options: &CompileOptions) -> (RouteTable, Vec<StatusUpdate>) {
        let mut problems = self.reload(dir);
        let (snapshot, mut duplicates) = self.snapshot();
        problems.append(&mut duplicates);
        let (table, statuses) = compile_with_problems(&snapshot, options, &problems);
        tracing::info!(
            dir = %dir.display(),
            generation = table.generation,
            ports = table.ports.len(),
            problems = statuses.iter().map(|s| s.problems.len()).sum::<usize>(),
            "configuration compiled"
        );
        (table, statuses)
    }
}

fn watch_loop(
    dir: &Path,
    mut state: DirState,
    mut options: CompileOptions,
    tables: watch::Sender<Arc<RouteTable>>,
    statuses: watch::Sender<Arc<Vec<StatusUpdate>>>,
    stop: &AtomicBool,
) {
    let loaded = |state: &DirState| -> BTreeMap<PathBuf, Fingerprint> {
        state
            .files
            .iter()
            .filter_map(|(p, s)| s.fingerprint.clone().map(|f| (p.clone(), f)))
            .collect()
    };
    let mut last_seen = scan(dir).ok();
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(POLL_INTERVAL);
        let now = scan(dir).ok();
        let changed = match &now {
            Some(now) => *now != loaded(&state),
            None => false,
        };
        // Debounce: reload only once the directory looked the same on two
        // consecutive polls, so an editor's write-rename dance or a
        // multi-file `cp` is picked up as one change.
        if changed && now == last_seen {
            options.generation += 1;
            let (table, new_statuses) = state.compile(dir, &options);
            // Receivers may all be gone (shutting down): nothing to do then.
            if tables.send(Arc::new(table)).is_err() && statuses.is_closed() {
                return;
            }
            let _ = statuses.send(Arc::new(new_statuses));
        }
        last_seen = now;
    }
}
