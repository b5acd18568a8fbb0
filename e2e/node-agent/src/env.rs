//! What a container sees: its environment (values, downward API fieldRefs,
//! ConfigMap/Secret refs, $(VAR) expansion) and its volumes, materialized as
//! directories under the agent's state dir and bind-mounted into the
//! container's own mount namespace.

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, ObjectFieldSelector, Pod, Secret, ServiceAccount,
};
use kube::api::PostParams;
use kube::{Api, Client};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;

/// Resolves a downward-API field path against the pod.
pub fn field_ref(
    pod: &Pod,
    sel: &ObjectFieldSelector,
    pod_ip: &str,
    host_ip: &str,
) -> Result<String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    let p = sel.field_path.as_str();
    let lookup = |m: &Option<BTreeMap<String, String>>, key: &str| {
        m.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let bracket = |prefix: &str| -> Option<String> {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('['))
            .and_then(|r| r.strip_suffix(']'))
            .map(|k| k.trim_matches(|c| c == '\'' || c == '"').to_string())
    };
    Ok(match p {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        "metadata.labels" => fmt_map(&md.labels),
        "metadata.annotations" => fmt_map(&md.annotations),
        _ => {
            if let Some(k) = bracket("metadata.labels") {
                lookup(&md.labels, &k)
            } else if let Some(k) = bracket("metadata.annotations") {
                lookup(&md.annotations, &k)
            } else {
                bail!("unsupported fieldRef {p}")
            }
        }
    })
}

fn fmt_map(m: &Option<BTreeMap<String, String>>) -> String {
    m.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, anything else stays.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
                        out.push_str(v);
                        i += 2 + end + 1;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

pub async fn container_env(
    client: &Client,
    cfg: &Config,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let host_ip = cfg.gateway.to_string();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        ("KUBERNETES_SERVICE_HOST".into(), cfg.apiserver_host.clone()),
        (
            "KUBERNETES_SERVICE_PORT".into(),
            cfg.apiserver_port.to_string(),
        ),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            cfg.apiserver_port.to_string(),
        ),
    ];
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(&r.name)
                .await?
            {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("configmap {ns}/{} (envFrom) not found", r.name),
            }
        }
        if let Some(r) = &from.secret_ref {
            match Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(&r.name)
                .await?
            {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("secret {ns}/{} (envFrom) not found", r.name),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let v = if let Some(v) = &e.value {
            expand(v, &env)
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_ref(pod, f, pod_ip, &host_ip)?
            } else if let Some(r) = &src.config_map_key_ref {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get_opt(&r.name)
                    .await?;
                match cm
                    .and_then(|cm| cm.data)
                    .and_then(|d| d.get(&r.key).cloned())
                {
                    Some(v) => v,
                    None if r.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: key {} of configmap {ns}/{} not found",
                        e.name,
                        r.key,
                        r.name
                    ),
                }
            } else if let Some(r) = &src.secret_key_ref {
                let s = Api::<Secret>::namespaced(client.clone(), &ns)
                    .get_opt(&r.name)
                    .await?;
                match s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: key {} of secret {ns}/{} not found",
                        e.name,
                        r.key,
                        r.name
                    ),
                }
            } else if src.resource_field_ref.is_some() {
                // No resource accounting here: report "unlimited"-ish values.
                "0".to_string()
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, e.name.clone(), v);
    }
    Ok(env)
}

/// One bind mount into the container's mount namespace.
#[derive(Debug, Clone)]
pub struct Mount {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

/// Writes every volume of the pod below `dir` (one directory per volume).
pub async fn materialize_volumes(
    client: &Client,
    cfg: &Config,
    pod: &Pod,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| anyhow!("pod without spec"))?;
    for v in spec.volumes.iter().flatten() {
        let vdir = dir.join(&v.name);
        if let Some(hp) = &v.host_path {
            out.insert(v.name.clone(), PathBuf::from(&hp.path));
            continue;
        }
        std::fs::create_dir_all(&vdir).with_context(|| format!("creating {}", vdir.display()))?;
        if v.empty_dir.is_some() {
        } else if let Some(cm) = &v.config_map {
            let name = cm.name.clone();
            write_config_map(client, &ns, &name, &cm.items, cm.optional, &vdir).await?;
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            write_secret(client, &ns, &name, &s.items, s.optional, &vdir).await?;
        } else if let Some(d) = &v.downward_api {
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    write_file(
                        &vdir,
                        &item.path,
                        field_ref(pod, f, "", &cfg.gateway.to_string())?.as_bytes(),
                    )?;
                }
            }
        } else if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token =
                        request_token(client, pod, t.audience.clone(), t.expiration_seconds)
                            .await?;
                    write_file(&vdir, &t.path, token.as_bytes())?;
                }
                if let Some(cm) = &src.config_map {
                    write_config_map(client, &ns, &cm.name, &cm.items, cm.optional, &vdir).await?;
                }
                if let Some(s) = &src.secret {
                    write_secret(client, &ns, &s.name, &s.items, s.optional, &vdir).await?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            write_file(
                                &vdir,
                                &item.path,
                                field_ref(pod, f, "", &cfg.gateway.to_string())?.as_bytes(),
                            )?;
                        }
                    }
                }
            }
        } else {
            bail!("volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported", v.name);
        }
        out.insert(v.name.clone(), vdir);
    }
    Ok(out)
}

pub fn mounts_for(c: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Vec<Mount>> {
    let mut out = vec![];
    for m in c.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&m.name)
            .ok_or_else(|| anyhow!("volumeMount {:?} names no volume of the pod", m.name))?;
        let src = match m.sub_path.as_deref() {
            Some(sp) if !sp.is_empty() => base.join(sp),
            _ => base.clone(),
        };
        out.push(Mount {
            src,
            dst: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    Ok(out)
}

async fn write_config_map(
    client: &Client,
    ns: &str,
    name: &str,
    items: &Option<Vec<KeyToPath>>,
    optional: Option<bool>,
    dir: &Path,
) -> Result<()> {
    let Some(cm) = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        if optional == Some(true) {
            return Ok(());
        }
        bail!("configmap {ns}/{name} (volume) not found");
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        data.insert(k, v.0);
    }
    write_items(data, items, dir)
}

async fn write_secret(
    client: &Client,
    ns: &str,
    name: &str,
    items: &Option<Vec<KeyToPath>>,
    optional: Option<bool>,
    dir: &Path,
) -> Result<()> {
    let Some(s) = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        if optional == Some(true) {
            return Ok(());
        }
        bail!("secret {ns}/{name} (volume) not found");
    };
    let mut data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    write_items(data, items, dir)
}

fn write_items(
    data: BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    dir: &Path,
) -> Result<()> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                if let Some(v) = data.get(&it.key) {
                    write_file(dir, &it.path, v)?;
                }
            }
        }
        _ => {
            for (k, v) in &data {
                write_file(dir, k, v)?;
            }
        }
    }
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8]) -> Result<()> {
    if rel.split('/').any(|s| s == "..") || rel.starts_with('/') {
        bail!("refusing volume path {rel:?}");
    }
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration.unwrap_or(3607).max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &tr)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {ns}/{sa}"))?;
    Ok(resp.status.map(|s| s.token).unwrap_or_default())
}
