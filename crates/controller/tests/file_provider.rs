//! The YAML directory provider: load once, watch, keep the last good
//! configuration when a file breaks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_controller::file::{load_dir, FileProvider, FileProviderHandle};
use portcullis_controller::{compile, CompileOptions, StatusKind, StatusUpdate};
use portcullis_model::RouteTable;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("portcullis-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn write(&self, file: &str, text: &str) {
        // Write then rename, as editors and ConfigMap mounts do, so the
        // watcher never sees a half-written file.
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.0.join(file)).expect("rename");
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: { name: portcullis }
spec: { controllerName: portcullis.dev/gateway-controller }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: gw }
spec:
  gatewayClassName: portcullis
  listeners: [{ name: http, port: 8080, protocol: HTTP }]
---
# Kinds Portcullis does not read are skipped.
apiVersion: apps/v1
kind: Deployment
metadata: { name: unrelated }
"#;

fn route(name: &str, path: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {name} }}
spec:
  parentRefs: [{{ name: gw }}]
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: {path} }} }}]
"#
    )
}

/// Paths of all routes served on 8080.
fn paths(table: &RouteTable) -> Vec<String> {
    let mut out: Vec<String> = table
        .port(8080)
        .map(|p| {
            p.virtual_hosts
                .iter()
                .flat_map(|v| &v.routes)
                .map(|r| match &r.matcher.path {
                    portcullis_model::PathMatch::Prefix(p)
                    | portcullis_model::PathMatch::Exact(p) => p.clone(),
                    portcullis_model::PathMatch::Regex(p) => p.source().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits (bounded) for a table satisfying `done`.
fn wait_for_table(
    handle: &FileProviderHandle,
    done: impl Fn(&RouteTable) -> bool,
) -> Arc<RouteTable> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let table = handle.tables.borrow().clone();
        if done(&table) {
            return table;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; last table: {table:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn file_problems(statuses: &[StatusUpdate]) -> Vec<&StatusUpdate> {
    statuses
        .iter()
        .filter(|s| s.kind == StatusKind::ConfigFile)
        .collect()
}

#[test]
fn load_dir_reads_every_yaml_file_and_defaults_the_namespace() {
    let dir = TempDir::new("load");
    dir.write("gateway.yaml", GATEWAY);
    dir.write(
        "routes.yml",
        &format!("{}\n---\n{}", route("a", "/a"), route("b", "/b")),
    );
    dir.write("notes.txt", "not yaml: [");
    let (snapshot, problems) = load_dir(dir.path());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(snapshot.http_routes.len(), 2);
    assert!(snapshot
        .http_routes
        .keys()
        .all(|k| k.namespace == "default"));
    let compiled = compile(&snapshot, &CompileOptions::default());
    assert_eq!(paths(&compiled.table), vec!["/a", "/b"]);
}

#[test]
fn load_dir_reports_a_broken_file_and_loads_the_rest() {
    let dir = TempDir::new("broken-once");
    dir.write("gateway.yaml", GATEWAY);
    dir.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: { name: x }\nspec: [not, a, map]\n",
    );
    let (snapshot, problems) = load_dir(dir.path());
    assert_eq!(problems.len(), 1);
    assert!(problems[0].file.ends_with("bad.yaml"));
    assert!(
        problems[0].to_string().contains("document 1"),
        "{}",
        problems[0]
    );
    assert_eq!(snapshot.gateways.len(), 1);
}

#[test]
fn the_first_table_is_complete_when_spawn_returns() {
    let dir = TempDir::new("first");
    dir.write("gateway.yaml", GATEWAY);
    dir.write("route.yaml", &route("a", "/a"));
    let handle =
        FileProvider::spawn(dir.path().to_path_buf(), CompileOptions::default()).expect("spawn");
    let table = handle.tables.borrow().clone();
    assert_eq!(table.generation, 1);
    assert_eq!(paths(&table), vec!["/a"]);
    assert!(handle
        .statuses
        .borrow()
        .iter()
        .all(|s| s.problems.is_empty()));
}

#[test]
fn a_change_is_picked_up_and_republished() {
    let dir = TempDir::new("change");
    dir.write("gateway.yaml", GATEWAY);
    dir.write("route.yaml", &route("a", "/a"));
    let handle =
        FileProvider::spawn(dir.path().to_path_buf(), CompileOptions::default()).expect("spawn");
    let first = handle.tables.borrow().generation;

    dir.write("route.yaml", &route("a", "/changed"));
    let table = wait_for_table(&handle, |t| paths(t) == vec!["/changed"]);
    assert!(table.generation > first, "generation increases on publish");

    dir.write("more.yaml", &route("b", "/b"));
    wait_for_table(&handle, |t| paths(t) == vec!["/b", "/changed"]);

    std::fs::remove_file(dir.path().join("more.yaml")).expect("remove");
    wait_for_table(&handle, |t| paths(t) == vec!["/changed"]);
}

#[test]
fn a_broken_file_keeps_its_last_good_objects() {
    let dir = TempDir::new("broken");
    dir.write("gateway.yaml", GATEWAY);
    dir.write("route.yaml", &route("a", "/a"));
    let handle =
        FileProvider::spawn(dir.path().to_path_buf(), CompileOptions::default()).expect("spawn");
    let before = handle.tables.borrow().generation;

    // Broken YAML in route.yaml, and a valid change elsewhere in the same
    // moment: the valid change is served, route.yaml's old route too.
    dir.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: a\n",
    );
    dir.write("other.yaml", &route("b", "/b"));
    let table = wait_for_table(&handle, |t| {
        t.generation > before && paths(t) == vec!["/a", "/b"]
    });
    assert_eq!(paths(&table), vec!["/a", "/b"]);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let statuses = handle.statuses.borrow().clone();
        let problems = file_problems(&statuses);
        if let Some(p) = problems.first() {
            assert!(p.name.ends_with("route.yaml"), "{}", p.name);
            assert!(!p.problems.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file is reported in statuses"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Fixing the file replaces the kept objects and clears the problem.
    dir.write("route.yaml", &route("a", "/fixed"));
    wait_for_table(&handle, |t| paths(t) == vec!["/b", "/fixed"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !file_problems(&handle.statuses.borrow()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the problem is cleared once the file loads"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn spawn_fails_for_a_missing_directory() {
    let missing = std::env::temp_dir().join("portcullis-definitely-missing-dir");
    assert!(FileProvider::spawn(missing, CompileOptions::default()).is_err());
}

#[test]
fn the_quickstart_compiles_without_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let (snapshot, problems) = load_dir(&dir);
    assert!(problems.is_empty(), "{problems:?}");
    let compiled = compile(&snapshot, &CompileOptions::default());
    for s in &compiled.statuses {
        assert!(
            s.problems.is_empty(),
            "{}: {:?}",
            s.display_name(),
            s.problems
        );
    }
    let port = compiled.table.port(8080).expect("quickstart serves 8080");
    assert!(!port.virtual_hosts.is_empty());
}

#[test]
fn healthy_routes_keep_a_one_line_status_and_routes_with_problems_keep_all() {
    let dir = TempDir::new("slim");
    let broken = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: broken }
spec:
  parentRefs: [{ name: gw }]
  rules:
    - backendRefs: [{ name: missing, port: 80 }]
"#;
    dir.write(
        "all.yaml",
        &format!("{GATEWAY}\n---\n{}\n---\n{broken}", route("fine", "/a")),
    );
    let handle =
        FileProvider::spawn(dir.path().to_path_buf(), CompileOptions::default()).expect("spawn");
    let statuses = handle.statuses.borrow().clone();
    let find = |kind: StatusKind, name: &str| {
        statuses
            .iter()
            .find(|s| s.kind == kind && s.name == name)
            .unwrap_or_else(|| panic!("no status for {name}: {statuses:?}"))
    };
    let fine = find(StatusKind::HttpRoute, "fine");
    assert!(fine.problems.is_empty());
    assert_eq!(
        fine.status,
        portcullis_controller::file::HEALTHY_ROUTE_STATUS
    );
    let broken = find(StatusKind::HttpRoute, "broken");
    assert!(!broken.problems.is_empty());
    assert_eq!(
        broken
            .parent_condition("gw", None, "ResolvedRefs")
            .map(|c| c["reason"].clone()),
        Some(serde_json::json!("BackendNotFound")),
        "{broken:?}"
    );
    assert!(find(StatusKind::Gateway, "gw")
        .condition("Programmed")
        .is_some());
}
