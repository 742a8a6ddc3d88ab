#!/usr/bin/python3
"""Small measuring helpers for bench/run.sh (stdlib only).

  tools.py drain EXPECTED_BYTES [tty]
      Reads stdin to EOF. Prints: bytes_read  seconds_first_to_last  ok
      seconds_first_to_last runs from the arrival of the first byte to the
      arrival of byte EXPECTED_BYTES (so container start-up and tear-down are
      not in it). ok is 1 when exactly EXPECTED_BYTES bytes, all NUL, arrived;
      with "tty", when EXPECTED_BYTES NULs and at most 64 other bytes (a
      terminal adds a few, e.g. a final CR LF) arrived.
  tools.py mem PID...
      One line per live pid: pid rss_kib pss_kib private_dirty_kib threads
      (VmRSS and Threads from /proc/PID/status, Pss and Private_Dirty from
      /proc/PID/smaps_rollup).
  tools.py cpu PID
      CPU time of PID so far in nanoseconds (its process CPU-time clock: all
      its threads, live and exited; not its children).
  tools.py cpus PID...
      The same as "pid ns" lines, one per PID still alive.
  tools.py median
      Median of the numbers on stdin (one per line); prints nothing if none.
"""
import fcntl
import os
import statistics
import sys
import time


def drain(expected, tty=False):
    expected = int(expected)
    fd = sys.stdin.fileno()
    try:
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups on our side
    except OSError:
        pass
    total = 0
    first = last = None
    zeros = 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        now = time.monotonic()
        if first is None:
            first = now
        before = total
        total += len(chunk)
        if before < expected <= total:
            last = now
        zeros += chunk.count(0)
    if first is None or last is None:
        secs = 0.0
    else:
        secs = last - first
    if tty:
        ok = 1 if (zeros == expected and total - expected <= 64) else 0
    else:
        ok = 1 if (total == expected and zeros == expected) else 0
    print("%d %.6f %d" % (total, secs, ok))


def mem(pids):
    for pid in pids:
        try:
            rss = threads = None
            with open("/proc/%s/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            pss = dirty = None
            with open("/proc/%s/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1])
                    elif line.startswith("Private_Dirty:"):
                        dirty = int(line.split()[1])
        except OSError:
            continue
        if None in (rss, threads, pss, dirty):
            continue
        print(pid, rss, pss, dirty, threads)


def cpu_ns(pid):
    pid = int(pid)
    return time.clock_gettime_ns(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def cpus(pids):
    for p in pids:
        try:
            print(p, cpu_ns(p))
        except OSError:
            pass


def median():
    vals = [float(x) for x in sys.stdin.read().split()]
    if vals:
        print("%.6f" % statistics.median(vals))


def main():
    if len(sys.argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "drain":
        drain(args[0], len(args) > 1 and args[1] == "tty")
    elif cmd == "mem":
        mem(args)
    elif cmd == "cpu":
        try:
            print(cpu_ns(args[0]))
        except OSError:
            return 1
    elif cmd == "cpus":
        cpus(args)
    elif cmd == "median":
        median()
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
