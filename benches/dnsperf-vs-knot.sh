#!/usr/bin/env bash
# fleetdns vs Knot DNS vs NSD: the same zone, one core each, dnsperf on the other core.
#
# usage: [FLEETDNS_UDP_WORKERS=1] benches/dnsperf-vs-knot.sh [N_SERVICES=10000] [ROUNDS=3] [SECONDS=15]
#
# FLEETDNS_UDP_WORKERS sets fleetdns's dns.udp_workers (default 1: one UDP worker thread, as
# Knot runs with udp-workers: 1 and NSD with server-count: 1, every server pinned to one core;
# more workers on one core only add context switches).
#
# 1. builds fleetdns (cargo build --release) and checks for dnsperf, knot and nsd;
# 2. generates a static fleet of N_SERVICES services across clusters c0..c9 (local c0) in a
#    temporary work dir (benches/gen_fleet.py), writes its zone with `fleetdns dump-zone`, and
#    loads that exact zone into Knot and NSD;
# 3. starts all three on core 1 (every thread re-pinned, since knotd pins its UDP worker to
#    CPU 0 itself), checks that Knot and NSD answer sampled queries exactly like fleetdns, and
#    aborts if not;
# 4. runs `dnsperf -c 4 -q 100` on core 0 for SECONDS against each server in turn (fleetdns,
#    knot, nsd), ROUNDS times, recording QPS, lost queries, latency, the server's CPU seconds
#    (/proc utime+stime; NSD: its whole process tree) and RSS;
# 5. prints medians and ratios to Knot, and the path of the raw per-run TSV.
#
# Compare q/CPU-s (queries per server CPU-second), not QPS: on a 2-core machine dnsperf on one
# core is often the limit, and other load on the machine moves QPS a lot (see
# ../shared/research/dns-perf.md). Every process started here is stopped on exit, Ctrl-C included.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

usage() { echo "usage: [FLEETDNS_UDP_WORKERS=1] $0 [N_SERVICES=10000] [ROUNDS=3] [SECONDS=15]" >&2; exit 2; }
die() { echo "dnsperf-vs-knot: $*" >&2; exit 1; }

(($# <= 3)) || usage
N_SERVICES=${1:-10000}
ROUNDS=${2:-3}
DURATION=${3:-15}
UDP_WORKERS=${FLEETDNS_UDP_WORKERS:-1}
for v in "$N_SERVICES" "$ROUNDS" "$DURATION" "$UDP_WORKERS"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || usage
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
HELPER=("python3" "$HERE/dnsbench.py")
SERVERS=(fleetdns knot nsd)
SERVER_CORE=1
CLIENT_CORE=0

# --- prerequisites ----------------------------------------------------------------------------
need() { # command package
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian package $2 (apt-get install $2)"
}
need dnsperf dnsperf
need knotd knot
need knotc knot
need nsd nsd
need nsd-control nsd
need nsd-checkzone nsd
need python3 python3
need taskset util-linux
need pgrep procps
need timeout coreutils
need cargo "cargo (rustup)"
(($(nproc) >= 2)) || die "needs at least 2 CPUs (server on core $SERVER_CORE, dnsperf on core $CLIENT_CORE)"

echo "== building fleetdns (release)"
(cd "$ROOT" && cargo build --release)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
FLEETDNS=$TARGET_DIR/release/fleetdns
[[ -x $FLEETDNS ]] || die "no fleetdns binary at $FLEETDNS after the build"

# --- process bookkeeping and cleanup -------------------------------------------------------------
declare -A PID=()  # server name -> PID of the process we started
DNSPERF_PID=""

descendants() { # PID and all its descendants, parents first
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do
        descendants "$c"
    done
}

alive() { # running and not a zombie
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

cleanup() {
    local rc=$? name p all=() left=()
    set +e
    trap - EXIT INT TERM
    if [[ -n $DNSPERF_PID ]]; then
        kill "$DNSPERF_PID" 2>/dev/null
    fi
    for name in "${!PID[@]}"; do
        mapfile -t -O "${#all[@]}" all < <(descendants "${PID[$name]}")
    done
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null
        for _ in $(seq 50); do
            left=()
            for p in "${all[@]}"; do
                if alive "$p"; then left+=("$p"); fi
            done
            ((${#left[@]})) || break
            sleep 0.1
        done
        if ((${#left[@]})); then
            echo "dnsperf-vs-knot: killing ${left[*]} (still running 5 s after SIGTERM)" >&2
            kill -KILL "${left[@]}" 2>/dev/null
        fi
    fi
    wait 2>/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pin() { # re-pin every thread of PID and of its descendants to the server core
    local p t
    for p in $(descendants "$1"); do
        for t in /proc/"$p"/task/*; do
            taskset -pc "$SERVER_CORE" "${t##*/}" >/dev/null 2>&1 || true
        done
    done
}

check_pinned() { # NAME PID: warn about any thread allowed elsewhere than the server core
    local p t cpus bad=0
    for p in $(descendants "$2"); do
        for t in /proc/"$p"/task/*; do
            cpus=$(awk '/^Cpus_allowed_list:/{print $2}' "$t/status" 2>/dev/null) || continue
            if [[ -n $cpus && $cpus != "$SERVER_CORE" ]]; then
                echo "WARNING: $1 thread ${t##*/} may run on CPUs $cpus" >&2
                bad=1
            fi
        done
    done
    return "$bad"
}

cpu_ticks() { # utime+stime of PID's whole process (all threads) and of its descendants
    local total=0 p stat f
    for p in $(descendants "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

core_ticks() { # busy ticks of the server core (user nice system irq softirq)
    awk -v c="cpu$SERVER_CORE" '$1 == c {print $2 + $3 + $4 + $7 + $8}' /proc/stat
}

memory_kib() { # "RSS PSS" in KiB, summed over PID and its descendants
    local rss=0 pss=0 p v
    for p in $(descendants "$1"); do
        v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null) || v=0
        rss=$((rss + ${v:-0}))
        v=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || v=0
        pss=$((pss + ${v:-0}))
    done
    echo "$rss $pss"
}

start_server() { # NAME PORT LOG COMMAND...: start on the server core, wait until it answers
    local name=$1 port=$2 log=$3
    shift 3
    taskset -c "$SERVER_CORE" "$@" >"$log" 2>&1 &
    PID[$name]=$!
    if ! "${HELPER[@]}" wait "$port" "${PID[$name]}" 60; then
        echo "---- $log" >&2
        tail -n 30 "$log" >&2
        die "$name did not start"
    fi
    echo "   $name: pid ${PID[$name]}, 127.0.0.1:$port"
}

# --- data -------------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleetdns-vs-knot.XXXXXX")
mkdir -p "$WORK/fleet" "$WORK/knot" "$WORK/nsd" "$WORK/runs"
echo "== work dir $WORK"

mapfile -t PORTS < <("${HELPER[@]}" ports 4)
declare -A PORT=([fleetdns]=${PORTS[0]} [knot]=${PORTS[2]} [nsd]=${PORTS[3]})
OPS_PORT=${PORTS[1]}

python3 "$HERE/gen_fleet.py" fleet "$WORK/fleet" "$N_SERVICES" "${PORT[fleetdns]}" "$OPS_PORT" "$UDP_WORKERS"
CONFIG=$WORK/fleet/fleet.yaml
ZONE=$WORK/fleet.zone
QUERIES=$WORK/queries.txt
"$FLEETDNS" check --config "$CONFIG" >/dev/null
"$FLEETDNS" dump-zone --config "$CONFIG" --output "$ZONE"
echo "zone: $(grep -cv '^\$' "$ZONE") records in $ZONE"
python3 "$HERE/gen_fleet.py" queries "$ZONE" "$QUERIES" 100000

cat >"$WORK/knot/knot.conf" <<EOF
server:
    rundir: "$WORK/knot"
    listen: 127.0.0.1@${PORT[knot]}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$WORK/knot"
log:
  - target: stderr
    any: warning
zone:
  - domain: fleet.
    storage: "$WORK/knot"
    file: "$ZONE"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    semantic-checks: off
EOF

cat >"$WORK/nsd/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@${PORT[nsd]}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$WORK/nsd"
    database: ""
    zonelistfile: "$WORK/nsd/zone.list"
    xfrdfile: "$WORK/nsd/xfrd.state"
    xfrdir: "$WORK/nsd"
    pidfile: "$WORK/nsd/nsd.pid"
    logfile: "$WORK/nsd/nsd.log"
    verbosity: 1
    hide-version: yes
    minimal-responses: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "fleet."
    zonefile: "$ZONE"
EOF

knotc -c "$WORK/knot/knot.conf" conf-check >/dev/null || die "knotc conf-check failed for $WORK/knot/knot.conf"
nsd-checkzone fleet. "$ZONE" >"$WORK/nsd/checkzone.log" 2>&1 ||
    die "nsd-checkzone rejects the dump-zone output: $(cat "$WORK/nsd/checkzone.log")"

# --- servers ----------------------------------------------------------------------------------------
echo "== starting servers on core $SERVER_CORE"
start_server fleetdns "${PORT[fleetdns]}" "$WORK/fleetdns.log" "$FLEETDNS" run --config "$CONFIG"
"${HELPER[@]}" ready "$OPS_PORT" "${PID[fleetdns]}" 60 || die "fleetdns is not ready (log: $WORK/fleetdns.log)"
start_server knot "${PORT[knot]}" "$WORK/knot/knotd.log" knotd -c "$WORK/knot/knot.conf"
start_server nsd "${PORT[nsd]}" "$WORK/nsd/nsd.out" nsd -d -c "$WORK/nsd/nsd.conf"
for s in "${SERVERS[@]}"; do
    pin "${PID[$s]}"
    check_pinned "$s" "${PID[$s]}" || true
done

echo "== checking answers"
"${HELPER[@]}" verify "$QUERIES" 300 "fleetdns=${PORT[fleetdns]}" "knot=${PORT[knot]}" "nsd=${PORT[nsd]}" ||
    die "Knot or NSD answer differently from fleetdns (above); not measuring"

echo "== memory after load (RSS / PSS, KiB)"
for s in "${SERVERS[@]}"; do
    read -r rss pss < <(memory_kib "${PID[$s]}")
    echo "   $s: processes=$(descendants "${PID[$s]}" | wc -l) rss=$rss pss=$pss"
done

# --- measurement ------------------------------------------------------------------------------------
TSV=$WORK/runs.tsv
echo "== $ROUNDS round(s) of ${DURATION}s per server: taskset -c $CLIENT_CORE dnsperf -l $DURATION -c 4 -q 100"
for ((round = 1; round <= ROUNDS; round++)); do
    for s in "${SERVERS[@]}"; do
        pid=${PID[$s]}
        alive "$pid" || die "$s (pid $pid) is no longer running"
        pin "$pid"
        out=$WORK/runs/$s.$round.txt
        c0=$(cpu_ticks "$pid")
        k0=$(core_ticks)
        w0=$(date +%s.%N)
        taskset -c "$CLIENT_CORE" timeout $((DURATION + 30)) \
            dnsperf -s 127.0.0.1 -p "${PORT[$s]}" -d "$QUERIES" -l "$DURATION" -c 4 -q 100 >"$out" 2>&1 &
        DNSPERF_PID=$!
        wait "$DNSPERF_PID" || die "dnsperf against $s failed: $(cat "$out")"
        DNSPERF_PID=""
        w1=$(date +%s.%N)
        c1=$(cpu_ticks "$pid")
        k1=$(core_ticks)
        read -r rss pss < <(memory_kib "$pid")
        wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", b - a}')
        "${HELPER[@]}" record "$TSV" "$round" "$s" "$out" $((c1 - c0)) "$wall" $((k1 - k0)) "$rss" "$pss"
        sleep 1
    done
done

# --- report -----------------------------------------------------------------------------------------
echo
echo "== fleetdns vs Knot vs NSD: $N_SERVICES services, $(grep -cv '^\$' "$ZONE") records, $ROUNDS x ${DURATION}s, fleetdns udp_workers: $UDP_WORKERS"
echo "   $("$FLEETDNS" --version 2>/dev/null || echo fleetdns) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')), $(knotd -V 2>&1 | head -n 1), $(nsd -v 2>&1 | head -n 1), $(dnsperf -h 2>&1 | grep -m 1 Version)"
echo
"${HELPER[@]}" summarize "$TSV"
echo
echo "fleetdns memory-related metrics:"
"${HELPER[@]}" metrics "$OPS_PORT" '^fleetdns_(index|view|snapshot|zone|memory)_'
echo
echo "raw per-run rows: $TSV"
echo "work dir (configs, zone, queries, logs, dnsperf outputs): $WORK"
