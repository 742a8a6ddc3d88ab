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
  tools.py fiforead FIFO OUT
      Reads FIFO (opened non-blocking, as a client that may come and go) and
      appends what it reads to OUT until SIGTERM; every byte read is written
      before it exits, so a reader stopped and started again loses nothing.
  tools.py lines FILE
      Checks a stall writer's output (case 10: "line N ..." lines, then
      "maxstall US lines N"). Prints: longest_write_us lines problems, where
      problems counts lines missing, repeated or out of order (-1 for the
      longest write when there is no summary line).
"""
import select
import signal
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


def fiforead(path, out_path):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    while not stop:
        try:
            select.select([fd], [], [], 0.05)
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        except InterruptedError:
            continue
        if not data:
            time.sleep(0.01)  # no writer right now
            continue
        while data:
            data = data[os.write(out, data):]


def lines(path):
    expect, problems, summary = 0, 0, None
    with open(path, "rb") as f:
        for l in f:
            w = l.split()
            if len(w) >= 2 and w[0] == b"line":
                try:
                    n = int(w[1])
                except ValueError:
                    problems += 1
                    continue
                if n != expect:
                    # missing (n > expect) or repeated/out of order (n < expect)
                    problems += abs(n - expect) if n > expect else 1
                expect = max(expect, n + 1)
            elif len(w) == 4 and w[0] == b"maxstall" and w[2] == b"lines":
                summary = (int(w[1]), int(w[3]))
            else:
                problems += 1
    if summary is None:
        print(-1, expect, problems + 1)
        return
    if summary[1] != expect:
        problems += abs(summary[1] - expect)
    print(summary[0], expect, problems)


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
    elif cmd == "fiforead":
        fiforead(args[0], args[1])
    elif cmd == "lines":
        lines(args[0])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
