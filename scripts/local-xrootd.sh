#!/usr/bin/env bash
# An XRootD server on this machine serving a folder, for tests and for trying root:// filesets.
#
#   scripts/local-xrootd.sh start DIR [PORT]   # serve DIR as root://localhost:PORT//
#   scripts/local-xrootd.sh stop DIR [PORT]    # stop it (by the pid recorded under DIR)
#
# PORT defaults to $LOCAL_XROOTD_PORT, else 1094. A file DIR/a/b.root is then
# root://localhost:PORT//a/b.root. Needs Debian's xrootd-server. xrootd refuses to run as root,
# so when started as root it runs as $XROOTD_USER (default: the package's `xrootd` user,
# created as a system user if missing); that user must be able to read DIR. Only clients on
# this machine are allowed (`xrd.allow host localhost`). Its state and log live in
# DIR/.xrootd-PORT, so several servers (other ports) can serve one folder.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
action=$1
dir=$(realpath -m "$2")
port=${3:-${LOCAL_XROOTD_PORT:-1094}}
state="$dir/.xrootd-$port"
name="coffea-hpc-$port"
pidfile="$state/run/$name/xrootd.pid"

stop() {
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  command -v xrootd >/dev/null || { echo "xrootd not found: apt-get install xrootd-server" >&2; exit 1; }
  [ -d "$dir" ] || { echo "no such folder: $dir" >&2; exit 1; }
  if listening; then echo "port $port is already in use" >&2; exit 1; fi
  run_as=()
  if [ "$(id -u)" = 0 ]; then
    user=${XROOTD_USER:-xrootd}
    if ! id "$user" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
    fi
    if ! runuser -u "$user" -- test -r "$dir" -a -x "$dir"; then
      echo "user $user cannot read $dir: serve a folder it can read (chmod o+rx)" >&2; exit 1
    fi
    run_as=(-R "$user")
  fi
  mkdir -p "$state/run"
  [ ${#run_as[@]} -eq 0 ] || chown -R "$user" "$state"
  cat > "$state/xrootd.cfg" <<CONF
xrd.port $port
xrd.allow host localhost
all.export /
oss.localroot $dir
all.adminpath $state/run
all.pidpath $state/run
CONF
  xrootd -b "${run_as[@]}" -c "$state/xrootd.cfg" -l "$state/xrootd.log" -n "$name" \
    >"$state/stdout.log" 2>&1
  for _ in $(seq 100); do
    if [ -f "$pidfile" ] && listening; then echo "root://localhost:$port/"; return 0; fi
    sleep 0.1
  done
  echo "xrootd did not come up on port $port; logs in $state" >&2
  cat "$state/stdout.log" >&2 || true
  stop
  exit 1
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
