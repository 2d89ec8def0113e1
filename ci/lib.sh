# Shared by ./ci/test, ./ci/chaos and ./ci/properties: install what is missing, find the
# binaries cargo built, and find redis servers the run leaked. Sourced, not run.

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
  # starts its own servers and does not use it (and the leak check below ignores it).
}

# Python's redis client, for the example implementations under examples/python (run by the
# tests and ./ci/chaos through --implementation). pip, as the user: no root needed.
HC_PY_REDIS="redis>=5,<8"
hc_ensure_python_redis() {
  command -v python3 >/dev/null 2>&1 || { echo "ci: python3 is missing: install Python 3 (the example implementations need it)" >&2; exit 2; }
  python3 -c 'import redis' 2>/dev/null && return 0
  echo "ci: installing Python's $HC_PY_REDIS with pip" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$HC_PY_REDIS" >&2 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$HC_PY_REDIS" >&2 \
    || { echo "ci: could not install $HC_PY_REDIS with pip; install it, then run again" >&2; exit 2; }
}

hc_ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "ci: cargo is not on PATH; install a Rust toolchain (https://rustup.rs) and run again." >&2
    exit 2
  fi
}

# Where cargo puts its build output, as cargo itself says (CARGO_TARGET_DIR, a config file or
# ./target): never assume ./target.
hc_target_dir() {
  cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# The harness names every redis-server's data dir after this tag (HC_RUN_TAG, exported to
# everything started from here on), and a server runs in its data dir, so the leak check
# counts only what this run started, never a server something else runs on the machine.
# (redis-server overwrites its own argv and environment with its process title: neither
# can carry the tag.)
hc_tag_run() {
  HC_RUN_TAG="hc-$$-$(date +%s%N)"
  export HC_RUN_TAG
}

# Pids of running (not zombie) redis-server / redis-sentinel processes whose working
# directory carries this run's tag, one per line, sorted as text (what comm wants).
hc_run_redis_pids() {
  local pid comm stat cwd
  # A process may exit between ps and the readlink: that read fails quietly.
  ps -eo pid=,stat=,comm= | while read -r pid stat comm; do
    case "$comm" in redis-server|redis-sentinel) ;; *) continue ;; esac
    case "$stat" in Z*) continue ;; esac
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    case "$cwd" in *"$HC_RUN_TAG"*) echo "$pid" ;; esac
  done | LC_ALL=C sort
  return 0
}

# Fails if a redis server this run started is still running, after giving exiting ones a
# bounded moment (5 s) to go.
hc_check_no_leaked_redis() {
  local leaked="" i
  for i in $(seq 1 50); do
    leaked=$(hc_run_redis_pids | paste -sd, -)
    [ -z "$leaked" ] && return 0
    sleep 0.1
  done
  echo "ci: FAIL: redis processes this run started are still running: $leaked" >&2
  ps -o pid,ppid,stat,args -p "$leaked" >&2 || true
  return 1
}

# Whether a Docker engine answers (the container provider's tests and scenarios need one).
hc_docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# The Redis image the container provider starts: HYBRID_CHAOS_REDIS_IMAGE, default
# hybrid-chaos/redis:local. When that default is missing it is built here from the installed
# redis-server, since no registry can be reached: FROM scratch, the binary (also run as
# redis-sentinel), the libraries ldd lists, /etc/passwd and /etc/group, writable /data and
# /etc/sentinel. About 18 MB, a few seconds. A user with a registry sets the variable to
# redis:7 instead and nothing is built.
hc_ensure_redis_image() {
  local image="${HYBRID_CHAOS_REDIS_IMAGE:-hybrid-chaos/redis:local}"
  if docker image inspect "$image" >/dev/null 2>&1; then
    return 0
  fi
  if [ "$image" != "hybrid-chaos/redis:local" ]; then
    echo "ci: the Redis image $image is not present; pull it (docker pull $image) or unset HYBRID_CHAOS_REDIS_IMAGE to build hybrid-chaos/redis:local" >&2
    return 1
  fi
  local bin ctx
  bin=$(readlink -f "$(command -v redis-server)")
  ctx=$(mktemp -d)
  mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc/sentinel" "$ctx/rootfs/data" "$ctx/rootfs/tmp"
  cp "$bin" "$ctx/rootfs/usr/bin/redis-server"
  ln -s redis-server "$ctx/rootfs/usr/bin/redis-sentinel"
  # Every library the binary loads, at the same path, plus the loader itself.
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  echo 'root:x:0:0:root:/root:/bin/false' > "$ctx/rootfs/etc/passwd"
  echo 'redis:x:999:999:redis:/data:/bin/false' >> "$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nredis:x:999:\n' > "$ctx/rootfs/etc/group"
  : > "$ctx/rootfs/etc/sentinel/sentinel.conf"
  chmod 777 "$ctx/rootfs/etc/sentinel" "$ctx/rootfs/data" "$ctx/rootfs/tmp"
  chmod 666 "$ctx/rootfs/etc/sentinel/sentinel.conf"
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
WORKDIR /data
EXPOSE 6379 26379
ENTRYPOINT ["/usr/bin/redis-server"]
DOCKERFILE
  echo "ci: building the Redis image $image from $bin" >&2
  if ! docker build -q -t "$image" --label org.hybrid-chaos.image=redis "$ctx" >/dev/null; then
    rm -rf "$ctx"
    echo "ci: FAIL: could not build $image from $bin" >&2
    return 1
  fi
  rm -rf "$ctx"
}

# Fails if a container or network of this run (label org.hybrid-chaos.run=$HC_RUN_TAG) is
# still there: every test must leave nothing behind.
hc_check_no_leaked_containers() {
  [ "${HC_DOCKER:-}" = "1" ] || return 0
  local left
  left=$(docker ps -aq --filter "label=org.hybrid-chaos.run=$HC_RUN_TAG"; docker network ls -q --filter "label=org.hybrid-chaos.run=$HC_RUN_TAG")
  if [ -n "$left" ]; then
    echo "ci: FAIL: containers or networks of this run were left behind:" >&2
    docker ps -a --filter "label=org.hybrid-chaos.run=$HC_RUN_TAG" >&2
    return 1
  fi
}
