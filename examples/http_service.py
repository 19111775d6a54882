"""An HTTP-triggered Task: a service that Orchestra's "Python SDK" HTTP job calls.

Orchestra calls the endpoint with the task run id in the request header
``orchestra_task_run_id`` and fails the Task unless the call is answered (2xx) within 30 s.
So the service answers 202 at once and runs the work in a thread of its own, reporting
through the webhook with one OrchestraSDK object per request (several runs may be under way
at once; each run's events carry its own id and its LOG holds only its own output).

Standard library only. Run it, then trigger a run (here against `orchestra_sdk.py listen`)::

    python3 orchestra_sdk.py listen &          # prints the URL to use below
    ORCHESTRA_WEBHOOK_URL=http://127.0.0.1:PORT/ ORCHESTRA_API_KEY=local \
        python3 examples/http_service.py --port 8080
    curl -X POST -H "orchestra_task_run_id: $(python3 -c 'import uuid; print(uuid.uuid4())')" \
        http://127.0.0.1:8080/

Behind nginx or gunicorn, let header names with '_' through (see the README).
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the vendored module

from orchestra_sdk import OrchestraSDK

log = logging.getLogger("http_service")


def load_orders(sdk: OrchestraSDK, task_run_id: str) -> None:
    """The work itself: what it prints and logs is its own run's LOG."""
    print(f"loading orders for run {task_run_id}")
    log.warning("run %s: 3 orders had no customer", task_run_id)
    time.sleep(0.2)
    sdk.set_output("rows_loaded", 42)


class Trigger(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        # One SDK object per run. No log file (this path never exists): what the run prints and logs
        # is captured and sent as its LOG.
        sdk = OrchestraSDK(send_logs=True, log_file=os.devnull + ".absent")
        sdk.configure_http_request(self.headers)  # never raises; unconfigured without a valid id
        if sdk.task_run_id is None:
            self.answer(400, {"error": "the header orchestra_task_run_id is missing or not a UUID"})
            return
        task_run_id = str(sdk.task_run_id)
        threading.Thread(target=self.run_task, args=(sdk, task_run_id), name=f"run-{task_run_id}").start()
        self.answer(202, {"task_run_id": task_run_id})  # at once: Orchestra waits 30 s at most

    do_GET = do_POST

    @staticmethod
    def run_task(sdk: OrchestraSDK, task_run_id: str) -> None:
        with sdk.run("load_orders", reraise=False):  # FAILED is reported; the service stays up
            load_orders(sdk, task_run_id)

    def answer(self, status: int, payload: dict) -> None:  # type: ignore[type-arg]
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer((args.host, args.port), Trigger)
    print(f"listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
