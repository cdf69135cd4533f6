#!/usr/bin/env bash
# NAT traversal through real NATs, in network namespaces. Run as root.
#
#   public segment 10.200.0.0/24 (a bridge in namespace p2nat-sw):
#     p2nat-rv    10.200.0.2   the rendezvous (port 9000)
#     p2nat-boot  10.200.0.3   a public bootstrap node (port 7000)
#     p2nat-nata  10.200.0.11  NAT router of host A   (LAN 192.168.1.1/24)
#     p2nat-natb  10.200.0.12  NAT router of host B   (LAN 192.168.2.1/24)
#   private hosts:
#     p2nat-a     192.168.1.2  node A (port 7000), default route via its NAT
#     p2nat-b     192.168.2.2  node B (port 7000), default route via its NAT
#
# Each NAT masquerades on its public side, forwards LAN->WAN and the replies
# only, and silently drops anything unsolicited from the WAN (drop, never
# reject). Every address used exists only inside these namespaces.
#
# Steps, one PASS/FAIL line each; exits non-zero if any fails. Every
# namespace is removed on exit, whatever happened. Figures (punch latency,
# success rate, throughput) are printed as MEASURE lines.
#
# Environment: CARGO_TARGET_DIR (where cargo builds), P2PRS_NAT_KEEP=1 (keep
# the logs directory), P2PRS_DEBUG=1 (debug logs from the nodes).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
P=p2nat
NAMESPACES=(sw rv boot nata natb a b)
WORK=$(mktemp -d /tmp/p2nat.XXXXXX)
PASSED=0
FAILED=0
declare -A PIDS FD

log() { printf '%s\n' "$*" >&2; }

pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$1"; }
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL: %s (%s)\n' "$1" "$2"
}

cleanup() {
    local name
    for name in "${!PIDS[@]}"; do
        kill "${PIDS[$name]}" 2>/dev/null
    done
    for name in "${!PIDS[@]}"; do
        wait "${PIDS[$name]}" 2>/dev/null
    done
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$P-$ns" 2>/dev/null
    done
    if [[ $FAILED -gt 0 || -n ${P2PRS_NAT_KEEP:-} ]]; then
        for f in "$WORK"/*.log; do
            [[ -e $f ]] || continue
            log "---- last lines of $(basename "$f")"
            tail -n 25 "$f" >&2
        done
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools --------------------------------------------------------------------

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/nat/run.sh must run as root (it creates network namespaces)" >&2
    exit 2
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
command -v conntrack >/dev/null || missing+=(conntrack)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
        { echo "could not install ${missing[*]}" >&2; exit 1; }
fi

log "building the driver"
(cd "$ROOT" && cargo build --quiet -p p2prs --example nat-driver) || exit 1
DRIVER=$TARGET/debug/examples/nat-driver
[[ -x $DRIVER ]] || { echo "no driver at $DRIVER" >&2; exit 1; }

# ---- topology -----------------------------------------------------------------

in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }

# A host on the public bridge: veth "wan" in the host, its peer in the switch.
public_host() {
    local ns=$1 addr=$2
    ip link add "sw-$ns" type veth peer name wan netns "$P-$ns" &&
        ip link set "sw-$ns" netns "$P-sw" &&
        in_ns sw ip link set "sw-$ns" master br0 up &&
        in_ns "$ns" ip addr add "$addr/24" dev wan &&
        in_ns "$ns" ip link set wan up
}

# A NAT router and the private host behind it.
nat_pair() {
    local router=$1 host=$2 wan=$3 lan=$4 hostaddr=$5
    public_host "$router" "$wan" &&
        ip link add lan netns "$P-$router" type veth peer name eth0 netns "$P-$host" &&
        in_ns "$router" ip addr add "$lan/24" dev lan &&
        in_ns "$router" ip link set lan up &&
        in_ns "$host" ip addr add "$hostaddr/24" dev eth0 &&
        in_ns "$host" ip link set eth0 up &&
        in_ns "$host" ip route add default via "$lan" &&
        in_ns "$router" sysctl -qw net.ipv4.ip_forward=1 &&
        in_ns "$router" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE &&
        in_ns "$router" iptables -P FORWARD DROP &&
        in_ns "$router" iptables -A FORWARD -i lan -o wan -j ACCEPT &&
        in_ns "$router" iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT &&
        in_ns "$router" iptables -A INPUT -i lo -j ACCEPT &&
        in_ns "$router" iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT &&
        in_ns "$router" iptables -A INPUT -i wan -j DROP
}

# MASQUERADE with (random) or without (port-preserving) --random-fully, and
# forget every mapping, as a NAT reconfigured or rebooted would.
nat_mode() {
    local extra=() router
    [[ $1 == random ]] && extra=(--random-fully)
    for router in nata natb; do
        in_ns "$router" iptables -t nat -R POSTROUTING 1 -o wan -j MASQUERADE "${extra[@]}" || return 1
        in_ns "$router" conntrack -F >/dev/null 2>&1
    done
}

topology() {
    local ns
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$P-$ns" 2>/dev/null
        ip netns add "$P-$ns" || return 1
        in_ns "$ns" ip link set lo up || return 1
    done
    in_ns sw ip link add br0 type bridge &&
        in_ns sw ip link set br0 up &&
        public_host rv 10.200.0.2 &&
        public_host boot 10.200.0.3 &&
        nat_pair nata a 10.200.0.11 192.168.1.1 192.168.1.2 &&
        nat_pair natb b 10.200.0.12 192.168.2.1 192.168.2.2
}

# ---- talking to the drivers ---------------------------------------------------

# start NAME NAMESPACE DRIVER-ARGS...: run a driver fed by a FIFO.
start() {
    local name=$1 ns=$2 fd
    shift 2
    rm -f "$WORK/$name.in" "$WORK/$name.out"
    mkfifo "$WORK/$name.in"
    : >"$WORK/$name.out"
    P2PRS_DEBUG=${P2PRS_DEBUG:-} ip netns exec "$P-$ns" "$DRIVER" "$@" \
        <"$WORK/$name.in" >"$WORK/$name.out" 2>>"$WORK/$name.log" &
    PIDS[$name]=$!
    exec {fd}>"$WORK/$name.in"
    FD[$name]=$fd
    wait_for "$name" '"event":"listening"' 30 >/dev/null
}

# stop NAME: ask a driver to quit, and wait for it.
stop() {
    local name=$1 pid=${PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    local fd=${FD[$name]}
    echo "x quit" >&"$fd" 2>/dev/null
    exec {fd}>&-
    local end=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 0.05; done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    unset "PIDS[$name]"
}

# wait_for NAME PATTERN SECONDS: print the first output line holding PATTERN.
wait_for() {
    local name=$1 pat=$2 end=$((SECONDS + $3)) line
    while true; do
        if line=$(grep -F -m1 -- "$pat" "$WORK/$name.out"); then
            printf '%s\n' "$line"
            return 0
        fi
        if ((SECONDS >= end)) || ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            log "$name: no line with $pat"
            return 1
        fi
        sleep 0.05
    done
}

# ask NAME COMMAND...: send a command, print its one-line JSON answer.
# (Usually called in a subshell: the tag counter lives in a file.)
ask() {
    local name=$1 seq
    shift
    seq=$(($(cat "$WORK/seq" 2>/dev/null || echo 0) + 1))
    echo "$seq" >"$WORK/seq"
    echo "q$seq $*" >&"${FD[$name]}"
    wait_for "$name" "\"tag\":\"q$seq\"" "${ASK_TIMEOUT:-90}"
}

# jget JSON KEY: one field of a JSON object ("" when null or missing).
jget() {
    python3 -c 'import json,sys
try:
    v = json.loads(sys.argv[1]).get(sys.argv[2])
except (ValueError, AttributeError):
    v = None
print("" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else v))' "$1" "$2"
}

# until_true SECONDS COMMAND...: retry COMMAND until it succeeds.
until_true() {
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS >= end)) && return 1
        sleep 0.2
    done
}

linked_again() { # NAME MIN_LINKS: the node's rendezvous link is up again
    local s
    s=$(ask "$1" status) || return 1
    [[ $(jget "$s" connected) == True && $(jget "$s" links) -ge $2 ]]
}

# ---- the test -----------------------------------------------------------------

RV=10.200.0.2:9000
BOOT=10.200.0.3:7000
NODE=(--listen 0.0.0.0:7000 --rendezvous "$RV" --punch-timeout-ms 4000)

log "building the namespaces"
topology || { fail "topology" "could not build the namespaces"; exit 1; }
start rv rv rendezvous --listen "$RV" --relay-peer-cap 0 --relay-rate-limit 0 &&
    start boot boot node "${NODE[@]}" --create &&
    start a a node "${NODE[@]}" &&
    start b b node "${NODE[@]}" ||
    { fail "start" "a driver did not start"; exit 1; }

# 1. The NAT really blocks: unsolicited connects to A's public endpoint hang
#    (dropped, not refused) while A does listen.
a_public=$(jget "$(wait_for a '"event":"listening"' 5)" public)
step="B cannot connect to A's public endpoint unsolicited"
in_ns a timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/7000'
a_local=$?
in_ns b timeout 3 bash -c "exec 3<>/dev/tcp/${a_public%:*}/${a_public##*:}"
from_b=$?
in_ns boot timeout 3 bash -c "exec 3<>/dev/tcp/${a_public%:*}/${a_public##*:}"
from_boot=$?
if [[ $a_public == 10.200.0.11:7000 && $a_local -eq 0 && $from_b -eq 124 && $from_boot -eq 124 ]]; then
    pass "$step"
else
    fail "$step" "A public=$a_public, A local connect=$a_local, from B=$from_b, from boot=$from_boot (124 = dropped)"
fi

# 2. A and B join through the public bootstrap and get IDs.
step="A and B join the ring through the public bootstrap"
ja=$(ask a join "$BOOT") && jb=$(ask b join "$BOOT")
ID_A=$(jget "${ja:-}" id)
ID_B=$(jget "${jb:-}" id)
ID_BOOT=$(jget "$(ask boot id)" id)
size_is_3() { [[ $(jget "$(ask a status)" size) == 3 && $(jget "$(ask b status)" size) == 3 ]]; }
if [[ -n $ID_A && -n $ID_B && $ID_A != "$ID_B" ]] && until_true 30 size_is_3; then
    pass "$step (boot=$ID_BOOT, A=$ID_A, B=$ID_B)"
else
    fail "$step" "join A: ${ja:-none}; join B: ${jb:-none}"
fi

# 3. A sends to B by ID, B answers A's request, over a punched connection.
step="A sends to B by ID and B answers A's request over a punched connection"
sent=$(ask a send "$ID_B" hello-from-a)
got=$(wait_for b '"text":"hello-from-a"' 30)
req=$(ask a request "$ID_B" ping-through-the-nat)
back=$(ask b path "$ID_A")
if [[ $(jget "$sent" ok) == True && $(jget "$got" from) == "$ID_A" &&
    $(jget "$req" reply) == ping-through-the-nat && $(jget "$req" path) == punched &&
    $(jget "$back" path) == punched ]]; then
    pass "$step"
else
    fail "$step" "send: $sent; received: ${got:-nothing}; request: $req; B's path to A: $back"
fi

# Figures: send-to-ID latency when no connection is open (each try closes
# the connection first, so every send has to punch), and throughput.
step="20 sends to B's ID, each needing a new punch"
bench=$(ASK_TIMEOUT=300 ask a bench "$ID_B" 20)
printf 'MEASURE: punch latency (send to an ID behind NAT -> connection ready): median %s ms over %s tries; %s of %s over a punched connection; ms: %s\n' \
    "$(jget "$bench" median_ms)" "$(jget "$bench" tries)" "$(jget "$bench" punched)" \
    "$(jget "$bench" tries)" "$(jget "$bench" ms)"
printf 'MEASURE: punch success rate: %s of %s punches started by A during the tries succeeded\n' \
    "$(jget "$bench" punches_won)" "$(jget "$bench" punches_started)"
if [[ $(jget "$bench" sent) == 20 && $(jget "$bench" punched) -ge 18 ]]; then
    pass "$step"
else
    fail "$step" "$bench"
fi
tp_punched=$(ask a throughput "$ID_B" 16777216 262144)
tp_direct=$(ask a throughput "$ID_BOOT" 16777216 262144)
printf 'MEASURE: throughput A->B %s: %s MiB/s; A->boot %s: %s MiB/s\n' \
    "$(jget "$tp_punched" path)" "$(jget "$tp_punched" mib_per_s)" \
    "$(jget "$tp_direct" path)" "$(jget "$tp_direct" mib_per_s)"

# 4. Symmetric NATs: punching cannot work; the same request goes through the relay.
step="with --random-fully NATs the same request succeeds over the relay"
links_a=$(jget "$(ask a status)" links)
links_b=$(jget "$(ask b status)" links)
nat_mode random || fail "$step" "could not switch the NATs"
ask a close "$ID_B" >/dev/null
ask b close "$ID_A" >/dev/null
# Forgetting the mappings broke every link through the NATs: wait for the
# rendezvous links to come back, from random ports now.
if until_true 60 linked_again a $((links_a + 1)) && until_true 60 linked_again b $((links_b + 1)); then
    # Measure a first contact: no connection between A and B is left open.
    ask a close "$ID_B" >/dev/null
    ask b close "$ID_A" >/dev/null
    req=$(ask a request "$ID_B" ping-through-the-relay)
    back=$(ask b path "$ID_A")
    printf 'MEASURE: first request by ID through the relay (punch given up after relay_after): %s ms\n' \
        "$(jget "$req" ms)"
    if [[ $(jget "$req" reply) == ping-through-the-relay && $(jget "$req" path) == relayed &&
        $(jget "$back" path) == relayed ]]; then
        pass "$step"
    else
        fail "$step" "request: $req; B's path to A: $back"
    fi
    tp_relay=$(ask a throughput "$ID_B" 16777216 262144)
    printf 'MEASURE: throughput A->B %s: %s MiB/s (relay limits off in this test) %s\n' \
        "$(jget "$tp_relay" path)" "$(jget "$tp_relay" mib_per_s)" "$(jget "$tp_relay" error)"
else
    fail "$step" "the rendezvous links did not come back: A $(ask a status), B $(ask b status)"
fi

# 5. The rendezvous restarts (and the NATs preserve ports again): the nodes
#    register again and a new punch succeeds.
step="after a rendezvous restart the nodes register again and a new punch succeeds"
nat_mode preserve || fail "$step" "could not switch the NATs back"
links_a=$(jget "$(ask a status)" links)
links_b=$(jget "$(ask b status)" links)
stop rv
start rv rv rendezvous --listen "$RV" --relay-peer-cap 0 --relay-rate-limit 0 ||
    fail "$step" "the rendezvous did not start again"
# Every connection through the NATs died with their mappings: the ring heals
# over a few stabilizer rounds once the links are back, so the request is
# retried (each try over a fresh punch) until it gets through.
request_after_restart() {
    ask a close "$ID_B" >/dev/null
    req=$(ask a request "$ID_B" ping-after-restart)
    [[ $(jget "$req" reply) == ping-after-restart ]]
}
if until_true 60 linked_again a $((links_a + 1)) && until_true 60 linked_again b $((links_b + 1)); then
    until_true 30 request_after_restart
    back=$(ask b path "$ID_A")
    stats=$(ask rv stats)
    if [[ $(jget "$req" reply) == ping-after-restart && $(jget "$req" path) == punched &&
        $(jget "$back" path) == punched && $(jget "$stats" registered) -ge 3 &&
        $(jget "$stats" introductions) -ge 1 ]]; then
        pass "$step"
    else
        fail "$step" "request: $req; B's path to A: $back; rendezvous: $stats"
    fi
else
    fail "$step" "the nodes did not register again: A $(ask a status), B $(ask b status)"
fi

for name in a b boot rv; do stop "$name"; done
echo "nat: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
