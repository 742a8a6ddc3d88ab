#!/usr/bin/python3
"""Load on one running shim, over its ttrpc socket (stdlib only): bench/run.sh case 9.

  load.py SOCKET SHIM_PID ID waits N1,N2,...
      Parks Waits on task ID's init: N1 of them, prints the shim's figures, then more up to N2,
      prints again, ... The Waits are pipelined on 10 connections, each followed by a Connect as
      a fence: requests on a connection are read in order, so once the fence is answered the shim
      has read every Wait before it. Exits without waiting for the answers (its connections close).
  load.py SOCKET SHIM_PID ID idle N
      Opens N connections, one Connect answered on each, then prints the figures with all of them
      open and idle.
  load.py SOCKET SHIM_PID ID execs N
      N execs in task ID (`sleep 100000`), each Exec + Start and then a Wait pipelined on its own
      connection; prints the figures with all of them running (threads: the peak sampled during the
      whole run), then SIGKILLs the init (Kill, all) and checks every Wait is answered.

Each figure line: LABEL threads RSS_KiB VmSize_KiB fds
Exit status 1 with a message on stderr on any failure. Field numbers from containerd's
api/runtime/task/v2/shim.proto (as bench/lib/direct.py).
"""
import json
import os
import socket
import struct
import sys
import threading
import time

from direct import field, parse, SERVICE

CONNS = 10


def figures(pid):
    st = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            st[k] = v.split()[0] if v.split() else ""
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return int(st["Threads"]), int(st["VmRSS"]), int(st["VmSize"]), fds


def show(label, pid):
    print("%s %d %d %d %d" % ((label,) + figures(pid)), flush=True)


class Conn:
    """A ttrpc connection on which requests are pipelined and answers read by stream id."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(120)
        self.s.connect(path)
        self.stream = 1
        self.buf = b""

    def send(self, method, payload, n=1):
        req = field(1, SERVICE) + field(2, method) + field(3, payload)
        out, sids = [], []
        for _ in range(n):
            out.append(struct.pack(">IIBB", len(req), self.stream, 1, 0) + req)
            sids.append(self.stream)
            self.stream += 2
        self.s.sendall(b"".join(out))
        return sids

    def frame(self):
        while len(self.buf) < 10:
            self.fill()
        n, sid = struct.unpack(">II", self.buf[:8])
        while len(self.buf) < 10 + n:
            self.fill()
        payload, self.buf = self.buf[10:10 + n], self.buf[10 + n:]
        return sid, payload

    def fill(self):
        c = self.s.recv(1 << 16)
        if not c:
            raise RuntimeError("shim closed the connection")
        self.buf += c

    def until(self, sid):
        """Reads answers until stream sid's: {sid: (code, payload)} of the others on the way."""
        seen = {}
        while True:
            s, p = self.frame()
            resp = parse(p)
            status = parse(resp.get(1, b""))
            if s == sid:
                if status.get(1, 0) != 0:
                    raise RuntimeError("code %d: %s" % (status[1], status.get(2, b"").decode(errors="replace")))
                return seen, parse(resp.get(2, b""))
            seen[s] = (status.get(1, 0), resp.get(2, b""))

    def call(self, method, payload):
        return self.until(self.send(method, payload)[0])[1]


def waits(sock, pid, cid, levels):
    conns = [Conn(sock) for _ in range(CONNS)]
    done = 0
    for level in [int(x) for x in levels.split(",")]:
        more = level - done
        for i, c in enumerate(conns):
            n = more // CONNS + (1 if i < more % CONNS else 0)
            c.send("Wait", field(1, cid), n)
            fence = c.send("Connect", field(1, cid))[0]
            early, _ = c.until(fence)
            refused = [s for s, (code, _) in early.items() if code != 0]
            if refused:
                raise RuntimeError("%d Waits refused at %d" % (len(refused), level))
        done = level
        time.sleep(0.5)  # let the figures settle (threads the shim may still be starting)
        show("waits-%d" % level, pid)


def idle(sock, pid, cid, n):
    conns = []
    for _ in range(int(n)):
        c = Conn(sock)
        c.call("Connect", field(1, cid))
        conns.append(c)
    time.sleep(0.5)
    show("idle-%s" % n, pid)


def execs(sock, pid, cid, n):
    n = int(n)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], figures(pid)[0])
            except (OSError, KeyError):
                return
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    ctl = Conn(sock)
    spec = json.dumps({"args": ["sleep", "100000"], "cwd": "/", "env": ["PATH=/bin"],
                       "user": {"uid": 0, "gid": 0}})
    anyspec = field(1, "types.containerd.io/opencontainers/runtime-spec/1/Process") + field(2, spec)
    waiters = []
    for i in range(n):
        eid = "ld%d" % i
        ctl.call("Exec", field(1, cid) + field(2, eid) + field(7, anyspec))
        ctl.call("Start", field(1, cid) + field(2, eid))
        c = Conn(sock)
        waiters.append((c, c.send("Wait", field(1, cid) + field(2, eid))[0]))
    time.sleep(0.5)
    th, rss, vm, fds = figures(pid)
    stop.set()
    t.join()
    print("execs-%d %d %d %d %d" % (n, max(peak[0], th), rss, vm, fds), flush=True)
    ctl.call("Kill", field(1, cid) + field(3, 9) + field(4, True))
    for c, sid in waiters:
        c.until(sid)


def main():
    sock, pid, cid, what, arg = sys.argv[1:6]
    pid = int(pid)
    {"waits": waits, "idle": idle, "execs": execs}[what](sock, pid, cid, arg)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the bench's error log
        sys.stderr.write("load.py: %s\n" % e)
        sys.exit(1)
