"""Start-up and per-update cost of orchestra_sdk.py against the official package and the floor.

    python benchmarks/compare.py            # about two minutes; --quick for a rough look

Creates clean virtual environments in a temporary folder (an interpreter's own site-packages
can hold start-up hooks that distort every figure), installs this project into one and the
official `orchestra-sdk` into another (only to measure it), then measures, alternating the
contenders run by run and reporting medians:

1. import: a fresh process that imports the SDK and exits, against one that does nothing;
   wall time, and peak memory read inside the child from VmHWM in /proc/self/status.
2. cold Task: a fresh process that imports, constructs and runs a decorated no-op against a
   loopback server (two events), against the floor: bare urllib.request sending the same bytes.
3. warm update: update_task() in a loop, per call, against the floor: a bare http.client POST
   of the same bytes on a new connection. Also measured, to show where the time goes: a bare
   urllib.request.urlopen of the same bytes, and the SDK's transport alone on a prebuilt event.

Prints one table and exits 1 when a goal is missed. Needs Python >= 3.10 (the official
package does not import on 3.8 or 3.9) and access to PyPI for the official package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_RUN_ID = "0f9c3a5e-8f4e-4a4e-9b1a-2f6f3c9d7e10"
API_KEY = "benchmark-key"
OFFICIAL = "orchestra-sdk==0.2.0"

GOALS = [
    # (figure, how it is computed, comparison, goal)
    ("import, wall, ours / empty interpreter", "<=", 2.5),  # dataclasses (the design card) costs a few ms
    ("import, peak memory, ours - empty interpreter (MiB)", "<=", 2.0),
    ("import, wall, official / ours", ">=", 6.0),
    ("cold Task, wall, ours / bare urllib.request floor", "<=", 1.1),
    ("cold Task, wall, official / ours", ">=", 2.0),
    ("warm update, ours / http.client floor", "<=", 1.15),
    ("warm update, official / ours", ">=", 2.0),
]


# ---------------------------------------------------------------------------------------------
# A loopback server that answers every request with a single write
# ---------------------------------------------------------------------------------------------


class OneWriteServer:
    """Reads one HTTP request per connection and answers 200 in one write (no delayed ACK)."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
        b'Connection: close\r\n\r\n{"success": true}'
    )

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.count = 0
        self.running = True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        # One connection at a time, in this thread: the contenders send one request at a time,
        # and a thread per connection would add its start-up time and jitter to every figure.
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                conn.sendall(self.RESPONSE)
                self.count += 1
            except OSError:
                pass

    def close(self) -> None:
        self.running = False
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The child programs
# ---------------------------------------------------------------------------------------------

PEAK = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"

IMPORT_CODE = {
    "empty": PEAK,
    "ours": "from orchestra_sdk.orchestra import OrchestraSDK\n" + PEAK,
    "official": "from orchestra_sdk.orchestra import OrchestraSDK\n" + PEAK,
}

BODIES = [
    {
        "event_type": "UPDATE_STATUS",
        "metadata": {},
        "task_run_id": TASK_RUN_ID,
        "status": "RUNNING",
        "message": "noop started.",
    },
    {
        "event_type": "UPDATE_STATUS",
        "metadata": {},
        "task_run_id": TASK_RUN_ID,
        "status": "SUCCEEDED",
        "message": "noop succeeded.",
    },
]

SDK_COLD = """
from orchestra_sdk.orchestra import OrchestraSDK
sdk = OrchestraSDK(api_key={key!r})
@sdk.run()
def noop():
    pass
noop()
"""

FLOOR_COLD = """
import json, os, urllib.request
for body in {bodies!r}:
    request = urllib.request.Request(os.environ["ORCHESTRA_WEBHOOK_URL"], data=json.dumps(body).encode(), method="POST",
        headers={{"Authorization": "Bearer {key}", "Content-Type": "application/json"}})
    urllib.request.urlopen(request, timeout=10).read()
"""

SDK_WARM = """
import json, sys, time
from orchestra_sdk.orchestra import OrchestraSDK
from orchestra_sdk.enum import TaskRunStatus
sdk = OrchestraSDK(api_key={key!r})
times = []
for _ in range({n}):
    t = time.perf_counter()
    sdk.update_task(TaskRunStatus.RUNNING, "noop started.")
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""

FLOOR_WARM = """
import http.client, json, os, time, urllib.parse
url = urllib.parse.urlsplit(os.environ["ORCHESTRA_WEBHOOK_URL"])
body = json.dumps({body!r}).encode()
headers = {{"Authorization": "Bearer {key}", "Content-Type": "application/json"}}
times = []
for _ in range({n}):
    t = time.perf_counter()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("POST", url.path or "/", body, headers)
    conn.getresponse().read()
    conn.close()
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


URLLIB_WARM = """
import json, os, time, urllib.request
url = os.environ["ORCHESTRA_WEBHOOK_URL"]
body = json.dumps({body!r}).encode()
headers = {{"Authorization": "Bearer {key}", "Content-Type": "application/json"}}
times = []
for _ in range({n}):
    t = time.perf_counter()
    urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST", headers=headers), timeout=10).close()
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""

# Only to split the SDK's time: its transport (retry loop, opener, Request) on a prebuilt event.
TRANSPORT_WARM = """
import json, os, time
import orchestra_sdk
url = os.environ["ORCHESTRA_WEBHOOK_URL"]
fields = {body!r}
event = orchestra_sdk._status_event(orchestra_sdk.TaskRunStatus(fields["status"]), fields["message"])
transport = orchestra_sdk._Transport()
policy = orchestra_sdk.RetryPolicy()
times = []
for _ in range({n}):
    t = time.perf_counter()
    assert transport.post(url, {key!r}, event, fields["task_run_id"], policy).delivered
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


# ---------------------------------------------------------------------------------------------
# Environments and measurement
# ---------------------------------------------------------------------------------------------


def make_venv(folder: str, name: str, *packages: str) -> str:
    path = os.path.join(folder, name)
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    python = os.path.join(path, "bin", "python")
    if packages:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
            check=True,
        )
    return python


def child_env(server_url: str) -> Dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(ORCHESTRA_TASK_RUN_ID=TASK_RUN_ID, ORCHESTRA_WEBHOOK_URL=server_url, ORCHESTRA_API_KEY=API_KEY)
    return env


# With two or more cores, the loopback server (this process) and the measured child each get
# their own core, so neither steals time from the other and medians stay put run to run.
PIN = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


def _pin_child() -> None:
    os.sched_setaffinity(0, {1})


def timed_run(python: str, code: str, env: Dict[str, str], cwd: str) -> Tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [python, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_pin_child if PIN else None,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{code}\n{result.stderr}")
    return elapsed, result.stdout


def measure(args: argparse.Namespace) -> Dict[str, float]:
    folder = tempfile.mkdtemp(prefix="orchestra-bench-")
    print(f"virtual environments in {folder}", file=sys.stderr)
    pythons = {
        "ours": make_venv(folder, "ours", ROOT),
        "official": make_venv(folder, "official", OFFICIAL),
    }
    pythons["empty"] = pythons["ours"]  # the same interpreter, importing nothing
    pythons["floor"] = pythons["urllib"] = pythons["transport"] = pythons["ours"]
    if PIN:
        os.sched_setaffinity(0, {0})
    server = OneWriteServer()
    env = child_env(server.url)
    cwd = folder  # never the repo: the child must import the installed copies
    figures: Dict[str, float] = {}

    # 1. import
    walls: Dict[str, List[float]] = {k: [] for k in IMPORT_CODE}
    peaks: Dict[str, List[float]] = {k: [] for k in IMPORT_CODE}
    for _ in range(args.runs):
        for name, code in IMPORT_CODE.items():
            wall, out = timed_run(pythons[name], code, env, cwd)
            walls[name].append(wall)
            peaks[name].append(int(out.split()[-1]) / 1024)
    for name in IMPORT_CODE:
        figures[f"import wall {name}"] = statistics.median(walls[name])
        figures[f"import peak {name}"] = statistics.median(peaks[name])

    # 2. cold Task
    cold = {
        "ours": SDK_COLD.format(key=API_KEY),
        "official": SDK_COLD.format(key=API_KEY),
        "floor": FLOOR_COLD.format(bodies=BODIES, key=API_KEY),
    }
    cold_walls: Dict[str, List[float]] = {k: [] for k in cold}
    for _ in range(args.runs):
        for name, code in cold.items():
            before = server.count
            wall, _ = timed_run(pythons[name], code, env, cwd)
            if server.count - before != 2:
                raise SystemExit(f"{name}: the cold Task sent {server.count - before} events, not 2")
            cold_walls[name].append(wall)
    for name in cold:
        figures[f"cold {name}"] = statistics.median(cold_walls[name])

    # 3. warm update
    warm = {
        "ours": SDK_WARM.format(key=API_KEY, n=args.calls),
        "official": SDK_WARM.format(key=API_KEY, n=args.calls),
        "floor": FLOOR_WARM.format(body=BODIES[0], key=API_KEY, n=args.calls),
        # where the time goes
        "urllib": URLLIB_WARM.format(body=BODIES[0], key=API_KEY, n=args.calls),
        "transport": TRANSPORT_WARM.format(body=BODIES[0], key=API_KEY, n=args.calls),
    }
    per_call: Dict[str, List[float]] = {k: [] for k in warm}
    for _ in range(args.rounds):
        for name, code in warm.items():
            _, out = timed_run(pythons[name], code, env, cwd)
            per_call[name].extend(json.loads(out)[10:])  # the first calls warm caches up
    for name in warm:
        figures[f"warm {name}"] = statistics.median(per_call[name])
    server.close()
    return figures


def report(figures: Dict[str, float]) -> bool:
    ms = 1000.0
    rows = [
        (
            "import, wall (ms)",
            figures["import wall empty"] * ms,
            figures["import wall ours"] * ms,
            figures["import wall official"] * ms,
        ),
        (
            "import, peak memory (MiB)",
            figures["import peak empty"],
            figures["import peak ours"],
            figures["import peak official"],
        ),
        ("cold Task, wall (ms)", figures["cold floor"] * ms, figures["cold ours"] * ms, figures["cold official"] * ms),
        (
            "warm update, per call (ms)",
            figures["warm floor"] * ms,
            figures["warm ours"] * ms,
            figures["warm official"] * ms,
        ),
    ]
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print()
    print("| figure | floor | orchestra_sdk.py | official 0.2.0 |")
    print("| --- | ---: | ---: | ---: |")
    for label, floor, ours, official in rows:
        print(f"| {label} | {floor:.2f} | {ours:.2f} | {official:.2f} |")
    print()
    print("floor: an empty interpreter for import; bare urllib.request (cold) and http.client (warm) otherwise")
    print()
    values = [
        figures["import wall ours"] / figures["import wall empty"],
        figures["import peak ours"] - figures["import peak empty"],
        figures["import wall official"] / figures["import wall ours"],
        figures["cold ours"] / figures["cold floor"],
        figures["cold official"] / figures["cold ours"],
        figures["warm ours"] / figures["warm floor"],
        figures["warm official"] / figures["warm ours"],
    ]
    print("| where the warm-update time goes | per call (ms) | / floor |")
    print("| --- | ---: | ---: |")
    for label, key in (
        ("bare http.client POST (the floor)", "warm floor"),
        ("bare urllib.request.urlopen of the same bytes", "warm urllib"),
        ("orchestra_sdk transport alone (retry loop, opener; event prebuilt)", "warm transport"),
        ("orchestra_sdk update_task() (checks, event JSON, transport)", "warm ours"),
    ):
        print(f"| {label} | {figures[key] * ms:.3f} | {figures[key] / figures['warm floor']:.2f} |")
    print()
    print("| goal | measured | target | met |")
    print("| --- | ---: | ---: | --- |")
    all_met = True
    for (label, op, target), value in zip(GOALS, values):
        met = value <= target if op == "<=" else value >= target
        all_met &= met
        print(f"| {label} | {value:.2f} | {op} {target:g} | {'yes' if met else 'NO'} |")
    return all_met


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs: a rough look in about 30 s")
    parser.add_argument("--runs", type=int, default=60, help="fresh processes per contender (import, cold Task)")
    parser.add_argument("--rounds", type=int, default=8, help="warm-update processes per contender")
    parser.add_argument("--calls", type=int, default=300, help="updates per warm-update process")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.rounds, args.calls = 10, 2, 150
    if sys.version_info < (3, 10):
        print("compare.py needs Python >= 3.10: the official package does not import on older ones", file=sys.stderr)
        return 2
    return 0 if report(measure(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
