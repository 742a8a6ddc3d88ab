#!/usr/bin/python3
"""subreaper.py LOG CGROUP_DIR CMD [ARGS...]

Runs CMD (containerd) as the child of a PR_SET_CHILD_SUBREAPER process, in a
session of its own (so a Ctrl-C aimed at bench/run.sh does not kill containerd
before the cleanup has used it), inside the cgroup CGROUP_DIR (this process
writes itself into CGROUP_DIR/cgroup.procs first; children inherit it).

Why a subreaper: a shim daemon is started by `<shim> start`, which exits right
away, so the daemon is orphaned and reparented to the nearest subreaper (here:
us; otherwise PID 1). When one of our children exits we look at it with
waitid(WNOWAIT), which leaves it a zombie, read its process CPU-time clock
(clock_gettime on the clock id of clock_getcpuclockid(pid): nanosecond
precision, the whole thread group including threads that exited earlier,
excluding its reaped children) and /proc/PID/stat, append one line to LOG,
and only then reap it. LOG lines, tab separated:

    pid  starttime  cpu_ns  utime  stime  comm  status  reaped_at

starttime, utime and stime are in clock ticks (SC_CLK_TCK, 10 ms: too coarse
for a shim lifecycle, kept for cross-checking); cpu_ns is the exact total.
pid+starttime identify a process even if its pid is reused. reaped_at is the
wall-clock time (seconds since the epoch) at which its exit was noticed.

Exits with CMD's exit status once it has no children left (shims that outlive
containerd keep it alive until they exit or are killed). SIGTERM and SIGINT
are forwarded to CMD. SIGHUP starts CMD again if it has exited (a containerd
restart: same argv, cgroup and session; its shims stayed our children); it is
ignored while CMD runs.
"""
import ctypes
import os
import signal
import sys
import time


def main():
    if len(sys.argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    log_path, cgroup_dir, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.stderr.write("subreaper: prctl(PR_SET_CHILD_SUBREAPER): errno %d\n" % ctypes.get_errno())
        return 1
    try:
        os.setsid()
    except OSError:
        pass
    if cgroup_dir and cgroup_dir != "-":
        with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    log = open(log_path, "a", buffering=1)

    def spawn():
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        return pid

    # main[0]: CMD's pid; main[1]: whether it still runs (a reaped pid may be reused).
    main = [spawn(), True]

    def forward(signum, _frame):
        if main[1]:
            try:
                os.kill(main[0], signum)
            except ProcessLookupError:
                pass

    def restart(_signum, _frame):
        # Runs between the retries of waitid (PEP 475), in the main thread.
        if not main[1]:
            main[0], main[1] = spawn(), True

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, restart)

    main_status = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            break
        if info is None:
            continue
        pid = info.si_pid
        reaped_at = time.time()
        try:
            # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
            cpu_ns = "%d" % time.clock_gettime_ns(((~pid) << 3) | 2)
        except OSError:
            cpu_ns = "?"
        fields = None
        try:
            with open("/proc/%d/stat" % pid) as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")].replace("\t", " ")
            rest = stat[stat.rindex(")") + 2:].split()
            # rest[0] is field 3 (state); utime=14, stime=15, starttime=22
            fields = (rest[19], rest[11], rest[12], comm)
        except (OSError, ValueError, IndexError):
            fields = ("?", "?", "?", "?")
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = -1
        was_main = pid == main[0] and main[1]
        if was_main:
            main[1] = False
        code = os.waitstatus_to_exitcode(status) if status >= 0 else -1
        log.write("%d\t%s\t%s\t%s\t%s\t%s\t%d\t%.6f\n"
                  % (pid, fields[0], cpu_ns, fields[1], fields[2], fields[3], code, reaped_at))
        if was_main:
            main_status = code
    return main_status if main_status >= 0 else 128 - main_status


if __name__ == "__main__":
    sys.exit(main())
