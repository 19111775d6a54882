"""Chaos run: thousands of updates from several threads against a loopback server that fails.

    python benchmarks/chaos.py                 # 8 threads x 300 updates, about 20 s
    python benchmarks/chaos.py --seed 7 --threads 16 --updates 200

The server fails a seeded, random share of attempts with a mix of faults (5xx, 429 and 503
with Retry-After, a dropped connection, a reset, a garbled answer, an error body that trickles,
an accept that never answers), first during an outage where most attempts fail, then at a
lower rate once it "recovers". It never fails the last attempt the retry policy allows, so
every update is deliverable within the deadline: any update reported lost, or any update
that took longer than its deadline, is a defect. Prints the figures; exits 1 on either.
Only loopback traffic; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orchestra_sdk

TASK_RUN_ID = "0f9c3a5e-8f4e-4a4e-9b1a-2f6f3c9d7e10"
FAULTS = ["500", "502", "503-retry-after", "429-retry-after", "drop", "reset", "garbage", "trickle", "hang"]


class ChaosServer:
    """A loopback HTTP server whose faults are decided per (message, attempt) from the seed."""

    def __init__(self, seed: int, outage_seconds: float, outage_rate: float, rate: float, max_faults: int) -> None:
        self.seed = seed
        self.outage_until = time.monotonic() + outage_seconds
        self.outage_rate = outage_rate
        self.rate = rate
        self.max_faults = max_faults  # never fail the attempt after this many: the policy's last
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.connections = 0  # TCP connections accepted: the SDK keeps one alive between updates
        self.stopping = threading.Event()
        self.handlers: List[threading.Thread] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            handler.start()
            with self.lock:
                self.handlers = [t for t in self.handlers if t.is_alive()] + [handler]

    def _read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while len(body) < length:
            body += conn.recv(65536)
        return body

    def _choose_fault(self, message: str, attempt: int) -> str:
        if attempt > self.max_faults:
            return ""
        rng = random.Random(f"{self.seed}/{message}/{attempt}")
        rate = self.outage_rate if time.monotonic() < self.outage_until else self.rate
        return rng.choice(FAULTS) if rng.random() < rate else ""

    def _serve(self, conn: socket.socket) -> None:
        """Serve requests on one connection: kept alive after a success, closed after a fault
        (so a client that reuses it meets a connection the server closed)."""
        with conn:
            conn.settimeout(10)
            try:
                while True:
                    body = self._read_request(conn)
                    if not body:
                        return
                    message = json.loads(body)["message"]
                    with self.lock:
                        self.seen[message] += 1
                        attempt = self.seen[message]
                    fault = self._choose_fault(message, attempt)
                    with self.lock:
                        self.faults[fault or "none"] += 1
                    self._answer(conn, fault, message)
                    if fault or self.stopping.is_set():
                        return
            except OSError:
                pass

    def _answer(self, conn: socket.socket, fault: str, message: str) -> None:
        if fault in ("500", "502"):
            conn.sendall(f"HTTP/1.1 {fault} X\r\nContent-Length: 20\r\n\r\n".encode() + b'{"error": "chaos!!"}')
        elif fault == "503-retry-after":
            conn.sendall(b"HTTP/1.1 503 X\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
        elif fault == "429-retry-after":
            conn.sendall(b"HTTP/1.1 429 X\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n")
        elif fault == "drop":
            pass
        elif fault == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif fault == "garbage":
            conn.sendall(b"SPDY/9 nonsense\r\n\r\n")
        elif fault == "trickle":
            conn.sendall(b"HTTP/1.1 500 X\r\nContent-Length: 100\r\n\r\n")
            for _ in range(10):
                if self.stopping.wait(0.1):
                    return
                conn.sendall(b"x")
        elif fault == "hang":
            self.stopping.wait(2.0)
        else:
            conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"success": true}')
            with self.lock:
                self.delivered[message] += 1

    def close(self) -> None:
        """Stop, and let every connection's thread finish: a 2xx is counted after it is sent,
        which can be just after the client has read it."""
        self.stopping.set()
        self.sock.close()
        with self.lock:
            handlers = list(self.handlers)
        for handler in handlers:
            handler.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--updates", type=int, default=300, help="per thread")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds of heavy failure at the start")
    parser.add_argument("--outage-rate", type=float, default=0.7)
    parser.add_argument("--rate", type=float, default=0.15, help="share of attempts failed after the outage")
    args = parser.parse_args()

    policy = orchestra_sdk.RetryPolicy(timeout=0.5, retries=4, deadline=10.0, backoff=0.05)
    server = ChaosServer(args.seed, args.outage, args.outage_rate, args.rate, max_faults=policy.retries)
    os.environ.update(
        ORCHESTRA_TASK_RUN_ID=TASK_RUN_ID, ORCHESTRA_API_KEY="chaos-key", ORCHESTRA_WEBHOOK_URL=server.url
    )
    logging_module = __import__("logging")
    logging_module.getLogger("orchestra_sdk").setLevel(logging_module.CRITICAL)  # the faults are expected
    sdk = orchestra_sdk.OrchestraSDK()  # one SDK shared by every thread
    sdk.retry_policy = policy
    results: List[Tuple[str, bool, float]] = []
    lock = threading.Lock()

    def worker(thread: int) -> None:
        for n in range(args.updates):
            message = f"t{thread}-u{n}"
            started = time.monotonic()
            ok = sdk.update_task(message=message)
            with lock:
                results.append((message, ok, time.monotonic() - started))

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    wall = time.monotonic() - started
    server.close()

    sent = len(results)
    delivered = sum(ok for _, ok, _ in results)
    lost = [m for m, ok, _ in results if not ok]
    durations = sorted(d for _, _, d in results)
    over_deadline = [d for d in durations if d > policy.deadline]
    duplicates = sum(1 for count in server.delivered.values() if count > 1)
    retried = sum(1 for count in server.seen.values() if count > 1)
    attempts = sum(server.seen.values())
    not_received = [m for m, ok, _ in results if ok and server.delivered[m] == 0]
    fault_mix: Dict[str, int] = dict(server.faults.most_common())

    rows = [
        ("updates sent", f"{sent} ({args.threads} threads x {args.updates})"),
        ("delivered (returned True)", str(delivered)),
        ("reported lost (returned False)", str(len(lost))),
        ("returned True but never answered 2xx", str(len(not_received))),
        ("duplicates: updates answered 2xx more than once", str(duplicates)),
        ("updates the server received more than once (retried)", str(retried)),
        ("attempts per update", f"{attempts / max(sent, 1):.2f} mean, {max(server.seen.values())} max"),
        ("time per update", f"{statistics.median(durations) * 1000:.1f} ms median, {durations[-1]:.2f} s worst"),
        ("deadline", f"{policy.deadline:g} s; {len(over_deadline)} updates over it"),
        ("wall time", f"{wall:.1f} s"),
        ("connections opened", f"{server.connections} (for {attempts} attempts: kept alive between updates)"),
        ("faults injected", ", ".join(f"{k} {v}" for k, v in fault_mix.items() if k != "none")),
    ]
    shown = ", ".join(f"{k}={getattr(policy, k):g}" for k in ("timeout", "retries", "deadline", "backoff"))
    print(f"chaos run, seed {args.seed}, policy {shown}, Python {sys.version.split()[0]}")
    print()
    print("| figure | value |")
    print("| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value} |")
    ok = not lost and not over_deadline and not not_received
    for label, messages in (("reported lost", lost), ("returned True but never answered 2xx", not_received)):
        if messages:
            print(f"\n{label}: {', '.join(sorted(messages)[:20])}")
    print()
    print("PASS: nothing lost, nothing over the deadline" if ok else "FAIL: see the figures above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
