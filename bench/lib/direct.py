#!/usr/bin/python3
"""Drives one shim by hand, with no containerd client in the output path (stdlib only).

  direct.py SHIM_BIN NAMESPACE ADDRESS ROOTFS WORKDIR ID pipe|tty MIB

Does what containerd does for one task, and reads the task's stdout fifo itself:
  1. a bundle WORKDIR/ID: config.json from `runc spec` (read-only ROOTFS, cgroup /NAMESPACE/ID,
     terminal for "tty"), the `log` fifo the Go shim needs (drained), stdout (and stderr) fifos;
  2. `SHIM_BIN -namespace NAMESPACE -address ADDRESS -publish-binary containerd -id ID start` in the
     bundle, TTRPC_ADDRESS=ADDRESS.ttrpc (events go to the real containerd, which just passes them on);
  3. ttrpc to the address it prints: Connect (the daemon's pid), Create, Start, reads MIB MiB of
     `dd if=/dev/zero bs=64k` from the fifo, Wait, Delete, Shutdown; waits for the daemon to exit.
Prints: bytes seconds_first_to_last ok shim_cpu_ns
  seconds_first_to_last: from the first byte read to the last expected byte;
  ok: 1 when exactly MIB MiB arrived (tty: up to 64 bytes more, what a terminal adds); the bytes
      are spliced to /dev/null, not looked at: cases 5 and 7 check the content through ctr;
  shim_cpu_ns: the daemon's CPU (all threads) from just before Start to after Wait: moving the bytes,
  plus Start's runc spawn and the exit, which are the same few milliseconds whatever the size.
The ttrpc frames and protobuf messages are written by hand: field numbers from containerd's
api/runtime/task/v2/shim.proto (CreateTaskRequest: id 1, bundle 2, terminal 4, stdout 6, stderr 7).
Exit status 1 with a message on stderr on any failure; the bench's cleanup removes what is left.
"""
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

from tools import cpu_ns  # bench/lib/tools.py, beside this script

SERVICE = "containerd.task.v2.Task"


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, val):
    if isinstance(val, bool) or isinstance(val, int):
        return varint(num << 3) + varint(int(val))
    if isinstance(val, str):
        val = val.encode()
    return varint((num << 3) | 2) + varint(len(val)) + val


def parse(buf):
    """Top-level fields of a protobuf message: {number: value} (varints and length-delimited only)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            out[num], i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            out[num], i = buf[i:i + n], i + n
        else:
            raise ValueError("unexpected wire type %d" % wt)
    return out


def read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(120)
        self.s.connect(path)
        self.stream = 1

    def call(self, method, payload):
        req = field(1, SERVICE) + field(2, method) + field(3, payload) + field(4, 60_000_000_000)
        self.s.sendall(struct.pack(">IIBB", len(req), self.stream, 1, 0) + req)
        self.stream += 2
        n = struct.unpack(">I", self.recv(10)[:4])[0]
        resp = parse(self.recv(n))
        status = parse(resp.get(1, b""))
        if status.get(1, 0) != 0:
            raise RuntimeError("%s: code %d: %s" % (method, status[1], status.get(2, b"").decode(errors="replace")))
        return parse(resp.get(2, b""))

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise RuntimeError("shim closed the connection")
            b += c
        return b


def main():
    shim, ns, address, rootfs, workdir, cid, mode, mib = sys.argv[1:9]
    tty, size = mode == "tty", int(mib) << 20
    bundle = os.path.join(workdir, cid)
    os.makedirs(bundle)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = tty
    spec["process"]["args"] = ["dd", "if=/dev/zero", "bs=65536", "count=%d" % (size >> 16)]
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["linux"]["cgroupsPath"] = "/%s/%s" % (ns, cid)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)

    os.mkfifo(os.path.join(bundle, "log"))
    threading.Thread(target=drain_log, args=(os.path.join(bundle, "log"),), daemon=True).start()
    out_path, err_path = os.path.join(bundle, "out"), os.path.join(bundle, "err")
    os.mkfifo(out_path)
    out = os.open(out_path, os.O_RDONLY | os.O_NONBLOCK)
    err = None
    if not tty:
        os.mkfifo(err_path)
        err = os.open(err_path, os.O_RDONLY | os.O_NONBLOCK)

    env = dict(os.environ, TTRPC_ADDRESS=address + ".ttrpc")
    r = subprocess.run([shim, "-namespace", ns, "-address", address, "-publish-binary", "containerd", "-id", cid,
                        "start"], cwd=bundle, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("shim start: %s" % r.stderr.decode(errors="replace").strip())
    c = Conn(r.stdout.decode().strip().replace("unix://", "", 1))
    pid = c.call("Connect", field(1, cid)).get(1, 0)
    c.call("Create", field(1, cid) + field(2, bundle) + field(4, tty) + field(6, out_path) +
           (b"" if tty else field(7, err_path)))

    # splice to /dev/null: the reader must not be the limit (a Python read loop tops out near
    # 650 MiB/s here, below what a shim can do). The content itself is checked by cases 5 and 7.
    devnull = os.open("/dev/null", os.O_WRONLY)
    total = 0
    first = last = None
    poll = select.poll()
    poll.register(out, select.POLLIN)
    cpu0 = cpu_ns(pid)
    c.call("Start", field(1, cid))
    while total < size + (64 if tty else 0):
        if not poll.poll(30_000):
            break
        try:
            n = os.splice(out, devnull, 1 << 20, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            continue
        if n == 0:
            break
        now = time.monotonic()
        if first is None:
            first = now
        if total < size <= total + n:
            last = now
        total += n
    c.call("Wait", field(1, cid))
    cpu1 = cpu_ns(pid)
    c.call("Delete", field(1, cid))
    try:
        c.call("Shutdown", field(1, cid))
    except RuntimeError:
        pass  # the shim may close the connection as it exits
    for _ in range(1000):
        if not os.path.exists("/proc/%d" % pid):
            break
        time.sleep(0.01)
    os.close(out)
    if err is not None:
        os.close(err)
    os.close(devnull)
    ok = size <= total <= size + 64 if tty else total == size
    secs = (last - first) if first is not None and last is not None else 0.0
    print("%d %.6f %d %d" % (total, secs, 1 if ok else 0, cpu1 - cpu0))


def drain_log(path):
    with open(path, "rb") as f:
        while f.read(65536):
            pass


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the bench's error log
        sys.stderr.write("direct.py: %s\n" % e)
        sys.exit(1)
