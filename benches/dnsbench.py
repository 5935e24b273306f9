#!/usr/bin/env python3
"""Helpers for benches/dnsperf-vs-knot.sh (python3 stdlib only).

dnsbench.py ports N                        N free 127.0.0.1 ports (TCP and UDP), one a line
dnsbench.py wait PORT PID SECONDS          until PORT answers `fleet. SOA` NOERROR (exit 1 if
                                           PID dies or time runs out)
dnsbench.py ready OPS_PORT PID SECONDS    until http://127.0.0.1:OPS_PORT/readyz returns 200
dnsbench.py verify QUERIES SAMPLE REF=PORT NAME=PORT...
                                           asks every server the same queries (the first A,
                                           SRV and NXDOMAIN of QUERIES, as REF answers them,
                                           plus the first SAMPLE lines) and exits 1, printing
                                           every difference, unless all answer with the same
                                           RCODE, answer count and answer RRsets
dnsbench.py record TSV ROUND SERVER DNSPERF_OUT CPU_TICKS WALL_S CORE1_TICKS RSS_KIB PSS_KIB
                                           appends one run to TSV (writing the header first)
dnsbench.py summarize TSV                  the per-server table
dnsbench.py metrics PORT REGEX             /metrics lines (not comments) matching REGEX
"""
import os
import re
import socket
import statistics
import struct
import sys
import time
import urllib.error
import urllib.request

TYPES = {"A": 1, "NS": 2, "SOA": 6, "TXT": 16, "AAAA": 28, "SRV": 33}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_ports(n):
    held, ports = [], []
    while len(ports) < n:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            u.close()
            continue
        held += [t, u]
        ports.append(port)
    for s in held:
        s.close()
    print("\n".join(map(str, ports)))


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def read_name(msg, off):
    labels, end, hops = [], None, 0
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            hops += 1
            if hops > 64:
                raise ValueError("compression loop")
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode("ascii", "replace").lower())
        off += n
    return ".".join(labels) + ".", (end if end is not None else off)


def rdata_text(msg, rtype, off, rdlen):
    raw = msg[off:off + rdlen]
    if rtype == 1 and rdlen == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if rtype == 28 and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    if rtype == 33 and rdlen >= 7:
        prio, weight, port = struct.unpack("!HHH", raw[:6])
        return f"{prio} {weight} {port} {read_name(msg, off + 6)[0]}"
    if rtype in (2, 5, 12):
        return read_name(msg, off)[0]
    return raw.hex()


def parse(msg):
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        off = read_name(msg, off)[1] + 4
    answers = []
    for _ in range(an):
        owner, off = read_name(msg, off)
        rtype, _cls, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        answers.append((owner, TYPE_NAMES.get(rtype, str(rtype)), ttl, rdata_text(msg, rtype, off, rdlen)))
        off += rdlen
    return {"id": qid, "rcode": RCODES.get(flags & 0xF, str(flags & 0xF)), "aa": bool(flags & 0x400),
            "tc": bool(flags & 0x200), "an": an, "ns": ns, "answers": sorted(answers)}


def query(port, name, qtype, timeout=1.0, tries=3):
    """One query without EDNS and with RD set, as dnsperf sends it by default."""
    qid = int.from_bytes(os.urandom(2), "big")
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for _ in range(tries):
            s.sendto(packet, ("127.0.0.1", port))
            try:
                while True:
                    data, _ = s.recvfrom(65535)
                    if len(data) >= 12 and data[:2] == packet[:2]:
                        return parse(data)
            except socket.timeout:
                continue
    return None


def wait(port, pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"process {pid} exited before answering on port {port}")
        r = query(port, "fleet.", "SOA", timeout=0.3, tries=1)
        if r and r["rcode"] == "NOERROR" and r["an"] > 0:
            return
        time.sleep(0.2)
    sys.exit(f"no NOERROR answer to fleet. SOA on port {port} within {seconds} s")


def ready(port, pid, seconds):
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            sys.exit(f"process {pid} exited before /readyz said ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read().decode(errors='replace').strip()}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    sys.exit(f"/readyz on port {port} not 200 within {seconds} s: {last}")


def describe(r):
    if r is None:
        return "no reply"
    flags = "aa" if r["aa"] else "no-aa"
    if r["tc"]:
        flags += ",tc"
    ans = "; ".join(" ".join(map(str, a)) for a in r["answers"])
    return f"{r['rcode']} an={r['an']} ns={r['ns']} {flags} [{ans}]"


def verify(query_file, sample, ref, others):
    ref_name, ref_port = ref
    with open(query_file) as f:
        lines = [tuple(line.split()) for line in f if line.strip()]
    chosen, kinds = [], {}
    # The first A with an answer, SRV with an answer and NXDOMAIN, as the reference answers.
    for name, qtype in lines:
        kind = None
        if len(kinds) == 3:
            break
        r = query(ref_port, name, qtype)
        if r is None:
            continue
        if r["rcode"] == "NXDOMAIN":
            kind = "NXDOMAIN"
        elif r["rcode"] == "NOERROR" and r["an"] > 0 and qtype in ("A", "SRV"):
            kind = qtype
        if kind and kind not in kinds:
            kinds[kind] = (name, qtype)
            chosen.append((name, qtype))
    missing = {"A", "SRV", "NXDOMAIN"} - set(kinds)
    if missing:
        sys.exit(f"verify: {ref_name} gave no {', '.join(sorted(missing))} answer to any query in {query_file}")
    chosen += [q for q in lines[:sample] if q not in chosen]
    fatal, warnings = [], []
    for name, qtype in chosen:
        rr = query(ref_port, name, qtype)
        if rr is None:
            fatal.append(f"{name} {qtype}: {ref_name} did not answer")
            continue
        for other_name, port in others:
            ro = query(port, name, qtype)
            key = f"{name} {qtype}"
            if ro is None:
                fatal.append(f"{key}: {other_name} did not answer ({ref_name}: {describe(rr)})")
                continue
            strip = lambda r: [(o, t, d) for o, t, _ttl, d in r["answers"]]  # noqa: E731
            if (ro["rcode"], ro["an"], strip(ro)) != (rr["rcode"], rr["an"], strip(rr)):
                fatal.append(f"{key}:\n    {ref_name:9} {describe(rr)}\n    {other_name:9} {describe(ro)}")
            elif (ro["aa"], ro["tc"], ro["ns"], ro["answers"]) != (rr["aa"], rr["tc"], rr["ns"], rr["answers"]):
                warnings.append(f"{key}:\n    {ref_name:9} {describe(rr)}\n    {other_name:9} {describe(ro)}")
    for w in warnings[:10]:
        print(f"verify: WARNING (flags, authority count or TTL differ) {w}", file=sys.stderr)
    if fatal:
        print(f"verify: {len(fatal)} ANSWERS DIFFER from {ref_name} (RCODE, answer count or answer data):",
              file=sys.stderr)
        for d in fatal[:20]:
            print(f"  {d}", file=sys.stderr)
        sys.exit(1)
    names = ", ".join(n for n, _ in others)
    shown = "; ".join(f"{k}: {n} {t}" for k, (n, t) in kinds.items())
    print(f"verify: {len(chosen)} queries ({shown}): {names} answer exactly like {ref_name} "
          f"(RCODE, answer count, answer RRsets){'' if not warnings else f'; {len(warnings)} with other differences'}")


HEADER = ["round", "server", "qps", "completed", "lost", "avg_lat_ms", "lat_sd_ms", "srv_cpu_s",
          "srv_util", "q_per_cpu_s", "rss_kib", "pss_kib", "core1_other_util", "wall_s", "rcodes"]


def record(tsv, rnd, server, out, cpu_ticks, wall_s, core1_ticks, rss_kib, pss_kib):
    text = open(out).read()

    def grab(pattern, cast=float):
        m = re.search(pattern, text)
        if not m:
            sys.exit(f"record: cannot find /{pattern}/ in {out}:\n{text}")
        return cast(m.group(1))
    completed = grab(r"Queries completed:\s+(\d+)", int)
    lost = grab(r"Queries lost:\s+(\d+)", int)
    qps = grab(r"Queries per second:\s+([\d.]+)")
    lat = grab(r"Average Latency \(s\):\s+([\d.]+)") * 1000
    sd = grab(r"Latency StdDev \(s\):\s+([\d.]+)") * 1000
    m = re.search(r"Response codes:\s+(.*)", text)
    rcodes = m.group(1).strip() if m else ""
    cpu_s = int(cpu_ticks) / CLK_TCK
    wall = float(wall_s)
    other = max(0.0, (int(core1_ticks) - int(cpu_ticks)) / CLK_TCK / wall)
    eff = completed / cpu_s if cpu_s > 0 else float("nan")
    row = [rnd, server, f"{qps:.1f}", completed, lost, f"{lat:.3f}", f"{sd:.3f}", f"{cpu_s:.2f}",
           f"{cpu_s / wall:.2f}", f"{eff:.0f}", rss_kib, pss_kib, f"{other:.2f}", f"{wall:.2f}", rcodes]
    new = not os.path.exists(tsv)
    with open(tsv, "a") as f:
        if new:
            f.write("\t".join(HEADER) + "\n")
        f.write("\t".join(map(str, row)) + "\n")
    print(f"  round {rnd} {server:8} qps={qps:9.0f} completed={completed} lost={lost} lat={lat:.3f}ms "
          f"cpu={cpu_s:.2f}s q/cpu-s={eff:.0f} rss={int(rss_kib) / 1024:.1f}MiB core1-other={other:.2f} [{rcodes}]")


def summarize(tsv):
    rows = []
    with open(tsv) as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            rows.append(dict(zip(head, line.rstrip("\n").split("\t"))))
    servers = []
    for r in rows:
        if r["server"] not in servers:
            servers.append(r["server"])
    med = statistics.median
    stats = {}
    for s in servers:
        rs = [r for r in rows if r["server"] == s]
        stats[s] = {
            "n": len(rs),
            "qps": med(float(r["qps"]) for r in rs),
            "eff": med(float(r["q_per_cpu_s"]) for r in rs),
            "eff_min": min(float(r["q_per_cpu_s"]) for r in rs),
            "eff_max": max(float(r["q_per_cpu_s"]) for r in rs),
            "lat": med(float(r["avg_lat_ms"]) for r in rs),
            "lost": sum(int(r["lost"]) for r in rs),
            "rss": max(int(r["rss_kib"]) for r in rs) / 1024,
            "pss": max(int(r["pss_kib"]) for r in rs) / 1024,
            "util": med(float(r["srv_util"]) for r in rs),
            "other": max(float(r["core1_other_util"]) for r in rs),
        }
    knot = stats.get("knot")
    ratio = lambda a, b: f"{a / b:.2f}" if b else "-"  # noqa: E731
    cols = ["server", "runs", "QPS med", "q/CPU-s med (min-max)", "lat ms med", "lost",
            "RSS MiB", "PSS MiB", "srv core util", "core1 other max", "q/CPU-s / Knot", "RSS / Knot"]
    table = []
    for s in servers:
        st = stats[s]
        table.append([s, str(st["n"]), f"{st['qps'] / 1e3:.1f}k",
                      f"{st['eff'] / 1e3:.1f}k ({st['eff_min'] / 1e3:.1f}-{st['eff_max'] / 1e3:.1f}k)",
                      f"{st['lat']:.3f}", str(st["lost"]), f"{st['rss']:.1f}", f"{st['pss']:.1f}",
                      f"{st['util']:.2f}", f"{st['other']:.2f}",
                      ratio(st["eff"], knot["eff"]) if knot else "-",
                      ratio(st["rss"], knot["rss"]) if knot else "-"])
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(cols)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    print(fmt(cols))
    print(fmt(["-" * w for w in widths]))
    for r in table:
        print(fmt(r))
    print("q/CPU-s = queries completed / server CPU seconds (utime+stime of the whole process, NSD: its whole "
          "process tree). RSS = VmRSS after a run, max over runs (NSD: summed over its processes; PSS is fairer).")
    noisy = [s for s in servers if stats[s]["other"] > 0.15]
    if noisy:
        print(f"NOTE: other processes used more than 15% of core 1 during some runs of: {', '.join(noisy)}; "
              "QPS is noisy, compare q/CPU-s.")


def metrics(port, regex):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as e:
        print(f"(cannot read /metrics: {e})")
        return
    pat = re.compile(regex)
    found = [line for line in body.splitlines() if line and not line.startswith("#") and pat.search(line)]
    print("\n".join(found) if found else f"(no metrics matching {regex})")


def main():
    a = sys.argv[1:]
    if a[:1] == ["ports"] and len(a) == 2:
        free_ports(int(a[1]))
    elif a[:1] == ["wait"] and len(a) == 4:
        wait(int(a[1]), int(a[2]), float(a[3]))
    elif a[:1] == ["ready"] and len(a) == 4:
        ready(int(a[1]), int(a[2]), float(a[3]))
    elif a[:1] == ["verify"] and len(a) >= 5:
        pairs = [(p.split("=")[0], int(p.split("=")[1])) for p in a[3:]]
        verify(a[1], int(a[2]), pairs[0], pairs[1:])
    elif a[:1] == ["record"] and len(a) == 10:
        record(*a[1:])
    elif a[:1] == ["summarize"] and len(a) == 2:
        summarize(a[1])
    elif a[:1] == ["metrics"] and len(a) == 3:
        metrics(int(a[1]), a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
