//! What the status writer sends, computed purely: the compiled status
//! merged into the status the API server has, and whether that is a change
//! at all.
//!
//! Rules (Gateway API conventions):
//! - A condition whose `status` did not change keeps its
//!   `lastTransitionTime`; a new or flipped one gets `now`.
//! - GatewayClass / Gateway: the condition types we set are replaced, other
//!   types (another controller's, a policy's) are left as they are; so are
//!   status fields compile does not produce (`addresses`,
//!   `supportedFeatures`). Listener conditions follow the same rule, per
//!   listener name.
//! - Routes: `status.parents` entries of other controllers stay as they are,
//!   in their order; ours (by `controllerName`) are replaced by the compiled
//!   ones, whose conditions keep their transition times by `parentRef`.
//! - Nothing is sent when the merged status equals the observed one, or
//!   equals what we wrote last (so a store that has not yet seen our write,
//!   or a server that normalizes a field differently, never causes a loop of
//!   writes).
//! - The patch carries the `resourceVersion` it was computed from: if
//!   anyone changed the object in between, the API server refuses it (409)
//!   and the next watch event brings a fresh base.

use serde_json::{json, Map, Value};

use crate::status::StatusKind;

/// Which object a status belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusTarget {
    pub kind: StatusKind,
    /// `None` for GatewayClasses.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for StatusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// An object's status as last seen from the API server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub resource_version: Option<String>,
    /// The whole `status` field (`Null` when absent).
    pub status: Value,
}

/// What the writer last wrote to an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The resourceVersion the patch was computed from.
    pub based_on: Option<String>,
    /// The resourceVersion the API server answered with.
    pub result: Option<String>,
    pub status: Value,
}

/// One status write to send.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    /// Precondition: the patch applies only to this version.
    pub resource_version: Option<String>,
    pub status: Value,
}

impl StatusPatch {
    /// The JSON merge patch body for the `status` subresource. `status`
    /// holds every top-level field we manage in full, so the merge replaces
    /// them (arrays are replaced wholesale) and keeps the others.
    pub fn body(&self) -> Value {
        let mut body = json!({ "status": self.status });
        if let Some(rv) = &self.resource_version {
            body["metadata"] = json!({ "resourceVersion": rv });
        }
        body
    }
}

/// Plans the write for one object: `None` when nothing needs writing.
pub fn plan(
    kind: StatusKind,
    observed: &Observed,
    ours: &Value,
    written: Option<&Written>,
    controller_name: &str,
    now: &str,
) -> Option<StatusPatch> {
    if kind == StatusKind::ConfigFile || ours.is_null() {
        return None;
    }
    // The store may not have seen our last write yet: then what we wrote
    // is the real current status.
    let (base, resource_version) = match written {
        Some(w) if w.based_on.is_some() && w.based_on == observed.resource_version => {
            (&w.status, w.result.clone())
        }
        _ => (&observed.status, observed.resource_version.clone()),
    };
    if is_route(kind)
        && !has_our_parents(ours, controller_name)
        && !has_our_parents(base, controller_name)
    {
        // A route attached to no Gateway of ours, and never was: its status
        // belongs to other controllers.
        return None;
    }
    let desired = desired_status(kind, base, ours, controller_name, now);
    if &desired == base || written.is_some_and(|w| w.status == desired) {
        return None;
    }
    Some(StatusPatch {
        resource_version,
        status: desired,
    })
}

fn is_route(kind: StatusKind) -> bool {
    matches!(kind, StatusKind::HttpRoute | StatusKind::GrpcRoute)
}

fn has_our_parents(status: &Value, controller_name: &str) -> bool {
    array(status.get("parents"))
        .iter()
        .any(|p| p.get("controllerName").and_then(Value::as_str) == Some(controller_name))
}

/// The status to write: `ours` merged into `observed` (rules in the module
/// docs).
pub fn desired_status(
    kind: StatusKind,
    observed: &Value,
    ours: &Value,
    controller_name: &str,
    now: &str,
) -> Value {
    let mut out: Map<String, Value> = observed.as_object().cloned().unwrap_or_default();
    let Some(ours) = ours.as_object() else {
        return Value::Object(out);
    };
    for (key, value) in ours {
        let merged = match (kind, key.as_str()) {
            (StatusKind::HttpRoute | StatusKind::GrpcRoute, "parents") => {
                merge_parents(out.get(key), value, "parentRef", controller_name, now)
            }
            (StatusKind::Policy(_) | StatusKind::BackendTlsPolicy, "ancestors") => {
                merge_parents(out.get(key), value, "ancestorRef", controller_name, now)
            }
            (_, "conditions") => merge_conditions(out.get(key), value, true, now),
            (StatusKind::Gateway, "listeners") => merge_listeners(out.get(key), value, now),
            _ => value.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

fn array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Our conditions with transition times carried over from `old` where the
/// status is unchanged; with `keep_others`, old conditions of types we do
/// not set are kept after ours.
pub fn merge_conditions(old: Option<&Value>, ours: &Value, keep_others: bool, now: &str) -> Value {
    let old = array(old);
    let ours = array(Some(ours));
    let mut out: Vec<Value> = ours
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let previous = old.iter().find(|o| o.get("type") == c.get("type"));
            let time = match previous {
                Some(p) if p.get("status") == c.get("status") => p
                    .get("lastTransitionTime")
                    .cloned()
                    .unwrap_or_else(|| Value::from(now)),
                _ => Value::from(now),
            };
            if let Some(map) = c.as_object_mut() {
                map.insert("lastTransitionTime".into(), time);
            }
            c
        })
        .collect();
    if keep_others {
        out.extend(
            old.iter()
                .filter(|o| !ours.iter().any(|c| c.get("type") == o.get("type")))
                .cloned(),
        );
    }
    Value::Array(out)
}

fn merge_listeners(old: Option<&Value>, ours: &Value, now: &str) -> Value {
    let old = array(old);
    Value::Array(
        array(Some(ours))
            .iter()
            .map(|l| {
                let mut l = l.clone();
                let previous = old.iter().find(|o| o.get("name") == l.get("name"));
                let merged = merge_conditions(
                    previous.and_then(|p| p.get("conditions")),
                    l.get("conditions").unwrap_or(&Value::Null),
                    true,
                    now,
                );
                if let Some(map) = l.as_object_mut() {
                    map.insert("conditions".into(), merged);
                }
                l
            })
            .collect(),
    )
}

/// Merges per-parent entries (route `parents`, policy `ancestors`), each
/// identified by its `ref_key` and owned by one controller: other
/// controllers' entries are kept, ours replaced.
fn merge_parents(
    old: Option<&Value>,
    ours: &Value,
    ref_key: &str,
    controller_name: &str,
    now: &str,
) -> Value {
    let old = array(old);
    let is_ours =
        |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(controller_name);
    let mut out: Vec<Value> = old.iter().filter(|p| !is_ours(p)).cloned().collect();
    out.extend(array(Some(ours)).iter().map(|p| {
        let mut p = p.clone();
        let previous = old
            .iter()
            .find(|o| is_ours(o) && o.get(ref_key) == p.get(ref_key));
        // Within our own entry we own every condition.
        let merged = merge_conditions(
            previous.and_then(|o| o.get("conditions")),
            p.get("conditions").unwrap_or(&Value::Null),
            false,
            now,
        );
        if let Some(map) = p.as_object_mut() {
            map.insert("conditions".into(), merged);
        }
        p
    }));
    Value::Array(out)
}

/// `now` as Kubernetes writes times (RFC 3339, seconds, UTC).
pub fn format_time(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let seconds = i64::try_from(seconds).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: &str = "portcullis.dev/gateway-controller";
    const T0: &str = "2026-01-01T00:00:00Z";
    const NOW: &str = "2026-06-01T12:00:00Z";

    fn cond(t: &str, status: &str, reason: &str, generation: i64) -> Value {
        json!({"type": t, "status": status, "reason": reason, "message": "m", "observedGeneration": generation})
    }

    fn timed(mut c: Value, time: &str) -> Value {
        c["lastTransitionTime"] = json!(time);
        c
    }

    #[test]
    fn unchanged_condition_keeps_its_transition_time_changed_one_gets_now() {
        let old = json!([
            timed(cond("Accepted", "True", "Accepted", 1), T0),
            timed(cond("Programmed", "True", "Programmed", 1), T0),
        ]);
        let ours = json!([
            cond("Accepted", "True", "Accepted", 2),
            cond("Programmed", "False", "Invalid", 2),
        ]);
        let merged = merge_conditions(Some(&old), &ours, true, NOW);
        assert_eq!(
            merged,
            json!([
                timed(cond("Accepted", "True", "Accepted", 2), T0),
                timed(cond("Programmed", "False", "Invalid", 2), NOW),
            ])
        );
    }

    #[test]
    fn gateway_keeps_other_condition_types_and_fields_we_do_not_compute() {
        let observed = json!({
            "addresses": [{"type": "IPAddress", "value": "10.0.0.1"}],
            "conditions": [timed(cond("example.com/Audited", "True", "Ok", 1), T0)],
        });
        let ours = json!({
            "conditions": [cond("Accepted", "True", "Accepted", 1)],
            "listeners": [{"name": "http", "attachedRoutes": 1, "supportedKinds": [],
                           "conditions": [cond("Accepted", "True", "Accepted", 1)]}],
        });
        let desired = desired_status(StatusKind::Gateway, &observed, &ours, US, NOW);
        assert_eq!(desired["addresses"], observed["addresses"]);
        assert_eq!(
            desired["conditions"],
            json!([
                timed(cond("Accepted", "True", "Accepted", 1), NOW),
                timed(cond("example.com/Audited", "True", "Ok", 1), T0),
            ])
        );
        assert_eq!(
            desired["listeners"][0]["conditions"][0]["lastTransitionTime"],
            json!(NOW)
        );
        assert_eq!(desired["listeners"][0]["attachedRoutes"], json!(1));
    }

    #[test]
    fn listener_conditions_keep_time_per_listener_name() {
        let observed = json!({"listeners": [
            {"name": "a", "conditions": [timed(cond("Accepted", "True", "Accepted", 1), T0)]},
            {"name": "b", "conditions": [timed(cond("Accepted", "True", "Accepted", 1), T0)]},
        ]});
        let ours = json!({"listeners": [
            {"name": "b", "conditions": [cond("Accepted", "False", "PortUnavailable", 1)]},
            {"name": "a", "conditions": [cond("Accepted", "True", "Accepted", 1)]},
        ]});
        let desired = desired_status(StatusKind::Gateway, &observed, &ours, US, NOW);
        assert_eq!(desired["listeners"][0]["name"], json!("b"));
        assert_eq!(
            desired["listeners"][0]["conditions"][0]["lastTransitionTime"],
            json!(NOW)
        );
        assert_eq!(
            desired["listeners"][1]["conditions"][0]["lastTransitionTime"],
            json!(T0)
        );
    }

    fn parent(controller: &str, gateway: &str, conditions: Value) -> Value {
        json!({
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway},
            "controllerName": controller,
            "conditions": conditions,
        })
    }

    #[test]
    fn route_parents_of_other_controllers_are_left_alone() {
        let theirs = parent(
            "example.com/other",
            "their-gw",
            json!([timed(cond("Accepted", "False", "NoMatchingParent", 3), T0)]),
        );
        let observed = json!({"parents": [
            theirs.clone(),
            parent(US, "gw", json!([
                timed(cond("Accepted", "True", "Accepted", 1), T0),
                timed(cond("ResolvedRefs", "True", "ResolvedRefs", 1), T0),
                timed(cond("Stale", "True", "Old", 1), T0),
            ])),
            parent(US, "gone", json!([timed(cond("Accepted", "True", "Accepted", 1), T0)])),
        ]});
        let ours = json!({"parents": [
            parent(US, "gw", json!([
                cond("Accepted", "True", "Accepted", 2),
                cond("ResolvedRefs", "False", "BackendNotFound", 2),
            ])),
        ]});
        let desired = desired_status(StatusKind::HttpRoute, &observed, &ours, US, NOW);
        assert_eq!(
            desired,
            json!({"parents": [
                theirs,
                parent(US, "gw", json!([
                    timed(cond("Accepted", "True", "Accepted", 2), T0),
                    timed(cond("ResolvedRefs", "False", "BackendNotFound", 2), NOW),
                ])),
            ]})
        );
    }

    #[test]
    fn a_first_status_gets_now_everywhere() {
        let ours = json!({"parents": [parent(US, "gw", json!([cond("Accepted", "True", "Accepted", 1)]))]});
        let desired = desired_status(StatusKind::GrpcRoute, &Value::Null, &ours, US, NOW);
        assert_eq!(
            desired["parents"][0]["conditions"][0]["lastTransitionTime"],
            json!(NOW)
        );
    }

    fn observed(rv: &str, status: Value) -> Observed {
        Observed {
            resource_version: Some(rv.into()),
            status,
        }
    }

    #[test]
    fn no_write_when_nothing_changed() {
        let ours = json!({"conditions": [cond("Accepted", "True", "Accepted", 1)]});
        let current = json!({"conditions": [timed(cond("Accepted", "True", "Accepted", 1), T0)]});
        assert_eq!(
            plan(
                StatusKind::GatewayClass,
                &observed("5", current),
                &ours,
                None,
                US,
                NOW
            ),
            None
        );
    }

    #[test]
    fn a_change_is_written_with_the_resource_version_it_was_based_on() {
        let ours = json!({"conditions": [cond("Accepted", "True", "Accepted", 2)]});
        let current = json!({"conditions": [timed(cond("Accepted", "True", "Accepted", 1), T0)]});
        let patch = plan(
            StatusKind::GatewayClass,
            &observed("5", current),
            &ours,
            None,
            US,
            NOW,
        )
        .expect("a write");
        assert_eq!(patch.resource_version.as_deref(), Some("5"));
        assert_eq!(
            patch.body(),
            json!({
                "metadata": {"resourceVersion": "5"},
                "status": {"conditions": [timed(cond("Accepted", "True", "Accepted", 2), T0)]},
            })
        );
    }

    #[test]
    fn a_store_behind_our_last_write_does_not_cause_a_second_write() {
        let ours = json!({"conditions": [cond("Accepted", "False", "Invalid", 2)]});
        let stale = observed(
            "5",
            json!({"conditions": [timed(cond("Accepted", "True", "Accepted", 1), T0)]}),
        );
        let first = plan(StatusKind::GatewayClass, &stale, &ours, None, US, NOW).expect("a write");
        let written = Written {
            based_on: Some("5".into()),
            result: Some("6".into()),
            status: first.status.clone(),
        };
        // A minute later, a recompile for another reason; the store still
        // shows version 5.
        let later = "2026-06-01T12:01:00Z";
        assert_eq!(
            plan(
                StatusKind::GatewayClass,
                &stale,
                &ours,
                Some(&written),
                US,
                later
            ),
            None
        );
        // The store caught up: still nothing to write.
        let caught_up = observed("6", first.status.clone());
        assert_eq!(
            plan(
                StatusKind::GatewayClass,
                &caught_up,
                &ours,
                Some(&written),
                US,
                later
            ),
            None
        );
        // Based on the stale store, a real change is computed against what
        // we wrote, and sent with the version our write produced.
        let changed = json!({"conditions": [cond("Accepted", "True", "Accepted", 3)]});
        let next = plan(
            StatusKind::GatewayClass,
            &stale,
            &changed,
            Some(&written),
            US,
            later,
        )
        .expect("a write");
        assert_eq!(next.resource_version.as_deref(), Some("6"));
        assert_eq!(
            next.status["conditions"][0]["lastTransitionTime"],
            json!(later)
        );
    }

    #[test]
    fn someone_else_removing_our_entry_gets_it_written_again() {
        let ours = json!({"parents": [parent(US, "gw", json!([cond("Accepted", "True", "Accepted", 1)]))]});
        let first = plan(
            StatusKind::HttpRoute,
            &observed("1", Value::Null),
            &ours,
            None,
            US,
            T0,
        )
        .expect("a write");
        let written = Written {
            based_on: Some("1".into()),
            result: Some("2".into()),
            status: first.status,
        };
        let wiped = observed("3", json!({"parents": []}));
        let again = plan(
            StatusKind::HttpRoute,
            &wiped,
            &ours,
            Some(&written),
            US,
            NOW,
        )
        .expect("a write");
        assert_eq!(again.resource_version.as_deref(), Some("3"));
        assert_eq!(again.status["parents"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn routes_of_other_controllers_are_not_touched() {
        // Compile reports a route whose parentRefs are all foreign with an
        // empty parents list: nothing to write, whatever the route shows.
        let ours = json!({"parents": []});
        assert_eq!(
            plan(
                StatusKind::HttpRoute,
                &observed("1", Value::Null),
                &ours,
                None,
                US,
                NOW
            ),
            None
        );
        let theirs = json!({"parents": [parent("example.com/other", "gw", json!([]))]});
        assert_eq!(
            plan(
                StatusKind::HttpRoute,
                &observed("1", theirs),
                &ours,
                None,
                US,
                NOW
            ),
            None
        );
        // A route detached from our Gateway: our stale entry is removed.
        let stale = json!({"parents": [parent(US, "gw", json!([timed(cond("Accepted", "True", "Accepted", 1), T0)]))]});
        let patch = plan(
            StatusKind::HttpRoute,
            &observed("2", stale),
            &ours,
            None,
            US,
            NOW,
        )
        .expect("a write");
        assert_eq!(patch.status, json!({"parents": []}));
    }

    #[test]
    fn config_files_are_never_written() {
        assert_eq!(
            plan(
                StatusKind::ConfigFile,
                &Observed::default(),
                &Value::Null,
                None,
                US,
                NOW
            ),
            None
        );
    }

    #[test]
    fn times_are_rfc3339_seconds_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600);
        assert_eq!(format_time(t), "2026-01-01T00:00:00Z");
    }
}
