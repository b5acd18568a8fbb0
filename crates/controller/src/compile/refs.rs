//! Cross-namespace references and ReferenceGrant.

use crate::snapshot::{ObjectKey, Snapshot};

/// The referring side of a reference.
pub(crate) struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The referred-to side of a reference.
pub(crate) struct To<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// May `from` refer to `to`? Always within one namespace; across namespaces
/// only when a ReferenceGrant in the target namespace allows it.
pub(crate) fn permitted(snapshot: &Snapshot, from: &From<'_>, to: &To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    // Grants are keyed by namespace/name: the grants of one namespace are
    // one range, starting at the empty name.
    snapshot
        .reference_grants
        .range(ObjectKey::new(to.namespace, "")..)
        .take_while(|(key, _)| key.namespace == to.namespace)
        .any(|(_, grant)| {
            let from_ok = grant.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            });
            let to_ok = grant.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name
                        .as_deref()
                        .is_none_or(|n| n.is_empty() || n == to.name)
            });
            from_ok && to_ok
        })
}
