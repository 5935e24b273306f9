//! Test support for real external DNS tools.
//!
//! This module owns everything an integration test needs to drive real,
//! independently written DNS software next to (or instead of) fleetdns:
//!
//! - finding a tool and failing loudly when it is missing ([`require_tool`]:
//!   tests never skip silently, the panic names the Debian package);
//! - picking a loopback port ([`free_udp_tcp_port`]);
//! - running daemons in the foreground from their own config in a private
//!   temporary directory: [`Knot`] (authoritative), [`Unbound`] (stub-zone
//!   resolver), [`Dnsmasq`] (forwarder). Each start polls until the daemon
//!   answers (never a fixed sleep), retries on a fresh port if the port was
//!   taken in the meantime, and panics with the daemon's log if it exits or
//!   times out. The process is killed and reaped on drop (so also on panic), and
//!   the parent-death signal (`setpriv --pdeathsig KILL`, util-linux) kills it
//!   if the test process itself dies without unwinding;
//! - the query clients `dig` and `kdig` ([`dig`], [`kdig`]) and a parser for
//!   both output formats ([`parse_dig`]);
//! - a raw one-shot UDP query ([`query_udp`]) and polling ([`wait_until`]).
//!
//! It uses std and `tempfile` only, so any test file can include it with
//! `mod support;`.

#![allow(dead_code)]

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// How long a daemon gets to answer after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The polling interval of [`wait_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// QTYPE A.
pub const TYPE_A: u16 = 1;
/// QTYPE NS.
pub const TYPE_NS: u16 = 2;
/// QTYPE SOA.
pub const TYPE_SOA: u16 = 6;
/// QTYPE AAAA.
pub const TYPE_AAAA: u16 = 28;
/// QTYPE SRV.
pub const TYPE_SRV: u16 = 33;

/// RCODE NOERROR.
pub const RCODE_NOERROR: u8 = 0;
/// RCODE SERVFAIL.
pub const RCODE_SERVFAIL: u8 = 2;
/// RCODE NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// RCODE REFUSED.
pub const RCODE_REFUSED: u8 = 5;

/// Directories searched after `PATH` (Debian puts daemons in sbin, which is
/// often missing from a non-root `PATH`).
const EXTRA_TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin"];

/// How many times a daemon start is retried on a fresh port when the port it
/// was given got taken between [`free_udp_tcp_port`] and its bind.
const START_ATTEMPTS: u32 = 5;

// ---------------------------------------------------------------------------
// Tools and ports
// ---------------------------------------------------------------------------

/// Returns the path of `binary`, searched on `PATH`, then in `/usr/sbin`,
/// `/usr/bin` and `/sbin`.
///
/// # Panics
/// If it is not found, with a message naming the Debian package to install.
pub fn require_tool(binary: &str, debian_package: &str) -> PathBuf {
    find_tool(binary)
        .unwrap_or_else(|| panic!("this test needs `{binary}`: apt-get install {debian_package}"))
}

fn find_tool(binary: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_TOOL_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// Returns a port that is free on 127.0.0.1 for both UDP and TCP at the time
/// of the call. Daemon starts in this module retry on another port if it has
/// been taken by the time they bind.
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral UDP port");
        let port = udp
            .local_addr()
            .expect("local_addr of a bound socket")
            .port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no port free for both UDP and TCP on 127.0.0.1 in 100 tries");
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `f` every [`POLL_INTERVAL`] until it returns `Some`, and returns that.
///
/// # Panics
/// After `timeout`, with a message naming `what` was awaited.
pub fn wait_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// ---------------------------------------------------------------------------
// Raw UDP query
// ---------------------------------------------------------------------------

/// The header of a DNS reply received by [`query_udp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpReply {
    /// RCODE (low 4 bits of the header; no EDNS extension).
    pub rcode: u8,
    /// AA flag.
    pub aa: bool,
    /// TC flag.
    pub tc: bool,
    /// ANCOUNT.
    pub ancount: u16,
    /// NSCOUNT.
    pub nscount: u16,
    /// The whole reply.
    pub bytes: Vec<u8>,
}

/// Sends one hand-built query (RD set, no EDNS) for `name`/`qtype` class IN to
/// `server` over UDP and waits up to 250 ms for the reply with the same ID.
/// Returns `None` on timeout, on an ICMP error, or if no matching reply came.
pub fn query_udp(server: SocketAddr, name: &str, qtype: u16) -> Option<UdpReply> {
    let id = next_query_id();
    let query = build_query(id, name, qtype);
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(server).ok()?;
    socket.send(&query).ok()?;
    let deadline = Instant::now() + Duration::from_millis(250);
    let mut buf = [0u8; 65535];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let len = socket.recv(&mut buf).ok()?;
        let reply = &buf[..len];
        if len >= 12 && u16::from_be_bytes([reply[0], reply[1]]) == id && reply[2] & 0x80 != 0 {
            return Some(UdpReply {
                rcode: reply[3] & 0x0f,
                aa: reply[2] & 0x04 != 0,
                tc: reply[2] & 0x02 != 0,
                ancount: u16::from_be_bytes([reply[6], reply[7]]),
                nscount: u16::from_be_bytes([reply[8], reply[9]]),
                bytes: reply.to_vec(),
            });
        }
    }
}

fn next_query_id() -> u16 {
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos as u16) ^ (std::process::id() as u16) ^ COUNTER.fetch_add(0x9e37, Ordering::Relaxed)
}

fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    for label in name.split('.').filter(|l| !l.is_empty()) {
        assert!(label.len() <= 63, "label too long in {name:?}");
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    q
}

// ---------------------------------------------------------------------------
// Daemon lifecycle (shared by Knot, Unbound, Dnsmasq)
// ---------------------------------------------------------------------------

/// A foreground daemon with its private directory; killed and reaped on drop.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    // Removed after the process is gone: fields drop after `Drop::drop`.
    _dir: TempDir,
}

enum StartError {
    /// The daemon exited before answering; its status and log.
    Exited(ExitStatus, String),
    /// Its log shows it will never answer (e.g. the zone did not load).
    Failed(String),
    /// It did not answer within the timeout; its log.
    TimedOut(String),
}

impl Daemon {
    /// Starts a daemon, retrying on a fresh port if the port was taken.
    ///
    /// `configure(dir, port)` writes whatever config the daemon needs into
    /// `dir` and returns the command (program and arguments) that runs it in
    /// the foreground on 127.0.0.1:`port`. `ready(addr)` is polled until it
    /// returns true; a log line containing one of `fatal_log` fails the start
    /// at once instead of after [`START_TIMEOUT`].
    fn start(
        name: &'static str,
        mut configure: impl FnMut(&Path, u16) -> Command,
        ready: impl Fn(SocketAddr) -> bool,
        fatal_log: &[&str],
    ) -> Daemon {
        for attempt in 1..=START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{name}-"))
                .tempdir()
                .expect("create a temporary directory");
            let port = free_udp_tcp_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = dir.path().join(format!("{name}.log"));
            let command = configure(dir.path(), port);
            let child =
                spawn_logged(command, &log).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
            let mut daemon = Daemon {
                name,
                child,
                log,
                addr,
                _dir: dir,
            };
            match daemon.wait_ready(&ready, fatal_log) {
                Ok(()) => return daemon,
                Err(StartError::Exited(_, log))
                    if attempt < START_ATTEMPTS && log.to_ascii_lowercase().contains("in use") => {}
                Err(StartError::Exited(status, log)) => {
                    panic!("{name} exited ({status}) before answering on {addr}; its log:\n{log}")
                }
                Err(StartError::Failed(log)) => {
                    panic!("{name} failed to start on {addr}; its log:\n{log}")
                }
                Err(StartError::TimedOut(log)) => panic!(
                    "{name} did not answer on {addr} within {START_TIMEOUT:?}; its log:\n{log}"
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn wait_ready(
        &mut self,
        ready: &impl Fn(SocketAddr) -> bool,
        fatal_log: &[&str],
    ) -> Result<(), StartError> {
        poll_until(START_TIMEOUT, || {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(Err(StartError::Exited(status, self.log_text()))),
                Ok(None) => {}
                Err(e) => panic!("cannot poll {}: {e}", self.name),
            }
            if ready(self.addr) {
                return Some(Ok(()));
            }
            let log = self.log_text();
            fatal_log
                .iter()
                .any(|line| log.contains(line))
                .then_some(Err(StartError::Failed(log)))
        })
        .unwrap_or_else(|| Err(StartError::TimedOut(self.log_text())))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read log: {e})"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Kill fails only if the process was already reaped; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with stdin from /dev/null and stdout+stderr written to
/// `log` (a file, so a chatty daemon never blocks on a full pipe and no pipe
/// outlives the test).
///
/// The spawn happens on one long-lived thread, under `setpriv --pdeathsig
/// KILL` when util-linux's `setpriv` is present: the parent-death signal fires
/// when the *thread* that forked exits, so forking from a thread that lives as
/// long as the process means "kill the daemon when the test process dies",
/// even by SIGKILL or a timeout, whichever thread owns the handle.
fn spawn_logged(command: Command, log: &Path) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

    let out = File::create(log)?;
    let err = out.try_clone()?;
    let mut command = match find_tool("setpriv") {
        Some(setpriv) => {
            let mut wrapped = Command::new(setpriv);
            wrapped
                .args(["--pdeathsig", "KILL", "--"])
                .arg(command.get_program())
                .args(command.get_args());
            wrapped
        }
        None => command,
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));

    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("support-daemon-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the daemon spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((command, reply_tx))
        .expect("daemon spawner thread is alive");
    reply_rx.recv().expect("daemon spawner thread replies")
}

/// True when this process runs as root (uid 0), read from /proc.
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// `fleet` / `fleet.` → `fleet.`
fn absolute(zone: &str) -> String {
    format!("{}.", zone.trim_end_matches('.'))
}

fn write_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Knot DNS (authoritative)
// ---------------------------------------------------------------------------

/// A `knotd` serving one zone from a zone file on 127.0.0.1 (UDP and TCP).
pub struct Knot {
    daemon: Daemon,
}

impl Knot {
    /// Writes `zone_file_text` and a minimal knot.conf (one worker of each
    /// kind, no DNSSEC, no journal) into a temporary directory, runs
    /// `knotd -c knot.conf` in the foreground and waits until the apex SOA
    /// query gets an authoritative NOERROR answer over UDP.
    ///
    /// # Panics
    /// If knotd is missing, exits (e.g. a zone file error), or does not answer
    /// within [`START_TIMEOUT`]; the message holds its log.
    pub fn start(zone_apex: &str, zone_file_text: &str) -> Knot {
        let knotd = require_tool("knotd", "knot");
        let apex = absolute(zone_apex);
        let daemon = Daemon::start(
            "knotd",
            |dir, port| {
                let zone_file = dir.join("zone.db");
                write_file(&zone_file, zone_file_text);
                let conf = dir.join("knot.conf");
                write_file(&conf, &knot_conf(dir, Some(port), &apex, &zone_file, false));
                let mut command = Command::new(&knotd);
                command.arg("-c").arg(&conf);
                command
            },
            |addr| {
                query_udp(addr, &apex, TYPE_SOA)
                    .is_some_and(|r| r.rcode == RCODE_NOERROR && r.aa && r.ancount > 0)
            },
            &["zone event 'load' failed"],
        );
        Knot { daemon }
    }

    /// The UDP and TCP address knotd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr
    }

    /// knotd's log so far (stderr, level warning and above).
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// Checks a zone file the way Knot loads it, with semantic checks on:
    /// `kzonecheck` if installed, else `knotc zone-check` (offline, package
    /// knot). `Err` holds the tool's output.
    ///
    /// # Panics
    /// If neither tool is installed.
    pub fn check_zone(zone_apex: &str, zone_file_text: &str) -> Result<(), String> {
        let apex = absolute(zone_apex);
        let dir = tempfile::Builder::new()
            .prefix("kzonecheck-")
            .tempdir()
            .expect("create a temporary directory");
        let zone_file = dir.path().join("zone.db");
        write_file(&zone_file, zone_file_text);
        let output = match find_tool("kzonecheck") {
            Some(kzonecheck) => Command::new(kzonecheck)
                .arg("-o")
                .arg(&apex)
                .arg(&zone_file)
                .output(),
            None => {
                let conf = dir.path().join("knot.conf");
                write_file(&conf, &knot_conf(dir.path(), None, &apex, &zone_file, true));
                Command::new(require_tool("knotc", "knot"))
                    .arg("-c")
                    .arg(&conf)
                    .arg("zone-check")
                    .arg(&apex)
                    .output()
            }
        }
        .unwrap_or_else(|e| panic!("cannot run the zone checker: {e}"));
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

/// knot.conf for one zone; `port: None` for offline use (`knotc zone-check`),
/// `semantic_checks` to fail on extra checks too, not only mandatory ones.
fn knot_conf(
    dir: &Path,
    port: Option<u16>,
    apex: &str,
    zone_file: &Path,
    semantic_checks: bool,
) -> String {
    let dir = dir.display();
    let checks = if semantic_checks { "on" } else { "off" };
    let listen = port.map_or(String::new(), |p| format!("    listen: 127.0.0.1@{p}\n"));
    format!(
        "server:
    rundir: \"{dir}\"
{listen}    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: \"{dir}\"
log:
  - target: stderr
    any: warning
zone:
  - domain: \"{apex}\"
    storage: \"{dir}\"
    file: \"{zone_file}\"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    semantic-checks: {checks}
",
        zone_file = zone_file.display()
    )
}

// ---------------------------------------------------------------------------
// Unbound (resolver with a stub zone)
// ---------------------------------------------------------------------------

/// An `unbound` on 127.0.0.1 (UDP and TCP) that resolves one zone by asking
/// an upstream authoritative server (`stub-zone`), like a cluster resolver.
pub struct Unbound {
    daemon: Daemon,
}

impl Unbound {
    /// Writes its own unbound.conf (no trust anchor, the zone marked insecure,
    /// one thread, IPv4 only, localhost upstreams allowed) and runs `unbound
    /// -d -c unbound.conf` until it answers a query for the zone's SOA, with
    /// any RCODE: unbound answers SERVFAIL while the upstream is down, so a
    /// test that needs the upstream's data waits for NOERROR itself.
    ///
    /// # Panics
    /// If unbound is missing, exits, or does not answer in time.
    pub fn start_stub(zone: &str, upstream: SocketAddr) -> Unbound {
        let unbound = require_tool("unbound", "unbound");
        let zone = absolute(zone);
        let daemon = Daemon::start(
            "unbound",
            |dir, port| {
                let conf = dir.join("unbound.conf");
                write_file(&conf, &unbound_conf(dir, port, &zone, upstream));
                let mut command = Command::new(&unbound);
                command.arg("-d").arg("-c").arg(&conf);
                command
            },
            |addr| query_udp(addr, &zone, TYPE_SOA).is_some(),
            &[],
        );
        Unbound { daemon }
    }

    /// The UDP and TCP address unbound listens on.
    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr
    }

    /// unbound's log so far.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }
}

fn unbound_conf(dir: &Path, port: u16, zone: &str, upstream: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "server:
    interface: 127.0.0.1
    port: {port}
    so-reuseport: no
    do-daemonize: no
    use-syslog: no
    logfile: \"\"
    chroot: \"\"
    username: \"\"
    directory: \"{dir}\"
    pidfile: \"{dir}/unbound.pid\"
    num-threads: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    domain-insecure: \"{zone}\"
stub-zone:
    name: \"{zone}\"
    stub-addr: {ip}@{upstream_port}
",
        ip = upstream.ip(),
        upstream_port = upstream.port(),
    )
}

// ---------------------------------------------------------------------------
// dnsmasq (forwarder)
// ---------------------------------------------------------------------------

/// A `dnsmasq` on 127.0.0.1 (UDP and TCP) forwarding one zone to an upstream
/// and refusing everything else (no resolv.conf, no /etc/hosts).
pub struct Dnsmasq {
    daemon: Daemon,
}

impl Dnsmasq {
    /// Runs `dnsmasq --keep-in-foreground --conf-file=/dev/null
    /// --server=/<zone>/<upstream>` (logging to its log file) until it
    /// answers a query for the zone's SOA, with any RCODE.
    ///
    /// # Panics
    /// If dnsmasq is missing, exits, or does not answer in time.
    pub fn start_forwarder(zone: &str, upstream: SocketAddr) -> Dnsmasq {
        let dnsmasq = require_tool("dnsmasq", "dnsmasq-base");
        let zone = zone.trim_end_matches('.').to_string();
        // As root, dnsmasq would switch to nobody:dip, which clears the
        // parent-death signal; stay root:root.
        let as_root = running_as_root();
        let daemon = Daemon::start(
            "dnsmasq",
            |dir, port| {
                let mut command = Command::new(&dnsmasq);
                command
                    .arg("--keep-in-foreground")
                    .arg("--conf-file=/dev/null")
                    .arg("--no-resolv")
                    .arg("--no-hosts")
                    .arg(format!("--port={port}"))
                    .arg("--listen-address=127.0.0.1")
                    .arg("--bind-interfaces")
                    .arg(format!(
                        "--server=/{zone}/{}#{}",
                        upstream.ip(),
                        upstream.port()
                    ))
                    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
                    .arg("--log-facility=-");
                if as_root {
                    command.arg("--user=root").arg("--group=root");
                }
                command
            },
            |addr| query_udp(addr, &zone, TYPE_SOA).is_some(),
            &[],
        );
        Dnsmasq { daemon }
    }

    /// The UDP and TCP address dnsmasq listens on.
    pub fn addr(&self) -> SocketAddr {
        self.daemon.addr
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }
}

// ---------------------------------------------------------------------------
// dig / kdig
// ---------------------------------------------------------------------------

/// Runs `dig @IP -p PORT +time=2 +tries=2 <args>` and returns its stdout.
///
/// # Panics
/// If dig is missing or exits non-zero (e.g. no reply), with its output.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    run_client(
        require_tool("dig", "bind9-dnsutils"),
        server,
        &["+time=2", "+tries=2"],
        args,
    )
}

/// Runs `kdig @IP -p PORT +timeout=2 +retry=1 <args>` and returns its stdout.
///
/// # Panics
/// If kdig is missing or exits non-zero (e.g. no reply), with its output.
pub fn kdig(server: SocketAddr, args: &[&str]) -> String {
    run_client(
        require_tool("kdig", "knot-dnsutils"),
        server,
        &["+timeout=2", "+retry=1"],
        args,
    )
}

fn run_client(tool: PathBuf, server: SocketAddr, defaults: &[&str], args: &[&str]) -> String {
    let output = Command::new(&tool)
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(defaults)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "{} @{server} {args:?} failed ({}):\nstderr:\n{}\nstdout:\n{stdout}",
            tool.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
        );
    }
    stdout
}

/// The first message of a `dig` or `kdig` output, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigAnswer {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`, ...
    pub rcode: String,
    /// Header flags in printed order: `qr`, `aa`, `tc`, `rd`, `ra`, ...
    pub flags: Vec<String>,
    /// Records as `name ttl class type rdata`, whitespace runs collapsed.
    pub answer: Vec<String>,
    /// Authority section, same format.
    pub authority: Vec<String>,
    /// Additional section (without the OPT pseudo-record), same format.
    pub additional: Vec<String>,
}

impl DigAnswer {
    /// Whether the header has `flag` (e.g. `"aa"`).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The rdata of the answer records of type `rtype` (e.g. `"A"`), sorted,
    /// so a test can compare sets without depending on record order.
    pub fn answer_rdata(&self, rtype: &str) -> Vec<String> {
        let mut rdata: Vec<String> = self
            .answer
            .iter()
            .filter_map(|record| {
                let fields: Vec<&str> = record.splitn(5, ' ').collect();
                (fields.len() == 5 && fields[3] == rtype).then(|| fields[4].to_string())
            })
            .collect();
        rdata.sort();
        rdata
    }
}

/// Parses the default output of `dig` or `kdig` (one message; not `+short`,
/// `+multiline` or `+qr`): the RCODE from the `->>HEADER<<-` line, the flags
/// from the `;; flags:` (dig) / `;; Flags:` (kdig) line, and the records of the
/// ANSWER, AUTHORITY and ADDITIONAL sections.
///
/// # Panics
/// If the output has no `->>HEADER<<-` line.
pub fn parse_dig(output: &str) -> DigAnswer {
    #[derive(Clone, Copy)]
    enum Section {
        None,
        Answer,
        Authority,
        Additional,
    }
    let mut parsed = DigAnswer::default();
    let mut seen_header = false;
    let mut seen_flags = false;
    let mut section = Section::None;
    for line in output.lines().map(str::trim) {
        if let Some(header) = line.split_once("->>HEADER<<-").map(|(_, h)| h) {
            if seen_header {
                break; // a second message
            }
            seen_header = true;
            parsed.rcode = header
                .split_once("status:")
                .map(|(_, rest)| {
                    rest.trim_start()
                        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_default();
            continue;
        }
        if !seen_header {
            continue;
        }
        let flags_prefix = line
            .get(..9)
            .filter(|p| p.eq_ignore_ascii_case(";; flags:"));
        if !seen_flags && flags_prefix.is_some() {
            seen_flags = true;
            let flags = line[9..].split(';').next().unwrap_or_default();
            parsed.flags = flags.split_whitespace().map(str::to_string).collect();
            continue;
        }
        match line {
            ";; ANSWER SECTION:" => section = Section::Answer,
            ";; AUTHORITY SECTION:" => section = Section::Authority,
            ";; ADDITIONAL SECTION:" => section = Section::Additional,
            _ if line.is_empty() || line.starts_with(';') => section = Section::None,
            _ => {
                let record = line.split_whitespace().collect::<Vec<_>>().join(" ");
                match section {
                    Section::Answer => parsed.answer.push(record),
                    Section::Authority => parsed.authority.push(record),
                    Section::Additional => parsed.additional.push(record),
                    Section::None => {}
                }
            }
        }
    }
    assert!(
        seen_header,
        "no `->>HEADER<<-` line in dig output:\n{output}"
    );
    parsed
}

// ---------------------------------------------------------------------------
// Network namespaces: a pod's view of DNS
// ---------------------------------------------------------------------------

/// A network namespace linked to this one by a veth pair, with its own
/// `/etc/netns/<name>/resolv.conf` (what `ip netns exec` shows programs as
/// `/etc/resolv.conf`): a host as a pod sees the network. Needs root (CI runs
/// as root); removed on drop.
pub struct NetNs {
    pub name: String,
    /// This side's address on the veth link.
    pub host_ip: Ipv4Addr,
    /// The namespace's address on the veth link.
    pub ns_ip: Ipv4Addr,
    host_link: String,
}

fn ip(args: &[&str]) {
    let ip = require_tool("ip", "iproute2");
    let out = Command::new(ip).args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates the namespace with `lo` up (a new namespace's loopback is down) and a
    /// /30 veth link to this namespace; `resolv_conf` becomes its resolv.conf.
    pub fn create(tag: &str, resolv_conf: &str) -> NetNs {
        let id = std::process::id() % 200 + 20;
        let name = format!("fdns-{tag}-{}", std::process::id());
        let host_link = format!("fdh{id}{}", &tag[..tag.len().min(4)]);
        let ns_link = format!("fdn{id}{}", &tag[..tag.len().min(4)]);
        let host_ip = Ipv4Addr::new(10, 253, id as u8, 1);
        let ns_ip = Ipv4Addr::new(10, 253, id as u8, 2);
        // Leftovers of a killed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &host_link])
            .output();
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_ip,
            ns_ip,
            host_link: host_link.clone(),
        };
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
        ]);
        ip(&["link", "set", &ns_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_link,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_link, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        let etc = PathBuf::from("/etc/netns").join(&name);
        fs::create_dir_all(&etc).expect("create /etc/netns/<name>");
        write_file(&etc.join("resolv.conf"), resolv_conf);
        ns
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Starts unbound inside the namespace on 127.0.0.1:53 (where glibc looks),
    /// forwarding `zone` to `upstream` and answering NXDOMAIN for `cluster.local`
    /// as a cluster's own DNS would, so a pod's search list falls through to the
    /// name itself. Waits until it answers.
    pub fn start_unbound(&self, zone: &str, upstream: SocketAddr) -> NetnsDaemon {
        let unbound = require_tool("unbound", "unbound");
        require_tool("dig", "bind9-dnsutils");
        let dir = tempfile::Builder::new()
            .prefix("unbound-netns-")
            .tempdir()
            .expect("tempdir");
        let zone = absolute(zone);
        let mut conf = unbound_conf(dir.path(), 53, &zone, upstream);
        conf = conf.replace(
            "stub-zone:",
            "    local-zone: \"cluster.local.\" static\nstub-zone:",
        );
        let conf_path = dir.path().join("unbound.conf");
        write_file(&conf_path, &conf);
        let log = dir.path().join("unbound.log");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(&unbound)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path);
        let child = spawn_logged(command, &log).expect("start unbound in the namespace");
        let daemon = NetnsDaemon {
            child,
            log,
            _dir: dir,
        };
        let answered = poll_until(START_TIMEOUT, || {
            let out = self.exec("dig", &["+time=1", "+tries=1", "@127.0.0.1", &zone, "SOA"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("status:")
                .then_some(())
        });
        if answered.is_none() {
            panic!(
                "unbound did not answer in {}; its log:\n{}",
                self.name,
                daemon.log()
            );
        }
        daemon
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// A daemon running inside a [`NetNs`]; killed on drop.
pub struct NetnsDaemon {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl NetnsDaemon {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NetnsDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Python tools from PyPI
// ---------------------------------------------------------------------------

/// The root of a virtualenv under the target directory holding exactly the pinned
/// `packages` (its programs are in `bin/`), made once and reused. The directory is
/// named after `name` and a hash of `packages`, so a new pin makes a new virtualenv
/// instead of reusing a stale one. nextest runs each test in its own process: a file
/// lock keeps two from building it at once, and a marker written last makes an
/// interrupted install start again.
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut hasher = DefaultHasher::new();
    packages.hash(&mut hasher);
    let venv = dir.join(format!("{name}-venv-{:016x}", hasher.finish()));
    let installed = venv.join(".installed");
    fs::create_dir_all(&dir).expect("create the target's tmp directory");
    let lock = File::create(dir.join(format!("{name}-venv.lock"))).expect("create the venv lock");
    lock.lock().expect("lock the venv");
    if !installed.exists() {
        let _ = fs::remove_dir_all(&venv);
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (apt-get install python3-venv)");
        assert!(
            made.success(),
            "python3 -m venv failed: apt-get install python3-venv"
        );
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .output()
            .expect("run pip");
        assert!(
            pip.status.success(),
            "pip install {packages:?} failed (needs PyPI):\n{}",
            String::from_utf8_lossy(&pip.stderr)
        );
        fs::write(&installed, "").expect("mark the venv installed");
    }
    venv
}

/// Runs `command` with `input` on its stdin and returns its stdout, panicking with
/// its stderr (under `what`) if it fails.
pub fn filter_through(mut command: Command, input: &[u8], what: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Written from a thread: a child that answers before reading everything would
    // otherwise deadlock against a full stdout pipe.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for the child");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
