#!/usr/bin/env bash
# bench/run.sh [--quick] [--cases LIST] [--tsv FILE] [--logs DIR]
#
# Compares this shim (io.containerd.rustrunc.v2, "ours") with containerd's Go shim
# (io.containerd.runc.v2, "go") on one private containerd: lifecycle latency and CPU, shim CPU,
# idle memory, parallel start/teardown throughput, stdout relay throughput and CPU, exec latency,
# TTY relay, threads and memory under load (pending Waits, idle connections, concurrent execs), and
# how long a container's write stalls while containerd is restarted. Samples are taken interleaved
# (go, ours, go, ours, ...) after warm-ups. Prints an aligned table (median, p95, mean, ours/Go)
# and writes a TSV (default bench/results.tsv); the containerd log and the list of failed commands
# are kept in DIR (default bench/logs). See bench/README.md for what each figure means and how it is
# measured.
#
# Needs root, cgroup v1 cpuacct at /sys/fs/cgroup/cpuacct, containerd + ctr + runc, Debian's
# /usr/bin/containerd-shim-runc-v2, and target/release/containerd-shim-rustrunc-v2 (cargo build
# --release; this script builds nothing). Everything it starts runs under one temp dir
# (/tmp/rrb.XXXXXX) and one cgroup, and is removed on exit, Ctrl-C or SIGTERM.
# --cases 1,6 runs only those cases (for working on one figure; case 5's per-MiB figures subtract
# case 1's medians, so they need case 1 in the same run).
set -uo pipefail
export LC_ALL=C   # EPOCHREALTIME and awk must use a decimal point

top=$(cd "$(dirname "$0")/.." && pwd)
here=$top/bench
lib=$here/lib
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

quick=0
cases=1,2,3,4,5,6,7,8,9,10
tsv=$here/results.tsv
logdir=$here/logs
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --cases) cases=${2:?--cases needs a list such as 1,6}; shift ;;
    --cases=*) cases=${1#--cases=} ;;
    --tsv) tsv=${2:?--tsv needs a file}; shift ;;
    --tsv=*) tsv=${1#--tsv=} ;;
    --logs) logdir=${2:?--logs needs a directory}; shift ;;
    --logs=*) logdir=${1#--logs=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ",$cases," == *",$1,"* ]]; }
case $tsv in /*) ;; *) tsv=$PWD/$tsv ;; esac
case $logdir in /*) ;; *) logdir=$PWD/$logdir ;; esac

# ---- parameters -------------------------------------------------------------------------------
if [ "$quick" = 1 ]; then
  mode=quick
  W1=1  N1=8    # case 1: warm-ups and samples per shim
  N2=5          # case 2
  MEM_N=5       # case 3: containers per shim
  PAR_N=20 PAR_CLIENTS=10 PAR_ROUNDS=1   # case 4
  RELAY_MIB=64 RELAY_W=0 RELAY_N=3       # case 5
  EXEC_W=1 EXEC_N=5                      # case 6
  TTY_W=1 TTY_N=3 TTY_MIB=8              # case 7
  DIRECT_MIB=64 DIRECT_TTY_MIB=16 DIRECT_W=1 DIRECT_N=3   # case 8
  LOAD_N=1 LOAD_WAITS=1000,5000 LOAD_IDLE=500 LOAD_EXECS=50   # case 9
  STALL_N=1 STALL_S=5 STALL_PAD=1000     # case 10: restarts, outage seconds, bytes of padding per line
  IDLE_S=1 SETTLE_S=2 IDLE_CPU_S=2
else
  mode=full
  W1=3  N1=30
  N2=15
  MEM_N=20
  PAR_N=100 PAR_CLIENTS=10 PAR_ROUNDS=5
  RELAY_MIB=256 RELAY_W=1 RELAY_N=5
  EXEC_W=2 EXEC_N=40
  TTY_W=1 TTY_N=5 TTY_MIB=32
  DIRECT_MIB=256 DIRECT_TTY_MIB=64 DIRECT_W=1 DIRECT_N=5
  LOAD_N=3 LOAD_WAITS=1000,5000 LOAD_IDLE=500 LOAD_EXECS=200
  STALL_N=3 STALL_S=20 STALL_PAD=200
  IDLE_S=3 SETTLE_S=3 IDLE_CPU_S=5
fi
CTR_TIMEOUT=60        # seconds for any one ctr command (a hang shows up as a failure, not a stall)
SHIMS=(go ours)       # A = go, B = ours: every interleaved loop runs them in this order
declare -A RT=([go]=io.containerd.runc.v2 [ours]=io.containerd.rustrunc.v2)
IMG=docker.io/library/rustrunc-busybox:latest
ours_bin=$top/target/release/containerd-shim-rustrunc-v2
go_bin=/usr/bin/containerd-shim-runc-v2

# ---- preconditions ----------------------------------------------------------------------------
die() { echo "run.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[ -x "$ours_bin" ] || die "$ours_bin not found: run \`cargo build --release\` first"
[ -x "$go_bin" ] || die "$go_bin not found (apt-get install containerd)"
for b in containerd ctr runc timeout awk; do command -v "$b" >/dev/null || die "$b not found"; done
cpuacct_root=/sys/fs/cgroup/cpuacct
[ -f "$cpuacct_root/cpuacct.usage" ] || die "no cgroup v1 cpuacct hierarchy at $cpuacct_root"
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static) for the test image"

# ---- state and cleanup ------------------------------------------------------------------------
dir=$(mktemp -d /tmp/rrb.XXXXXX) || die "mktemp failed"
chmod 711 "$dir"
sock=$dir/c.sock
ns=rrb${dir##*.}
ns=${ns,,}
cg=$cpuacct_root/rrbench.${dir##*.}
raw=$dir/raw.tsv
errlog=$dir/errors.log
reaplog=$dir/reaped.tsv
shimtypes=$dir/shimtypes.tsv
fifodir=$dir/fifo
: >"$raw"; : >"$errlog"; : >"$reaplog"; : >"$dir/ids"; : >"$dir/exitlag"; : >"$dir/teardown.log"
printf 'pid\tstarttime\tshim\n' >"$shimtypes"
mkdir -p "$fifodir" "$dir/bin"
reaper_pid=
bg_pids=()
cleaned=

log() { printf '[bench %4ds] %s\n' "$SECONDS" "$*" >&2; }
err() { printf '%s %s\n' "$(date +%T)" "$*" >>"$errlog"; }

C() { timeout --foreground -k 5 "$CTR_TIMEOUT" ctr --address "$sock" -n "$ns" "$@"; }
ctr_cmd() { printf 'timeout --foreground -k 5 %q ctr --address %q -n %q' "$CTR_TIMEOUT" "$sock" "$ns"; }

containerd_pid() {
  local c
  [ -n "$reaper_pid" ] || return 1
  for c in $(cat "/proc/$reaper_pid/task/$reaper_pid/children" 2>/dev/null); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = containerd ] && { echo "$c"; return 0; }
  done
  return 1
}

# Every process whose argv has "-address $sock" (the shims of this containerd, alive or stuck).
pids_of_our_shims() {
  local f a p
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}; p=${p%/cmdline}
    mapfile -d '' -t a <"$f" 2>/dev/null || continue
    [ "${#a[@]}" -gt 2 ] || continue
    [[ ${a[0]} == *containerd-shim* ]] || continue
    local s=" ${a[*]} "
    [[ $s == *" -address $sock "* ]] && echo "$p"
  done
}

# Starts containerd again after it was stopped (case 10), the way it was started: the subreaper runs
# the same argv (config, PATH, cgroup, log) on SIGHUP. Waits until `ctr version` answers (≤ 30 s).
restart_containerd() {
  local end=$((SECONDS + 30))
  while :; do
    # The HUP is ignored until the subreaper has reaped the old containerd: send it until one runs.
    [ -n "$(containerd_pid)" ] || kill -HUP "$reaper_pid" 2>/dev/null
    C version >/dev/null 2>&1 && return 0
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.1
  done
}

kill_tree_of() { # our background client subshells and whatever they are running
  local p=$1 c
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do kill_tree_of "$c"; done
  kill -KILL "$p" 2>/dev/null
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$cleaned" ] && return
  cleaned=1
  set +e
  log "cleaning up (exit status $rc)"
  for p in "${bg_pids[@]}"; do kill_tree_of "$p"; done
  [ "${#bg_pids[@]}" -gt 0 ] && wait "${bg_pids[@]}" 2>/dev/null
  # Stopped by case 10 and not started again (a failure in its outage): start it, so that the tasks
  # are removed through it rather than by killing their shims.
  if [ -n "$reaper_pid" ] && kill -0 "$reaper_pid" 2>/dev/null && [ -z "$(containerd_pid)" ]; then
    log "containerd is stopped: starting it again for the cleanup"
    restart_containerd || log "containerd did not come back"
  fi
  if [ -n "$(containerd_pid)" ] && C version >/dev/null 2>&1; then
    local tasks conts
    tasks=$(C task ls -q 2>/dev/null)
    if [ -n "$tasks" ]; then
      log "removing $(echo "$tasks" | wc -l) leftover task(s)"
      echo "$tasks" | xargs -r -P 10 -I{} timeout -k 2 20 ctr --address "$sock" -n "$ns" task rm -f {} >/dev/null 2>&1
    fi
    conts=$(C containers ls -q 2>/dev/null)
    [ -n "$conts" ] && echo "$conts" | xargs -r -P 10 -I{} timeout -k 2 20 ctr --address "$sock" -n "$ns" containers rm {} >/dev/null 2>&1
  fi
  # Stop containerd (the subreaper forwards SIGTERM to it).
  local cd; cd=$(containerd_pid)
  if [ -n "$cd" ]; then
    kill -TERM "$cd" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$cd" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$cd" 2>/dev/null
  fi
  # Shims of this containerd that are still there.
  local left; left=$(pids_of_our_shims)
  if [ -n "$left" ]; then
    log "killing leftover shim(s): $(echo $left)"
    kill -KILL $left 2>/dev/null
    sleep 0.2
  fi
  # Containers those shims left behind (runc state of our namespace only).
  if [ -d "/run/containerd/runc/$ns" ]; then
    for id in $(runc --root "/run/containerd/runc/$ns" list -q 2>/dev/null); do
      runc --root "/run/containerd/runc/$ns" delete -f "$id" >/dev/null 2>&1
    done
    rmdir "/run/containerd/runc/$ns" 2>/dev/null
  fi
  # Shim sockets are named sha256(<address>/<namespace>/<id>); a killed shim leaves its socket.
  if [ -s "$dir/ids" ]; then
    sort -u "$dir/ids" | while read -r id; do
      h=$(printf '%s' "$sock/$ns/$id" | sha256sum | cut -d' ' -f1)
      [ -e "/run/containerd/s/$h" ] && rm -f "/run/containerd/s/$h"
    done
  fi
  # The subreaper exits by itself once it has no children left.
  if [ -n "$reaper_pid" ]; then
    for _ in $(seq 50); do kill -0 "$reaper_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$reaper_pid" 2>/dev/null
    wait "$reaper_pid" 2>/dev/null
  fi
  # Mounts under the temp dir (rootfs, overlay snapshots), deepest first.
  awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  # Container cgroups runc made under /<namespace> in every hierarchy, then ours.
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$ns" ] || continue
    find "$h$ns" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
    rmdir "$h$ns" 2>/dev/null
  done
  if [ -d "$cg" ]; then
    # Anything still in it (there should be nothing) goes back to the root before rmdir.
    while read -r p; do echo "$p" >"$cpuacct_root/cgroup.procs" 2>/dev/null; done <"$cg/cgroup.procs"
    rmdir "$cg" 2>/dev/null || log "could not remove $cg"
  fi
  if [ -f "$dir/containerd.log" ]; then
    mkdir -p "$logdir" 2>/dev/null && {
      cp "$dir/containerd.log" "$logdir/containerd-$mode.log"
      cp "$errlog" "$logdir/errors-$mode.log"
    }
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- small helpers ----------------------------------------------------------------------------
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"; }          # case metric unit better shim value
rec_na() { printf '%s\t%s\t%s\t%s\t%s\tNA:%s\n' "$@" >>"$raw"; }   # case metric unit better shim reason
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }
cgu() { read -r CGU <"$cg/cpuacct.usage"; }     # cgroup CPU so far, ns, into $CGU
reg_id() { echo "$1" >>"$dir/ids"; }
reaped_lines() { local n; n=$(wc -l <"$reaplog"); echo "${n// /}"; }
median_of() { # case metric shim -> median of the recorded samples
  awk -F'\t' -v c="$1" -v m="$2" -v s="$3" '$1 == c && $2 == m && $5 == s && $6 !~ /^NA:/ {print $6}' "$raw" | "$PY" "$lib/tools.py" median
}

shim_pid_of() { # container id -> pid of its shim daemon (a child of the subreaper once `start` exited)
  local id=$1 c a s
  for c in $(cat "/proc/$reaper_pid/task/$reaper_pid/children" 2>/dev/null); do
    mapfile -d '' -t a <"/proc/$c/cmdline" 2>/dev/null || continue
    s=" ${a[*]} "
    [[ ${a[0]:-} == *containerd-shim* && $s == *" -id $id "* && $s == *" -address $sock "* ]] && { echo "$c"; return 0; }
  done
  return 1
}
starttime_of() { local l; read -r l <"/proc/$1/stat" 2>/dev/null || return 1; l=${l##*) }; set -- $l; echo "${20}"; }

note_shim() { # pid shim: remember which binary a pid was, for the exit-status summary
  local st; st=$(starttime_of "$1") && printf '%s\t%s\t%s\n' "$1" "$st" "$2" >>"$shimtypes"
}
note_all_shims() { # shim [FILE]: note every live shim whose container id has "-<shim>-" in it;
  # with FILE, also write "pid starttime" of each to FILE
  local c a s st
  [ -n "${2:-}" ] && : >"$2"
  for c in $(cat "/proc/$reaper_pid/task/$reaper_pid/children" 2>/dev/null); do
    mapfile -d '' -t a <"/proc/$c/cmdline" 2>/dev/null || continue
    [[ ${a[0]:-} == *containerd-shim* ]] || continue
    s=" ${a[*]} "
    [[ $s == *"-$1-"* ]] || continue
    st=$(starttime_of "$c") || continue
    printf '%s\t%s\t%s\n' "$c" "$st" "$1" >>"$shimtypes"
    [ -n "${2:-}" ] && printf '%s\t%s\n' "$c" "$st" >>"$2"
  done
}

# wait_reaped PID STARTTIME [TIMEOUT_S] -> "cpu_ns reaped_at status" of that process once it exited
wait_reaped() {
  local pid=$1 st=$2 end=$((SECONDS + ${3:-15})) l
  while :; do
    l=$(awk -F'\t' -v p="$pid" -v s="$st" '$1 == p && $2 == s {print $3, $8, $7; exit}' "$reaplog")
    [ -n "$l" ] && { echo "$l"; return 0; }
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.01
  done
}
# wait_new_shim BASE_LINES SHIM [TIMEOUT_S] -> "cpu_ns reaped_at status" of the first shim reaped after
# line BASE_LINES of the reaper log (used where exactly one shim lives and dies per sample).
wait_new_shim() {
  local base=$1 shim=$2 end=$((SECONDS + ${3:-15})) l
  while :; do
    l=$(awk -F'\t' -v b="$base" 'NR > b && $6 == "containerd-shim" {print $3, $8, $7, $1, $2; exit}' "$reaplog")
    if [ -n "$l" ]; then
      set -- $l
      printf '%s\t%s\t%s\n' "$4" "$5" "$shim" >>"$shimtypes"
      echo "$1 $2 $3"
      return 0
    fi
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.01
  done
}
# wait_quiet [TIMEOUT_S]: until the cgroup holds nothing but the subreaper and its children (containerd,
# shim daemons), i.e. no `shim start`/`shim delete`, runc or ctr-triggered helper is still running, so a
# cpuacct reading taken next includes all the work of what came before (containerd runs `<shim>
# delete` after every shim disconnects, concurrently with the shim's exit).
wait_quiet() {
  local t=${1:-10} p l busy
  local end=$((SECONDS + t))
  while :; do
    busy=
    while read -r p; do
      [ "$p" = "$reaper_pid" ] && continue
      read -r l <"/proc/$p/stat" 2>/dev/null || continue
      l=${l##*) }; set -- $l
      [ "$2" = "$reaper_pid" ] || { busy=$p; break; }
    done <"$cg/cgroup.procs"
    [ -z "$busy" ] && return 0
    [ "$SECONDS" -ge "$end" ] && { err "cgroup not quiet after $t s: pid $busy ($(tr '\0' ' ' </proc/$busy/cmdline 2>/dev/null | cut -c1-120))"; return 1; }
    sleep 0.01
  done
}
live_shims() { # number of shim daemons of this containerd still running
  local c n=0
  for c in $(cat "/proc/$reaper_pid/task/$reaper_pid/children" 2>/dev/null); do
    [[ $(cat "/proc/$c/comm" 2>/dev/null) == containerd-shim* ]] && n=$((n + 1))
  done
  echo "$n"
}
wait_no_shims() { # [TIMEOUT_S]
  local end=$((SECONDS + ${1:-30}))
  while [ "$(live_shims)" != 0 ]; do
    [ "$SECONDS" -ge "$end" ] && { err "shims still alive after teardown: $(live_shims)"; return 1; }
    sleep 0.05
  done
}
na_reason() { # stderr file -> reason text
  if grep -qiE 'unimplemented|not implemented' "$1"; then echo Unimplemented; else echo "failed, see errors log"; fi
}
# teardown ID... with $PAR_CLIENTS parallel clients: task rm -f (SIGKILL + wait + delete), container rm
# (ctr's "task ... exit with non-zero exit code 137" warnings go to teardown.log, not the errors log)
teardown() {
  [ $# -gt 0 ] || return 0
  printf '%s\n' "$@" | xargs -r -P "$PAR_CLIENTS" -I{} sh -c \
    "$(ctr_cmd) task rm -f {} >/dev/null 2>>$dir/teardown.log; $(ctr_cmd) containers rm {} >/dev/null 2>>$dir/teardown.log"
}

# ---- start containerd -------------------------------------------------------------------------
mkdir "$cg" || die "cannot create $cg"
# Our shim binary is copied so that a concurrent `cargo build` cannot swap it mid-run.
cp "$ours_bin" "$dir/bin/containerd-shim-rustrunc-v2"
sed -e "s#@ROOT@#$dir/root#g; s#@STATE@#$dir/state#g; s#@ADDRESS@#$sock#g" \
  "$top/test-fixtures/containerd-config.toml.in" >"$dir/config.toml"
PATH="$dir/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  "$PY" "$lib/subreaper.py" "$reaplog" "$cg" containerd --config "$dir/config.toml" \
  >"$dir/containerd.log" 2>&1 </dev/null &
reaper_pid=$!
for _ in $(seq 100); do C version >/dev/null 2>&1 && break; sleep 0.1; done
C version >/dev/null 2>&1 || { tail -20 "$dir/containerd.log" >&2; die "containerd did not start"; }
bash "$top/test-fixtures/build-image.sh" "$dir/image.tar" "$IMG" >/dev/null || die "image build failed"
C images import "$dir/image.tar" >/dev/null || die "image import failed"

ours_sum=$(sha256sum "$ours_bin" | cut -c1-12)
ours_mtime=$(date -r "$ours_bin" '+%F %T')
git_rev=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$top" diff --quiet HEAD -- src 2>/dev/null || git_rev="$git_rev (src/ has uncommitted changes)"
{
  echo "containerd-shim-rustrunc-v2 benchmark, $mode mode, $(date '+%F %T %Z')"
  echo "host: $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), ctr namespace $ns"
  echo "go:   $go_bin (${RT[go]})"
  echo "ours: $ours_bin (${RT[ours]}), sha256 $ours_sum..., built $ours_mtime, HEAD $git_rev"
} >"$dir/header.txt"
cat "$dir/header.txt" >&2

# Idle CPU of containerd itself: the noise floor of every cgroup figure.
cgu; u0=$CGU; t0=$EPOCHREALTIME; sleep "$IDLE_S"; cgu; t1=$EPOCHREALTIME
idle_ms_per_s=$(calc "($CGU - $u0) / 1e6 / ($t1 - $t0)")

# ---- case 1: ctr run --rm true ----------------------------------------------------------------
if want 1; then
# One full lifecycle per sample. Wall time of the ctr command; CPU of the cgroup (containerd, both
# shim processes, runc; not ctr, not the container) from before ctr to after the shim has exited;
# the shim daemon's own CPU from its exit record.
c1="1 ctr run --rm true"
run_rm_true() { # shim id record(0/1)
  local s=$1 id=$2 base t0 t1 out
  reg_id "$id"
  wait_quiet; base=$(reaped_lines); cgu; local u0=$CGU
  t0=$EPOCHREALTIME
  if ! C run --rm --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" true >/dev/null 2>"$dir/stderr"; then
    err "case 1 $s $id: ctr run failed: $(tr '\n' ' ' <"$dir/stderr")"
    [ "$3" = 1 ] && rec_na "$c1" "wall time" ms lower "$s" "$(na_reason "$dir/stderr")"
    wait_new_shim "$base" "$s" 5 >/dev/null
    C containers rm "$id" >/dev/null 2>&1
    return 1
  fi
  t1=$EPOCHREALTIME
  if ! out=$(wait_new_shim "$base" "$s"); then
    err "case 1 $s $id: shim did not exit within 15 s after ctr run --rm returned"
    return 1
  fi
  wait_quiet; cgu
  [ "$3" = 1 ] || return 0
  set -- $out
  rec "$c1" "wall time" ms lower "$s" "$(calc "($t1 - $t0) * 1000")"
  rec "$c1" "CPU containerd+shim+runc (cgroup)" ms lower "$s" "$(calc "($CGU - $u0) / 1e6")"
  rec "$c1" "shim daemon CPU (whole lifecycle)" ms lower "$s" "$(calc "$1 / 1e6")"
  # Not a figure (the shim normally exits before ctr has removed the container), but a shim that
  # lingers after its container is gone is worth knowing about.
  printf '%s\t%s\n' "$s" "$(calc "($2 - $t1) * 1000")" >>"$dir/exitlag"
}
log "case 1: ctr run --rm true, $W1 warm-up(s) + $N1 samples per shim"
for ((i = 0; i < W1; i++)); do for s in "${SHIMS[@]}"; do run_rm_true "$s" "w1-$s-$i" 0; done; done
for ((i = 0; i < N1; i++)); do for s in "${SHIMS[@]}"; do run_rm_true "$s" "c1-$s-$i" 1; done; done

fi

# ---- case 2: the shim's own CPU for one container, split at delete -----------------------------
if want 2; then
# ctr run -d ... true; wait until the container has exited (the shim has no child left); read the
# shim's process CPU clock (all its threads) = create+start+exit handling; ctr task rm + containers rm;
# the shim's final CPU comes from the subreaper, which reads it from the zombie before reaping it.
c2="2 shim CPU, one container"
log "case 2: shim CPU per container (run -d true, task rm), $N2 samples per shim"
shim_cpu_once() { # shim id
  local s=$1 id=$2 pid st pre out base
  reg_id "$id"
  wait_quiet; cgu; local u0=$CGU
  if ! C run -d --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" true >/dev/null 2>"$dir/stderr"; then
    err "case 2 $s $id: ctr run -d failed: $(tr '\n' ' ' <"$dir/stderr")"
    rec_na "$c2" "start->exit total" ms lower "$s" "$(na_reason "$dir/stderr")"
    C containers rm "$id" >/dev/null 2>&1
    return 1
  fi
  pid=$(shim_pid_of "$id") && st=$(starttime_of "$pid") || { err "case 2 $s $id: shim not found"; teardown "$id"; return 1; }
  note_shim "$pid" "$s"
  local end=$((SECONDS + 10))
  while [ -n "$(cat /proc/"$pid"/task/*/children 2>/dev/null)" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.01; done
  sleep 0.1   # let the exit event go out
  pre=$("$PY" "$lib/tools.py" cpu "$pid") || { err "case 2 $s $id: shim $pid gone before delete"; teardown "$id"; return 1; }
  C task rm "$id" >/dev/null 2>>"$errlog" || err "case 2 $s $id: task rm failed"
  C containers rm "$id" >/dev/null 2>>"$errlog" || err "case 2 $s $id: containers rm failed"
  if ! out=$(wait_reaped "$pid" "$st"); then
    err "case 2 $s $id: shim $pid did not exit within 15 s of task rm"
    return 1
  fi
  wait_quiet; cgu
  set -- $out
  rec "$c2" "start->exit total" ms lower "$s" "$(calc "$1 / 1e6")"
  rec "$c2" "until delete (create, start, exit)" ms lower "$s" "$(calc "$pre / 1e6")"
  rec "$c2" "delete + shutdown" ms lower "$s" "$(calc "($1 - $pre) / 1e6")"
  rec "$c2" "CPU containerd+shim+runc (cgroup)" ms lower "$s" "$(calc "($CGU - $u0) / 1e6")"
}
for ((i = 0; i < N2; i++)); do for s in "${SHIMS[@]}"; do shim_cpu_once "$s" "c2-$s-$i"; done; done

fi

# ---- case 3: idle memory per shim --------------------------------------------------------------
if want 3; then
c3="3 idle memory per shim ($MEM_N containers each)"
log "case 3: idle memory, $MEM_N sleeping containers per shim"
mem_ids=() mem_all=()
for ((i = 0; i < MEM_N; i++)); do
  for s in "${SHIMS[@]}"; do
    id=m-$s-$i; reg_id "$id"; mem_all+=("$id")
    if C run -d --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" sleep 1000 >/dev/null 2>"$dir/stderr"; then
      mem_ids+=("$id")
    else
      err "case 3 $s $id: ctr run -d failed: $(tr '\n' ' ' <"$dir/stderr")"
      cp "$dir/stderr" "$dir/stderr-mem-$s"
    fi
  done
done
sleep "$SETTLE_S"   # let both settle (Go's first GC cycles, lazily touched pages)
for s in "${SHIMS[@]}"; do
  pids=()
  for id in "${mem_ids[@]}"; do
    [[ $id == m-$s-* ]] || continue
    p=$(shim_pid_of "$id") && { pids+=("$p"); note_shim "$p" "$s"; }
  done
  [ "${#pids[@]}" -gt 0 ] && cat /proc/"${pids[0]}"/task/*/comm 2>/dev/null | sort | uniq -c \
    | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1} END {print ""}' >"$dir/threads-$s"
  if [ "${#pids[@]}" = 0 ]; then
    reason=failed; [ -f "$dir/stderr-mem-$s" ] && reason=$(na_reason "$dir/stderr-mem-$s")
    for m in RSS PSS Private_Dirty; do rec_na "$c3" "$m" MiB lower "$s" "$reason"; done
    rec_na "$c3" threads count lower "$s" "$reason"
    continue
  fi
  # CPU while idle: process CPU clocks of all of them, IDLE_CPU_S apart.
  "$PY" "$lib/tools.py" cpus "${pids[@]}" >"$dir/idle0"; t0=$EPOCHREALTIME
  sleep "$IDLE_CPU_S"
  "$PY" "$lib/tools.py" cpus "${pids[@]}" >"$dir/idle1"; t1=$EPOCHREALTIME
  awk -v dt="$(calc "$t1 - $t0")" 'NR == FNR {a[$1] = $2; next} ($1 in a) {printf "%.3f\n", ($2 - a[$1]) / 1e3 / dt}' \
    "$dir/idle0" "$dir/idle1" | while read -r v; do
    rec "$c3" "idle CPU" "us/s" lower "$s" "$v"
  done
  while read -r _ rss pss dirty thr; do
    rec "$c3" RSS MiB lower "$s" "$(calc "$rss / 1024")"
    rec "$c3" PSS MiB lower "$s" "$(calc "$pss / 1024")"
    rec "$c3" Private_Dirty MiB lower "$s" "$(calc "$dirty / 1024")"
    rec "$c3" threads count lower "$s" "$thr"
  done < <("$PY" "$lib/tools.py" mem "${pids[@]}")
done
teardown "${mem_all[@]}"
wait_no_shims 60

fi

# ---- case 4: parallel start and teardown ------------------------------------------------------
if want 4; then
c4="4 $PAR_N containers, $PAR_CLIENTS clients"
log "case 4: $PAR_N containers by $PAR_CLIENTS parallel clients, $PAR_ROUNDS round(s) per shim"
par_round() { # shim round
  local s=$1 r=$2 lat=$dir/lat-$s-$r c t0 t1 u0 u1 u2 ids=() fails
  : >"$lat"
  for ((i = 0; i < PAR_N; i++)); do ids+=("p$r-$s-$i"); echo "p$r-$s-$i" >>"$dir/ids"; done
  wait_quiet; cgu; u0=$CGU; t0=$EPOCHREALTIME
  bg_pids=()
  for ((c = 0; c < PAR_CLIENTS; c++)); do
    (
      for ((i = c; i < PAR_N; i += PAR_CLIENTS)); do
        a=$EPOCHREALTIME
        if C run -d --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "p$r-$s-$i" sleep 1000 >/dev/null 2>"$dir/stderr-$c"; then
          echo "$a $EPOCHREALTIME" >>"$lat"
        else
          echo "FAIL" >>"$lat"
          err "case 4 $s p$r-$s-$i: ctr run -d failed: $(tr '\n' ' ' <"$dir/stderr-$c")"
          cp "$dir/stderr-$c" "$dir/stderr-par-$s"
        fi
      done
    ) &
    bg_pids+=($!)
  done
  wait "${bg_pids[@]}"
  bg_pids=()
  t1=$EPOCHREALTIME; wait_quiet; cgu; u1=$CGU
  fails=$(grep -c FAIL "$lat")
  note_all_shims "$s" "$dir/round-shims"
  if [ "$fails" = "$PAR_N" ]; then
    local reason; reason=$(na_reason "$dir/stderr-par-$s")
    rec_na "$c4" "start throughput" containers/s higher "$s" "$reason"
    teardown "${ids[@]}"
    return
  fi
  [ "$fails" = 0 ] || err "case 4 $s round $r: $fails of $PAR_N starts failed"
  rec "$c4" "start throughput" containers/s higher "$s" "$(calc "($PAR_N - $fails) / ($t1 - $t0)")"
  awk '$1 != "FAIL" {printf "%.3f\n", ($2 - $1) * 1000}' "$lat" | while read -r v; do
    rec "$c4" "ctr run -d latency under load" ms lower "$s" "$v"
  done
  rec "$c4" "start CPU per container (cgroup)" ms lower "$s" "$(calc "($u1 - $u0) / 1e6 / ($PAR_N - $fails)")"
  local running; running=$(C task ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING"' | grep -c -- "-$s-")
  [ "$running" = $((PAR_N - fails)) ] || err "case 4 $s round $r: $running tasks RUNNING, expected $((PAR_N - fails))"
  sleep 1
  cgu; u1=$CGU; t0=$EPOCHREALTIME
  teardown "${ids[@]}"
  t1=$EPOCHREALTIME
  wait_no_shims 60
  wait_quiet; cgu; u2=$CGU
  rec "$c4" "teardown throughput (task rm -f, rm)" containers/s higher "$s" "$(calc "($PAR_N - $fails) / ($t1 - $t0)")"
  rec "$c4" "teardown CPU per container (cgroup)" ms lower "$s" "$(calc "($u2 - $u1) / 1e6 / ($PAR_N - $fails)")"
  # Every shim daemon of the round, start to exit, from the subreaper's records.
  [ -s "$dir/round-shims" ] && awk -F'\t' 'NR == FNR {want[$1 "/" $2] = 1; next} ($1 "/" $2) in want {printf "%.6f\n", $3 / 1e6}' \
    "$dir/round-shims" "$reaplog" | while read -r v; do
    rec "$c4" "shim daemon CPU per container (start to exit)" ms lower "$s" "$v"
  done
}
for ((r = 0; r < PAR_ROUNDS; r++)); do for s in "${SHIMS[@]}"; do par_round "$s" "$r"; done; done

fi

# ---- case 5: stdout relay ---------------------------------------------------------------------
if want 5; then
c5="5 stdout relay ${RELAY_MIB} MiB"
log "case 5: $RELAY_MIB MiB to stdout, $RELAY_W warm-up(s) + $RELAY_N samples per shim"
declare -A base_shim base_cg
for s in "${SHIMS[@]}"; do
  base_shim[$s]=$(median_of "$c1" "shim daemon CPU (whole lifecycle)" "$s"); base_shim[$s]=${base_shim[$s]:-0}
  base_cg[$s]=$(median_of "$c1" "CPU containerd+shim+runc (cgroup)" "$s"); base_cg[$s]=${base_cg[$s]:-0}
done
relay_once() { # shim id record(0/1)
  local s=$1 id=$2 keep=$3 bytes=$((RELAY_MIB * 1048576)) base out t0 t1 sh
  reg_id "$id"
  wait_quiet; base=$(reaped_lines); cgu; local u0=$CGU
  t0=$EPOCHREALTIME
  out=$(C run --rm --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" sh -c "dd if=/dev/zero bs=65536 count=$((bytes >> 16)) 2>/dev/null" 2>"$dir/stderr" \
    | "$PY" "$lib/tools.py" drain "$bytes"; echo " ${PIPESTATUS[0]}")
  t1=$EPOCHREALTIME
  set -- $out   # bytes seconds ok ctr_status
  if [ "${4:-1}" != 0 ] || [ "${3:-0}" != 1 ]; then
    err "case 5 $s $id: ctr status ${4:-?}, got ${1:-?} of $bytes bytes (ok=${3:-?}): $(tr '\n' ' ' <"$dir/stderr")"
    [ "$keep" = 1 ] && rec_na "$c5" "throughput (first to last byte)" MiB/s higher "$s" "$(na_reason "$dir/stderr")"
    wait_new_shim "$base" "$s" 5 >/dev/null
    return 1
  fi
  local secs=$2
  if ! sh=$(wait_new_shim "$base" "$s"); then err "case 5 $s $id: shim did not exit"; return 1; fi
  wait_quiet; cgu
  [ "$keep" = 1 ] || return 0
  set -- $sh
  rec "$c5" "throughput (first to last byte)" MiB/s higher "$s" "$(calc "$RELAY_MIB / $secs")"
  rec "$c5" "whole ctr run" s lower "$s" "$(calc "$t1 - $t0")"
  rec "$c5" "shim daemon CPU per MiB (minus case 1)" ms/MiB lower "$s" "$(calc "($1 / 1e6 - ${base_shim[$s]}) / $RELAY_MIB")"
  rec "$c5" "cgroup CPU per MiB (minus case 1)" ms/MiB lower "$s" "$(calc "(($CGU - $u0) / 1e6 - ${base_cg[$s]}) / $RELAY_MIB")"
}
for ((i = 0; i < RELAY_W; i++)); do for s in "${SHIMS[@]}"; do relay_once "$s" "w5-$s-$i" 0; done; done
for ((i = 0; i < RELAY_N; i++)); do for s in "${SHIMS[@]}"; do relay_once "$s" "r5-$s-$i" 1; done; done

fi

# ---- case 6: exec latency ---------------------------------------------------------------------
if want 6; then
c6="6 exec"
log "case 6: ctr task exec true, $EXEC_W warm-up(s) + $EXEC_N samples per shim"
declare -A exec_ok
exec_ids=()
for s in "${SHIMS[@]}"; do
  id=e-$s; reg_id "$id"
  exec_ok[$s]=0
  if ! C run -d --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" sleep 1000 >/dev/null 2>"$dir/stderr"; then
    err "case 6 $s: ctr run -d failed: $(tr '\n' ' ' <"$dir/stderr")"
    rec_na "$c6" "exec true latency" ms lower "$s" "$(na_reason "$dir/stderr")"
    continue
  fi
  exec_ids+=("$id")
  p=$(shim_pid_of "$id") && note_shim "$p" "$s"
  # First attempt decides: a shim that refuses Exec is reported n/a, not retried.
  if C task exec --fifo-dir "$fifodir" --exec-id w0 "$id" true >/dev/null 2>"$dir/stderr"; then
    exec_ok[$s]=1
  else
    err "case 6 $s: exec failed: $(tr '\n' ' ' <"$dir/stderr")"
    rec_na "$c6" "exec true latency" ms lower "$s" "$(na_reason "$dir/stderr")"
    rec_na "$c6" "CPU per exec (cgroup)" ms lower "$s" "$(na_reason "$dir/stderr")"
  fi
done
exec_once() { # shim execid record
  local s=$1 x=$2 id=e-$1 t0 t1
  wait_quiet; cgu; local u0=$CGU
  t0=$EPOCHREALTIME
  if ! C task exec --fifo-dir "$fifodir" --exec-id "$x" "$id" true >/dev/null 2>"$dir/stderr"; then
    err "case 6 $s $x: exec failed: $(tr '\n' ' ' <"$dir/stderr")"
    return 1
  fi
  t1=$EPOCHREALTIME; wait_quiet; cgu
  [ "$3" = 1 ] || return 0
  rec "$c6" "exec true latency" ms lower "$s" "$(calc "($t1 - $t0) * 1000")"
  rec "$c6" "CPU per exec (cgroup)" ms lower "$s" "$(calc "($CGU - $u0) / 1e6")"
}
for ((i = 1; i < EXEC_W; i++)); do for s in "${SHIMS[@]}"; do [ "${exec_ok[$s]}" = 1 ] && exec_once "$s" "w$i" 0; done; done
for ((i = 0; i < EXEC_N; i++)); do for s in "${SHIMS[@]}"; do [ "${exec_ok[$s]}" = 1 ] && exec_once "$s" "x$i" 1; done; done
teardown "${exec_ids[@]}"
wait_no_shims 30

fi

# ---- case 7: TTY ------------------------------------------------------------------------------
if want 7; then
# ctr run -t needs a terminal on its stdin: script(1) provides one.
c7="7 tty (ctr run -t)"
log "case 7: ctr run -t under script(1), $TTY_W warm-up(s) + $TTY_N samples per shim"
declare -A tty_ok
tty_once() { # shim id mib record -> records latency (mib=0) or throughput
  local s=$1 id=$2 mib=$3 keep=$4 bytes=$(($3 * 1048576)) base cmd out t0 t1
  reg_id "$id"
  base=$(reaped_lines)
  if [ "$mib" = 0 ]; then
    cmd="$(ctr_cmd) run -t --rm --fifo-dir $(printf %q "$fifodir") --runtime ${RT[$s]} $IMG $id true"
  else
    cmd="$(ctr_cmd) run -t --rm --fifo-dir $(printf %q "$fifodir") --runtime ${RT[$s]} $IMG $id sh -c 'dd if=/dev/zero bs=65536 count=$((bytes >> 16)) 2>/dev/null'"
  fi
  # script(1) puts everything ctr prints, its error messages too, on its stdout (the pty).
  t0=$EPOCHREALTIME
  if [ "$mib" = 0 ]; then
    SHELL=/bin/bash script -qec "$cmd" /dev/null </dev/null >"$dir/ttyout" 2>&1
    out="0 0 1 $?"
  else
    out=$(SHELL=/bin/bash script -qec "$cmd" /dev/null </dev/null 2>"$dir/ttyout" | "$PY" "$lib/tools.py" drain "$bytes" tty; echo " ${PIPESTATUS[0]}")
  fi
  t1=$EPOCHREALTIME
  set -- $out   # bytes seconds ok status
  wait_new_shim "$base" "$s" 5 >/dev/null
  if [ "${4:-1}" != 0 ] || [ "${3:-0}" != 1 ]; then
    err "case 7 $s $id: status ${4:-?}, ${1:-?} bytes: $(tr -d '\r' <"$dir/ttyout" | tr '\n' ' ' | cut -c1-400)"
    cp "$dir/ttyout" "$dir/stderr"
    C containers rm "$id" >/dev/null 2>&1
    return 1
  fi
  [ "$keep" = 1 ] || return 0
  if [ "$mib" = 0 ]; then
    rec "$c7" "run -t --rm true wall time" ms lower "$s" "$(calc "($t1 - $t0) * 1000")"
  else
    rec "$c7" "relay $TTY_MIB MiB throughput" MiB/s higher "$s" "$(calc "$mib / $2")"
  fi
}
if ! command -v script >/dev/null; then
  for s in "${SHIMS[@]}"; do rec_na "$c7" "run -t --rm true wall time" ms lower "$s" "script(1) missing"; done
else
  for s in "${SHIMS[@]}"; do
    tty_ok[$s]=1
    # The first attempt decides whether the shim supports a TTY at all.
    if ! tty_once "$s" "tw-$s" 0 0; then
      tty_ok[$s]=0
      reason=$(na_reason "$dir/stderr")
      rec_na "$c7" "run -t --rm true wall time" ms lower "$s" "$reason"
      rec_na "$c7" "relay $TTY_MIB MiB throughput" MiB/s higher "$s" "$reason"
    fi
  done
  for ((i = 1; i < TTY_W; i++)); do for s in "${SHIMS[@]}"; do [ "${tty_ok[$s]}" = 1 ] && tty_once "$s" "tw$i-$s" 0 0; done; done
  for ((i = 0; i < TTY_N; i++)); do for s in "${SHIMS[@]}"; do [ "${tty_ok[$s]}" = 1 ] && tty_once "$s" "t$i-$s" 0 1; done; done
  for ((i = 0; i < TTY_N; i++)); do for s in "${SHIMS[@]}"; do [ "${tty_ok[$s]}" = 1 ] && tty_once "$s" "tr$i-$s" "$TTY_MIB" 1; done; done
fi
wait_no_shims 30

fi

# ---- case 8: the shims' own relay, no containerd client reading ----------------------------------
# Cases 5 and 7 measure what a user of ctr sees; there ctr (and for a TTY, script's pty) is the
# slowest part of the chain. Here bench/lib/direct.py starts each shim itself (`start` in a bundle
# on a plain busybox rootfs, then Create/Start/Wait/Delete/Shutdown over ttrpc, events to our
# containerd) and splices the stdout fifo to /dev/null: `dd bs=64k` from /dev/zero in the container,
# the shim's pipe or pty, the fifo. Shim CPU = its process CPU clock from Start to Wait.
if want 8; then
c8="8 shim relay, direct reader"
log "case 8: shims driven directly, $DIRECT_MIB MiB stdout and $DIRECT_TTY_MIB MiB TTY, $DIRECT_W warm-up(s) + $DIRECT_N samples"
mkdir -p "$dir/direct/rootfs/bin"
cp /bin/busybox "$dir/direct/rootfs/bin/busybox"
ln -s busybox "$dir/direct/rootfs/bin/dd"
direct_once() { # shim mode mib n record
  local s=$1 mode=$2 mib=$3 id=d$4-$1-$2 keep=$5 out bin
  [ "$s" = go ] && bin=$go_bin || bin=$dir/bin/containerd-shim-rustrunc-v2
  reg_id "$id"
  if ! out=$(timeout -k 5 120 "$PY" "$lib/direct.py" "$bin" "$ns" "$sock" "$dir/direct/rootfs" "$dir/direct" "$id" \
    "$mode" "$mib" 2>"$dir/stderr"); then
    err "case 8 $s $mode: $(tr '\n' ' ' <"$dir/stderr")"
    return 1
  fi
  set -- $out   # bytes seconds ok cpu_ns
  if [ "$3" != 1 ]; then err "case 8 $s $mode: $1 bytes for $mib MiB"; return 1; fi
  [ "$keep" = 1 ] || return 0
  local what=stdout; [ "$mode" = tty ] && what=TTY
  rec "$c8" "$what $mib MiB throughput" MiB/s higher "$s" "$(calc "$mib / $2")"
  rec "$c8" "$what shim CPU per MiB" ms/MiB lower "$s" "$(calc "$4 / 1e6 / $mib")"
}
for m in pipe tty; do
  [ "$m" = pipe ] && mib=$DIRECT_MIB || mib=$DIRECT_TTY_MIB
  for ((i = 0; i < DIRECT_W; i++)); do for s in "${SHIMS[@]}"; do direct_once "$s" "$m" "$mib" "w$i" 0; done; done
  for ((i = 0; i < DIRECT_N; i++)); do for s in "${SHIMS[@]}"; do direct_once "$s" "$m" "$mib" "$i" 1; done; done
done
fi

# ---- case 9: threads and memory under load --------------------------------------------------------
# One `sleep` container per measurement and shim (what one measurement leaves, e.g. threads kept by
# Waits whose connections closed, must not count in the next): its shim's threads and RSS with
# nothing pending; with 1,000 then 5,000 Waits parked on the init; with 500 idle connections; with N
# execs running at once, each waited for (threads: the peak sampled through the run). The load is
# made over the shim's own socket by bench/lib/load.py.
if want 9; then
c9="9 load on one shim"
log "case 9: load: Waits $LOAD_WAITS, $LOAD_IDLE idle connections, $LOAD_EXECS execs, $LOAD_N sample(s) per shim"
load_container() { # shim id -> "pid socket" of its shim
  local s=$1 id=$2 pid
  reg_id "$id"
  if ! C run -d --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" sleep 100000 >/dev/null 2>"$dir/stderr"; then
    err "case 9 $s $id: ctr run -d failed: $(tr '\n' ' ' <"$dir/stderr")"
    return 1
  fi
  pid=$(shim_pid_of "$id") || { err "case 9 $s $id: shim not found"; return 1; }
  note_shim "$pid" "$s"
  echo "$pid $(sed 's|^unix://||' "$dir/state/io.containerd.runtime.v2.task/$ns/$id/address")"
}
load_rec() { # shim what threads rss_kib
  rec "$c9" "threads, $2" count lower "$1" "$3"
  rec "$c9" "RSS, $2" MiB lower "$1" "$(calc "$4 / 1024")"
}
load_once() { # shim sample
  local s=$1 i=$2 id out label th rss vm fds
  id=lw$i-$s
  if out=$(load_container "$s" "$id"); then
    set -- $out
    sleep "$SETTLE_S"
    read -r _ rss _ _ th < <("$PY" "$lib/tools.py" mem "$1")
    load_rec "$s" "0 pending Waits" "$th" "$rss"
    while read -r label th rss vm fds; do
      load_rec "$s" "${label#waits-} pending Waits" "$th" "$rss"
    done < <("$PY" "$lib/load.py" "$2" "$1" "$id" waits "$LOAD_WAITS" 2>"$dir/stderr" || err "case 9 $s $id: $(cat "$dir/stderr")")
  fi
  id=li$i-$s
  if out=$(load_container "$s" "$id"); then
    set -- $out
    while read -r label th rss vm fds; do
      load_rec "$s" "$LOAD_IDLE idle connections" "$th" "$rss"
    done < <("$PY" "$lib/load.py" "$2" "$1" "$id" idle "$LOAD_IDLE" 2>"$dir/stderr" || err "case 9 $s $id: $(cat "$dir/stderr")")
  fi
  id=lx$i-$s
  if out=$(load_container "$s" "$id"); then
    set -- $out
    while read -r label th rss vm fds; do
      load_rec "$s" "$LOAD_EXECS concurrent execs" "$th" "$rss"
    done < <(timeout -k 5 600 "$PY" "$lib/load.py" "$2" "$1" "$id" execs "$LOAD_EXECS" 2>"$dir/stderr" || err "case 9 $s $id: $(cat "$dir/stderr")")
  fi
  teardown "lw$i-$s" "li$i-$s" "lx$i-$s"
  wait_no_shims 60
}
for ((i = 0; i < LOAD_N; i++)); do for s in "${SHIMS[@]}"; do load_once "$s" "$i"; done; done

fi

# ---- case 10: write stall while containerd restarts ---------------------------------------------
# One container per shim writing a timestamped line every millisecond (padded, so that the fifo and
# the pipe fill early in the outage), each recording its longest single write; its stdout fifo read
# by bench/lib/tools.py fiforead as ctr or CRI would. containerd is stopped (SIGTERM) with both
# writers running, and the readers with it; after STALL_S seconds it is started again on the same
# config (restart_containerd) and the fifos are read again, so what the shim held (ours) or what the
# writer could not write (Go) drains. The writers stop on /stop; their output is checked line by line.
if want 10; then
c10="10 containerd restart, ${STALL_S} s outage"
log "case 10: write stall during a ${STALL_S} s containerd outage, $STALL_N restart(s), both shims in each"
# Starts once /go exists: `ctr run -d` reads the fifo itself until it exits and would take the first
# lines. The last line says the longest write in microseconds ($EPOCHREALTIME around each echo).
stall_script='until [ -e /go ]; do usleep 10000; done
pad=$(head -c '"$STALL_PAD"' /dev/zero | tr "\0" x); i=0; max=0
until [ -e /stop ]; do t0=$EPOCHREALTIME; echo "line $i $t0 $pad"; t1=$EPOCHREALTIME
d=$(( ${t1/./} - ${t0/./} )); [ $d -gt $max ] && max=$d; i=$((i+1)); usleep 1000; done
echo "maxstall $max lines $i"'
declare -A stall_reader=()
stall_read() { # shim id: (re)start the reader of the container's stdout fifo
  local f; f=$(find "$fifodir" -name "$2-stdout" 2>/dev/null | head -1)
  [ -n "$f" ] || { err "case 10 $1 $2: no stdout fifo"; return 1; }
  "$PY" "$lib/tools.py" fiforead "$f" "$dir/stall-$2.out" 2>>"$errlog" &
  stall_reader[$1]=$!; bg_pids+=($!)
}
stall_unread() { # shim: stop its reader; it writes out all it read first
  [ -n "${stall_reader[$1]:-}" ] || return 0
  kill -TERM "${stall_reader[$1]}" 2>/dev/null; wait "${stall_reader[$1]}" 2>/dev/null
  stall_reader[$1]=
}
stall_once() { # sample
  local i=$1 s id ids=() ok=() cd end r lines problems
  for s in "${SHIMS[@]}"; do
    id=st$i-$s; reg_id "$id"; ids+=("$id")
    if ! C run -d --fifo-dir "$fifodir" --runtime "${RT[$s]}" "$IMG" "$id" sh -c "$stall_script" >/dev/null 2>"$dir/stderr"; then
      err "case 10 $s $id: ctr run -d failed: $(tr '\n' ' ' <"$dir/stderr")"
      rec_na "$c10" "longest single write" ms lower "$s" "$(na_reason "$dir/stderr")"
      continue
    fi
    note_shim "$(shim_pid_of "$id")" "$s" 2>/dev/null
    stall_read "$s" "$id" && ok+=("$s")
  done
  for s in "${ok[@]}"; do C task exec --exec-id go "st$i-$s" touch /go >/dev/null 2>>"$errlog" || err "case 10 $s: exec touch /go failed"; done
  # Writing and read before the outage (a hundred lines at least).
  for s in "${ok[@]}"; do
    end=$((SECONDS + 60))
    while [ "$(stat -c %s "$dir/stall-st$i-$s.out" 2>/dev/null || echo 0)" -lt $((100 * STALL_PAD)) ]; do
      [ "$SECONDS" -ge "$end" ] && { err "case 10 $s: no output within 60 s"; break; }
      sleep 0.05
    done
  done
  cd=$(containerd_pid) || { err "case 10: containerd not found"; teardown "${ids[@]}"; return 1; }
  kill -TERM "$cd"
  end=$((SECONDS + 20))
  while kill -0 "$cd" 2>/dev/null; do
    [ "$SECONDS" -ge "$end" ] && { err "case 10: containerd ignored SIGTERM for 20 s, killed"; kill -KILL "$cd"; }
    sleep 0.02
  done
  for s in "${ok[@]}"; do stall_unread "$s"; done
  sleep "$STALL_S"   # the outage itself
  restart_containerd || { err "case 10: containerd did not start again within 30 s"; return 1; }
  for s in "${ok[@]}"; do stall_read "$s" "st$i-$s"; done
  # Not checked: the pid namespace's end may SIGKILL `touch` (137) once the writer has exited.
  for s in "${ok[@]}"; do C task exec --exec-id stop "st$i-$s" touch /stop >/dev/null 2>&1; done
  for s in "${ok[@]}"; do
    id=st$i-$s
    end=$((SECONDS + 120))
    until tail -c 4096 "$dir/stall-$id.out" 2>/dev/null | grep -q maxstall; do
      [ "$SECONDS" -ge "$end" ] && { err "case 10 $s: no summary line within 120 s of the restart"; break; }
      sleep 0.05
    done
    stall_unread "$s"
    r=-1 lines=0 problems=-1
    read -r r lines problems < <("$PY" "$lib/tools.py" lines "$dir/stall-$id.out")
    if [ "$r" -lt 0 ]; then
      rec_na "$c10" "longest single write" ms lower "$s" "no summary line, see errors log"
    else
      rec "$c10" "longest single write" ms lower "$s" "$(calc "$r / 1000")"
    fi
    rec "$c10" "lines lost or duplicated (must be 0)" count lower "$s" "$problems"
    log "case 10 $s: longest write $(calc "$r / 1000") ms, $lines lines, $problems lost/duplicated/reordered"
    rm -f "$dir/stall-$id.out"
  done
  teardown "${ids[@]}"
  wait_no_shims 60
}
for ((i = 0; i < STALL_N; i++)); do stall_once "$i"; done

fi

# ---- report -----------------------------------------------------------------------------------
log "done; writing $tsv"
echo
cat "$dir/header.txt"
echo "containerd idle CPU (noise floor of the cgroup figures): $(printf '%.2f' "$idle_ms_per_s") ms/s"
echo
"$PY" "$lib/report.py" "$raw" "$tsv"
echo

# Hygiene: what this run left behind or logged. Nothing here should be non-zero.
echo "checks:"
left_tasks=$(C task ls -q 2>/dev/null | wc -l)
left_conts=$(C containers ls -q 2>/dev/null | wc -l)
echo "  leftover tasks/containers: $left_tasks/$left_conts; live shims: $(live_shims)"
echo "  mounts under the state dir: $(awk -v d="$dir/state/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)"
echo "  runc state dirs left in /run/containerd/runc/$ns: $(ls "/run/containerd/runc/$ns" 2>/dev/null | wc -l)"
# Exit status of every shim daemon, by type (from the subreaper's records).
awk -F'\t' 'NR == FNR {t[$1 "/" $2] = $3; next}
            $6 == "containerd-shim" {k = $1 "/" $2; s = (k in t) ? t[k] : "unknown"; n[s]++; if ($7 != 0) bad[s]++}
            END {for (s in n) printf "  shim daemons reaped (%s): %d, non-zero exit: %d\n", s, n[s], bad[s] + 0}' \
  "$shimtypes" "$reaplog" | sort
echo "  shim exit relative to ctr run --rm returning (case 1; negative = before), max ms:$(awk -F'\t' '{if (!($1 in m) || $2 > m[$1]) m[$1] = $2} END {for (s in m) printf " %s %.0f", s, m[s]}' "$dir/exitlag")"
for s in "${SHIMS[@]}"; do
  [ -s "$dir/threads-$s" ] && echo "  threads of one idle $s shim: $(cat "$dir/threads-$s")"
done
echo "  ctr/measurement errors: $(wc -l <"$errlog") (full list in $logdir/errors-$mode.log)"
cut -c1-300 "$errlog" | sed -E 's/^[0-9:]+ //' | sort | uniq -c | sort -rn | head -10 | sed 's/^/    /'
echo "  containerd log: $(grep -c 'level=error' "$dir/containerd.log") error, $(grep -c 'level=warning' "$dir/containerd.log") warning lines, $(grep -ciE 'panic|SIGSEGV' "$dir/containerd.log") panic lines ($logdir/containerd-$mode.log)"
grep -E 'level=(error|warning)' "$dir/containerd.log" \
  | sed -E 's/time=(\\)?"[^"\\]*(\\)?" ?//g; s/\\n.*//; s/(id|container|exec-id|pid)=[^ ]*//g; s/[0-9a-f]{64}/<hash>/g; s/[a-z]+[0-9]*-(go|ours)(-[0-9]+)?/<id>/g' \
  | cut -c1-160 | sort | uniq -c | sort -rn | head -10 | sed 's/^/    /'
echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the host skews the figures)"
