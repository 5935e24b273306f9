//! Mesh convergence over the real mutual-TLS transport on loopback (figures, not
//! assertions). For N peers, each exporting 50 services, it prints: the initial full
//! sync, one change's propagation to all peers (p50/p99 over many changes), a deletion
//! to all, a killed peer seen unreachable by all (half the peers run φ = 8, half
//! φ = 6), steady traffic per peer (bytes written to sockets, TLS and framing
//! included), RSS and CPU.
//!
//! `cargo bench --bench mesh_convergence` runs N = 10, 50 and 100 (set
//! `FLEETDNS_BENCH_N=10,50,100,200` to choose); as a test (nextest, `cargo test
//! --benches`) it runs a four-peer smoke round with fast settings.
//!
//! At most 25 peers share a process (the driver starts itself again as workers):
//! one process with N peers needs about 2·N·(N−1) sockets, and RLIMIT_NOFILE is
//! raised to its hard limit in each worker. Workers report what their peers adopt, as
//! lines on stdout stamped with the wall clock (shared by all processes); the driver
//! sends commands on their stdin.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetdns::clock::{Clock, SystemClock};
use fleetdns::config::MeshConfig;
use fleetdns::identity::{FleetName, issue_leaf, new_ca};
use fleetdns::mesh::metrics::MeshMetrics;
use fleetdns::mesh::node::{MeshParams, SourceView, start};
use fleetdns::model::ClusterId;
use fleetdns::source::SourceState;
use fleetdns::source::file::parse_services_file;
use fleetdns::view::ClusterState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PEERS_PER_PROCESS: usize = 25;
const SERVICES: usize = 50;
const SMOKE: &str = "serial_convergence_smoke";

/// The timing of one run.
#[derive(Debug, Clone, Copy)]
struct Timing {
    gossip_ms: u64,
    alive_ms: u64,
    changes: usize,
    steady_secs: u64,
}

const FULL: Timing = Timing {
    gossip_ms: 1000,
    alive_ms: 10_000,
    changes: 100,
    steady_secs: 10,
};

const QUICK: Timing = Timing {
    gossip_ms: 100,
    alive_ms: 500,
    changes: 5,
    steady_secs: 1,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--worker") {
        return worker(Path::new(&args[i + 1]));
    }
    if args.iter().any(|a| a == "--list") {
        // nextest asks which tests there are: one smoke run, not the benchmark.
        if !args.iter().any(|a| a == "--ignored") {
            println!("{SMOKE}: test");
        }
        return;
    }
    if args.iter().any(|a| a == "--bench") {
        let sizes: Vec<usize> = std::env::var("FLEETDNS_BENCH_N")
            .unwrap_or_else(|_| "10,50,100".into())
            .split(',')
            .map(|n| n.trim().parse().expect("FLEETDNS_BENCH_N: numbers"))
            .collect();
        println!(
            "| N | full sync | change to all p50 | to all p99 | to each peer p50 / p99 | deletion to all | killed → unreachable by all (φ=8 / φ=6) | steady B/s per peer | RSS total | CPU |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for n in sizes {
            let row = run(n, FULL);
            println!("{row}");
        }
    } else {
        let row = run(4, QUICK);
        println!("smoke (4 peers, 100 ms gossip): {row}");
    }
}

fn cluster(i: usize) -> String {
    format!("c{i:03}")
}

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One running worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
}

impl Worker {
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("worker alive");
        self.stdin.flush().unwrap();
    }
}

/// What the driver heard, in order.
enum Event {
    Full {
        ms: u64,
    },
    Version {
        peer: usize,
        cluster: usize,
        version: u64,
        ms: u64,
    },
    State {
        peer: usize,
        cluster: usize,
        state: String,
        ms: u64,
    },
    Stats {
        bytes_out: u64,
    },
    Proc {
        rss_kb: u64,
        cpu_ticks: u64,
    },
}

fn parse_event(line: &str) -> Option<Event> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(match *f.first()? {
        "full" => Event::Full { ms: num(2)? },
        "ver" => Event::Version {
            peer: num(1)? as usize,
            cluster: num(2)? as usize,
            version: num(3)?,
            ms: num(4)?,
        },
        "state" => Event::State {
            peer: num(1)? as usize,
            cluster: num(2)? as usize,
            state: f.get(3)?.to_string(),
            ms: num(4)?,
        },
        "stats" => Event::Stats { bytes_out: num(2)? },
        "proc" => Event::Proc {
            rss_kb: num(1)?,
            cpu_ticks: num(2)?,
        },
        _ => return None,
    })
}

fn now_ms() -> u64 {
    SystemClock.unix_millis()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// Runs one fleet of `n` peers and returns its table row.
fn run(n: usize, timing: Timing) -> String {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FleetName::parse("bench").unwrap();
    let now = SystemClock.unix_seconds();
    let ca = new_ca(&fleet, now, 30).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    for i in 0..n {
        let leaf = issue_leaf(
            &ca,
            &fleet,
            &ClusterId::parse(&cluster(i)).unwrap(),
            now,
            30,
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{}.pem", cluster(i))),
            &leaf.cert_pem,
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{}.key", cluster(i))),
            &leaf.key_pem,
        )
        .unwrap();
    }
    let ports = free_ports(n);
    let seeds: Vec<String> = ports
        .iter()
        .take(3)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();

    let started = now_ms();
    let (tx, rx) = mpsc::channel::<String>();
    let mut workers = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(PEERS_PER_PROCESS) {
        let spec = dir.path().join(format!("worker-{}.spec", chunk[0]));
        let mut text = format!(
            "{} {} {} {} {}\n",
            dir.path().display(),
            n,
            timing.gossip_ms,
            timing.alive_ms,
            seeds.join(",")
        );
        for &i in chunk {
            let phi = if i % 2 == 0 { 8 } else { 6 };
            text.push_str(&format!("{i} {} {phi}\n", ports[i]));
        }
        std::fs::write(&spec, text).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--worker")
            .arg(&spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker");
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        workers.push(Worker { child, stdin });
    }
    drop(tx);
    let worker_of = |peer: usize| peer / PEERS_PER_PROCESS;
    let wait = Duration::from_secs(600);

    // Initial full sync: every peer holds all n clusters, live.
    let mut full = 0;
    let mut sync_ms = 0;
    let deadline = Instant::now() + wait;
    while full < n {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("full sync");
        if let Some(Event::Full { ms }) = parse_event(&line) {
            full += 1;
            sync_ms = sync_ms.max(ms - started);
        }
    }

    // One change at a time, each from another peer, to all the others.
    let mut to_all = Vec::new();
    let mut to_each = Vec::new();
    let mut await_version =
        |rx: &mpsc::Receiver<String>, origin: usize, version: u64, since: u64| {
            let mut reached = 0;
            let mut last = since;
            let deadline = Instant::now() + wait;
            while reached < n - 1 {
                let line = rx
                    .recv_timeout(deadline - Instant::now())
                    .expect("propagation");
                if let Some(Event::Version {
                    peer,
                    cluster,
                    version: v,
                    ms,
                }) = parse_event(&line)
                    && cluster == origin
                    && v == version
                    && peer != origin
                {
                    reached += 1;
                    last = last.max(ms);
                    to_each.push(ms.saturating_sub(since));
                }
            }
            last - since
        };
    for k in 1..=timing.changes {
        let origin = k % n;
        let version = k as u64 + 1;
        // Past the previous change's pushes.
        std::thread::sleep(Duration::from_millis(timing.gossip_ms / 2));
        let since = now_ms();
        workers[worker_of(origin)].send(&format!("set {origin} {version} 1"));
        to_all.push(await_version(&rx, origin, version, since));
    }
    to_all.sort_unstable();
    let deletion_version = timing.changes as u64 + 2;
    let since = now_ms();
    workers[0].send(&format!("set 0 {deletion_version} 0"));
    let deletion = await_version(&rx, 0, deletion_version, since);
    let each = {
        let mut each = to_each.clone();
        each.sort_unstable();
        format!(
            "{} / {}",
            secs(percentile(&each, 0.5)),
            secs(percentile(&each, 0.99))
        )
    };

    // Steady state: no changes, m:alive refresh and heartbeats only.
    let sample = |workers: &mut Vec<Worker>, rx: &mpsc::Receiver<String>| {
        for w in workers.iter_mut() {
            w.send("stats");
        }
        let (mut bytes, mut rss, mut ticks, mut answers) = (0, 0, 0, 0);
        let expected = n + workers.len();
        let deadline = Instant::now() + wait;
        while answers < expected {
            let line = rx.recv_timeout(deadline - Instant::now()).expect("stats");
            match parse_event(&line) {
                Some(Event::Stats { bytes_out }) => {
                    bytes += bytes_out;
                    answers += 1;
                }
                Some(Event::Proc { rss_kb, cpu_ticks }) => {
                    rss += rss_kb;
                    ticks += cpu_ticks;
                    answers += 1;
                }
                _ => {}
            }
        }
        (bytes, rss, ticks)
    };
    let (bytes0, _, ticks0) = sample(&mut workers, &rx);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(timing.steady_secs));
    let (bytes1, rss_kb, ticks1) = sample(&mut workers, &rx);
    let elapsed = window.elapsed().as_secs_f64();
    let per_peer = (bytes1 - bytes0) as f64 / elapsed / n as f64;
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks1 - ticks0) as f64 / clk_tck / elapsed;

    // A peer killed: every other peer's view turns it unreachable.
    let victim = n - 1;
    let since = now_ms();
    workers[worker_of(victim)].send(&format!("kill {victim}"));
    let mut seen: HashMap<usize, u64> = HashMap::new();
    let deadline = Instant::now() + wait;
    while seen.len() < n - 1 {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("kill detection");
        if let Some(Event::State {
            peer,
            cluster,
            state,
            ms,
        }) = parse_event(&line)
            && cluster == victim
            && state != "live"
        {
            seen.entry(peer).or_insert(ms - since);
        }
    }
    let by_phi = |phi_even: bool| {
        seen.iter()
            .filter(|(p, _)| (*p % 2 == 0) == phi_even)
            .map(|(_, ms)| *ms)
            .max()
            .unwrap_or(0)
    };
    for mut w in workers {
        w.send("quit");
        let _ = w.child.wait();
    }
    format!(
        "| {n} | {} | {} | {} | {each} | {} | {} / {} | {:.0} | {} MiB | {:.2} cores |",
        secs(sync_ms),
        secs(percentile(&to_all, 0.5)),
        secs(percentile(&to_all, 0.99)),
        secs(deletion),
        secs(by_phi(true)),
        secs(by_phi(false)),
        per_peer,
        rss_kb / 1024,
        cpu,
    )
}

/// Fifty services and a marker whose address carries the version; without `svc-49`
/// when `with_last` is false (the deletion).
fn exports(cluster: &ClusterId, version: u64, with_last: bool) -> SourceState {
    let mut yaml = String::from("services:\n");
    for s in 0..SERVICES {
        if s == SERVICES - 1 && !with_last {
            continue;
        }
        yaml.push_str(&format!(
            "  - {{name: svc-{s}, namespace: default, ports: [{{name: http, port: 80}}], ingress: [10.{}.{}.1]}}\n",
            s / 250,
            s % 250
        ));
    }
    yaml.push_str(&format!(
        "  - {{name: marker, namespace: default, ingress: [100.64.{}.{}]}}\n",
        version / 256,
        version % 256
    ));
    let exports = parse_services_file(&yaml, "bench", cluster).unwrap();
    SourceState {
        loaded: BTreeMap::from([(cluster.clone(), Arc::new(exports))]),
        pending: BTreeMap::new(),
    }
}

fn marker_version(view: &SourceView, cluster: &ClusterId) -> Option<u64> {
    let input = view.inputs.get(cluster)?;
    let marker = input
        .exports
        .services
        .iter()
        .find(|(k, _)| k.name.as_str() == "marker")?
        .1;
    match marker.ingress.first()? {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            Some(u64::from(o[2]) * 256 + u64::from(o[3]))
        }
        std::net::IpAddr::V6(_) => None,
    }
}

/// Resident set (KiB) and user+system CPU ticks of this process.
fn proc_usage() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    (rss, ticks)
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A worker: runs its peers until told to quit, reporting what they adopt.
fn worker(spec: &Path) {
    raise_fd_limit();
    let text = std::fs::read_to_string(spec).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let dir = PathBuf::from(head[0]);
    let n: usize = head[1].parse().unwrap();
    let gossip = Duration::from_millis(head[2].parse().unwrap());
    let alive = Duration::from_millis(head[3].parse().unwrap());
    let seeds: Vec<String> = head[4].split(',').map(str::to_string).collect();
    let peers: Vec<(usize, u16, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let say = move |out: &std::sync::Mutex<std::io::Stdout>, line: String| {
            let mut o = out.lock().unwrap();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        };
        let mut running = HashMap::new();
        for (i, port, phi) in peers {
            let id = ClusterId::parse(&cluster(i)).unwrap();
            let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let config = MeshConfig {
                listen,
                advertise: listen,
                seeds: seeds
                    .iter()
                    .filter(|s| **s != listen.to_string())
                    .cloned()
                    .collect(),
                cert: dir.join(format!("{id}.pem")),
                key: dir.join(format!("{id}.key")),
                trust_bundle: vec![dir.join("ca.pem")],
                gossip_interval: gossip,
                alive_interval: alive,
                clock_skew: alive / 2,
                max_stale: alive * 6,
                rejoin_after: alive,
                bootstrap_timeout: gossip * 15,
                max_connection_age: Duration::from_secs(600),
                revoked_clusters: Default::default(),
                reload_interval: Duration::from_secs(3600),
                phi_threshold: phi,
                config_file: None,
            };
            let (local, local_rx) = watch::channel(exports(&id, 1, true));
            let metrics = MeshMetrics::unregistered();
            let stats = metrics.transport_stats();
            let cancel = CancellationToken::new();
            let params = MeshParams {
                config,
                fleet: FleetName::parse("bench").unwrap(),
                cluster: id.clone(),
                node_id: format!("{id}/0"),
                election: Default::default(),
            };
            let (mut view, _task) = start(
                params,
                local_rx,
                Arc::new(SystemClock),
                metrics,
                cancel.clone(),
            )
            .await
            .expect("peer starts");
            let out = out.clone();
            tokio::spawn(async move {
                let mut versions: HashMap<usize, u64> = HashMap::new();
                let mut states: HashMap<usize, &'static str> = HashMap::new();
                let mut full = false;
                while view.changed().await.is_ok() {
                    let v = view.borrow_and_update().clone();
                    let ms = now_ms();
                    for (c, input) in &v.inputs {
                        let idx: usize = c.as_str()[1..].parse().unwrap();
                        if let Some(version) = marker_version(&v, c)
                            && versions.insert(idx, version) != Some(version)
                        {
                            say(&out, format!("ver {i} {idx} {version} {ms}"));
                        }
                        let state = input.state.as_str();
                        if states.insert(idx, state) != Some(state) {
                            say(&out, format!("state {i} {idx} {state} {ms}"));
                        }
                    }
                    if !full
                        && v.inputs.len() == n
                        && v.inputs.values().all(|x| x.state == ClusterState::Live)
                    {
                        full = true;
                        say(&out, format!("full {i} {ms}"));
                    }
                }
            });
            running.insert(i, (local, cancel, stats, id));
        }
        let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if cmd_tx.send(line).is_err() {
                    return;
                }
            }
        });
        while let Some(line) = cmd_rx.recv().await {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first().copied() {
                Some("set") => {
                    let i: usize = f[1].parse().unwrap();
                    let version: u64 = f[2].parse().unwrap();
                    if let Some((local, _, _, id)) = running.get(&i) {
                        local.send_replace(exports(id, version, f[3] == "1"));
                    }
                }
                Some("kill") => {
                    let i: usize = f[1].parse().unwrap();
                    if let Some((_, cancel, _, _)) = running.remove(&i) {
                        cancel.cancel();
                    }
                }
                Some("stats") => {
                    for (i, (_, _, stats, _)) in &running {
                        let bytes = stats.bytes_out.load(std::sync::atomic::Ordering::Relaxed);
                        say(&out, format!("stats {i} {bytes}"));
                    }
                    let (rss, ticks) = proc_usage();
                    say(&out, format!("proc {rss} {ticks}"));
                }
                _ => break,
            }
        }
    });
}
