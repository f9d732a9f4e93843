#!/usr/bin/env bash
# Test hosts on one machine: network namespaces joined by veth pairs to a bridge.
#
#   netns-hosts.sh up [--hosts N] [--prefix P] [--subnet A.B.C] [--rate RATE]
#   netns-hosts.sh down [--prefix P]
#   netns-hosts.sh status [--prefix P]
#   netns-hosts.sh exec [--prefix P] HOST CMD [ARG...]
#   netns-hosts.sh rate [--prefix P] HOST RATE|off
#   netns-hosts.sh cut|heal [--prefix P] HOST
#   netns-hosts.sh cluster-hosts [--prefix P]
#
# Layout (prefix P, default "tsim"):
#
#   P-h1 .. P-hN   one namespace per host; eth0 = SUBNET.(10+i)/24
#   P-orch         the orchestrator's host;  eth0 = SUBNET.2/24
#   P-sw           the switch: bridge br0 and the far ends of the veth pairs
#
# The switch lives in a namespace of its own, so nothing here touches the
# machine's own network: no address, route or bridge appears outside the
# namespaces, and `down` (or a failed `up`) removes everything by deleting
# them. HOST is h1..hN or orch.
#
# Bandwidth between hosts can be limited with tbf on both ends of a host's
# link (--rate, or `rate` later). This kernel has no netem, so delay is not
# injected here: tiersim models latency in simulated time, not on the wire.
#
# Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2's ip and tc.
set -euo pipefail

PREFIX="tsim"
HOSTS=3
# 198.18.0.0/15 is reserved for network benchmark tests (RFC 2544): it never
# collides with a real network, and these addresses exist only inside the namespaces.
SUBNET="198.18.100"
RATE=""

die() { echo "netns-hosts: error: $*" >&2; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

need_tools() {
  command -v ip >/dev/null 2>&1 || die "the ip command (iproute2) is not installed"
  command -v tc >/dev/null 2>&1 || die "the tc command (iproute2) is not installed"
}

# Creating namespaces needs CAP_SYS_ADMIN, veths and qdiscs CAP_NET_ADMIN.
# Ask the kernel rather than guess from the uid: a root without the caps
# (an unprivileged container) fails here with a clear message, not halfway.
need_privileges() {
  local probe="${PREFIX}-probe-$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    die "creating network namespaces needs root or CAP_SYS_ADMIN+CAP_NET_ADMIN (ip netns add failed)"
  fi
  if ! ip -n "$probe" link add probe0 type veth peer name probe1 2>/dev/null; then
    ip netns del "$probe" 2>/dev/null || true
    die "configuring links needs CAP_NET_ADMIN (ip link add failed inside a namespace)"
  fi
  ip netns del "$probe"
}

ns_exists() { [ -e "/run/netns/$1" ]; }

our_namespaces() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | sort); do
    case "$ns" in
      "${PREFIX}-sw" | "${PREFIX}-orch" | "${PREFIX}"-h[0-9]*) echo "$ns" ;;
    esac
  done
}

host_ns() {
  case "$1" in
    orch) echo "${PREFIX}-orch" ;;
    h[0-9]*) echo "${PREFIX}-$1" ;;
    *) die "unknown host '$1' (h1..hN or orch)" ;;
  esac
}

# Kill what still runs inside a namespace (nodes left behind), then delete it.
delete_ns() {
  local ns="$1" pids
  pids="$(ip netns pids "$ns" 2>/dev/null || true)"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086  # one pid per word
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    kill -CONT $pids 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      pids="$(ip netns pids "$ns" 2>/dev/null || true)"
      [ -z "$pids" ] && break
      sleep 0.2
    done
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
  fi
  ip netns del "$ns" 2>/dev/null || true
}

cmd_down() {
  local ns found=0
  for ns in $(our_namespaces); do
    delete_ns "$ns"
    found=1
  done
  if [ "$found" = 0 ]; then
    echo "netns-hosts: no hosts with prefix '$PREFIX' to remove" >&2
    return 1
  fi
  echo "removed hosts with prefix '$PREFIX'"
}

# tbf burst: at least 10 ms of traffic at the rate (and 16 KiB), else tbf
# cannot reach the rate at the timer's resolution.
burst_for() {
  local rate="$1" num unit bits
  num="${rate%%[!0-9]*}"
  unit="${rate#"$num"}"
  [ -n "$num" ] || die "bad rate '$rate' (e.g. 100mbit, 1gbit)"
  case "$unit" in
    bit | "") bits=$num ;;
    kbit) bits=$((num * 1000)) ;;
    mbit) bits=$((num * 1000000)) ;;
    gbit) bits=$((num * 1000000000)) ;;
    *) die "bad rate unit in '$rate' (bit, kbit, mbit or gbit)" ;;
  esac
  local burst=$((bits / 8 / 100))
  [ "$burst" -lt 16384 ] && burst=16384
  echo "$burst"
}

set_rate() {
  local host="$1" rate="$2" ns peer burst
  ns="$(host_ns "$host")"
  peer="v${host}"
  ns_exists "$ns" || die "no host $host (namespace $ns)"
  if [ "$rate" = "off" ]; then
    ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
    ip netns exec "${PREFIX}-sw" tc qdisc del dev "$peer" root 2>/dev/null || true
    return 0
  fi
  burst="$(burst_for "$rate")"
  ip netns exec "$ns" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms
  ip netns exec "${PREFIX}-sw" tc qdisc replace dev "$peer" root tbf rate "$rate" burst "$burst" latency 50ms
}

add_host() {
  local host="$1" addr="$2" ns
  ns="$(host_ns "$host")"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # Both ends are made in the switch; eth0 is moved into the host at once.
  ip -n "${PREFIX}-sw" link add "v${host}" type veth peer name eth0 netns "$ns"
  ip -n "${PREFIX}-sw" link set "v${host}" master br0 up
  ip -n "$ns" addr add "${addr}/24" dev eth0
  ip -n "$ns" link set eth0 up
  if [ -n "$RATE" ]; then
    set_rate "$host" "$RATE"
  fi
}

cmd_up() {
  if ! [[ "$HOSTS" =~ ^[0-9]+$ ]] || [ "$HOSTS" -lt 1 ] || [ "$HOSTS" -gt 200 ]; then
    die "--hosts must be 1..200, got '$HOSTS'"
  fi
  [[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet takes three octets, e.g. 198.18.100"
  [[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--prefix: 1-8 lower-case letters and digits"
  if [ -n "$RATE" ]; then burst_for "$RATE" >/dev/null; fi
  need_tools
  need_privileges
  if [ -n "$(our_namespaces)" ]; then
    die "hosts with prefix '$PREFIX' exist already ($(our_namespaces | tr '\n' ' ')); run down first"
  fi
  # From here on, any failure removes what this run built.
  trap 'echo "netns-hosts: up failed; removing what was built" >&2; for ns in $(our_namespaces); do delete_ns "$ns"; done' ERR
  ip netns add "${PREFIX}-sw"
  ip -n "${PREFIX}-sw" link set lo up
  ip -n "${PREFIX}-sw" link add br0 type bridge
  ip -n "${PREFIX}-sw" link set br0 up
  add_host orch "${SUBNET}.2"
  local i
  for i in $(seq 1 "$HOSTS"); do
    add_host "h$i" "${SUBNET}.$((10 + i))"
  done
  # Wait until every link reports UP at both ends (the bridge has no STP,
  # so its ports forward as soon as they are up).
  local ns
  for ns in "${PREFIX}-orch" $(for i in $(seq 1 "$HOSTS"); do echo "${PREFIX}-h$i"; done); do
    local ok=0
    for _ in $(seq 1 50); do
      if ip -n "$ns" -o link show dev eth0 | grep -q 'state UP'; then
        ok=1
        break
      fi
      sleep 0.1
    done
    [ "$ok" = 1 ] || { echo "netns-hosts: the link of $ns did not come up" >&2; false; }
  done
  trap - ERR
  echo "up: ${HOSTS} hosts ${PREFIX}-h1..${PREFIX}-h${HOSTS} (${SUBNET}.11..), orchestrator ${PREFIX}-orch (${SUBNET}.2)${RATE:+, links at $RATE}"
}

cmd_status() {
  local ns
  if [ -z "$(our_namespaces)" ]; then
    echo "no hosts with prefix '$PREFIX'"
    return 1
  fi
  for ns in $(our_namespaces); do
    [ "$ns" = "${PREFIX}-sw" ] && continue
    local state addr qd
    state="$(ip -n "$ns" -o link show dev eth0 2>/dev/null | grep -q 'state UP' && echo up || echo down)"
    addr="$(ip -n "$ns" -o -4 addr show dev eth0 2>/dev/null | awk '{print $4}')"
    qd="$(ip netns exec "$ns" tc qdisc show dev eth0 2>/dev/null | awk '/tbf/ {for (i=1;i<=NF;i++) if ($i=="rate") print $(i+1)}')"
    printf '%-12s %-18s link %-4s rate %-8s pids %s\n' "$ns" "$addr" "$state" "${qd:-none}" \
      "$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
  done
}

# [[hosts]] tables for a tiersim cluster file (tiersim cluster start).
cmd_cluster_hosts() {
  local ns addr
  for ns in $(our_namespaces); do
    case "$ns" in "${PREFIX}-sw" | "${PREFIX}-orch") continue ;; esac
    addr="$(ip -n "$ns" -o -4 addr show dev eth0 | awk '{print $4}')"
    printf '[[hosts]]\nname = "%s"\naddress = "%s"\nnetns = "%s"\nlink = "eth0"\n\n' \
      "${ns#"${PREFIX}"-}" "${addr%/*}" "$ns"
  done
}

[ $# -ge 1 ] || usage
CMD="$1"
shift
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a value}"; shift 2 ;;
    --hosts) HOSTS="${2:?--hosts needs a value}"; shift 2 ;;
    --subnet) SUBNET="${2:?--subnet needs a value}"; shift 2 ;;
    --rate) RATE="${2:?--rate needs a value}"; shift 2 ;;
    --) shift; ARGS+=("$@"); break ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

case "$CMD" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  cluster-hosts) cmd_cluster_hosts ;;
  exec)
    [ "${#ARGS[@]}" -ge 2 ] || usage
    ns="$(host_ns "${ARGS[0]}")"
    ns_exists "$ns" || die "no host ${ARGS[0]} (namespace $ns)"
    exec ip netns exec "$ns" "${ARGS[@]:1}"
    ;;
  rate)
    [ "${#ARGS[@]}" -eq 2 ] || usage
    set_rate "${ARGS[0]}" "${ARGS[1]}"
    ;;
  cut | heal)
    [ "${#ARGS[@]}" -eq 1 ] || usage
    ns="$(host_ns "${ARGS[0]}")"
    ns_exists "$ns" || die "no host ${ARGS[0]} (namespace $ns)"
    ip -n "$ns" link set dev eth0 "$([ "$CMD" = cut ] && echo down || echo up)"
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
