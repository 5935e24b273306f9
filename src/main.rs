//! The `fleetdns` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use fleetdns::app::{App, StartOptions};
use fleetdns::config::Config;

// mimalloc keeps per-thread heaps compact: a snapshot build allocates and frees
// millions of small objects, which left glibc's malloc holding ~100 MB of free
// fragments at 100k services (RSS 493 MB with glibc, 400 MB with mimalloc as tuned
// in `tune_allocator`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Returns freed memory to the OS at once instead of holding it for reuse: the big
/// allocations happen at startup (parsing services files, the first build) and are
/// not needed again. At 10k services this halves RSS (146 → 79 MB).
fn tune_allocator() {
    // Option numbers of `mi_option_e` in the mimalloc v3 bundled by libmimalloc-sys
    // 0.1.49 (pinned in Cargo.toml): 4 = arena_eager_commit, 15 = purge_delay.
    const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
    const PURGE_DELAY: std::ffi::c_int = 15;
    // SAFETY: mi_option_set only stores a value in mimalloc's option table; it is
    // called before any other thread exists.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "fleetdns",
    version,
    about = "Multicluster service discovery over authoritative DNS"
)]
struct Cli {
    /// Log format on stderr (the filter comes from RUST_LOG, default "info").
    #[arg(long, value_enum, default_value = "text", global = true)]
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
    /// Run the embedded demo fleet: east, west and central, DNS on 127.0.0.1:8853-8855.
    Demo,
    /// Run one peer.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// This replica's mesh node id, `<cluster>/<replica>` (default `<cluster>/0`).
        #[arg(long)]
        node_id: Option<String>,
        /// The HOST:PORT other peers reach this one at, overriding `mesh.advertise`
        /// (in Kubernetes: `$(POD_IP):7950` from the downward API).
        #[arg(long)]
        mesh_advertise: Option<std::net::SocketAddr>,
    },
    /// Take this config's cluster out of the fleet: readers drop it at once. Stop the
    /// cluster's peers first.
    Leave {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config and its services files, then exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Make the fleet CA (or reuse the one in --out) and a certificate per cluster.
    Keygen {
        /// The fleet name (one DNS label), as in the config's `fleet:`.
        #[arg(long)]
        fleet: String,
        /// Directory for ca.pem, ca.key, trust-bundle.pem and <cluster>.pem/.key.
        #[arg(long)]
        out: PathBuf,
        /// Validity of the cluster certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Cluster ids to issue certificates for.
        #[arg(required = true)]
        clusters: Vec<String>,
    },
    /// Ask a running peer's admin API: clusters, peers, services, or how a name resolves.
    Query {
        /// The admin API: HOST:PORT or an http(s):// URL [default: $FLEETDNS_ADMIN, else
        /// 127.0.0.1:8053, east's in `fleetdns demo`].
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Bearer token [default: $FLEETDNS_TOKEN].
        #[arg(long, global = true)]
        token: Option<String>,
        /// PEM CA of the admin API's TLS certificate (implies HTTPS).
        #[arg(long, global = true)]
        ca: Option<PathBuf>,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: QueryCommand,
    },
    /// Write the zone a config serves as an RFC 1035 zone file.
    DumpZone {
        #[arg(long)]
        config: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueryCommand {
    /// Every cluster: state, replicas, adopted root, services, versions.
    Clusters,
    /// Every mesh member: address, liveness, cluster, role, version.
    Peers,
    /// Exported services per cluster, or one service as NAMESPACE/NAME.
    Services {
        /// One service, as NAMESPACE/NAME.
        service: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        cluster: Option<String>,
    },
    /// The DNS server's exact answer for NAME and TYPE (default A), and why.
    Resolve {
        name: String,
        #[arg(default_value = "A")]
        qtype: String,
    },
}

/// `fleetdns query`: one GET against the admin API, printed as a table or as JSON.
async fn query(
    target: fleetdns::admin::client::Target,
    json: bool,
    what: QueryCommand,
) -> anyhow::Result<()> {
    use fleetdns::admin::{api, client, table};
    use fleetdns::clock::Clock as _;
    fn encode(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    let path = match &what {
        QueryCommand::Clusters => "/v1/clusters".to_string(),
        QueryCommand::Peers => "/v1/peers".to_string(),
        QueryCommand::Services {
            service: Some(one), ..
        } => {
            let Some((ns, name)) = one.split_once('/') else {
                anyhow::bail!("service {one:?} is not NAMESPACE/NAME");
            };
            format!("/v1/services/{}/{}", encode(ns), encode(name))
        }
        QueryCommand::Services {
            namespace, cluster, ..
        } => {
            let mut params = Vec::new();
            if let Some(ns) = namespace {
                params.push(format!("namespace={}", encode(ns)));
            }
            if let Some(c) = cluster {
                params.push(format!("cluster={}", encode(c)));
            }
            if params.is_empty() {
                "/v1/services".to_string()
            } else {
                format!("/v1/services?{}", params.join("&"))
            }
        }
        QueryCommand::Resolve { name, qtype } => {
            format!("/v1/resolve?name={}&type={}", encode(name), encode(qtype))
        }
    };
    let body = client::get(&target, &path).await?;
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let bad =
        |e: serde_json::Error| anyhow::anyhow!("the admin API answered something unexpected: {e}");
    let text = match what {
        QueryCommand::Clusters => {
            let doc: api::ClustersDoc = serde_json::from_str(&body).map_err(bad)?;
            table::clusters(&doc, fleetdns::clock::SystemClock.unix_millis())
        }
        QueryCommand::Peers => table::peers(&serde_json::from_str(&body).map_err(bad)?),
        QueryCommand::Services {
            service: Some(_), ..
        } => {
            let doc: api::ServiceOneDoc = serde_json::from_str(&body).map_err(bad)?;
            table::service(&doc.service, doc.generation)
        }
        QueryCommand::Services { .. } => {
            table::services(&serde_json::from_str(&body).map_err(bad)?)
        }
        QueryCommand::Resolve { .. } => table::resolve(&serde_json::from_str(&body).map_err(bad)?),
    };
    print!("{text}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (a log shipper that died) must not panic the task that
        // logged, e.g. the one that stops us on SIGTERM.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // File reads and snapshot builds run on the blocking pool; a few threads are plenty,
    // and each idle thread would keep its own allocator heap.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleetdns: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetdns: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo => {
            // Before anything serves: a signal during startup must stop us cleanly.
            let stop = stop_signal();
            use fleetdns::clock::Clock as _;
            let files = fleetdns::demo::files(fleetdns::clock::SystemClock.unix_seconds())
                .context("preparing the demo files")?;
            let mut apps = Vec::new();
            for path in &files.configs {
                let config = Config::load(path)?;
                apps.push(App::start(config, StartOptions::default()).await?);
            }
            // Print once every peer serves the whole fleet (or after a few seconds).
            let converged = async {
                for app in &apps {
                    app.wait_for(|s| {
                        s.readiness == fleetdns::dns::index::Readiness::Ready
                            && s.view.clusters.len() == fleetdns::demo::PEERS.len()
                    })
                    .await;
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), converged).await;
            println!("fleetdns demo: clusters east, west and central as three mesh peers");
            println!(
                "services files: {} (edit them: answers follow on every peer)",
                files.services_dir.display()
            );
            for ((cluster, ..), app) in fleetdns::demo::PEERS.iter().zip(&apps) {
                let ops = app
                    .ops_addr
                    .map_or_else(String::new, |o| format!(", ops http://{o}/metrics"));
                let admin = app
                    .admin_addr
                    .map_or_else(String::new, |a| format!(", admin http://{a}/v1/clusters"));
                println!("peer {cluster}: DNS {}{ops}{admin}", app.dns_addrs[0]);
            }
            println!("try (east's view; ports 8854 and 8855 are west's and central's):");
            for cmd in fleetdns::demo::try_commands(apps[0].dns_addrs[0]) {
                println!("  {cmd}");
            }
            println!("Ctrl-C stops it.");
            stop.await;
            tracing::info!("stopping");
            for app in apps {
                app.shutdown().await;
            }
            drop(files);
            Ok(())
        }
        Command::Run {
            config,
            node_id,
            mesh_advertise,
        } => {
            let stop = stop_signal();
            let mut config = Config::load(&config)?;
            if let Some(advertise) = mesh_advertise {
                let Some(mesh) = config.mesh.as_mut() else {
                    anyhow::bail!("--mesh-advertise {advertise}: the config has no mesh section");
                };
                mesh.advertise = advertise;
            }
            let options = StartOptions {
                node_id,
                ..StartOptions::default()
            };
            let app = App::start(config, options).await?;
            serve_until(app, stop).await
        }
        Command::Leave { config } => {
            use fleetdns::clock::SystemClock;
            let config = Config::load(&config)?;
            let Some(mesh) = config.mesh.clone() else {
                anyhow::bail!("leave needs a mesh: the config has no mesh section");
            };
            let fleet = fleetdns::identity::FleetName::parse(&config.fleet)?;
            let peers = fleetdns::mesh::node::leave(
                mesh,
                fleet,
                config.cluster.clone(),
                std::sync::Arc::new(SystemClock),
            )
            .await?;
            if peers == 0 {
                anyhow::bail!(
                    "no mesh peer answered: cluster {} left nobody; run leave again when the mesh is reachable",
                    config.cluster
                );
            }
            println!(
                "cluster {} left the fleet ({peers} peers reached)",
                config.cluster
            );
            Ok(())
        }
        Command::Check { config } => {
            let summary = fleetdns::app::check(&config)?;
            println!(
                "{}: ok (cluster {}, zone {})",
                config.display(),
                summary.cluster,
                summary.zone
            );
            for line in summary.lines {
                println!("  {line}");
            }
            Ok(())
        }
        Command::Keygen {
            fleet,
            out,
            days,
            clusters,
        } => {
            use fleetdns::clock::Clock as _;
            let now = fleetdns::clock::SystemClock.unix_seconds();
            let report = fleetdns::app::keygen(&fleet, &clusters, &out, days, now)?;
            if report.ca_created {
                println!("made a new fleet CA; keep ca.key out of every cluster");
            } else {
                println!("reused the fleet CA in {}", out.display());
            }
            for file in report.files {
                println!("wrote {}", file.display());
            }
            Ok(())
        }
        Command::Query {
            admin,
            token,
            ca,
            json,
            what,
        } => {
            let target = fleetdns::admin::client::Target {
                admin: admin
                    .or_else(|| std::env::var("FLEETDNS_ADMIN").ok())
                    .unwrap_or_else(|| "127.0.0.1:8053".into()),
                token: token.or_else(|| std::env::var("FLEETDNS_TOKEN").ok()),
                ca,
            };
            query(target, json, what).await
        }
        Command::DumpZone { config, output } => {
            let text = fleetdns::app::dump_zone(&config)?;
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}

async fn serve_until(
    app: App,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = app.cancel_token();
    tokio::spawn(async move {
        stop.await;
        tracing::info!("stopping");
        cancel.cancel();
    });
    app.run_until_cancelled().await;
    Ok(())
}

/// Listens for Ctrl-C and SIGTERM from the moment it is called (a signal that arrives
/// before the returned future is polled still counts; before, it would kill the
/// process with the default action) and resolves on the first of them.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
