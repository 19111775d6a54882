"""HTTPS figures: cold start to the first TLS byte, warm updates over a delayed round trip, TLS handshakes.

    python benchmarks/https.py                  # about a minute on 2 cores
    python benchmarks/https.py --quick          # a rough look, under a minute
    python benchmarks/https.py --smoke          # for CI: seconds, no official package, no goals
    python benchmarks/https.py --rtt 0,20,70 --rounds 25 --reuse-venv

Every real Task talks HTTPS to a webhook that is often in another region. This script measures
that case on loopback, alternating the contenders run by run and reporting medians:

- this SDK: `orchestra_sdk.py` imported from this repository's folder, so every run measures
  the module as it is at that moment;
- the official `orchestra-sdk` 0.2.0, installed into a throwaway virtual environment only to
  measure it (it needs Python >= 3.10);
- a bare `http.client.HTTPSConnection` POST of the same bytes on a new connection per update,
  and a bare keep-alive POST (one connection reused);
- for the cold figure also two floors: `import ssl`, `ssl.create_default_context()` and a TLS
  connect; and the same with the CA certificates looked up lazily from the system's hashed
  directory (`load_verify_locations(capath=ssl.get_default_verify_paths().capath)`).

Figures:

1. cold: time from process start to the first TLS byte (the ClientHello) of the first event
   arriving at a loopback server, in fresh processes, with the system's default trust store
   (`SSL_CERT_FILE`, `SSL_CERT_DIR` and `REQUESTS_CA_BUNDLE` are cleared, as this machine sets
   them globally). The server notes the time the first byte arrives and closes the connection;
   the child is then killed (it would fail verification anyway). "Process start" is the
   moment just before this process spawns the child. Both timestamps are taken in this
   process with time.monotonic_ns() (CLOCK_MONOTONIC), so no clock is compared across
   processes; spawning (fork and exec, about a millisecond) is counted and is the same for all.
2. warm: per-update time in one process per contender after a warm-up, against a TLS server
   that answers 200 `{"success": true}` and supports HTTP/1.1 keep-alive, at each round-trip
   time of --rtt. A round trip above 0 goes through a delay proxy on loopback that delays each
   chunk by half the round trip in each direction (a request and its answer cost one round
   trip) and a new connection's first byte by one more round trip (a userspace proxy cannot
   delay the TCP handshake itself). Round trip 0 means no proxy. The clients trust the run's
   CA through `SSL_CERT_FILE` (and `REQUESTS_CA_BUNDLE` for the official package).
   Then, for information, the first event delivered: from the spawn to the exit of a fresh
   process whose one update was answered 2xx, through the delay proxy at the largest --rtt
   (the clients trust the run's CA), for this SDK with and without its head start (the first
   connection opened in a thread while urllib.request loads), a bare http.client POST and the
   official package.
3. TLS handshakes for 100 updates from one SDK object (the server counts completed
   handshakes), and for each other contender.
4. For information: what a vendored module without a compiled .pyc costs at import (Lambda's
   code folder is read-only, so `__pycache__` cannot be written and the module is compiled on
   every cold start) against the output of `python -m compileall`.

The certificates (a throwaway CA and a server certificate for 127.0.0.1 and localhost, EC
P-256) are made for each run with the `openssl` command line tool: the standard library cannot
make certificates. Every socket is on loopback; every wait and loop is bounded; temporary
folders and virtual environments are removed at the end (--reuse-venv keeps the official one
in a cache folder for the next run). Prints the figures and the goals, and exits 1 when a goal
is missed (--no-goals: exit 0 whatever the figures).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import queue
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_RUN_ID = "0f9c3a5e-8f4e-4a4e-9b1a-2f6f3c9d7e10"
API_KEY = "benchmark-key"
OFFICIAL = "orchestra-sdk==0.2.0"
HOST = "127.0.0.1"
# The bytes this SDK sends for update_task(RUNNING, "noop started."): the bare contenders send the same.
BODY = json.dumps(
    {
        "event_type": "UPDATE_STATUS",
        "metadata": {},
        "task_run_id": TASK_RUN_ID,
        "status": "RUNNING",
        "message": "noop started.",
    }
).encode()
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

# (figure key, label, comparison, goal); a goal whose figure was not measured is shown as n/a.
GOALS = [
    ("cold ours/lazy", "cold, to first TLS byte: this SDK / lazy-CA stdlib floor", "<=", 2.0),
    ("cold official/ours", "cold, to first TLS byte: official / this SDK", ">=", 2.5),
    ("warm20 ours/keepalive", "warm update at 20 ms round trip: this SDK / bare keep-alive POST", "<=", 1.15),
    ("warm20 official/ours", "warm update at 20 ms round trip: official / this SDK", ">=", 2.5),
    ("handshakes ours", "TLS handshakes for 100 updates from one SDK object", "<=", 2.0),
]


# ---------------------------------------------------------------------------------------------
# Certificates for the run (openssl command line: the standard library cannot make them)
# ---------------------------------------------------------------------------------------------

OPENSSL_CONFIG = """
[req]
distinguished_name = dn
prompt = no
[dn]
CN = orchestra-sdk benchmark
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(folder: str) -> Tuple[str, str, str]:
    """A throwaway CA and a server certificate it signed; returns (CA file, cert file, key file).

    The extensions are the ones Python 3.13's strict verification asks for.
    """
    if shutil.which("openssl") is None:
        raise SystemExit("https.py needs the openssl command line tool to make the run's certificates")
    config = os.path.join(folder, "openssl.cnf")
    with open(config, "w") as f:
        f.write(OPENSSL_CONFIG)
    ca_key, ca_file = os.path.join(folder, "ca.key"), os.path.join(folder, "ca.pem")
    key, csr, cert = (os.path.join(folder, name) for name in ("server.key", "server.csr", "server.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", "-config", config, "-extensions", "ca_ext", *ec, "-keyout", ca_key, "-out", ca_file,
         "-days", "2", "-subj", "/CN=orchestra-sdk benchmark CA"],
        ["req", "-new", "-config", config, *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca_file, "-CAkey", ca_key, "-set_serial", "2", "-days", "2",
         "-extfile", config, "-extensions", "server_ext", "-out", cert],
    ):  # fmt: skip
        subprocess.run(["openssl", *command], check=True, capture_output=True, timeout=60)
    return ca_file, cert, key


# ---------------------------------------------------------------------------------------------
# Servers on loopback: a TLS server with keep-alive, and a first-byte clock for the cold figure
# ---------------------------------------------------------------------------------------------


class TLSServer:
    """Answers every POST with 200 {"success": true}; keeps connections alive unless told not to.

    Counts completed TLS handshakes and answered requests. A thread per connection, as a
    keep-alive client holds its connection open while the next contender connects.
    """

    BODY = b'{"success": true}'
    IDLE = 30.0  # seconds a kept-alive connection may wait for its next request

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.handshakes = 0
        self.answered = 0
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self) -> Tuple[int, int]:
        with self.lock:
            return self.handshakes, self.answered

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            with self.lock:
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]

    def _serve(self, raw: socket.socket) -> None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(self.IDLE)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ValueError):  # a client that gave up, or refused our certificate
            raw.close()
            return
        with self.lock:
            self.handshakes += 1
        with conn:
            try:
                self._answer_requests(conn)
            except (OSError, ValueError):
                pass

    def _answer_requests(self, conn: ssl.SSLSocket) -> None:
        buffer = b""
        for _ in range(100_000):  # requests per connection, a bound that is never reached
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk or len(buffer) > 1 << 20 or self.stopping.is_set():
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip().lower()
            length = int(fields.get(b"content-length", b"0"))
            while len(buffer) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            buffer = buffer[length:]
            connection = fields.get(b"connection", b"")
            close = connection == b"close" or (lines[0].endswith(b"HTTP/1.0") and connection != b"keep-alive")
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\n"
                + self.BODY
            )
            with self.lock:
                self.answered += 1
            if close:
                return

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(2)


class FirstByteServer:
    """Notes when the first byte of each accepted connection arrives, then closes the connection.

    One connection at a time: the cold figure runs one child at a time.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.arrivals: queue.Queue[Tuple[int, bytes]] = queue.Queue()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    first = conn.recv(1, socket.MSG_PEEK)
                except OSError:
                    continue
                arrived = time.monotonic_ns()
                if first:
                    self.arrivals.put((arrived, first))

    def drain(self) -> None:
        while True:
            try:
                self.arrivals.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# A delay proxy: a TCP relay on loopback that adds a round-trip time
# ---------------------------------------------------------------------------------------------


class _Direction:
    """One direction of a relayed connection: bytes read from `source`, due for `target` later."""

    def __init__(self, source: socket.socket, target: socket.socket, first_extra: float) -> None:
        self.source = source
        self.target = target
        self.first_extra = first_extra  # added to the first chunk only: the TCP handshake's round trip
        self.pending: Deque[Tuple[float, Optional[bytes]]] = collections.deque()  # (due, bytes); None = EOF
        self.done = False  # EOF passed on, or the connection broke


class DelayProxy:
    """Relays 127.0.0.1:port to the target, delaying each chunk by rtt/2 in each direction.

    A new connection's first client byte waits one more round trip, standing in for the TCP
    handshake, which a userspace proxy cannot delay. Each direction is a FIFO of (due time,
    bytes), so pipelined data keeps its order and its spacing. One thread with a selector;
    select() rather than epoll or poll because their timeouts are rounded up to a millisecond.
    """

    SPIN = 0.0005  # seconds before a chunk is due when the loop stops sleeping and polls

    def __init__(self, target_port: int, rtt: float) -> None:
        self.target_port = target_port
        self.half = rtt / 2
        self.rtt = rtt
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.selector = selectors.SelectSelector()
        self.selector.register(self.sock, selectors.EVENT_READ, "accept")
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.directions: List[_Direction] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            try:
                server = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
            up = _Direction(client, server, self.rtt)
            down = _Direction(server, client, 0.0)
            self.directions += [up, down]
            self.selector.register(client, selectors.EVENT_READ, up)
            self.selector.register(server, selectors.EVENT_READ, down)

    def _read(self, direction: _Direction, now: float) -> None:
        try:
            data = direction.source.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._break(direction)
            return
        due = now + self.half + direction.first_extra
        direction.first_extra = 0.0
        direction.pending.append((due, data or None))
        if not data:
            self.selector.unregister(direction.source)

    def _break(self, direction: _Direction) -> None:
        """A reset or error: drop the whole connection (both directions share its two sockets)."""
        for d in self.directions:
            if d.source is direction.source or d.source is direction.target:
                d.done = True
                d.pending.clear()
        for s in (direction.source, direction.target):
            try:
                self.selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _flush(self, direction: _Direction, now: float) -> bool:
        """Send what is due; True when something due could not be sent yet (a full buffer)."""
        while direction.pending and direction.pending[0][0] <= now and not direction.done:
            due, data = direction.pending[0]
            try:
                if data is None:
                    direction.target.shutdown(socket.SHUT_WR)
                    direction.done = True
                    direction.pending.popleft()
                    break
                sent = direction.target.send(data)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._break(direction)
                return False
            if sent < len(data):
                direction.pending[0] = (due, data[sent:])
                return True
            direction.pending.popleft()
        return False

    def _collect(self) -> None:
        """Close connections whose both directions are done."""
        finished = []
        for d in self.directions:
            partner = next(p for p in self.directions if p.source is d.target)
            if d.done and partner.done:
                finished.append(d)
        for d in finished:
            try:
                self.selector.unregister(d.source)
            except (KeyError, ValueError):
                pass
            d.source.close()
        self.directions = [d for d in self.directions if d not in finished]

    def _loop(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            dues = [d.pending[0][0] for d in self.directions if d.pending and not d.done]
            # Sleep until just before the next chunk is due, then poll: select() wakes a tenth of
            # a millisecond or more late, which would add to every round trip.
            timeout = 0.5 if not dues else min(dues) - now - self.SPIN
            stalled = False
            for key, _ in self.selector.select(min(max(timeout, 0.0), 0.5)):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self.wake_r.recv(64)
                elif not key.data.done or key.data.pending:
                    self._read(key.data, time.monotonic())
            now = time.monotonic()
            for d in list(self.directions):
                stalled |= self._flush(d, now)
            if any(d.done for d in self.directions):
                self._collect()
            if stalled:
                time.sleep(0.0002)  # a full socket buffer: try again shortly (never seen on loopback)

    def close(self) -> None:
        self.stopping = True
        self.wake_w.send(b"x")
        self.thread.join(5)
        for d in self.directions:
            d.source.close()
        for s in (self.sock, self.wake_r, self.wake_w):
            s.close()
        self.selector.close()


# ---------------------------------------------------------------------------------------------
# The child programs
# ---------------------------------------------------------------------------------------------

OURS_IMPORT = "from orchestra_sdk import OrchestraSDK, TaskRunStatus"
OFFICIAL_IMPORT = "from orchestra_sdk.orchestra import OrchestraSDK\nfrom orchestra_sdk.enum import TaskRunStatus"

SDK_COLD = """
{imports}
OrchestraSDK(api_key={key!r}).update_task(TaskRunStatus.RUNNING, "noop started.")
"""

FLOOR_DEFAULT_COLD = """
import socket, ssl
context = ssl.create_default_context()
sock = socket.create_connection(({host!r}, {port}), timeout=10)
try:
    context.wrap_socket(sock, server_hostname={host!r})
except OSError:
    pass
"""

FLOOR_LAZY_COLD = """
import socket, ssl
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.load_verify_locations(capath=ssl.get_default_verify_paths().capath)
sock = socket.create_connection(({host!r}, {port}), timeout=10)
try:
    context.wrap_socket(sock, server_hostname={host!r})
except OSError:
    pass
"""

BARE_COLD = """
import http.client
conn = http.client.HTTPSConnection({host!r}, {port}, timeout=10)
try:
    conn.request("POST", "/", {body!r}, {headers!r})
except OSError:
    pass
"""

# Cold children that must deliver: exit 0 only when the event was answered 2xx.
SDK_COLD_DELIVERED = """
{imports}
raise SystemExit(0 if OrchestraSDK(api_key={key!r}).update_task(TaskRunStatus.RUNNING, "noop started.") else 3)
"""
NO_HEAD_START = "import orchestra_sdk\norchestra_sdk._Transport.head_start = False\n"

BARE_COLD_DELIVERED = """
import http.client, os, urllib.parse
url = urllib.parse.urlsplit(os.environ["ORCHESTRA_WEBHOOK_URL"])
conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=10)
conn.request("POST", url.path or "/", {body!r}, {headers!r})
raise SystemExit(0 if conn.getresponse().status == 200 else 3)
"""

# Warm children print {"times": [...], "delivered": n}: seconds per timed update, and how many
# of all updates (warm-up included) were answered 2xx.
SDK_WARM = """
import json, time
{imports}
sdk = OrchestraSDK(api_key={key!r})
times, delivered = [], 0
for _ in range({total}):
    t = time.perf_counter()
    delivered += sdk.update_task(TaskRunStatus.RUNNING, "noop started.") is True
    times.append(time.perf_counter() - t)
print(json.dumps({{"times": times[{warmup}:], "delivered": delivered}}))
"""

BARE_NEW_WARM = """
import http.client, json, os, ssl, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["ORCHESTRA_WEBHOOK_URL"])
context = ssl.create_default_context()  # once: the floor of a new connection, not of a CA store
times, delivered = [], 0
for _ in range({total}):
    t = time.perf_counter()
    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=10, context=context)
    conn.request("POST", url.path or "/", {body!r}, {headers!r})
    response = conn.getresponse()
    response.read()
    conn.close()
    delivered += response.status == 200
    times.append(time.perf_counter() - t)
print(json.dumps({{"times": times[{warmup}:], "delivered": delivered}}))
"""

BARE_KEEPALIVE_WARM = """
import http.client, json, os, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["ORCHESTRA_WEBHOOK_URL"])
conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=10)
times, delivered = [], 0
for _ in range({total}):
    t = time.perf_counter()
    conn.request("POST", url.path or "/", {body!r}, {headers!r})
    response = conn.getresponse()
    response.read()
    delivered += response.status == 200
    times.append(time.perf_counter() - t)
conn.close()
print(json.dumps({{"times": times[{warmup}:], "delivered": delivered}}))
"""

IMPORT_PYC = """
import time
t = time.perf_counter()
import orchestra_sdk
elapsed = time.perf_counter() - t
peak = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(elapsed, peak)
"""

LABELS = {
    "floor-default": "stdlib: import ssl, ssl.create_default_context(), connect",
    "floor-lazy": "stdlib: CA looked up lazily (load_verify_locations(capath=...)), connect",
    "bare-new": "bare http.client POST, new connection per update",
    "bare-keepalive": "bare http.client POST, one kept-alive connection",
    "ours": "orchestra_sdk.py (this repository)",
    "ours-no-head-start": "orchestra_sdk.py, head start turned off",
    "official": "official orchestra-sdk 0.2.0",
}


# ---------------------------------------------------------------------------------------------
# Environments and measurement
# ---------------------------------------------------------------------------------------------


def make_venv(base_python: str, path: str, *packages: str) -> str:
    """A virtual environment with only `packages`; returns its python."""
    subprocess.run([base_python, "-m", "venv", *([] if packages else ["--without-pip"]), path], check=True, timeout=300)
    python = os.path.join(path, "bin", "python")
    if packages:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
            check=True,
            timeout=600,
        )
    return python


def official_venv(base_python: str, folder: str, reuse: bool) -> str:
    """The official package in a throwaway venv, or (--reuse-venv) in a cache kept between runs."""
    tag = subprocess.run(
        [base_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    if reuse:
        path = os.path.join(tempfile.gettempdir(), "orchestra-sdk-bench-cache", f"official-0.2.0-py{tag}")
        python = os.path.join(path, "bin", "python")
        check = "import importlib.metadata as m, orchestra_sdk.orchestra; assert m.version('orchestra-sdk') == '0.2.0'"
        if (
            os.path.exists(python)
            and subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0
        ):
            print(f"reusing the official package's venv in {path}", file=sys.stderr)
            return python
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        path = os.path.join(folder, "official")
    print(f"installing {OFFICIAL} into {path}", file=sys.stderr)
    return make_venv(base_python, path, OFFICIAL)


def base_env(webhook_url: str, trust: Optional[str]) -> Dict[str, str]:
    """A clean environment; `trust` is the CA file to trust, or None for the system's default store."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(ORCHESTRA_TASK_RUN_ID=TASK_RUN_ID, ORCHESTRA_WEBHOOK_URL=webhook_url)
    if trust:
        env.update(SSL_CERT_FILE=trust, REQUESTS_CA_BUNDLE=trust)
    return env


# With two or more cores, the servers and proxy (this process) and the measured child each get
# their own core, so neither steals time from the other.
PIN = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def _pin_child() -> None:
    os.sched_setaffinity(0, {1})


class Bench:
    def __init__(self, args: argparse.Namespace, folder: str) -> None:
        self.args = args
        self.folder = folder
        self.ca_file, cert, key = make_certificates(folder)
        ours = make_venv(args.python, os.path.join(folder, "bare"))
        self.pythons: Dict[str, str] = dict.fromkeys(
            ("floor-default", "floor-lazy", "bare-new", "bare-keepalive", "ours", "ours-no-head-start"), ours
        )
        if args.official:
            self.pythons["official"] = official_venv(args.official_python, folder, args.reuse_venv)
        self.cwd = os.path.join(folder, "cwd")  # never the repo: the official child must not see this SDK
        os.makedirs(self.cwd)
        self.server = TLSServer(cert, key)
        self.first_byte = FirstByteServer()
        self._check_certificates()

    def _check_certificates(self) -> None:
        context = ssl.create_default_context(cafile=self.ca_file)
        with socket.create_connection((HOST, self.server.port), timeout=10) as sock, context.wrap_socket(
            sock, server_hostname=HOST
        ):
            pass

    def env(self, name: str, webhook_url: str, trust: Optional[str]) -> Dict[str, str]:
        env = base_env(webhook_url, trust)
        if name == "ours":
            env["PYTHONPATH"] = ROOT  # the module as it is in the repository now
        return env

    def order(self, names: List[str], round_number: int) -> List[str]:
        """The contenders rotated by the round, so none always runs first or after the same one."""
        shift = round_number % len(names)
        return names[shift:] + names[:shift]

    # -- 1. cold --------------------------------------------------------------------------

    def cold_code(self, name: str) -> str:
        port = self.first_byte.port
        if name == "floor-default":
            return FLOOR_DEFAULT_COLD.format(host=HOST, port=port)
        if name == "floor-lazy":
            return FLOOR_LAZY_COLD.format(host=HOST, port=port)
        if name == "bare-new":
            return BARE_COLD.format(host=HOST, port=port, body=BODY, headers=HEADERS)
        return SDK_COLD.format(imports=OURS_IMPORT if name == "ours" else OFFICIAL_IMPORT, key=API_KEY)

    def cold_once(self, name: str, code: str) -> float:
        """Milliseconds from just before the spawn to the first byte at the server."""
        env = self.env(name, f"https://{HOST}:{self.first_byte.port}/", trust=None)
        self.first_byte.drain()
        with tempfile.TemporaryFile() as errors:
            started = time.monotonic_ns()
            child = subprocess.Popen(
                [self.pythons[name], "-c", code],
                env=env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=errors,
                preexec_fn=_pin_child if PIN else None,
            )  # fmt: skip
            try:
                arrived, first = self._wait_first_byte(child, started)
            finally:
                child.kill()
                child.wait(30)
            if arrived is None:
                errors.seek(0)
                raise SystemExit(f"{name}: no TLS byte arrived from the cold child\n{code}\n{errors.read().decode()}")
        if first != b"\x16":  # a TLS handshake record
            raise SystemExit(f"{name}: the first byte was {first!r}, not a TLS handshake")
        return (arrived - started) / 1e6

    def _wait_first_byte(self, child: subprocess.Popen[bytes], started: int) -> Tuple[Optional[int], bytes]:
        while time.monotonic_ns() - started < 30e9:
            try:
                return self.first_byte.arrivals.get(timeout=0.05)
            except queue.Empty:
                if child.poll() is not None:
                    try:
                        return self.first_byte.arrivals.get(timeout=0.5)
                    except queue.Empty:
                        return None, b""
        return None, b""

    def cold(self, names: List[str]) -> Dict[str, List[float]]:
        codes = {name: self.cold_code(name) for name in names}
        for name in names:  # once, untimed: compiles this SDK's .pyc and fills the page cache
            self.cold_once(name, codes[name])
        times: Dict[str, List[float]] = {name: [] for name in names}
        for r in range(self.args.rounds):
            for name in self.order(names, r):
                times[name].append(self.cold_once(name, codes[name]))
        return times

    def cold_delivered(self, names: List[str], rtt_ms: float) -> Dict[str, List[float]]:
        """Ms from just before the spawn to the exit of a fresh process whose one update was
        answered 2xx, through the delay proxy: what a cold Task pays for its first event."""
        proxy = DelayProxy(self.server.port, rtt_ms / 1000)
        codes = {}
        for name in names:
            if name == "bare-new":
                codes[name] = BARE_COLD_DELIVERED.format(body=BODY, headers=HEADERS)
            else:
                imports = OFFICIAL_IMPORT if name == "official" else OURS_IMPORT
                prefix = NO_HEAD_START if name == "ours-no-head-start" else ""
                codes[name] = prefix + SDK_COLD_DELIVERED.format(imports=imports, key=API_KEY)
        times: Dict[str, List[float]] = {name: [] for name in names}
        try:
            for r in range(-1, self.args.rounds):  # round -1: untimed, fills the page cache
                for name in self.order(names, max(r, 0)):
                    kind = "ours" if name.startswith("ours") else name
                    env = self.env(kind, f"https://{HOST}:{proxy.port}/", self.ca_file)
                    started = time.monotonic_ns()
                    result = subprocess.run(
                        [self.pythons[name], "-c", codes[name]],
                        env=env, cwd=self.cwd, capture_output=True, text=True, timeout=60,
                        preexec_fn=_pin_child if PIN else None,
                    )  # fmt: skip
                    elapsed = (time.monotonic_ns() - started) / 1e6
                    if result.returncode != 0:
                        raise SystemExit(f"{name}: the cold event was not delivered\n{codes[name]}\n{result.stderr}")
                    if r >= 0:
                        times[name].append(elapsed)
        finally:
            proxy.close()
        return times

    # -- 2 and 3. warm updates and handshakes ---------------------------------------------

    def warm_code(self, name: str, warmup: int, total: int) -> str:
        if name in ("ours", "official"):
            imports = OURS_IMPORT if name == "ours" else OFFICIAL_IMPORT
            return SDK_WARM.format(imports=imports, key=API_KEY, warmup=warmup, total=total)
        template = BARE_NEW_WARM if name == "bare-new" else BARE_KEEPALIVE_WARM
        return template.format(body=BODY, headers=HEADERS, warmup=warmup, total=total)

    def warm_once(self, name: str, port: int, rtt: float, warmup: int, total: int) -> Tuple[List[float], int]:
        """Seconds per timed update, and the TLS handshakes the child's updates cost."""
        code = self.warm_code(name, warmup, total)
        env = self.env(name, f"https://{HOST}:{port}/", trust=self.ca_file)
        handshakes, answered = self.server.counts()
        result = subprocess.run(
            [self.pythons[name], "-c", code],
            env=env, cwd=self.cwd, capture_output=True, text=True,
            timeout=60 + total * max(1.0, 20 * rtt),
            preexec_fn=_pin_child if PIN else None,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"{name}: warm child failed\n{code}\n{result.stderr}")
        out = json.loads(result.stdout.strip().splitlines()[-1])
        time.sleep(0.05)  # let the server's threads count the last answer
        handshakes_after, answered_after = self.server.counts()
        if out["delivered"] != total or answered_after - answered != total:
            raise SystemExit(
                f"{name}: {out['delivered']} of {total} updates delivered, "
                f"{answered_after - answered} answered by the server\n{result.stderr}"
            )
        return out["times"], handshakes_after - handshakes

    def warm(self, names: List[str], rtt_ms: float) -> Tuple[Dict[str, float], Dict[str, float]]:
        """Median ms per update, and TLS handshakes per 100 updates, for each contender."""
        rtt = rtt_ms / 1000
        proxy = DelayProxy(self.server.port, rtt) if rtt > 0 else None
        port = proxy.port if proxy else self.server.port
        per_update: Dict[str, List[float]] = {name: [] for name in names}
        handshakes: Dict[str, List[float]] = {name: [] for name in names}
        total = self.args.warmup + self.args.updates
        try:
            for r in range(self.args.warm_rounds):
                for name in self.order(names, r):
                    times, count = self.warm_once(name, port, rtt, self.args.warmup, total)
                    per_update[name].extend(times)
                    handshakes[name].append(100 * count / total)
        finally:
            if proxy:
                proxy.close()
        return (
            {name: statistics.median(per_update[name]) * 1000 for name in names},
            {name: statistics.median(handshakes[name]) for name in names},
        )

    def handshakes_per_100(self, names: List[str]) -> Dict[str, int]:
        """TLS handshakes for exactly 100 updates from one object (one process), no delay."""
        return {name: self.warm_once(name, self.server.port, 0.0, 0, 100)[1] for name in names}

    # -- 4. a vendored module without .pyc ------------------------------------------------

    def pyc(self) -> Dict[str, float]:
        """Import time (ms) and peak memory (MiB) of a copy of the module, compiled or not."""
        python = self.pythons["ours"]
        folders = {}
        for kind in ("compiled", "source-only"):
            folders[kind] = os.path.join(self.folder, f"vendored-{kind}")
            os.makedirs(folders[kind])
            shutil.copy(os.path.join(ROOT, "orchestra_sdk.py"), folders[kind])
        subprocess.run([python, "-m", "compileall", "-q", folders["compiled"]], check=True, timeout=60)
        samples: Dict[str, List[Tuple[float, float]]] = {kind: [] for kind in folders}
        for r in range(self.args.rounds):
            for kind in self.order(list(folders), r):
                env = base_env("https://127.0.0.1/", None)
                env["PYTHONPATH"] = folders[kind]
                if kind == "source-only":
                    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as in a read-only folder: compiled on every start
                result = subprocess.run(
                    [python, "-c", IMPORT_PYC], env=env, cwd=self.cwd, capture_output=True, text=True, timeout=60,
                    preexec_fn=_pin_child if PIN else None,
                )  # fmt: skip
                if result.returncode != 0:
                    raise SystemExit(f"import of the vendored module failed\n{result.stderr}")
                elapsed, peak = result.stdout.split()
                samples[kind].append((float(elapsed) * 1000, int(peak) / 1024))
        if os.listdir(folders["source-only"]) != ["orchestra_sdk.py"]:
            raise SystemExit("the source-only copy was compiled to a .pyc: the figure would be wrong")
        figures = {}
        for kind in folders:
            figures[f"{kind} ms"] = statistics.median(s[0] for s in samples[kind])
            figures[f"{kind} MiB"] = statistics.median(s[1] for s in samples[kind])
        return figures

    def close(self) -> None:
        self.server.close()
        self.first_byte.close()


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="orchestra-https-bench-")
    results: Dict[str, Any] = {}
    bench = None
    try:
        if PIN:
            os.sched_setaffinity(0, {0})
        bench = Bench(args, folder)
        sdks = ["ours", "official"] if args.official else ["ours"]
        started = time.monotonic()
        results["cold"] = bench.cold(["floor-default", "floor-lazy", "bare-new", *sdks])
        results["cold delivered rtt"] = rtt = max(args.rtt)
        if rtt > 0:
            results["cold delivered"] = bench.cold_delivered(["bare-new", "ours-no-head-start", *sdks], rtt)
        results["warm"] = {}
        for rtt_ms in args.rtt:
            results["warm"][rtt_ms] = bench.warm(["bare-new", "bare-keepalive", *sdks], rtt_ms)
        results["handshakes"] = bench.handshakes_per_100(["bare-new", "bare-keepalive", *sdks])
        results["pyc"] = bench.pyc()
        results["seconds"] = time.monotonic() - started
        version = "import platform, ssl; print(platform.python_version() + ', ' + ssl.OPENSSL_VERSION)"
        results["ours python"] = subprocess.run(
            [bench.pythons["ours"], "-c", version], capture_output=True, text=True, timeout=60
        ).stdout.strip()
        return results
    finally:
        if bench:
            bench.close()
        shutil.rmtree(folder, ignore_errors=True)


def goal_values(results: Dict[str, Any]) -> Dict[str, float]:
    cold = {name: statistics.median(times) for name, times in results["cold"].items()}
    values = {"cold ours/lazy": cold["ours"] / cold["floor-lazy"], "handshakes ours": results["handshakes"]["ours"]}
    if "official" in cold:
        values["cold official/ours"] = cold["official"] / cold["ours"]
    warm20 = results["warm"].get(20.0)
    if warm20:
        values["warm20 ours/keepalive"] = warm20[0]["ours"] / warm20[0]["bare-keepalive"]
        if "official" in warm20[0]:
            values["warm20 official/ours"] = warm20[0]["official"] / warm20[0]["ours"]
    return values


def report(args: argparse.Namespace, results: Dict[str, Any]) -> bool:
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"this SDK and the stdlib contenders on Python {results['ours python']}"
        + (f", the official package on {args.official_python_version}" if args.official else "")
    )
    print(f"measured in {results['seconds']:.0f} s; medians; contenders alternate run by run")
    print()
    cold = results["cold"]
    lazy = statistics.median(cold["floor-lazy"])
    print(f"## cold: process start to the first TLS byte at the server (ms; {args.rounds} fresh processes each)")
    print()
    print("| contender | median | min | max | / lazy-CA floor |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in cold.items():
        m = statistics.median(times)
        print(f"| {LABELS[name]} | {m:.1f} | {min(times):.1f} | {max(times):.1f} | {m / lazy:.2f} |")
    print()
    if "cold delivered" in results:
        rtt = results["cold delivered rtt"]
        print(
            f"## cold, first event delivered: process start to exit, {rtt:g} ms round trip "
            f"(ms; {args.rounds} fresh processes each)"
        )
        print()
        print("| contender | median | min | max |")
        print("| --- | ---: | ---: | ---: |")
        for name, times in results["cold delivered"].items():
            print(f"| {LABELS[name]} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |")
        print()
        print("a new connection costs two round trips before the request (the TCP handshake, standing in")
        print("as one more round trip on the first byte, and TLS 1.3), and the request a third")
        print()
    rtts = list(results["warm"])
    names = list(results["warm"][rtts[0]][0])
    print(
        f"## warm: ms per update ({args.warm_rounds} processes x {args.updates} updates after "
        f"{args.warmup} untimed) and TLS handshakes"
    )
    print()
    print(
        "| contender | "
        + " | ".join(f"{rtt:g} ms RTT" for rtt in rtts)
        + " | handshakes per 100 updates (one object, one process) |"
    )
    print("| --- |" + " ---: |" * (len(rtts) + 1))
    for name in names:
        cells = " | ".join(f"{results['warm'][rtt][0][name]:.2f}" for rtt in rtts)
        print(f"| {LABELS[name]} | {cells} | {results['handshakes'][name]} |")
    print()
    print("round trip 0: straight to the server; above 0: through the delay proxy (a new connection's")
    print("first byte waits one extra round trip, standing in for the TCP handshake)")
    print()
    pyc = results["pyc"]
    print(f"## a vendored orchestra_sdk.py at import ({args.rounds} fresh processes each)")
    print()
    print("| copy | import (ms) | peak memory of the process (MiB) |")
    print("| --- | ---: | ---: |")
    print(f"| compiled with python -m compileall | {pyc['compiled ms']:.1f} | {pyc['compiled MiB']:.1f} |")
    print(
        f"| source only, no writable __pycache__ (compiled on every start) | {pyc['source-only ms']:.1f} "
        f"| {pyc['source-only MiB']:.1f} |"
    )
    print(
        f"| cost of shipping without the .pyc | {pyc['source-only ms'] - pyc['compiled ms']:.1f} "
        f"| {pyc['source-only MiB'] - pyc['compiled MiB']:.1f} |"
    )
    print()
    values = goal_values(results)
    print("## goals")
    print()
    print("| goal | measured | target | result |")
    print("| --- | ---: | ---: | --- |")
    all_met = True
    for key, label, op, target in GOALS:
        if key not in values:
            print(f"| {label} | n/a | {op} {target:g} | not measured |")
            continue
        value = values[key]
        met = value <= target if op == "<=" else value >= target
        all_met &= met
        shown = f"{value:.0f}" if key == "handshakes ours" else f"{value:.2f}"
        print(f"| {label} | {shown} | {op} {target:g} | {'PASS' if met else 'MISS'} |")
    return all_met


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="fresh processes per contender, cold figure (15)")
    parser.add_argument("--warm-rounds", type=int, default=3, help="warm processes per contender and round trip (3)")
    parser.add_argument("--updates", type=int, default=40, help="timed updates per warm process (40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates before them (5)")
    parser.add_argument("--rtt", default="0,20", help="round-trip times in ms, comma-separated (0,20)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for this SDK and the stdlib contenders")
    parser.add_argument(
        "--official-python", default=sys.executable, help="interpreter for the official package (>= 3.10)"
    )
    parser.add_argument("--no-official", dest="official", action="store_false", help="skip the official package")
    parser.add_argument("--reuse-venv", action="store_true", help="keep the official package's venv in a cache")
    parser.add_argument("--no-goals", action="store_true", help="print the figures; exit 0 whatever they are")
    parser.add_argument("--quick", action="store_true", help="fewer runs: a rough look in under a minute")
    parser.add_argument("--smoke", action="store_true", help="for CI: seconds, no official package, no goals")
    args = parser.parse_args(argv)
    if args.quick or args.smoke:
        args.rounds, args.warm_rounds, args.updates, args.warmup = 5, 1, 20, 3
    if args.smoke:
        args.rounds, args.updates, args.warmup = 3, 5, 1
        args.official, args.no_goals = False, True
    for name in ("rounds", "warm_rounds", "updates"):
        if not 1 <= getattr(args, name) <= 10_000:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and 10000")
    try:
        args.rtt = sorted({float(x) for x in args.rtt.split(",") if x.strip()})
    except ValueError:
        parser.error("--rtt takes round-trip times in ms, e.g. 0,20,70")
    if not args.rtt or not all(0 <= rtt <= 1000 for rtt in args.rtt):
        parser.error("--rtt takes round-trip times between 0 and 1000 ms")
    if args.official:
        version = subprocess.run(
            [args.official_python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True, text=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        if tuple(int(p) for p in version.split(".")[:2]) < (3, 10):
            print(f"the official package does not import on Python {version}; give --official-python "
                  "a Python >= 3.10, or --no-official", file=sys.stderr)  # fmt: skip
            return 2
        args.official_python_version = f"Python {version}"
    sys.setswitchinterval(0.0005)  # the server and proxy threads wake within half a millisecond
    met = report(args, run(args))
    return 0 if met or args.no_goals else 1


if __name__ == "__main__":
    sys.exit(main())
