use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use portcullis::lifecycle::{ServeOptions, Shutdown};
use portcullis_controller::kube::provision::render::ProvisionSettings;
use portcullis_dataplane::DataPlaneConfig;

/// Portcullis: a Kubernetes-native API gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes objects found in a directory of YAML files
    /// (standalone mode, no cluster); reloads on change.
    Run {
        #[arg(long)]
        config_dir: PathBuf,
        /// Address the Gateway listener ports are bound on.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Admin listener: /healthz /readyz /metrics /config_dump /status.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        #[command(flatten)]
        serve: ServeOptions,
    },
    /// Compile a directory once and print every object's status; exits
    /// non-zero when anything is invalid.
    Validate { dir: PathBuf },
    /// The Kubernetes controller: watches the cluster, compiles, and as
    /// leader (a Lease) writes Gateway API status. Kubeconfig from
    /// --kubeconfig, KUBECONFIG, ~/.kube/config or the pod's service account.
    Controller {
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the
        /// in-cluster service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// GatewayClasses with this spec.controllerName are ours.
        #[arg(long, default_value = portcullis_api::CONTROLLER_NAME)]
        controller_name: String,
        /// Namespace of the leader Lease (default: the pod's, from
        /// POD_NAMESPACE).
        #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
        leader_election_namespace: String,
        /// Name of the leader Lease.
        #[arg(long, default_value = "portcullis-controller")]
        lease_name: String,
        /// Write status without an election (one replica only).
        #[arg(long)]
        no_leader_election: bool,
        /// Admin listener: /healthz /readyz /metrics /config_dump /status.
        #[arg(long, default_value = "0.0.0.0:9902")]
        admin: SocketAddr,
        /// Image of the provisioned proxies (unless GatewayParameters
        /// name one).
        #[arg(long, default_value = "portcullis:latest")]
        proxy_image: String,
        /// ClusterRole the provisioned proxies' ServiceAccounts are bound to.
        #[arg(long, default_value = "portcullis-proxy")]
        proxy_cluster_role: String,
        /// Do not provision a Deployment and Service per Gateway.
        #[arg(long)]
        no_provisioning: bool,
        /// Gateway API conformance features written to our GatewayClasses'
        /// status.supportedFeatures, comma-separated (default: the core
        /// ones: Gateway, GRPCRoute, HTTPRoute, ReferenceGrant, TLSRoute).
        #[arg(long, value_delimiter = ',')]
        supported_features: Option<Vec<String>>,
    },
    /// The data plane of one Gateway: watches the cluster, compiles only
    /// that Gateway and serves it. Never writes to the API server.
    Proxy {
        /// The Gateway to serve, as NAMESPACE/NAME.
        #[arg(long, value_parser = portcullis::proxy_cmd::parse_gateway)]
        gateway: portcullis_controller::ObjectKey,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the
        /// in-cluster service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, default_value = portcullis_api::CONTROLLER_NAME)]
        controller_name: String,
        /// Address the Gateway listener ports are bound on.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Admin listener: /healthz /readyz /metrics /config_dump /status
        /// (up, and ready, once the first complete table is served).
        #[arg(long, default_value = "0.0.0.0:9901")]
        admin: SocketAddr,
        #[command(flatten)]
        serve: ServeOptions,
    },
    /// Generate the CustomResourceDefinitions of Portcullis' own resources
    /// from its Rust types: printed as YAML (`portcullis crds | kubectl
    /// apply -f -`), written one file per CRD (`--out-dir crds`), or
    /// compared with a directory (`--check crds`, exits 1 on drift).
    #[command(alias = "crdgen")]
    Crds {
        /// Write one file per CRD here (and remove generated files of kinds
        /// that no longer exist).
        #[arg(long, conflicts_with = "check")]
        out_dir: Option<PathBuf>,
        /// Compare this directory with the generated CRDs.
        #[arg(long)]
        check: Option<PathBuf>,
    },
    /// An echo backend answering with a JSON description of each request
    /// (the Gateway API conformance echo format).
    Echo {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { dir } => {
            match portcullis::validate::validate(&dir, &mut std::io::stdout()) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run {
            config_dir,
            bind,
            admin,
            serve,
        } => run_async(async move {
            let config = DataPlaneConfig {
                bind_ip: bind,
                access_log: serve.access_log()?,
                spans: serve.spans()?,
                limits: serve.limits.limits()?,
                ..DataPlaneConfig::default()
            };
            let running =
                portcullis::standalone::start(config_dir, bind, admin, Some(config)).await?;
            shutdown_signal().await;
            running
                .shutdown(Shutdown {
                    delay: serve.shutdown_delay.unwrap_or(Duration::ZERO),
                    drain: serve.drain_timeout,
                })
                .await;
            Ok(())
        }),
        Command::Controller {
            kubeconfig,
            controller_name,
            leader_election_namespace,
            lease_name,
            no_leader_election,
            admin,
            proxy_image,
            proxy_cluster_role,
            no_provisioning,
            supported_features,
        } => {
            let args = portcullis::controller_cmd::ControllerArgs {
                kubeconfig,
                controller_name,
                leader_election: (!no_leader_election)
                    .then_some((leader_election_namespace, lease_name)),
                admin,
                supported_features,
                provision: (!no_provisioning).then_some(ProvisionSettings {
                    default_image: proxy_image,
                    proxy_cluster_role,
                }),
            };
            run_async(portcullis::controller_cmd::run(args, shutdown_signal()))
        }
        Command::Proxy {
            gateway,
            kubeconfig,
            controller_name,
            bind,
            admin,
            serve,
        } => run_async(async move {
            let args = portcullis::proxy_cmd::ProxyArgs {
                kubeconfig,
                gateway,
                controller_name,
                bind,
                admin,
                access_log: serve.access_log()?,
                spans: serve.spans()?,
                limits: serve.limits.limits()?,
            };
            let proxy = tokio::select! {
                proxy = portcullis::proxy_cmd::start(args) => proxy?,
                _ = shutdown_signal() => return Ok(()),
            };
            shutdown_signal().await;
            proxy
                .shutdown(Shutdown {
                    delay: serve.shutdown_delay.unwrap_or(Duration::from_secs(5)),
                    drain: serve.drain_timeout,
                })
                .await;
            Ok(())
        }),
        Command::Crds { out_dir, check } => crds(out_dir, check),
        Command::Echo { listen } => run_async(portcullis::echo::run(listen)),
    }
}

fn crds(out_dir: Option<PathBuf>, check: Option<PathBuf>) -> ExitCode {
    let result = match (out_dir, check) {
        (Some(dir), _) => portcullis::crds::write_dir(&dir).map(|files| {
            for f in files {
                println!("wrote {}", f.display());
            }
            true
        }),
        (None, Some(dir)) => portcullis::crds::check_dir(&dir).map(|problems| {
            for p in &problems {
                eprintln!("{p}");
            }
            if !problems.is_empty() {
                eprintln!("CRDs are out of date: run `make crds`");
            }
            problems.is_empty()
        }),
        (None, None) => portcullis::crds::yaml()
            .map(|text| print!("{text}"))
            .map(|()| true)
            .map_err(Into::into),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_api::parameters::{ProxyLimits, ProxyObservability};
    use portcullis_dataplane::access_log::Field;

    /// What the controller renders from GatewayParameters `spec.limits`
    /// must be flags the proxy accepts, with the same meaning.
    #[test]
    fn gateway_parameters_limits_render_to_accepted_proxy_flags() {
        let limits = ProxyLimits {
            max_request_header_bytes: Some(16384),
            max_request_headers: Some(50),
            max_uri_bytes: Some(2048),
            max_request_body_bytes: Some(0),
            request_header_timeout_seconds: Some(5),
            idle_timeout_seconds: Some(20),
            stream_idle_timeout_seconds: Some(900),
            max_connections: Some(100),
            max_requests_per_connection: Some(1000),
            http2_max_concurrent_streams: Some(64),
            http2_max_pending_accept_reset_streams: Some(10),
            http2_max_local_error_reset_streams: Some(100),
        };
        let args = ["portcullis", "proxy", "--gateway", "infra/edge"]
            .map(String::from)
            .into_iter()
            .chain(limits.to_args());
        let cli = Cli::try_parse_from(args).expect("the proxy accepts the rendered flags");
        let Command::Proxy { serve, .. } = cli.command else {
            panic!("not the proxy command");
        };
        let parsed = serve.limits.limits().expect("valid limits");
        assert_eq!(parsed.max_request_header_bytes, 16384);
        assert_eq!(parsed.max_request_headers, 50);
        assert_eq!(parsed.max_uri_bytes, 2048);
        assert_eq!(parsed.max_request_body_bytes, None, "0 is unlimited");
        assert_eq!(parsed.request_header_timeout, Duration::from_secs(5));
        assert_eq!(parsed.idle_timeout, Duration::from_secs(20));
        assert_eq!(parsed.stream_idle_timeout, Duration::from_secs(900));
        assert_eq!(parsed.max_connections_per_listener, Some(100));
        assert_eq!(parsed.max_requests_per_connection, Some(1000));
        assert_eq!(parsed.h2_max_concurrent_streams, 64);
        assert_eq!(parsed.h2_max_pending_accept_reset_streams, 10);
        assert_eq!(parsed.h2_max_local_error_reset_streams, 100);
    }

    /// The same for GatewayParameters `spec.observability`; every field
    /// name the CRD's schema allows must be one the access log knows,
    /// or a valid resource would crash-loop the proxies.
    #[test]
    fn gateway_parameters_observability_renders_to_accepted_proxy_flags() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(portcullis_api::GatewayParameters::crd()).expect("crd");
        let pattern = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["observability"]["properties"]["accessLogFields"]["items"]["pattern"]
            .as_str()
            .expect("field name pattern");
        let allowed: Vec<String> = pattern
            .trim_start_matches("^(")
            .trim_end_matches(")$")
            .split('|')
            .map(String::from)
            .collect();
        let known: Vec<&str> = Field::ALL.iter().map(|f| f.key()).collect();
        assert_eq!(
            allowed, known,
            "the CRD allows exactly the access log's fields"
        );

        let observability = ProxyObservability {
            access_log: Some("stderr".into()),
            access_log_fields: Some(allowed),
            access_log_sample_rate: Some(0.25),
            otlp_endpoint: Some("http://collector.observability:4318".into()),
            otlp_service_name: Some("edge-proxy".into()),
        };
        let args = ["portcullis", "proxy", "--gateway", "infra/edge"]
            .map(String::from)
            .into_iter()
            .chain(observability.to_args());
        let cli = Cli::try_parse_from(args).expect("the proxy accepts the rendered flags");
        let Command::Proxy { serve, .. } = cli.command else {
            panic!("not the proxy command");
        };
        assert_eq!(serve.access_log, "stderr");
        assert_eq!(serve.access_log_fields.as_deref(), Some(&Field::ALL[..]));
        assert_eq!(serve.access_log_sample_rate, 0.25);
        assert_eq!(
            serve.otlp_endpoint.as_deref(),
            Some("http://collector.observability:4318")
        );
        assert_eq!(serve.otlp_service_name, "edge-proxy");
    }

    #[test]
    fn default_flags_are_the_data_plane_defaults() {
        let cli = Cli::try_parse_from(["portcullis", "run", "--config-dir", "x"]).expect("parse");
        let Command::Run { serve, .. } = cli.command else {
            panic!("not the run command");
        };
        assert_eq!(
            serve.limits.limits().expect("valid"),
            portcullis_dataplane::Limits::default()
        );
    }
}
