# Shared by ./ci/test and ./ci/chaos: install what is missing, find leaked servers.
# Sourced, not run.

# Debian packages the harness needs at run time (redis-server, redis-sentinel) and to build
# (libssl-dev, pkg-config: toxiproxy_rust pulls in reqwest with native TLS).
HC_PACKAGES="redis-server redis-sentinel libssl-dev pkg-config"

hc_missing_packages() {
  local missing=""
  command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
  command -v redis-sentinel >/dev/null 2>&1 || missing="$missing redis-sentinel"
  command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
  if ! pkg-config --exists openssl 2>/dev/null; then missing="$missing libssl-dev"; fi
  echo "$missing"
}

hc_ensure_packages() {
  local missing
  missing=$(hc_missing_packages)
  [ -z "$missing" ] && return 0
  # Root installs directly; a user with passwordless sudo (CI runners) through sudo;
  # anyone else is told what to install.
  local sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  fi
  if { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; } || ! command -v apt-get >/dev/null 2>&1; then
    echo "ci: missing:$missing. Install the Debian packages ($HC_PACKAGES) or equivalents, then run again." >&2
    exit 2
  fi
  echo "ci: installing$missing with apt-get" >&2
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
  # Debian's package may start a system redis-server where an init system runs; the harness
  # starts its own servers and does not use it.
}

hc_ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "ci: cargo is not on PATH; install a Rust toolchain (https://rustup.rs) and run again." >&2
    exit 2
  fi
}

# Pids of running (not zombie) redis-server / redis-sentinel processes.
hc_live_redis_pids() {
  ps -eo pid=,stat=,comm= | awk '($3 == "redis-server" || $3 == "redis-sentinel") && $2 !~ /^Z/ { print $1 }' | sort -n
}

# Fails if redis servers are running now that were not running in "$1" (a pid list), after
# giving exiting ones a bounded moment (5 s) to go.
hc_check_no_leaked_redis() {
  local before="$1" leaked="" i
  for i in $(seq 1 50); do
    leaked=$(comm -13 <(echo "$before") <(hc_live_redis_pids) | tr '\n' ' ')
    [ -z "${leaked// /}" ] && return 0
    sleep 0.1
  done
  echo "ci: FAIL: redis processes left running after the run: $leaked" >&2
  ps -o pid,ppid,stat,args -p "${leaked// /,}" >&2 || true
  return 1
}
