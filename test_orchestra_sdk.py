"""Tests for orchestra_sdk.py, against a real HTTP server on 127.0.0.1 (no mocked urllib).

Run with ``python -m unittest -v`` (pytest runs them too). Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.utils
import functools
import http.server
import inspect
import io
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import unittest
import uuid
import warnings
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from unittest import mock

import orchestra_sdk
from orchestra_sdk import (
    LinkedConnection,
    LinkedConnectionNotFoundError,
    OrchestraSDK,
    TaskRunStatus,
    WebhookEventType,
    get_linked_connection,
    list_linked_connections,
)

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_FILE = os.path.join(HERE, "orchestra_sdk.py")
API_KEY = "sk-test-9f8e7d6c5b4a-SECRET"
TASK_RUN_ID = "0f9c3a5e-8f4e-4a4e-9b1a-2f6f3c9d7e10"
WAIT = 10.0  # the longest any single wait in these tests may take


# ---------------------------------------------------------------------------------------------
# A recording server on loopback; faults are its behaviours
# ---------------------------------------------------------------------------------------------


class Recorded:
    """One request as it arrived."""

    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.arrived = time.monotonic()

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Action = Callable[[http.server.BaseHTTPRequestHandler, "Recorder"], None]


def raw(data: bytes) -> Action:
    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        handler.wfile.write(data)

    return act


def reply(status: int, body: bytes = b'{"success": true}', headers: Optional[Dict[str, str]] = None) -> Action:
    """An answer in a single write (separate writes meet delayed ACKs on loopback)."""
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def kept_alive_reply(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
    """200, leaving the connection open for the next request."""
    body = b'{"success": true}'
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def drop() -> Action:
    """Close the connection before the status line."""

    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        pass

    return act


def reset_after_headers(status: int = 200) -> Action:
    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        handler.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: 1000\r\n\r\npartial".encode())
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    return act


def hang() -> Action:
    """Accept and never answer (until the test ends)."""

    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        server.stopping.wait(WAIT)

    return act


def trickle_head(head: bytes, interval: float) -> Action:
    """Send the start of an answer one byte per `interval`: each byte well within a timeout."""

    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        for byte in head:
            if server.stopping.wait(interval):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    return act


def delay(seconds: float, then: Action) -> Action:
    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        server.stopping.wait(seconds)
        then(handler, server)

    return act


def trickle(status: int, interval: float, total: int = 50) -> Action:
    """Send the headers, then the body one byte per `interval`."""

    def act(handler: http.server.BaseHTTPRequestHandler, server: Recorder) -> None:
        handler.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: {total}\r\n\r\n".encode())
        handler.wfile.flush()
        for _ in range(total):
            if server.stopping.wait(interval):
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()

    return act


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many threads connect at once in the concurrency test


class Recorder:
    """A real HTTP server on 127.0.0.1 (ephemeral port, own thread) that records each request."""

    def __init__(self) -> None:
        self.requests: List[Recorded] = []
        self.connections = 0  # TCP connections accepted
        self.keep_alive = False  # True: the default answer keeps the connection open
        self.script: Deque[Action] = deque()
        self.default: Action = reply(200)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = WAIT  # an idle kept-alive connection ends with the test at the latest

            def setup(self) -> None:
                super().setup()
                with recorder.lock:
                    recorder.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with recorder.lock:
                    recorder.requests.append(Recorded("POST", self.path, headers, body))
                    scripted = bool(recorder.script)
                    action = recorder.script.popleft() if scripted else recorder.default
                self.close_connection = scripted or not recorder.keep_alive
                if not self.close_connection:
                    action = kept_alive_reply
                try:
                    action(self, recorder)
                except OSError:
                    pass

            do_GET = do_CONNECT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/orchestra"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def then(self, *actions: Action) -> None:
        self.script.extend(actions)

    @property
    def events(self) -> List[Any]:
        return [r.json for r in self.requests]

    def wait_for_requests(self, count: int) -> None:
        """Wait (at most WAIT) until `count` requests have arrived."""
        deadline = time.monotonic() + WAIT
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def statuses(self) -> List[Tuple[Optional[str], Optional[str]]]:
        """(status, message) of each event received, None where a key was left out."""
        return [(e.get("status"), e.get("message")) for e in self.events]

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def refusing_port(test: unittest.TestCase) -> int:
    """A loopback port that refuses connections for the whole test.

    Bound but not listening: a port merely found free could be taken by another program
    (another test run) before the test connects to it.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    test.addCleanup(sock.close)
    return int(sock.getsockname()[1])


def temp_folder(test: unittest.TestCase) -> str:
    """A new folder, removed with everything in it when the test ends."""
    folder = tempfile.mkdtemp(prefix="orchestra-sdk-test-")
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


def orchestra_env(webhook_url: str, **extra: str) -> Dict[str, str]:
    """This process's environment for a child Task: no inherited ORCHESTRA* variables, then the
    run, the key and the webhook set, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA")}
    env.update(ORCHESTRA_TASK_RUN_ID=TASK_RUN_ID, ORCHESTRA_API_KEY=API_KEY, ORCHESTRA_WEBHOOK_URL=webhook_url)
    env.update(extra)
    return env


def event(**fields: Any) -> Dict[str, Any]:
    """The JSON Orchestra should receive, fields in wire order."""
    body: Dict[str, Any] = {"event_type": "UPDATE_STATUS", "metadata": {}, "task_run_id": TASK_RUN_ID}
    body.update(fields)
    return body


def status_event(status: Optional[str], message: Optional[str]) -> Dict[str, Any]:
    fields: Dict[str, Any] = {}
    if status is not None:
        fields["status"] = status
    if message is not None:
        fields["message"] = message
    return event(**fields)


class RecordingHandler(logging.Handler):
    """Keeps every record of the `orchestra_sdk` logger, formatted as a user would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.levelname}: {text}")


class SDKTestCase(unittest.TestCase):
    """A fresh recorder and a clean Orchestra environment pointing at it, for each test."""

    def setUp(self) -> None:
        self.server = Recorder()
        self.addCleanup(self.server.close)
        patcher = mock.patch.dict(os.environ)
        patcher.start()
        self.addCleanup(patcher.stop)
        for name in list(os.environ):
            if name.startswith("ORCHESTRA"):
                del os.environ[name]
        os.environ.update(
            {
                "ORCHESTRA_TASK_RUN_ID": TASK_RUN_ID,
                "ORCHESTRA_WEBHOOK_URL": self.server.url,
                "ORCHESTRA_API_KEY": API_KEY,
            }
        )
        self.log = RecordingHandler()
        sdk_logger = logging.getLogger("orchestra_sdk")
        sdk_logger.addHandler(self.log)
        level = sdk_logger.level
        sdk_logger.setLevel(logging.DEBUG)
        self.addCleanup(sdk_logger.setLevel, level)
        self.addCleanup(sdk_logger.removeHandler, self.log)
        self.addCleanup(self.assert_no_secret_logged)  # every test runs with DEBUG logging on

    def assert_no_secret_logged(self) -> None:
        for line in self.log.lines:
            self.assert_no_secret(line)

    def sdk(self, **kwargs: Any) -> OrchestraSDK:
        options: Dict[str, Any] = {"timeout": 1.0, "retries": 3, "deadline": 5.0, "backoff": 0.01}
        options.update(kwargs)
        return OrchestraSDK(**options)

    def raw_server(self, serve: Callable[[socket.socket], None]) -> str:
        """A one-connection-at-a-time server on loopback whose behaviour is `serve(connection)`."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(WAIT)
        self.addCleanup(listener.close)

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    with connection:
                        serve(connection)

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/"

    def log_lines(self, level: str) -> List[str]:
        return [line for line in self.log.lines if line.startswith(level + ":")]

    def assert_no_secret(self, text: str) -> None:
        self.assertNotIn(API_KEY, text)
        self.assertNotIn(API_KEY[-10:], text)


# ---------------------------------------------------------------------------------------------
# Wire format
# ---------------------------------------------------------------------------------------------


class WireFormatTest(SDKTestCase):
    def test_update_task_sends_the_official_bytes_and_headers(self) -> None:
        self.assertTrue(self.sdk().update_task(status=TaskRunStatus.RUNNING, message="Starting process."))
        (request,) = self.server.requests
        self.assertEqual(request.method, "POST")
        self.assertEqual(request.path, "/hooks/orchestra")
        self.assertEqual(request.headers["authorization"], f"Bearer {API_KEY}")
        self.assertEqual(request.headers["content-type"], "application/json")
        expected = (
            f'{{"event_type": "UPDATE_STATUS", "metadata": {{}}, "task_run_id": "{TASK_RUN_ID}", '
            '"status": "RUNNING", "message": "Starting process."}'
        )
        self.assertEqual(request.body, expected.encode())

    def test_message_only_update_leaves_status_out(self) -> None:
        self.assertTrue(self.sdk().update_task(message="Halfway."))
        self.assertEqual(self.server.events, [status_event(None, "Halfway.")])

    def test_status_name_in_any_case(self) -> None:
        self.assertTrue(self.sdk().update_task(status="succeeded"))
        self.assertEqual(self.server.events, [status_event("SUCCEEDED", None)])

    def test_empty_message_with_status_is_left_out(self) -> None:
        self.sdk().update_task(status="WARNING", message="")
        self.assertEqual(self.server.events, [status_event("WARNING", None)])

    def test_non_ascii_message_is_escaped_like_the_official_package(self) -> None:
        self.sdk().update_task(message="Größe ✓")
        self.assertIn(b'"message": "Gr\\u00f6\\u00dfe \\u2713"', self.server.requests[0].body)

    def test_lone_surrogates_become_replacement_characters(self) -> None:
        self.sdk().update_task(message="bad \ud800 char\x00\x1b")
        self.assertEqual(self.server.events[0]["message"], "bad \ufffd char\x00\x1b")

    def test_set_output_event(self) -> None:
        self.assertTrue(self.sdk().set_output("rows_loaded", {"n": [1, 2.5, None, True]}))
        self.assertEqual(
            self.server.events,
            [
                {
                    "event_type": "SET_OUTPUT",
                    "metadata": {},
                    "task_run_id": TASK_RUN_ID,
                    "output_name": "rows_loaded",
                    "output_value": {"n": [1, 2.5, None, True]},
                }
            ],
        )

    def test_enums_match_the_official_values(self) -> None:
        self.assertEqual([s.value for s in TaskRunStatus], ["CANCELLED", "FAILED", "RUNNING", "SUCCEEDED", "WARNING"])
        self.assertEqual({e.value for e in WebhookEventType}, {"LOG", "UPDATE_STATUS", "SET_OUTPUT"})

    def test_upper_case_braced_and_padded_ids_are_sent_canonical(self) -> None:
        os.environ["ORCHESTRA_TASK_RUN_ID"] = "  {" + TASK_RUN_ID.upper() + "}\n"
        self.assertTrue(self.sdk().update_task(message="x"))
        self.assertEqual(self.server.events[0]["task_run_id"], TASK_RUN_ID)


class DropInTest(SDKTestCase):
    """The official 0.2.0 names that are not the main API, with its JSON."""

    def test_send_status_methods(self) -> None:
        sdk = self.sdk()
        self.assertTrue(sdk.send_running_status("load"))
        self.assertTrue(sdk.send_failed_status("load", ValueError("x" * 300)))
        self.assertTrue(sdk.send_success_status("load"))
        self.assertEqual(
            self.server.events,
            [
                status_event("RUNNING", "load started."),
                status_event("FAILED", "load failed. Error: " + "x" * 250),
                status_event("SUCCEEDED", "load succeeded."),
            ],
        )

    def test_http_client_sends_any_event_with_its_metadata(self) -> None:
        client = self.sdk().http_client
        assert client is not None
        self.assertEqual(str(client.task_run_id), TASK_RUN_ID)
        self.assertTrue(client.request(WebhookEventType.LOG, json={"log_name": "a.log", "data": "text"}))
        self.assertTrue(client.request(WebhookEventType.UPDATE_STATUS, {"source": "etl"}, {"message": "hi"}))
        self.assertEqual(
            self.server.events,
            [
                event(event_type="LOG", log_name="a.log", data="text"),
                dict(event(metadata={"source": "etl"}), message="hi"),
            ],
        )
        self.assertEqual(self.server.requests[0].headers["authorization"], f"Bearer {API_KEY}")
        self.assertNotIn(API_KEY, repr(client))

    def test_http_client_is_none_with_a_warning_when_unconfigured(self) -> None:
        del os.environ["ORCHESTRA_TASK_RUN_ID"]
        self.assertIsNone(self.sdk().http_client)
        (warning,) = self.log_lines("WARNING")
        self.assertIn("Environment not configured correctly to send update for Task: ORCHESTRA_TASK_RUN_ID", warning)

    def test_standalone_http_client(self) -> None:
        client = orchestra_sdk.HTTPClient(API_KEY, uuid.UUID(TASK_RUN_ID), self.server.url)
        self.assertTrue(client.request("set_output", json={"output_name": "n", "output_value": 1}))
        self.assertEqual(self.server.events, [event(event_type="SET_OUTPUT", output_name="n", output_value=1)])
        with self.assertRaisesRegex(ValueError, "unknown event type 'PING'; valid event types: LOG"):
            client.request("PING")
        insecure = orchestra_sdk.HTTPClient(API_KEY, TASK_RUN_ID, "http://orchestra.example/")
        self.assertFalse(insecure.request(WebhookEventType.LOG, json={"log_name": "a", "data": ""}))
        self.assertIn("uses plain http; https is required", self.log_lines("ERROR")[0])
        self.assertEqual(len(self.server.requests), 1)

    def test_validate_environment(self) -> None:
        self.assertEqual(orchestra_sdk.validate_environment(), uuid.UUID(TASK_RUN_ID))
        os.environ["ORCHESTRA_TASK_RUN_ID"] = "not-a-uuid"
        self.assertIsNone(orchestra_sdk.validate_environment())
        self.assertIn("Error processing environment variables: ORCHESTRA_TASK_RUN_ID=", self.log_lines("ERROR")[0])
        del os.environ["ORCHESTRA_TASK_RUN_ID"]
        self.assertIsNone(orchestra_sdk.validate_environment())
        self.assertEqual(self.log_lines("WARNING"), ["WARNING: Missing environment variables: ORCHESTRA_TASK_RUN_ID."])
        os.environ.clear()
        self.assertIsNone(orchestra_sdk.validate_environment())
        self.assertEqual(self.log_lines("WARNING")[-1], "WARNING: No environment variables loaded.")

    def test_official_errors(self) -> None:
        error = orchestra_sdk.MissingEnvironmentKeysError({"B", "A"})
        self.assertEqual((error.missing_keys, str(error)), ({"A", "B"}, "missing environment variables: A, B"))
        self.assertTrue(issubclass(orchestra_sdk.NoEnvironmentVariablesFoundError, Exception))
        self.assertTrue(issubclass(LinkedConnectionNotFoundError, Exception))


# ---------------------------------------------------------------------------------------------
# Configuration and misuse
# ---------------------------------------------------------------------------------------------


class ConfigurationTest(SDKTestCase):
    def test_attributes_come_from_the_environment(self) -> None:
        sdk = OrchestraSDK()
        self.assertEqual(sdk.api_key, API_KEY)
        self.assertEqual(sdk.task_run_id, uuid.UUID(TASK_RUN_ID))
        self.assertEqual(sdk.webhook_url, self.server.url)

    def test_constructor_key_wins_over_the_environment(self) -> None:
        self.assertEqual(OrchestraSDK(api_key="other").api_key, "other")

    def test_default_webhook_url(self) -> None:
        del os.environ["ORCHESTRA_WEBHOOK_URL"]
        self.assertEqual(OrchestraSDK().webhook_url, "https://webhook.getorchestra.io")
        os.environ["ORCHESTRA_WEBHOOK_URL"] = "  "
        self.assertEqual(OrchestraSDK().webhook_url, "https://webhook.getorchestra.io")

    def test_missing_task_run_id_warns_once_and_sends_nothing(self) -> None:
        del os.environ["ORCHESTRA_TASK_RUN_ID"]
        sdk = self.sdk()
        self.assertEqual(self.log.lines, [])  # nothing at construction
        self.assertFalse(sdk.update_task(message="a"))
        self.assertFalse(sdk.update_task(message="b"))
        self.assertEqual(self.server.requests, [])
        warnings = self.log_lines("WARNING")
        self.assertEqual(len(warnings), 1)
        self.assertIn("ORCHESTRA_TASK_RUN_ID is not set", warnings[0])

    def test_the_one_time_warning_is_given_again_after_task_run_id_is_assigned(self) -> None:
        del os.environ["ORCHESTRA_TASK_RUN_ID"]
        sdk = self.sdk()
        self.assertFalse(sdk.update_task(message="a"))
        sdk.task_run_id = TASK_RUN_ID
        self.assertTrue(sdk.update_task(message="b"))
        sdk.task_run_id = None
        self.assertFalse(sdk.update_task(message="c"))
        self.assertFalse(sdk.update_task(message="d"))
        warnings = self.log_lines("WARNING")
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("ORCHESTRA_TASK_RUN_ID is not set", warnings[0])
        self.assertIn("task_run_id was set to None", warnings[1])
        self.assertEqual(self.server.events, [status_event(None, "b")])

    def test_malformed_task_run_id_names_the_variable_and_value(self) -> None:
        os.environ["ORCHESTRA_TASK_RUN_ID"] = "not-a-uuid"
        self.assertFalse(self.sdk().update_task(message="a"))
        self.assertIn("ORCHESTRA_TASK_RUN_ID='not-a-uuid' is not a UUID", self.log_lines("WARNING")[0])

    def test_empty_task_run_id(self) -> None:
        os.environ["ORCHESTRA_TASK_RUN_ID"] = " "
        self.assertFalse(self.sdk().update_task(message="a"))
        self.assertIn("ORCHESTRA_TASK_RUN_ID is empty", self.log_lines("WARNING")[0])

    def test_missing_api_key_warns_and_sends_nothing(self) -> None:
        del os.environ["ORCHESTRA_API_KEY"]
        self.assertFalse(self.sdk().update_task(message="a"))
        self.assertEqual(self.server.requests, [])
        self.assertIn("ORCHESTRA_API_KEY", self.log_lines("WARNING")[0])

    def test_task_run_id_assigned_later_is_used(self) -> None:
        del os.environ["ORCHESTRA_TASK_RUN_ID"]
        sdk = self.sdk()
        sdk.task_run_id = TASK_RUN_ID
        self.assertEqual(sdk.task_run_id, uuid.UUID(TASK_RUN_ID))
        self.assertTrue(sdk.update_task(message="a"))
        self.assertEqual(self.server.events, [status_event(None, "a")])

    def test_assigning_a_malformed_task_run_id_raises(self) -> None:
        with self.assertRaisesRegex(ValueError, "not a UUID"):
            self.sdk().task_run_id = "nope"

    def test_decorated_function_still_runs_without_environment(self) -> None:
        for name in ("ORCHESTRA_TASK_RUN_ID", "ORCHESTRA_API_KEY"):
            del os.environ[name]
        sdk = self.sdk()

        @sdk.run()
        def work() -> int:
            return 7

        self.assertEqual(work(), 7)
        self.assertEqual(self.server.requests, [])

    def test_blanks_around_the_api_key_are_dropped(self) -> None:
        os.environ["ORCHESTRA_API_KEY"] = f"  {API_KEY}\n"
        self.assertTrue(self.sdk().update_task(message="x"))
        self.assertEqual(self.server.requests[0].headers["authorization"], f"Bearer {API_KEY}")

    def test_api_key_that_cannot_go_in_a_header_is_refused_without_showing_it(self) -> None:
        for key in (f"{API_KEY}\nX-Evil: 1", f"{API_KEY}\u2019"):
            with self.subTest(key=repr(key)):
                self.log.lines.clear()
                sdk = self.sdk(api_key=key)
                self.assertFalse(sdk.update_task(message="x"))
                (line,) = self.log_lines("ERROR")
                self.assertIn("the API key has characters that cannot go in an HTTP header", line)
        self.assertEqual(self.server.requests, [])

    def test_repr_hides_the_api_key(self) -> None:
        text = repr(self.sdk())
        self.assert_no_secret(text)
        self.assertIn("api_key=<set>", text)

    def test_bad_constructor_arguments_raise(self) -> None:
        cases: List[Tuple[Dict[str, Any], str]] = [
            ({"timeout": 0}, "timeout"),
            ({"deadline": -1}, "deadline"),
            ({"retries": -1}, "retries"),
            ({"retries": 1.5}, "retries"),
            ({"max_log_bytes": 10}, "max_log_bytes"),
        ]
        for kwargs, pattern in cases:
            with self.subTest(kwargs=kwargs), self.assertRaisesRegex(ValueError, pattern):
                OrchestraSDK(**kwargs)
        with self.assertRaises(TypeError):
            OrchestraSDK(api_key=123)  # type: ignore[arg-type]


class MisuseTest(SDKTestCase):
    def test_update_without_status_or_message(self) -> None:
        with self.assertRaisesRegex(ValueError, "needs a status, a non-empty message, or both"):
            self.sdk().update_task()
        with self.assertRaises(ValueError):
            self.sdk().update_task(message="")

    def test_unknown_status_lists_the_valid_ones(self) -> None:
        with self.assertRaisesRegex(
            ValueError, "unknown status 'DONE'; valid statuses: CANCELLED, FAILED, RUNNING, SUCCEEDED, WARNING"
        ):
            self.sdk().update_task(status="DONE")

    def test_wrong_types(self) -> None:
        for kwargs in ({"status": 3}, {"status": b"RUNNING"}, {"message": 5}, {"message": b"x"}):
            with self.subTest(kwargs=kwargs), self.assertRaises(TypeError):
                self.sdk().update_task(**kwargs)

    def test_misuse_raises_even_without_environment(self) -> None:
        del os.environ["ORCHESTRA_TASK_RUN_ID"]
        with self.assertRaises(ValueError):
            self.sdk().update_task(status="nope")

    def test_empty_or_non_str_output_names_are_misuse(self) -> None:
        for name in ("", "   "):
            with self.subTest(name=name), self.assertRaisesRegex(ValueError, "output name must not be empty"):
                self.sdk().set_output(name, 1)
        with self.assertRaisesRegex(TypeError, "output name must be a str, not int"):
            self.sdk().set_output(3, 1)  # type: ignore[arg-type]
        self.assertEqual(self.server.requests, [])

    def test_output_names_orchestra_may_refuse_are_sent_with_a_warning(self) -> None:
        for name in ("two words", "naïve", "a.b"):
            with self.subTest(name=name):
                self.log.lines.clear()
                self.assertTrue(self.sdk().set_output(name, 1))
                self.assertEqual(
                    self.server.events[-1], event(event_type="SET_OUTPUT", output_name=name, output_value=1)
                )
                (warning,) = self.log_lines("WARNING")
                self.assertIn(f"Output name {name!r} has characters other than letters, digits", warning)

    def test_output_values_that_are_not_json(self) -> None:
        circular: List[Any] = []
        circular.append(circular)
        for value in (float("nan"), float("inf"), object(), {1, 2}, b"bytes", circular):
            with self.subTest(value=type(value).__name__), self.assertRaisesRegex(TypeError, "must be a JSON value"):
                self.sdk().set_output("out", value)
        self.assertEqual(self.server.requests, [])

    def test_valid_output_names(self) -> None:
        for name in ("rows", "ROWS_loaded", "rows-loaded", "_", "rows_2024", "Output_4"):
            self.assertTrue(self.sdk().set_output(name, 1))
        self.assertEqual([e["output_name"] for e in self.server.events][-2:], ["rows_2024", "Output_4"])
        self.assertEqual(self.log_lines("WARNING"), [])


# ---------------------------------------------------------------------------------------------
# Transport: the fault matrix
# ---------------------------------------------------------------------------------------------


class TransportTest(SDKTestCase):
    """The fault matrix: for each fault, the result, the attempts, the deadline and the log line."""

    def expect(self, *, ok: bool, attempts: Optional[int], log: str, **sdk_kwargs: Any) -> float:
        """Send one update; check what the user sees. `log` is in the ERROR line (or, when the
        update got through after a fault, in the DEBUG line about the failed attempt)."""
        sdk = self.sdk(**sdk_kwargs)
        started = time.monotonic()
        self.assertEqual(sdk.update_task(message="hello"), ok)
        elapsed = time.monotonic() - started
        self.assertLessEqual(elapsed, sdk.retry_policy.deadline + 0.5)  # the documented bound
        if attempts is not None:
            self.assertEqual(len(self.server.requests), attempts)
        errors = self.log_lines("ERROR")
        if ok:
            self.assertEqual(errors, [])
            if log:
                self.assertTrue(any(log in line for line in self.log_lines("DEBUG")), self.log.lines)
        else:
            self.assertEqual(len(errors), 1, errors)
            self.assertIn(log, errors[0])
        self.assertEqual(
            {r.body for r in self.server.requests}, {self.server.requests[0].body} if self.server.requests else set()
        )
        return elapsed

    def reset(self) -> None:
        self.server.requests.clear()
        self.log.lines.clear()

    def test_retried_statuses_then_success(self) -> None:
        for status in (500, 502, 503, 504, 408, 429):
            with self.subTest(status=status):
                self.reset()
                self.server.then(reply(status, b'{"error": "busy"}'), reply(status))
                self.expect(ok=True, attempts=3, log=f"attempt 1 failed (HTTP {status}: busy)")

    def test_retries_exhausted_returns_false_and_logs_the_error(self) -> None:
        self.server.default = reply(503, b'{"success": false, "error": "Service unavailable"}')
        self.expect(ok=False, attempts=3, log="after 3 attempts: HTTP 503: Service unavailable.", retries=2)

    def test_client_errors_are_not_retried_and_show_orchestras_error(self) -> None:
        body = json.dumps({"success": False, "error": "Invalid task_run_id", "code": "TASK_NOT_FOUND"}).encode()
        for status in (400, 401, 403, 404, 422):
            with self.subTest(status=status):
                self.reset()
                self.server.then(reply(status, body))
                log = f"HTTP {status}: TASK_NOT_FOUND: Invalid task_run_id (not retried)"
                self.expect(ok=False, attempts=1, log=log)

    def test_non_json_error_body_shows_its_start(self) -> None:
        self.server.then(reply(401, b"<html>\n  Unauthorized   request</html>"))
        self.expect(ok=False, attempts=1, log="HTTP 401: <html> Unauthorized request</html> (not retried)")

    def test_retry_after_seconds_is_honoured(self) -> None:
        self.server.then(reply(429, b"", {"Retry-After": "1"}))
        self.expect(ok=True, attempts=2, log="HTTP 429: (empty body)); retrying in 1.00 s")
        first, second = self.server.requests
        self.assertGreaterEqual(second.arrived - first.arrived, 0.95)

    def test_retry_after_http_date_is_honoured(self) -> None:
        when = email.utils.formatdate(time.time() + 2, usegmt=True)
        self.server.then(reply(503, b"", {"Retry-After": when}))
        self.expect(ok=True, attempts=2, log="attempt 1 failed (HTTP 503")
        first, second = self.server.requests
        self.assertGreaterEqual(second.arrived - first.arrived, 0.9)

    def test_a_retry_after_that_is_not_ascii_digits_is_ignored(self) -> None:
        head = b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: \xb2\r\n\r\n"
        self.server.then(raw(head))
        self.expect(ok=True, attempts=2, log="attempt 1 failed (HTTP 503: (empty body))")

    def test_the_api_key_is_masked_in_an_echoed_error_even_where_it_is_cut(self) -> None:
        # The error text is cut to 200 characters; the key starts at 20 + padding.
        for padding in (0, 170, 176):  # the key whole, cut after 7 of its characters, after 1
            with self.subTest(padding=padding):
                self.reset()
                self.server.then(reply(400, b"x" * padding + f" bad header: Bearer {API_KEY}".encode()))
                self.expect(ok=False, attempts=1, log="HTTP 400: ")
                line = self.log_lines("ERROR")[0]
                self.assertNotIn(API_KEY[:7], line)
                self.assertIn("Bearer ***", line)

    def test_a_short_api_key_does_not_garble_messages(self) -> None:
        self.server.then(reply(400, b"Name or service not known"))
        self.expect(ok=False, attempts=1, log="HTTP 400: Name or service not known", api_key="k")

    def test_retry_after_past_the_deadline_gives_up_at_once(self) -> None:
        self.server.then(reply(429, b"", {"Retry-After": "120"}))
        log = "HTTP 429: (empty body); gave up after 1 attempts, as the next would start past the 3 s deadline."
        elapsed = self.expect(ok=False, attempts=1, log=log, deadline=3.0)
        self.assertLess(elapsed, 1.0)

    def test_connection_refused_is_retried_then_reported(self) -> None:
        os.environ["ORCHESTRA_WEBHOOK_URL"] = f"http://127.0.0.1:{refusing_port(self)}/"
        self.expect(ok=False, attempts=None, log="after 3 attempts: could not connect to 127.0.0.1:", retries=2)
        self.assertIn("refused", self.log_lines("ERROR")[0].lower())

    def test_connection_closed_before_the_status_line_is_retried(self) -> None:
        self.server.then(drop())
        self.expect(ok=True, attempts=2, log="RemoteDisconnected")

    def test_garbled_answer_is_retried(self) -> None:
        self.server.then(raw(b"NOT HTTP AT ALL\r\n\r\n"))
        self.expect(ok=True, attempts=2, log="BadStatusLine")

    def test_reset_after_success_headers_counts_as_delivered(self) -> None:
        self.server.then(reset_after_headers(200))
        self.expect(ok=True, attempts=1, log="")

    def test_reset_after_error_headers_is_retried(self) -> None:
        self.server.then(reset_after_headers(500))
        self.expect(ok=True, attempts=2, log="attempt 1 failed (HTTP 500: partial)")

    def test_truncated_success_body_counts_as_delivered(self) -> None:
        self.server.then(raw(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"succ'))
        self.expect(ok=True, attempts=1, log="")

    def test_server_that_never_answers_is_bounded_by_the_deadline(self) -> None:
        self.server.default = hang()
        self.expect(ok=False, attempts=None, log="no answer within", timeout=0.4, deadline=1.5, retries=10)
        self.assertGreaterEqual(len(self.server.requests), 3)

    def test_every_attempt_starts_before_the_deadline(self) -> None:
        self.server.default = hang()
        self.expect(ok=False, attempts=None, log="no answer within", timeout=0.3, deadline=1.0, retries=50)
        started = self.server.requests[0].arrived
        for request in self.server.requests:
            self.assertLess(request.arrived - started, 1.0)

    def test_error_body_trickling_slower_than_the_timeout(self) -> None:
        self.server.then(trickle(500, interval=0.2))
        self.expect(ok=True, attempts=2, log="attempt 1 failed (HTTP 500: xx", timeout=0.5, deadline=3.0)

    def test_success_body_trickling_is_not_waited_for(self) -> None:
        self.server.then(trickle(200, interval=0.5))
        elapsed = self.expect(ok=True, attempts=1, log="", timeout=0.3, deadline=2.0)
        self.assertLess(elapsed, 0.5)

    def test_very_large_error_response(self) -> None:
        self.server.then(reply(500, b"E" * (8 * 1024 * 1024)))
        self.expect(ok=True, attempts=2, log="attempt 1 failed (HTTP 500: EEEE")

    def test_redirects_are_not_followed(self) -> None:
        other = Recorder()
        self.addCleanup(other.close)
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                self.reset()
                self.server.then(reply(status, b"", {"Location": other.url}))
                log = f"HTTP {status}: redirect to {other.url!r} not followed"
                self.expect(ok=False, attempts=1, log=log)
        self.assertEqual(other.requests, [])

    def test_plain_http_to_a_remote_host_is_refused_before_sending(self) -> None:
        os.environ["ORCHESTRA_WEBHOOK_URL"] = "http://webhook.example.invalid/"
        self.assertFalse(self.sdk().update_task(message="x"))
        (line,) = self.log_lines("ERROR")
        self.assertIn("https is required", line)

    def test_loopback_forms_are_allowed_over_http(self) -> None:
        for host in ("localhost", "127.0.0.1", "127.1.2.3", "[::1]"):
            with self.subTest(host=host):
                url = f"http://{host}:1/"
                self.assertIsNone(orchestra_sdk._webhook_url_problem(url))

    def test_loopback_ignores_proxy_variables(self) -> None:
        os.environ["HTTP_PROXY"] = os.environ["http_proxy"] = f"http://127.0.0.1:{refusing_port(self)}"
        os.environ.pop("NO_PROXY", None)
        os.environ.pop("no_proxy", None)
        self.assertTrue(self.sdk().update_task(message="x"))
        self.assertEqual(len(self.server.requests), 1)

    def test_remote_host_uses_the_proxy_variables(self) -> None:
        os.environ["HTTPS_PROXY"] = os.environ["https_proxy"] = self.server.url.rsplit("/hooks", 1)[0]
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = ""
        os.environ["ORCHESTRA_WEBHOOK_URL"] = "https://webhook.example.invalid/"
        self.server.default = reply(403, b'{"error": "proxy says no"}')
        self.assertFalse(self.sdk(retries=0).update_task(message="x"))
        (request,) = self.server.requests  # the proxy got the CONNECT; nothing else left the machine
        self.assertEqual(request.path, "webhook.example.invalid:443")

    def test_no_record_at_debug_level_contains_the_api_key(self) -> None:
        self.server.then(reply(500), reply(401, b'{"error": "bad key"}'))
        self.sdk().update_task(message="x")
        self.sdk().update_task(message="x")
        self.assertTrue(self.log.lines)
        for line in self.log.lines:
            self.assert_no_secret(line)

    def test_credentials_in_the_webhook_url_are_refused_and_not_shown(self) -> None:
        os.environ["ORCHESTRA_WEBHOOK_URL"] = "https://alice:hunter2@webhook.example.invalid/x"
        sdk = self.sdk()
        self.assertFalse(sdk.update_task(message="x"))
        line = self.log_lines("ERROR")[0]
        self.assertIn("carries credentials", line)
        self.assertNotIn("hunter2", line + repr(sdk))
        self.assertNotIn("alice", line + repr(sdk))

    def test_bad_webhook_urls_return_false_with_a_reason(self) -> None:
        cases = {
            "/relative/path": "absolute https://",
            "ftp://host/x": "absolute https://",
            "https://hôst.example/": "not ASCII",
            "https://host:notaport/": "malformed",
        }
        for url, reason in cases.items():
            with self.subTest(url=url):
                self.log.lines.clear()
                os.environ["ORCHESTRA_WEBHOOK_URL"] = url
                self.assertFalse(self.sdk().update_task(message="x"))
                self.assertIn(reason, self.log_lines("ERROR")[0])
        self.assertEqual(self.server.requests, [])

    def test_a_url_with_a_blank_or_control_character_inside_is_refused_before_connecting(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)
        base = f"127.0.0.1:{listener.getsockname()[1]}"
        for url in (
            f"ht\ttp://{base}/h",
            f"http://{base}/h\toks",
            f"http://{base}/h\r\nX-Extra: 1",
            f"http://{base}/a b",
        ):
            for head_start in (False, True):
                with self.subTest(url=url, head_start=head_start):
                    self.log.lines.clear()
                    os.environ["ORCHESTRA_WEBHOOK_URL"] = url
                    sdk = self.sdk()
                    sdk._transport.head_start = head_start
                    self.assertFalse(sdk.update_task(message="x"))
                    self.assertIn("has a space or a control character in it", self.log_lines("ERROR")[0])
                    import select

                    self.assertEqual(select.select([listener], [], [], 0)[0], [])  # nobody connected

    def test_an_opener_that_finds_no_handler_is_a_failed_attempt(self) -> None:
        class NoHandler:
            def open(self, request: Any, timeout: float) -> None:
                return None

        attempt = orchestra_sdk._attempt(NoHandler(), None, 1.0, API_KEY, "h:1")
        self.assertEqual(
            attempt, orchestra_sdk._Attempt(False, "unexpected error: urllib found no handler for the URL to h:1")
        )

    def test_http_client_trims_blanks_around_its_url_as_orchestra_sdk_does(self) -> None:
        client = orchestra_sdk.HTTPClient(API_KEY, TASK_RUN_ID, f"  {self.server.url}\n")
        self.assertTrue(client.request("UPDATE_STATUS", json={"message": "x"}))
        self.assertEqual(self.server.events, [status_event(None, "x")])

    def test_blanks_around_a_url_set_on_the_object_are_trimmed(self) -> None:
        sdk = self.sdk()
        sdk.webhook_url = f" {self.server.url}\n"
        self.assertEqual(sdk.webhook_url, self.server.url)
        self.assertTrue(sdk.update_task(message="x"))

    def test_plain_http_to_a_bracketed_loopback_address_gives_no_clear_text_warning(self) -> None:
        self.assertIsNone(self.sdk()._url_problem("http://[::1]:8080/hooks"))
        self.assertEqual(self.log_lines("WARNING"), [])

    def test_one_megabyte_message_is_sent(self) -> None:
        message = "m" * (1024 * 1024)
        self.assertTrue(self.sdk().update_task(message=message))
        self.assertEqual(self.server.events[0]["message"], message)


class PermanentFailureTest(SDKTestCase):
    """A refusal that will not change stops the run's reporting; an unreachable webhook costs less
    after the first update that gave up, except for the final status."""

    def decorated_task(self, sdk: OrchestraSDK) -> None:
        @sdk.run()
        def job() -> None:
            sdk.update_task(message="halfway")
            sdk.set_output("rows", 1)
            sdk.update_task(message="almost")

        job()

    def test_a_wrong_key_is_said_once_with_what_to_check_and_nothing_more_is_sent(self) -> None:
        self.server.default = reply(401, b'{"success": false, "error": "Invalid API key"}')
        self.decorated_task(self.sdk())
        self.assertEqual(len(self.server.requests), 1)
        (error,) = self.log_lines("ERROR")
        self.assertIn("HTTP 401: Invalid API key (not retried). Orchestra refused the API key (HTTP 401)", error)
        self.assertIn("check ORCHESTRA_API_KEY", error)

    def test_an_unknown_run_is_said_once_with_what_to_check(self) -> None:
        self.server.default = reply(
            404, b'{"success": false, "error": "Invalid task_run_id", "code": "TASK_NOT_FOUND"}'
        )
        self.decorated_task(self.sdk())
        self.assertEqual(len(self.server.requests), 1)
        (error,) = self.log_lines("ERROR")
        self.assertIn(f"Orchestra does not know task run {TASK_RUN_ID}: check ORCHESTRA_TASK_RUN_ID", error)

    def test_a_new_run_id_or_key_is_tried_again(self) -> None:
        sdk = self.sdk()
        self.server.then(reply(401))
        self.assertFalse(sdk.update_task(message="a"))
        self.assertFalse(sdk.update_task(message="b"))
        sdk.api_key = API_KEY + "-new"
        self.assertTrue(sdk.update_task(message="c"))
        self.assertEqual([e["message"] for e in self.server.events], ["a", "c"])

    def test_after_an_update_gave_up_the_next_get_one_attempt_but_the_final_status_all(self) -> None:
        self.server.default = reply(503, b"down")
        self.decorated_task(self.sdk(retries=2))
        messages = [r.json.get("message") for r in self.server.requests]
        started, final = "job started.", "job succeeded."
        self.assertEqual(messages, [started] * 3 + ["halfway", None, "almost"] + [final] * 3)
        self.assertEqual(len(self.log_lines("ERROR")), 5)

    def test_one_delivered_update_restores_the_whole_budget(self) -> None:
        sdk = self.sdk(retries=2)
        self.server.then(reply(503), reply(503), reply(503), reply(200), reply(503), reply(503), reply(503))
        self.assertFalse(sdk.update_task(message="a"))  # three attempts
        self.assertTrue(sdk.update_task(message="b"))  # one attempt, delivered
        self.assertFalse(sdk.update_task(message="c"))  # three attempts again
        self.assertEqual([r.json["message"] for r in self.server.requests], ["a"] * 3 + ["b"] + ["c"] * 3)


class DeadlineTest(SDKTestCase):
    """Whatever the server does, an update ends within its deadline (plus a small margin)."""

    def test_a_status_line_trickled_byte_by_byte_cannot_stretch_an_update(self) -> None:
        self.server.default = trickle_head(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 200, interval=0.1)
        elapsed = self.expect_failure(timeout=0.5, deadline=1.0)
        self.assertGreater(elapsed, 0.45)

    def test_headers_trickled_byte_by_byte_cannot_stretch_an_update(self) -> None:
        self.server.default = trickle_head(b"H" * 300, interval=0.2)
        self.expect_failure(timeout=0.5, deadline=1.2)

    def test_no_attempt_starts_after_the_deadline_when_a_retry_sleep_overshoots(self) -> None:
        self.server.default = reply(503, b"busy")
        real_sleep = time.sleep
        with mock.patch.object(time, "sleep", lambda seconds: real_sleep(seconds + 0.6)):
            self.assertFalse(self.sdk(timeout=1.0, deadline=0.5, backoff=0.2, retries=5).update_task(message="x"))
        (error,) = self.log_lines("ERROR")
        self.assertIn("the 0.5 s deadline passed", error)
        self.assertEqual(len(self.server.requests), 1)

    def test_interim_answers_before_the_final_one_are_skipped(self) -> None:
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        self.server.then(raw(hints + hints + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
        self.assertTrue(self.sdk().update_task(message="x"))
        self.assertEqual(len(self.server.requests), 1)

    def test_a_dns_lookup_that_hangs_is_given_up_at_the_timeout(self) -> None:
        # getaddrinfo ignores socket timeouts; a resolver that never answers is simulated here.
        def hanging_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
            self.server.stopping.wait(WAIT)
            raise OSError("gave up")

        started = time.monotonic()
        with mock.patch("socket.getaddrinfo", hanging_getaddrinfo), self.assertRaisesRegex(OSError, "DNS look-up"):
            orchestra_sdk._connect(("orchestra.invalid", 443), 0.3)
        self.assertLess(time.monotonic() - started, 2.0)

    def test_an_answer_before_the_body_is_read_is_the_answer(self) -> None:
        def answer_at_once(connection: socket.socket) -> None:
            connection.recv(4096)  # the headers only: not the 8 MB that follow
            body = b'{"success": false, "error": "Invalid API key"}'
            connection.sendall(b"HTTP/1.1 401 X\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.raw_server(answer_at_once)
        self.assertFalse(self.sdk().update_task(message="m" * 8_000_000))
        (error,) = self.log_lines("ERROR")
        self.assertIn("HTTP 401: Invalid API key (not retried). Orchestra refused the API key", error)

    def test_a_server_that_never_reads_cannot_stretch_a_large_update(self) -> None:
        def never_read(connection: socket.socket) -> None:
            self.server.stopping.wait(WAIT)

        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.raw_server(never_read)
        self.expect_failure(timeout=1.0, deadline=1.0, retries=0)

    def test_a_flood_of_interim_answers_is_a_failed_attempt_and_retried(self) -> None:
        self.server.then(raw(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 25))
        self.assertTrue(self.sdk().update_task(message="x"))
        self.assertEqual(len(self.server.requests), 2)

    def expect_failure(self, **policy: float) -> float:
        sdk = self.sdk(**policy)
        started = time.monotonic()
        self.assertFalse(sdk.update_task(message="x"))
        elapsed = time.monotonic() - started
        self.assertLessEqual(elapsed, sdk.retry_policy.deadline + 0.5)
        self.assertEqual(len(self.log_lines("ERROR")), 1)
        return elapsed


class SnapshotTest(SDKTestCase):
    def test_a_url_changed_by_another_thread_never_receives_the_key(self) -> None:
        refused = Recorder()  # loopback, but named with credentials: the SDK must never send there
        self.addCleanup(refused.close)
        bad_url = refused.url.replace("http://", "http://user:pw@")
        sdk = self.sdk(retries=0)
        good_url, stop = sdk.webhook_url, threading.Event()

        def flip() -> None:
            while not stop.is_set():
                sdk.webhook_url = bad_url
                sdk.webhook_url = good_url

        flipper = threading.Thread(target=flip)
        flipper.start()
        try:
            delivered = sum(sdk.update_task(message=f"m{n}") for n in range(300))
        finally:
            stop.set()
            flipper.join(WAIT)
        self.assertEqual(refused.requests, [])
        self.assertEqual(len(self.server.requests), delivered)


class KeepAliveTest(SDKTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server.keep_alive = True

    def test_one_connection_for_a_hundred_updates(self) -> None:
        sdk = self.sdk()
        self.assertTrue(all(sdk.update_task(message=f"m{n}") for n in range(100)))
        self.assertEqual((self.server.connections, len(self.server.requests)), (1, 100))
        self.assertEqual(sdk._transport.connections_opened, 1)

    def test_an_answer_with_connection_close_means_a_new_connection_next_time(self) -> None:
        sdk = self.sdk()
        self.server.then(reply(200), reply(200))  # scripted answers say Connection: close
        self.assertTrue(all(sdk.update_task(message=f"m{n}") for n in range(4)))
        self.assertEqual(self.server.connections, 3)

    def test_a_connection_the_server_closed_while_idle_is_not_reused(self) -> None:
        sdk = self.sdk(retries=0)
        self.server.then(lambda handler, server: kept_alive_reply(handler, server))  # then closes, idle
        self.assertTrue(sdk.update_task(message="a"))
        self.assertTrue(sdk.update_task(message="b"))
        self.assertEqual((self.server.connections, len(self.server.requests)), (2, 2))
        self.assertEqual(self.log_lines("ERROR"), [])

    def test_a_reused_connection_dropped_before_any_answer_is_retried_at_once_uncounted(self) -> None:
        sdk = self.sdk(retries=0)
        self.assertTrue(sdk.update_task(message="a"))
        self.server.then(drop())  # the kept connection dies as the next request arrives
        self.assertTrue(sdk.update_task(message="b"))
        self.assertEqual([r.json["message"] for r in self.server.requests], ["a", "b", "b"])
        self.assertEqual(self.server.connections, 2)
        self.assertFalse(any("attempt 1 failed" in line for line in self.log.lines), self.log.lines)

    def test_a_connection_idle_too_long_is_not_reused(self) -> None:
        sdk = self.sdk()
        with mock.patch.object(orchestra_sdk, "KEEP_ALIVE_IDLE", 0.05):
            self.assertTrue(sdk.update_task(message="a"))
            time.sleep(0.1)
            self.assertTrue(sdk.update_task(message="b"))
        self.assertEqual(self.server.connections, 2)

    def test_threads_never_share_a_connection_at_once(self) -> None:
        sdk = self.sdk()
        results: List[bool] = []
        threads = [
            threading.Thread(target=lambda: results.extend(sdk.update_task(message="t") for _ in range(50)))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        self.assertEqual(results.count(True), 400)
        self.assertLessEqual(self.server.connections, 8)
        self.assertEqual(len(self.server.requests), 400)

    @unittest.skipUnless(hasattr(os, "fork"), "os.fork")
    def test_a_child_forked_while_another_thread_holds_the_pool_sends_all_the_same(self) -> None:
        code = textwrap.dedent(
            """\
            import os, threading, warnings, orchestra_sdk
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread: on purpose here
            sdk = orchestra_sdk.OrchestraSDK(timeout=2, deadline=3)
            assert sdk.update_task(message="parent")
            held, release = threading.Event(), threading.Event()
            def hold():
                with sdk._transport._lock:
                    held.set()
                    release.wait(5)
            threading.Thread(target=hold).start()
            held.wait(5)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if sdk.update_task(message="child") else 1)
            release.set()
            _, status = os.waitpid(pid, 0)
            print(status >> 8)
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url))
        self.assertEqual(result.stdout, "0\n", result.stderr)
        self.assertEqual([e["message"] for e in self.server.events], ["parent", "child"])

    @unittest.skipUnless(hasattr(os, "fork"), "os.fork")
    def test_a_forked_child_never_uses_the_parents_connection(self) -> None:
        code = textwrap.dedent(
            """\
            import os, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            assert sdk.update_task(message="parent 1")
            pid = os.fork()
            if pid == 0:
                ok = sdk.update_task(message="child")
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            assert sdk.update_task(message="parent 2")
            print(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8)
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url))
        self.assertEqual(result.stdout, "0\n", result.stderr)
        self.assertEqual([e["message"] for e in self.server.events], ["parent 1", "child", "parent 2"])
        self.assertEqual(self.server.connections, 2)  # the parent's, kept; the child's own

    def test_debug_output_of_http_client_never_shows_the_key(self) -> None:
        import http.client

        self.addCleanup(setattr, http.client.HTTPConnection, "debuglevel", http.client.HTTPConnection.debuglevel)
        http.client.HTTPConnection.debuglevel = 1
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            self.assertTrue(self.sdk().update_task(message="x"))
        self.assertNotIn(API_KEY, printed.getvalue())
        self.assertEqual(printed.getvalue(), "")


class HeadStartTest(SDKTestCase):
    """A cold process's first connection, opened in a thread while urllib.request loads."""

    def sdk(self, **kwargs: Any) -> OrchestraSDK:
        sdk = super().sdk(**kwargs)
        sdk._transport.head_start = True  # this process loaded urllib.request long ago
        return sdk

    def test_a_fresh_process_sends_its_first_update_on_the_connection_opened_ahead(self) -> None:
        self.server.keep_alive = True
        code = textwrap.dedent(
            """\
            import logging, sys
            logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(threadName)s: %(message)s")
            import orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            print(sdk.update_task(message="one"), sdk.update_task(message="two"), sdk._transport.connections_opened)
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url))
        lines = result.stdout.splitlines()
        self.assertIn(f"MainThread: connecting to {self.server.url} while urllib.request loads", lines)
        self.assertEqual(lines[-1], "True True 1", result.stderr)
        self.server.wait_for_requests(2)
        self.assertEqual(self.server.statuses(), [(None, "one"), (None, "two")])
        self.assertEqual(self.server.connections, 1)  # the one opened ahead is the one used

    def test_a_process_that_loaded_urllib_request_connects_as_usual(self) -> None:
        sdk = OrchestraSDK()
        self.assertIsNone(sdk._transport.head_start)
        self.assertTrue(sdk.update_task(message="x"))
        self.assertFalse(any("while urllib.request loads" in line for line in self.log.lines))

    def test_a_refused_connection_reads_the_same_with_or_without_a_head_start(self) -> None:
        os.environ["ORCHESTRA_WEBHOOK_URL"] = f"http://127.0.0.1:{refusing_port(self)}/"
        errors = []
        for head_start in (False, True):
            self.log.lines.clear()
            sdk = self.sdk(retries=1)
            sdk._transport.head_start = head_start
            self.assertFalse(sdk.update_task(message="x"))
            self.assertEqual(any("while urllib.request loads" in line for line in self.log.lines), head_start)
            errors.append(self.log_lines("ERROR"))
        self.assertEqual(errors[0], errors[1])
        self.assertIn("after 2 attempts: could not connect to 127.0.0.1", errors[1][0])

    def test_a_handshake_that_never_ends_is_bounded_by_the_attempt(self) -> None:
        def silent(connection: socket.socket) -> None:
            self.server.stopping.wait(WAIT)  # accepts, never says a word: the handshake never ends

        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.raw_server(silent).replace("http://", "https://")
        sdk = self.sdk(timeout=0.5, deadline=1.0, retries=5, backoff=0.05)
        started = time.monotonic()
        self.assertFalse(sdk.update_task(message="x"))
        self.assertLessEqual(time.monotonic() - started, 1.5)
        (error,) = self.log_lines("ERROR")
        self.assertRegex(error, r"could not connect to 127\.0\.0\.1:\d+: no answer within 0\.\d+ s")

    def test_two_first_updates_in_two_threads_open_one_connection_ahead(self) -> None:
        self.server.keep_alive = True
        sdk = self.sdk()
        results: List[bool] = []
        threads = [threading.Thread(target=lambda: results.append(sdk.update_task(message="t"))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        self.assertEqual(results, [True, True])
        self.assertEqual(sum("while urllib.request loads" in line for line in self.log.lines), 1)
        self.assertLessEqual(self.server.connections, 2)
        self.assertEqual(sdk._transport.connections_opened, self.server.connections)

    def test_a_proxied_webhook_gets_no_connection_ahead(self) -> None:
        os.environ["HTTPS_PROXY"] = os.environ["https_proxy"] = self.server.url.rsplit("/hooks", 1)[0]
        os.environ["ORCHESTRA_WEBHOOK_URL"] = "https://webhook.example.invalid/"
        self.server.default = reply(403, b'{"error": "proxy says no"}')
        self.assertFalse(self.sdk(retries=0).update_task(message="x"))
        (request,) = self.server.requests  # the proxy got the CONNECT; nothing else left the machine
        self.assertEqual(request.path, "webhook.example.invalid:443")
        self.assertFalse(any("while urllib.request loads" in line for line in self.log.lines))

    def test_only_a_direct_connection_is_opened_ahead(self) -> None:
        for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
            del os.environ[name]
        self.assertTrue(orchestra_sdk._goes_direct("webhook.getorchestra.io") or sys.platform in ("darwin", "win32"))
        os.environ["no_proxy"] = "example.com"
        self.assertFalse(orchestra_sdk._goes_direct("webhook.getorchestra.io"))
        self.assertTrue(orchestra_sdk._goes_direct("127.0.0.1"))  # urllib skips proxies for loopback here

    def test_the_target_is_read_as_urllib_and_http_client_read_it(self) -> None:
        import http.client
        import urllib.request

        urls = [
            "https://webhook.getorchestra.io/",
            "https://Webhook.GetOrchestra.io:8443/x?y#z",
            "https://h:/",
            "http://127.0.0.1:9/hooks",
            "https://[::1]:8443/",
            "https://[::1]/",
            "https://h?x=1",
            "https://h#frag",
            "HTTPS://h/",
        ]
        for url in urls:
            with self.subTest(url=url):
                https = url.lower().startswith("https")
                kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
                conn = kind(urllib.request.Request(url).host)
                self.assertEqual(orchestra_sdk._host_and_port(url), (https, conn.host, conn.port))
        for url in ("https://user@h/", "https://h%41/", "https://h:12x/", "https:///x"):
            with self.subTest(url=url):
                self.assertIsNone(orchestra_sdk._host_and_port(url))

    @unittest.skipUnless(hasattr(os, "fork"), "os.fork")
    def test_a_child_forked_while_the_connection_is_opened_ahead_opens_its_own(self) -> None:
        self.server.keep_alive = True
        code = textwrap.dedent(
            """\
            import os, warnings, orchestra_sdk
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with a thread: on purpose here
            sdk = orchestra_sdk.OrchestraSDK(timeout=2, deadline=3)
            transport = sdk._transport
            transport._start_head_start(os.environ["ORCHESTRA_WEBHOOK_URL"], 2.0)
            assert transport._head is not None
            pid = os.fork()
            if pid == 0:
                os._exit(0 if sdk.update_task(message="child") else 1)
            _, status = os.waitpid(pid, 0)
            assert sdk.update_task(message="parent")
            print(status >> 8, transport.connections_opened)
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url))
        self.assertEqual(result.stdout, "0 1\n", result.stderr)
        self.server.wait_for_requests(2)
        self.assertEqual([e["message"] for e in self.server.events], ["child", "parent"])
        self.assertEqual(self.server.connections, 2)  # the parent's, opened ahead; the child's own

    def test_a_head_start_no_attempt_took_is_closed_with_its_update(self) -> None:
        seen: List[str] = []

        def record(connection: socket.socket) -> None:
            connection.settimeout(WAIT)
            if not connection.recv(65536):
                seen.append("closed unused")
                return
            seen.append("answered")
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.raw_server(record)
        sdk = self.sdk(retries=0)
        no_attempt = orchestra_sdk._Delivery(False, orchestra_sdk._Attempt(False, "no attempt was made"), "x")
        with mock.patch.object(orchestra_sdk, "_post_event", return_value=no_attempt):  # the deadline passed first
            self.assertFalse(sdk.update_task(message="x"))
        self.assertIsNone(sdk._transport._head)
        self.assertTrue(sdk.update_task(message="y"))
        deadline = time.monotonic() + WAIT  # the thread closes it once connected: maybe after "y"
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(sorted(seen), ["answered", "closed unused"])  # "y" did not go on the one opened ahead

    def test_a_handshake_cut_short_by_a_sigterm_ends_the_connect_thread_too(self) -> None:
        def silent(connection: socket.socket) -> None:
            self.server.stopping.wait(WAIT)

        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.raw_server(silent).replace("http://", "https://")
        sdk = self.sdk(timeout=8.0, deadline=9.0, retries=0)
        threading.Timer(0.3, sdk._hurry).start()  # what the SIGTERM handler does
        with mock.patch.object(orchestra_sdk, "HURRY_SECONDS", 0.2):
            self.assertFalse(sdk.update_task(message="x"))
        # Gone when the update returns: a fork right after must find no thread of ours.
        self.assertNotIn("orchestra-sdk-connect", [t.name for t in threading.enumerate()])

    def test_a_signal_while_the_head_start_starts_leaves_the_next_update_unharmed(self) -> None:
        sdk = self.sdk(timeout=3.0, deadline=4.0)
        interrupted = mock.patch.object(orchestra_sdk._HeadStart, "start", side_effect=SystemExit(143))
        with interrupted, self.assertRaises(SystemExit):  # what the SIGTERM handler raises, then
            sdk.update_task(message="running")
        self.assertIsNone(sdk._transport._head)
        started = time.monotonic()
        self.assertTrue(sdk.update_task("CANCELLED", message="cancelled"))
        self.assertLess(time.monotonic() - started, 2.0)  # not after waiting for a thread that never ran
        self.assertEqual(self.server.statuses(), [("CANCELLED", "cancelled")])

    def test_a_head_start_whose_thread_never_ran_is_not_waited_for(self) -> None:
        head = orchestra_sdk._HeadStart(False, "127.0.0.1", 9, None, 5.0)  # never started
        started = time.monotonic()
        self.assertIsNone(head.take(lambda: 5.0 - (time.monotonic() - started)))
        self.assertLess(time.monotonic() - started, 2.0)

    def test_an_update_from_an_atexit_handler_reaches_a_webhook_named_by_host(self) -> None:
        # Python 3.12 starts no thread at shutdown: the DNS look-up and the head start run inline.
        code = textwrap.dedent(
            """\
            import atexit, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK(timeout=2, deadline=3)
            atexit.register(lambda: print(sdk.update_task("SUCCEEDED", message="from atexit")))
            """
        )
        url = self.server.url.replace("127.0.0.1", "localhost")
        result = run_python(code, env=orchestra_env(url))
        self.assertEqual((result.stdout, result.stderr), ("True\n", ""))
        self.assertEqual(self.server.statuses(), [("SUCCEEDED", "from atexit")])


class RetryPolicyTest(unittest.TestCase):
    def test_backoff_doubles_with_jitter_and_a_cap(self) -> None:
        policy = orchestra_sdk.RetryPolicy(backoff=0.5, backoff_max=3.0)
        self.assertEqual(policy.backoff_delay(1, 0.0), 0.25)
        self.assertEqual(policy.backoff_delay(2, 0.999999), 0.999999 * 0.5 + 0.5)
        self.assertEqual(policy.backoff_delay(10, 0.0), 1.5)

    def test_policy_validates_itself_and_copies(self) -> None:
        bad: List[Tuple[Dict[str, Any], str]] = [
            ({"timeout": 0}, "timeout must be a number of seconds > 0"),
            ({"deadline": "5"}, "deadline must be a number of seconds > 0"),
            ({"retries": -1}, "retries must be an int >= 0"),
            ({"retries": True}, "retries must be an int >= 0"),
            ({"backoff": float("nan")}, "backoff must be a number of seconds >= 0"),
            ({"backoff_max": -1}, "backoff_max must be a number of seconds >= 0"),
            ({"retry_statuses": {503, "500"}}, "retry_statuses must be HTTP statuses"),
            ({"retry_statuses": 503}, "retry_statuses must be HTTP statuses"),
        ]
        for kwargs, message in bad:
            with self.subTest(**{k: repr(v) for k, v in kwargs.items()}), self.assertRaisesRegex(ValueError, message):
                orchestra_sdk.RetryPolicy(**kwargs)
        policy = orchestra_sdk.RetryPolicy(timeout=2, retry_statuses=frozenset({503}))
        self.assertEqual((policy.timeout, policy.retry_statuses), (2.0, frozenset({503})))
        for clone in (copy.copy(policy), copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
            self.assertEqual(clone, policy)
        with self.assertRaises(AttributeError):
            policy.retries = 9  # type: ignore[misc]

    def test_the_client_takes_its_defaults_from_the_policy(self) -> None:
        self.assertEqual(OrchestraSDK(api_key="k").retry_policy, orchestra_sdk.RetryPolicy())
        given = orchestra_sdk.RetryPolicy(retries=1, backoff_max=2.0)
        sdk = OrchestraSDK(api_key="k", retry_policy=given, timeout=3)
        self.assertEqual(sdk.retry_policy, orchestra_sdk.RetryPolicy(retries=1, backoff_max=2.0, timeout=3.0))
        with self.assertRaisesRegex(ValueError, "retries must be an int >= 0"):
            OrchestraSDK(api_key="k", retry_policy=given, retries=-2)
        with self.assertRaisesRegex(TypeError, "retry_policy must be a RetryPolicy, not dict"):
            sdk.retry_policy = {"retries": 1}  # type: ignore[assignment]
        with self.assertRaisesRegex(TypeError, "retry_policy must be a RetryPolicy, not int"):
            OrchestraSDK(api_key="k", retry_policy=3)  # type: ignore[arg-type]

    def test_retry_decisions(self) -> None:
        policy = orchestra_sdk.RetryPolicy(retries=2, backoff=1.0, backoff_max=8.0)
        Attempt = orchestra_sdk._Attempt
        network = Attempt(False, "reset", retryable_network_error=True)
        self.assertEqual(policy.next_wait(1, network, 30.0, 0.0), (0.5, ""))
        self.assertEqual(policy.next_wait(2, network, 30.0, 0.0), (1.0, ""))
        self.assertEqual(policy.next_wait(3, network, 30.0, 0.0), (None, "exhausted"))
        self.assertEqual(policy.next_wait(1, Attempt(False, "cert"), 30.0, 0.0), (None, "final"))
        self.assertEqual(policy.next_wait(1, Attempt(False, "401", 401), 30.0, 0.0), (None, "final"))
        self.assertEqual(policy.next_wait(1, Attempt(False, "503", 503, retry_after=4.0), 30.0, 0.0), (4.0, ""))
        self.assertEqual(policy.next_wait(1, Attempt(False, "503", 503, retry_after=4.0), 3.0, 0.0), (None, "deadline"))

    def test_retry_after_parsing(self) -> None:
        self.assertIsNone(orchestra_sdk._parse_retry_after("\xb2", 0.0))  # '²'.isdigit() is true
        self.assertIsNone(orchestra_sdk._parse_retry_after("\u0663", 0.0))  # an Arabic-Indic 3
        now = 1_700_000_000.0
        self.assertEqual(orchestra_sdk._parse_retry_after("7", now), 7.0)
        self.assertEqual(orchestra_sdk._parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now), 30.0)
        self.assertEqual(orchestra_sdk._parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now), 0.0)
        self.assertIsNone(orchestra_sdk._parse_retry_after("soon", now))
        self.assertIsNone(orchestra_sdk._parse_retry_after(None, now))


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------


@unittest.skipUnless(shutil.which("openssl"), "the openssl command is needed to make a certificate")
class TLSTest(SDKTestCase):
    def setUp(self) -> None:
        super().setUp()
        import ssl

        folder = temp_folder(self)
        self.cert = os.path.join(folder, "cert.pem")
        key = os.path.join(folder, "key.pem")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                key,
                "-out",
                self.cert,
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.server.socket = context.wrap_socket(self.server.server.socket, server_side=True)
        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.server.url.replace("http://", "https://")

    def test_unverifiable_certificate_is_refused_and_not_retried(self) -> None:
        os.environ.pop("SSL_CERT_FILE", None)
        self.assertFalse(self.sdk().update_task(message="x"))
        (line,) = self.log_lines("ERROR")
        self.assertIn("certificate could not be verified", line)
        self.assertIn("not retried", line)

    def test_certificate_named_by_ssl_cert_file_is_trusted(self) -> None:
        os.environ["SSL_CERT_FILE"] = self.cert
        self.assertIsNone(orchestra_sdk._hashed_ca_directory())  # an explicit file: the full store reads it
        self.assertTrue(self.sdk().update_task(message="x"))
        self.assertEqual(self.server.events, [status_event(None, "x")])

    def hashed_directory(self, *certificates: str) -> str:
        """A CA directory as c_rehash makes it: each certificate under <subject hash>.0."""
        folder = temp_folder(self)
        for certificate in certificates:
            digest = subprocess.run(
                ["openssl", "x509", "-hash", "-noout", "-in", certificate], capture_output=True, text=True, timeout=WAIT
            ).stdout.strip()
            shutil.copy(certificate, os.path.join(folder, f"{digest}.0"))
        return folder

    def other_ca(self) -> str:
        folder = temp_folder(self)
        cert = os.path.join(folder, "other.pem")
        key = os.path.join(folder, "k.pem")
        args = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert]
        subprocess.run(
            [*args, "-days", "1", "-subj", "/CN=localhost"],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        return cert

    def handshake_with_default_context(self) -> bool:
        import ssl

        port = int(self.server.url.split(":")[2].split("/")[0])
        try:
            with socket.create_connection(("127.0.0.1", port), WAIT) as sock:
                ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1").close()
        except ssl.SSLCertVerificationError:
            return False
        return True

    def test_lazy_lookups_accept_what_the_default_context_accepts(self) -> None:
        os.environ.pop("SSL_CERT_FILE", None)
        os.environ["SSL_CERT_DIR"] = self.hashed_directory(self.cert)
        self.assertEqual(orchestra_sdk._hashed_ca_directory(), os.environ["SSL_CERT_DIR"])
        self.assertTrue(self.handshake_with_default_context())
        sdk = self.sdk()
        self.assertTrue(sdk.update_task(message="x"))
        trust = sdk._transport._trust
        assert trust is not None
        self.assertTrue(trust.lazy)  # verified by a lazy look-up, not the full store

    def test_lazy_lookups_refuse_what_the_default_context_refuses(self) -> None:
        os.environ.pop("SSL_CERT_FILE", None)
        os.environ["SSL_CERT_DIR"] = self.hashed_directory(self.other_ca())
        self.assertFalse(self.handshake_with_default_context())
        sdk = self.sdk()
        self.assertFalse(sdk.update_task(message="x"))
        (line,) = self.log_lines("ERROR")
        self.assertIn("certificate could not be verified", line)
        self.assertEqual(self.server.requests, [])

    def test_a_failed_lazy_lookup_is_tried_once_more_with_the_full_store(self) -> None:
        import ssl

        os.environ.pop("SSL_CERT_FILE", None)
        trust = orchestra_sdk._TrustStore(
            capath=self.hashed_directory(self.other_ca()), full=lambda: ssl.create_default_context(cafile=self.cert)
        )
        sdk = self.sdk(retries=0)
        sdk._transport = orchestra_sdk._Transport(trust)
        self.assertTrue(sdk.update_task(message="x"))
        self.assertFalse(trust.lazy)
        self.assertTrue(sdk.update_task(message="y"))
        self.assertEqual([e["message"] for e in self.server.events], ["x", "y"])
        self.assertEqual(self.log_lines("ERROR"), [])

    def test_a_directory_that_is_not_hashed_is_not_used_lazily(self) -> None:
        os.environ.pop("SSL_CERT_FILE", None)
        folder = temp_folder(self)
        shutil.copy(self.cert, os.path.join(folder, "ca.pem"))
        os.environ["SSL_CERT_DIR"] = folder
        self.assertIsNone(orchestra_sdk._hashed_ca_directory())


class TLSHeadStartTest(TLSTest):
    """The same, with the first connection's handshake done by the head start's thread."""

    def setUp(self) -> None:
        super().setUp()
        patcher = mock.patch.object(orchestra_sdk._Transport, "head_start", True)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.addCleanup(self.assert_head_start_used)

    def assert_head_start_used(self) -> None:
        if any(line.startswith("DEBUG: POST ") for line in self.log.lines):
            self.assertTrue(any("while urllib.request loads" in line for line in self.log.lines), self.log.lines)


# ---------------------------------------------------------------------------------------------
# run(): decorator, context managers, outcomes, steps
# ---------------------------------------------------------------------------------------------


class RunTest(SDKTestCase):
    def test_decorator_reports_running_then_succeeded_and_returns_the_value(self) -> None:
        sdk = self.sdk()

        @sdk.run()
        def my_function(arg1: int, arg2: int = 1) -> int:
            """Adds."""
            return arg1 + arg2

        self.assertEqual(my_function(1, arg2=2), 3)
        self.assertEqual(
            self.server.events,
            [status_event("RUNNING", "my_function started."), status_event("SUCCEEDED", "my_function succeeded.")],
        )

    def test_wraps_keeps_name_doc_signature_and_wrapped(self) -> None:
        sdk = self.sdk()

        def my_function(arg1: int, arg2: int = 1) -> int:
            """Adds."""
            return arg1 + arg2

        wrapped = sdk.run()(my_function)
        self.assertEqual(wrapped.__name__, "my_function")
        self.assertEqual(wrapped.__doc__, "Adds.")
        self.assertIs(wrapped.__wrapped__, my_function)  # type: ignore[attr-defined]
        self.assertEqual(inspect.signature(wrapped), inspect.signature(my_function))

    def test_exception_is_reported_then_reraised_with_its_traceback(self) -> None:
        sdk = self.sdk()
        error = RuntimeError("x" * 300)

        @sdk.run()
        def boom() -> None:
            raise error

        try:
            boom()
        except RuntimeError as exc:
            self.assertIs(exc, error)
            frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        self.assertEqual(frames[-1], "boom")
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "boom failed. Error: " + "x" * 250))

    def test_exception_without_text_reports_its_type(self) -> None:
        sdk = self.sdk()

        @sdk.run()
        def check() -> None:
            raise AssertionError()

        with self.assertRaises(AssertionError):
            check()
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "check failed. Error: AssertionError"))

    def test_bare_decorator_and_named_run(self) -> None:
        sdk = self.sdk()

        @sdk.run
        def first() -> str:
            return "a"

        @sdk.run("load orders")
        def second() -> str:
            return "b"

        self.assertEqual((first(), second()), ("a", "b"))
        self.assertEqual(
            self.server.statuses(),
            [
                ("RUNNING", "first started."),
                ("SUCCEEDED", "first succeeded."),
                ("RUNNING", "load orders started."),
                ("SUCCEEDED", "load orders succeeded."),
            ],
        )

    def test_context_manager(self) -> None:
        sdk = self.sdk()
        with sdk.run("load orders"):
            sdk.update_task(message="inside")
        with self.assertRaises(ValueError), sdk.run():
            raise ValueError("bad row")
        self.assertEqual(
            self.server.statuses(),
            [
                ("RUNNING", "load orders started."),
                (None, "inside"),
                ("SUCCEEDED", "load orders succeeded."),
                ("RUNNING", "task started."),
                ("FAILED", "task failed. Error: bad row"),
            ],
        )

    def test_a_run_in_another_thread_during_a_run_is_a_step_of_it(self) -> None:
        code = textwrap.dedent(
            """\
            import threading, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            def part():
                with sdk.run("part"):
                    pass
            with sdk.run("main"):
                worker = threading.Thread(target=part)
                worker.start()
                worker.join()
            part()  # after the run: a run of its own
            import concurrent.futures
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                with sdk.run("first"):
                    pool.submit(lambda: None).result()  # the pool's thread starts inside "first"
                pool.submit(part).result()  # ...and runs "part" after "first" ended: a run of its own
            """
        )
        expected = [
            ("RUNNING", "main started."),
            (None, "part started."),
            (None, "part succeeded."),
            ("SUCCEEDED", "main succeeded."),
            ("RUNNING", "part started."),
            ("SUCCEEDED", "part succeeded."),
            ("RUNNING", "first started."),
            ("SUCCEEDED", "first succeeded."),
            ("RUNNING", "part started."),
            ("SUCCEEDED", "part succeeded."),
        ]
        flags: List[List[str]] = [[]]
        if sys.version_info >= (3, 14):  # threads may inherit the caller's context: the same either way
            flags = [["-X", "thread_inherit_context=0"], ["-X", "thread_inherit_context=1"]]
        for flag in flags:
            with self.subTest(flag=flag):
                self.server.requests.clear()
                result = run_python(code, *flag, env=orchestra_env(self.server.url))
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual(self.server.statuses(), expected)

    def test_reraise_false_reports_failed_and_returns_none(self) -> None:
        sdk = self.sdk()

        @sdk.run(reraise=False)
        def boom() -> int:
            raise KeyError("k")

        self.assertIsNone(boom())
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "boom failed. Error: 'k'"))
        with sdk.run("block", reraise=False):
            raise ValueError("swallowed")
        self.assertEqual(
            self.server.statuses()[-2:], [("RUNNING", "block started."), ("FAILED", "block failed. Error: swallowed")]
        )

    def test_reraise_false_never_swallows_base_exceptions(self) -> None:
        sdk = self.sdk()

        @sdk.run(reraise=False)
        def stop() -> None:
            raise KeyboardInterrupt

        with self.assertRaises(KeyboardInterrupt):
            stop()

    def test_outcome_table(self) -> None:
        cases: List[Tuple[BaseException, str, str]] = [
            (KeyboardInterrupt(), "CANCELLED", "f cancelled."),
            (asyncio.CancelledError(), "CANCELLED", "f cancelled."),
            (SystemExit(0), "SUCCEEDED", "f succeeded."),
            (SystemExit(None), "SUCCEEDED", "f succeeded."),
            (SystemExit(3), "FAILED", "f failed. Error: exit code 3"),
            (SystemExit("bad config"), "FAILED", "f failed. Error: exit code 1: bad config"),
            (SystemExit(256), "SUCCEEDED", "f succeeded."),  # the system keeps the low byte: exit 0
            (SystemExit(2**31), "SUCCEEDED", "f succeeded."),
            (SystemExit(-1), "FAILED", "f failed. Error: exit code 255"),
            (SystemExit(2**64), "FAILED", "f failed. Error: exit code 255"),
            (SystemExit(0.0), "FAILED", "f failed. Error: exit code 1: 0.0"),
            (GeneratorExit("odd"), "FAILED", "f failed. Error: odd"),
        ]
        sdk = self.sdk()
        for exc, status, message in cases:
            with self.subTest(exc=repr(exc)):
                self.server.requests.clear()

                @sdk.run()
                def f(exc: BaseException = exc) -> None:
                    raise exc

                with self.assertRaises(type(exc)) as caught:
                    f()
                self.assertIs(caught.exception, exc)
                self.assertEqual(self.server.statuses(), [("RUNNING", "f started."), (status, message)])

    def test_failed_reports_do_not_change_the_result(self) -> None:
        self.server.default = reply(500)
        sdk = self.sdk(retries=0)

        @sdk.run()
        def work() -> str:
            return "value"

        self.assertEqual(work(), "value")
        self.assertEqual(len(self.log_lines("ERROR")), 2)

    def test_nested_run_is_a_step_that_sends_messages_only(self) -> None:
        sdk = self.sdk()

        @sdk.run("extract")
        def extract() -> None:
            pass

        @sdk.run("transform")
        def transform() -> None:
            raise ValueError("bad")

        with sdk.run("pipeline"):
            extract()
            with contextlib.suppress(ValueError):
                transform()
        self.assertEqual(
            self.server.statuses(),
            [
                ("RUNNING", "pipeline started."),
                (None, "extract started."),
                (None, "extract succeeded."),
                (None, "transform started."),
                (None, "transform failed. Error: bad"),
                ("SUCCEEDED", "pipeline succeeded."),
            ],
        )

    def test_wrapped_by_the_cli_every_run_is_a_step(self) -> None:
        os.environ["ORCHESTRA_SDK_WRAPPED"] = "1"
        sdk = self.sdk()
        with sdk.run("inner"):
            pass
        self.assertEqual(self.server.statuses(), [(None, "inner started."), (None, "inner succeeded.")])

    def test_separate_sdks_do_not_nest(self) -> None:
        outer, inner = self.sdk(), self.sdk()
        with outer.run("a"), inner.run("b"):
            pass
        self.assertEqual([s for s, _ in self.server.statuses()], ["RUNNING", "RUNNING", "SUCCEEDED", "SUCCEEDED"])


class AsyncRunTest(SDKTestCase):
    def test_coroutine_function_is_reported_after_its_body(self) -> None:
        sdk = self.sdk()
        seen: List[int] = []

        @sdk.run()
        async def fetch(n: int) -> int:
            await asyncio.sleep(0.01)
            seen.append(len(self.server.requests))
            return n * 2

        self.assertTrue(inspect.iscoroutinefunction(fetch))
        self.assertEqual(asyncio.run(fetch(21)), 42)
        self.assertEqual(seen, [1])  # only RUNNING had arrived while the body ran
        self.assertEqual(self.server.statuses(), [("RUNNING", "fetch started."), ("SUCCEEDED", "fetch succeeded.")])

    def test_a_coroutine_function_in_a_partial_is_reported_after_it_is_awaited(self) -> None:
        sdk = self.sdk()

        async def scale(factor: int, n: int) -> int:
            await asyncio.sleep(0.01)
            return factor * n

        triple = sdk.run("triple")(functools.partial(scale, 3))
        self.assertEqual(asyncio.run(triple(5)), 15)
        self.assertEqual(self.server.statuses(), [("RUNNING", "triple started."), ("SUCCEEDED", "triple succeeded.")])

    @unittest.skipUnless(hasattr(inspect, "markcoroutinefunction"), "inspect.markcoroutinefunction is 3.12+")
    def test_a_function_marked_as_a_coroutine_function_is_awaited(self) -> None:
        sdk = self.sdk()

        def make() -> Any:
            async def body() -> str:
                return "done"

            return body()

        marked = inspect.markcoroutinefunction(make)  # type: ignore[attr-defined,unused-ignore]
        wrapped = sdk.run("marked")(marked)
        self.assertTrue(inspect.iscoroutinefunction(wrapped))
        self.assertEqual(asyncio.run(wrapped()), "done")
        self.assertEqual(self.server.statuses()[-1], ("SUCCEEDED", "marked succeeded."))

    def test_a_wrapper_that_hides_an_async_def_is_refused_not_reported_succeeded(self) -> None:
        sdk = self.sdk()

        async def body() -> int:
            return 1

        def not_async_aware() -> Any:
            return body()

        with self.assertRaisesRegex(TypeError, "'hidden' returned coroutine without running its body"):
            sdk.run("hidden")(not_async_aware)()
        self.assertEqual(self.server.statuses()[-1][0], "FAILED")

    def test_an_object_with_an_async_call_is_reported_around_the_await(self) -> None:
        sdk = self.sdk()

        class Job:
            async def __call__(self) -> str:
                await asyncio.sleep(0.01)
                return "done"

        self.assertEqual(asyncio.run(sdk.run("job")(Job())()), "done")
        self.assertEqual(self.server.statuses(), [("RUNNING", "job started."), ("SUCCEEDED", "job succeeded.")])

    def test_generator_functions_are_refused_with_what_to_do(self) -> None:
        sdk = self.sdk()

        def rows() -> Any:
            yield 1

        async def arows() -> Any:
            yield 1

        for func in (rows, arows):
            with self.subTest(func=func.__name__), self.assertRaisesRegex(TypeError, "Report the code that consumes"):
                sdk.run()(func)
        self.assertEqual(self.server.requests, [])

    def test_async_exception_is_reraised(self) -> None:
        sdk = self.sdk()

        @sdk.run()
        async def boom() -> None:
            raise ValueError("async bad")

        with self.assertRaisesRegex(ValueError, "async bad"):
            asyncio.run(boom())
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "boom failed. Error: async bad"))

    def test_async_context_manager_and_steps(self) -> None:
        sdk = self.sdk()

        @sdk.run("step")
        async def step() -> None:
            await asyncio.sleep(0)

        async def main() -> None:
            async with sdk.run("load"):
                await asyncio.gather(step(), step())

        asyncio.run(main())
        statuses = self.server.statuses()
        self.assertEqual(statuses[0], ("RUNNING", "load started."))
        self.assertEqual(statuses[-1], ("SUCCEEDED", "load succeeded."))
        # The two steps report from worker threads, so their events may interleave either way;
        # each step's own "started" still comes before its "succeeded".
        steps = statuses[1:-1]
        self.assertEqual(sorted(steps, key=str), [(None, "step started.")] * 2 + [(None, "step succeeded.")] * 2)
        self.assertEqual(steps[0], (None, "step started."))
        self.assertEqual(steps[-1], (None, "step succeeded."))

    def cancel_once_reporting_began(self, job: Callable[[], Any]) -> None:
        """Run `job()` as a task and cancel it once the first request has reached the server."""

        async def main() -> None:
            task = asyncio.ensure_future(job())
            while len(self.server.requests) < 1:
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(asyncio.wait_for(main(), WAIT))

    def test_cancelled_task_is_reported_cancelled(self) -> None:
        sdk = self.sdk()

        @sdk.run()
        async def slow() -> None:
            await asyncio.sleep(WAIT)

        self.cancel_once_reporting_began(slow)
        self.assertEqual(self.server.statuses()[-1], ("CANCELLED", "slow cancelled."))

    def test_reports_do_not_wait_for_the_programs_threads_nor_vanish_with_a_cancel(self) -> None:
        sdk = self.sdk()
        release = threading.Event()
        self.addCleanup(release.set)

        failing: List[asyncio.Event] = []  # made inside the loop: Python 3.8 binds it to one

        @sdk.run()
        async def job() -> None:
            failing[0].set()
            raise ValueError("bad rows")

        async def main() -> None:
            failing.append(asyncio.Event())
            loop = asyncio.get_running_loop()
            busy = [loop.run_in_executor(None, release.wait, WAIT) for _ in range(64)]  # the default executor is full
            task = asyncio.ensure_future(job())
            await failing[0].wait()
            task.cancel()  # as the body fails: the final report must still go out
            with contextlib.suppress(asyncio.CancelledError, ValueError):
                await task
            release.set()
            await asyncio.gather(*busy)

        started = time.monotonic()
        asyncio.run(asyncio.wait_for(main(), WAIT))
        self.assertLess(time.monotonic() - started, WAIT / 2)
        self.assertEqual(self.server.statuses()[-1][0], "FAILED")

    def test_a_cancel_while_running_is_retried_never_lets_running_come_last(self) -> None:
        self.server.then(delay(0.3, reply(503)), delay(0.3, reply(503)))  # RUNNING is retried, slowly
        sdk = self.sdk(backoff=0.05)

        @sdk.run()
        async def job() -> None:
            await asyncio.sleep(WAIT)

        self.cancel_once_reporting_began(job)
        statuses = [status for status, _ in self.server.statuses()]
        self.assertEqual(statuses[-1], "CANCELLED")
        self.assertEqual(set(statuses[:-1]), {"RUNNING"})

    def test_event_loop_keeps_running_while_an_update_is_in_flight(self) -> None:
        self.server.then(delay(0.6, reply(200)))
        sdk = self.sdk()
        ticks: List[float] = []

        @sdk.run()
        async def work() -> None:
            pass

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        async def main() -> None:
            tick_task = asyncio.ensure_future(ticker())
            await work()
            tick_task.cancel()

        asyncio.run(main())
        self.assertGreater(len(ticks), 20)  # the ticker ran during the 0.6 s RUNNING request


# ---------------------------------------------------------------------------------------------
# Logs: files and captured output
# ---------------------------------------------------------------------------------------------


class LogTest(SDKTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.folder = temp_folder(self)
        self.path = os.path.join(self.folder, "orchestra.log")

    def log_events(self) -> List[Any]:
        return [e for e in self.server.events if e["event_type"] == "LOG"]

    def test_log_file_is_sent_after_the_final_status(self) -> None:
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write("line 1\nline 2\n")
        sdk = self.sdk(log_file=self.path, send_logs=True)

        @sdk.run()
        def work() -> None:
            pass

        work()
        kinds = [(e["event_type"], e.get("status")) for e in self.server.events]
        self.assertEqual(kinds, [("UPDATE_STATUS", "RUNNING"), ("UPDATE_STATUS", "SUCCEEDED"), ("LOG", None)])
        self.assertEqual(
            self.server.events[-1],
            {
                "event_type": "LOG",
                "metadata": {},
                "task_run_id": TASK_RUN_ID,
                "log_name": self.path,
                "data": "line 1\nline 2\n",
            },
        )

    def test_log_file_is_sent_when_the_function_failed(self) -> None:
        with open(self.path, "wb") as handle:
            handle.write(b"bad byte \xff here")
        sdk = self.sdk(log_file=self.path, send_logs=True)

        @sdk.run()
        def work() -> None:
            raise ValueError("x")

        with self.assertRaises(ValueError):
            work()
        self.assertEqual(self.server.events[1]["status"], "FAILED")
        self.assertEqual(self.log_events()[0]["data"], "bad byte \ufffd here")

    def test_large_log_keeps_the_most_recent_part_after_a_marker(self) -> None:
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write("old\n" * 1000 + "é" * 10 + "newest line\n")
        sdk = self.sdk(log_file=self.path, send_logs=True, max_log_bytes=2048)
        with sdk.run():
            pass
        data = self.log_events()[0]["data"]
        marker, rest = data.split("\n", 1)
        total = os.path.getsize(self.path)
        kept = 2048 - 120  # room is kept for the marker line
        self.assertEqual(marker, f"[orchestra_sdk: {total - kept} earlier bytes cut to keep the log within 2048 bytes]")
        self.assertTrue(rest.endswith("é" * 10 + "newest line\n"))
        self.assertEqual(len(rest.encode()), kept)
        self.assertLessEqual(len(data.encode()), 2048)

    def test_a_log_file_may_be_a_path_object(self) -> None:
        import pathlib

        with open(self.path, "w") as handle:
            handle.write("from the file\n")
        sdk = self.sdk(log_file=pathlib.Path(self.path), send_logs=True)
        self.assertEqual(sdk.log_file, self.path)

        @sdk.run()
        def job() -> int:
            return 7

        self.assertEqual(job(), 7)
        self.assertEqual(self.log_events()[0], event(event_type="LOG", log_name=self.path, data="from the file\n"))

    def test_a_log_file_that_is_not_a_path_is_refused_at_construction(self) -> None:
        for bad in (None, 3, b"bytes.log"):
            with self.subTest(log_file=bad), self.assertRaisesRegex(TypeError, "log_file must be a str or os.PathLike"):
                self.sdk(log_file=bad)
        self.assertEqual(self.server.requests, [])

    def test_cut_never_starts_inside_a_character(self) -> None:
        text = orchestra_sdk._tail_text(("é" * 1000).encode(), 1025)
        marker, rest = text.split("\n", 1)
        self.assertEqual(rest, "é" * 452)  # 1025 bytes less room for the marker, then whole characters
        self.assertEqual(marker, "[orchestra_sdk: 1096 earlier bytes cut to keep the log within 1025 bytes]")
        self.assertLessEqual(len(text.encode()), 1025)

    def test_the_bound_holds_on_what_is_sent_after_bad_bytes_are_replaced(self) -> None:
        for data, cut in ((b"\xff" * 1000, 0), (b"ok \xff\xfe" * 5000, 0), (b"x" * 1024, 7)):
            text = orchestra_sdk._tail_text(data, 1024, cut)
            self.assertLessEqual(len(text.encode("utf-8")), 1024)
            self.assertTrue(text.startswith("[orchestra_sdk: "), text[:40])

    def test_missing_log_file_sends_the_captured_output_instead(self) -> None:
        sdk = self.sdk(log_file=os.path.join(self.folder, "missing.log"), send_logs=True)
        with contextlib.redirect_stdout(io.StringIO()), sdk.run("job"):
            print("from print")
        self.assertEqual(self.log_lines("WARNING"), [])
        (log_event,) = self.log_events()
        self.assertEqual((log_event["log_name"], log_event["data"]), ("job", "from print\n"))

    def test_log_path_that_is_a_directory_is_a_warning_naming_it(self) -> None:
        sdk = self.sdk(log_file=self.folder, send_logs=True)
        with sdk.run("job"):
            pass
        (warning,) = self.log_lines("WARNING")
        self.assertIn(f"log file {self.folder!r} is a directory", warning)
        self.assertEqual([e["log_name"] for e in self.log_events()], ["job"])  # the captured output

    def test_unreadable_log_file(self) -> None:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            text, problem = orchestra_sdk._read_log_file("/proc/self/mem", 1024)
        else:
            with open(self.path, "w") as handle:
                handle.write("x")
            os.chmod(self.path, 0)
            text, problem = orchestra_sdk._read_log_file(self.path, 1024)
        self.assertIsNone(text)
        self.assertIn("cannot be read", str(problem))

    def test_captured_output_is_sent_when_there_is_no_log_file(self) -> None:
        sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
        app_log = logging.getLogger("capture.app")
        stdout, stderr = io.StringIO(), io.StringIO()

        @sdk.run("etl")
        def work() -> None:
            print("printed line")
            sys.stderr.write("to stderr\n")
            app_log.info("not shown: root is at WARNING")
            app_log.warning("a warning")
            raise RuntimeError("broken")

        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), self.assertRaises(RuntimeError):
            work()
        self.assertEqual(stdout.getvalue(), "printed line\n")  # still shown as usual
        (log_event,) = self.log_events()
        self.assertEqual(log_event["log_name"], "etl")
        data = log_event["data"]
        self.assertLess(data.index("printed line"), data.index("to stderr"))
        self.assertLess(data.index("to stderr"), data.index("a warning"))  # as shown, or formatted if not shown
        self.assertNotIn("not shown", data)
        self.assertIn("Traceback (most recent call last)", data)
        self.assertIn("RuntimeError: broken", data)
        self.assertEqual(self.server.events[-2]["status"], "FAILED")

    def test_capture_leaves_what_the_program_shows_unchanged(self) -> None:
        # In a child process: a test runner's own logging setup must not decide what is checked.
        code = textwrap.dedent(
            f"""\
            import logging, sys, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK(log_file={os.path.join(self.folder, "absent.log")!r}, send_logs=True)
            with sdk.run("etl"):
                print("printed line")
                sys.stderr.write("to stderr\\n")
                logging.getLogger("app").info("not shown: root is at WARNING")
                logging.getLogger("app").warning("a warning")
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url))
        self.assertEqual((result.stdout, result.stderr), ("printed line\n", "to stderr\na warning\n"))
        self.assertEqual(self.server.events[-1]["data"], "printed line\nto stderr\na warning\n")  # as it was shown

    def shown_with_and_without_capture(self, body: str) -> Tuple[Tuple[str, str], Tuple[str, str]]:
        """What a child program shows (stdout, stderr) when `body` runs under run() with
        send_logs, and when it runs with no SDK at all."""
        shown = []
        for wrapped in (True, False):
            head = "import logging, sys, orchestra_sdk\n"
            if wrapped:
                log_file = os.path.join(self.folder, "absent.log")
                head += f"with orchestra_sdk.OrchestraSDK(log_file={log_file!r}, send_logs=True).run('job'):\n"
            else:
                head += "if True:\n"
            code = head + textwrap.indent(textwrap.dedent(body), "    ")
            result = run_python(code, env=orchestra_env(self.server.url))
            shown.append((result.stdout, result.stderr))
        return shown[0], shown[1]

    def test_logging_configured_inside_a_captured_run_works_as_without_the_sdk(self) -> None:
        captured, plain = self.shown_with_and_without_capture(
            """\
            logging.basicConfig(level=logging.INFO, stream=sys.stdout)
            logging.getLogger("app").info("informative")
            logging.warning("careful")
            print("printed")
            """
        )
        self.assertEqual(captured, plain)
        self.assertEqual(plain, ("INFO:app:informative\nWARNING:root:careful\nprinted\n", ""))
        self.assertEqual(self.log_events()[0]["data"], plain[0])

    def test_a_record_shown_by_a_handler_made_before_the_run_is_kept(self) -> None:
        code = textwrap.dedent(
            f"""\
            import logging, orchestra_sdk
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
            sdk = orchestra_sdk.OrchestraSDK(log_file={os.path.join(self.folder, "absent.log")!r}, send_logs=True)
            with sdk.run("job"):
                logging.getLogger("app").info("loaded 42 orders")
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url))
        self.assertEqual(result.stderr, "INFO app: loaded 42 orders\n")  # shown as the program said
        self.assertRegex(self.log_events()[0]["data"], r"^[0-9-]+ [0-9:,]+ INFO app: loaded 42 orders\n$")

    def test_a_record_the_program_filtered_out_is_not_shown(self) -> None:
        captured, plain = self.shown_with_and_without_capture(
            """\
            app = logging.getLogger("app")
            app.addHandler(logging.StreamHandler(sys.stderr))
            app.handlers[0].setLevel(logging.ERROR)
            app.warning("filtered by the program's own handler")
            app.error("shown")
            """
        )
        self.assertEqual(captured, plain)
        self.assertEqual(plain, ("", "shown\n"))

    @unittest.skipUnless(hasattr(signal, "setitimer"), "interval timers")
    def test_a_signal_handler_that_prints_during_a_captured_write_cannot_deadlock(self) -> None:
        code = textwrap.dedent(
            f"""\
            import signal, sys, time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK(log_file={os.path.join(self.folder, "absent.log")!r}, send_logs=True)
            signal.signal(signal.SIGALRM, lambda signum, frame: print("tick"))
            with sdk.run("job"):
                signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
                ends = time.monotonic() + 1.0
                while time.monotonic() < ends:
                    sys.stdout.write("line\\n")
                signal.setitimer(signal.ITIMER_REAL, 0)
            """
        )
        result = run_python(code, env=orchestra_env(self.server.url), timeout=WAIT)
        self.assertEqual(result.returncode, 0, result.stderr[-500:])
        self.assertEqual(self.server.statuses()[-2], ("SUCCEEDED", "job succeeded."))
        self.assertIn("tick\n", self.log_events()[0]["data"])

    def test_concurrent_runs_each_keep_their_own_output_and_streams_are_restored(self) -> None:
        before = (sys.stdout, sys.stderr)
        stop_first, first_started = threading.Event(), threading.Event()

        def first() -> None:
            sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
            with sdk.run("first"):
                print("from the first run")
                first_started.set()
                stop_first.wait(WAIT)
                print("first again")

        def second() -> None:
            first_started.wait(WAIT)
            sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
            with sdk.run("second"):
                print("from the second run")
                logging.getLogger("second.app").warning("second's warning")
            stop_first.set()  # the second run stops first

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            threads = [threading.Thread(target=first), threading.Thread(target=second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            self.assertNotIsInstance(sys.stdout, orchestra_sdk._Tee)
        self.assertEqual((sys.stdout, sys.stderr), before)
        logs = {e["log_name"]: e["data"] for e in self.log_events()}
        self.assertEqual(logs["first"], "from the first run\nfirst again\n")
        self.assertEqual(logs["second"], "from the second run\nsecond's warning\n")

    def test_capture_includes_info_records_when_logging_is_configured(self) -> None:
        root = logging.getLogger()
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.addFilter(logging.Filter("capture"))
        root.addHandler(handler)
        level = root.level
        root.setLevel(logging.INFO)
        self.addCleanup(root.removeHandler, handler)
        self.addCleanup(root.setLevel, level)
        handlers_before = list(root.handlers)
        sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
        with sdk.run("job"):
            logging.getLogger("capture.app").info("informative")
        self.assertEqual(stream.getvalue(), "informative\n")
        self.assertIn("INFO capture.app: informative", self.log_events()[0]["data"])
        self.assertEqual(root.handlers, handlers_before)

    def test_lone_surrogates_in_captured_output_are_replaced(self) -> None:
        sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
        with contextlib.redirect_stdout(io.StringIO()), sdk.run("job"):
            print("bad \udc80 byte\x07")
        self.assertEqual(self.log_events()[0]["data"], "bad \ufffd byte\x07\n")

    def test_exactly_one_log_event_per_outermost_run(self) -> None:
        sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
        with contextlib.redirect_stdout(io.StringIO()) as shown, sdk.run("outer"), sdk.run("inner"):
            print("x")
        (log_event,) = self.log_events()
        self.assertEqual((log_event["log_name"], log_event["data"]), ("outer", "x\n"))
        self.assertEqual(shown.getvalue(), "x\n")

    def test_writelines_on_a_captured_stream_is_shown_and_kept(self) -> None:
        sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
        with contextlib.redirect_stdout(io.StringIO()) as shown, sdk.run("job"):
            sys.stdout.writelines(["a\n", "b", "c\n"])
        self.assertEqual(shown.getvalue(), "a\nbc\n")
        self.assertEqual(self.log_events()[0]["data"], "a\nbc\n")

    def test_streams_are_restored_after_the_run(self) -> None:
        before = (sys.stdout, sys.stderr)
        sdk = self.sdk(log_file=os.path.join(self.folder, "absent.log"), send_logs=True)
        with sdk.run():
            self.assertIsNot(sys.stdout, before[0])
        self.assertEqual((sys.stdout, sys.stderr), before)

    def test_no_log_event_without_send_logs(self) -> None:
        with open(self.path, "w") as handle:
            handle.write("x")
        with self.sdk(log_file=self.path).run():
            pass
        self.assertEqual(self.log_events(), [])


# ---------------------------------------------------------------------------------------------
# AWS Lambda
# ---------------------------------------------------------------------------------------------


class LambdaTest(SDKTestCase):
    def setUp(self) -> None:
        super().setUp()
        for name in ("ORCHESTRA_TASK_RUN_ID", "ORCHESTRA_WEBHOOK_URL"):
            del os.environ[name]

    def test_event_configures_run_id_url_and_log_file(self) -> None:
        sdk = self.sdk()
        sdk.configure_aws_lambda_event(
            {"orchestra_task_run_id": TASK_RUN_ID, "orchestra_webhook_url": self.server.url, "other": 1}
        )
        self.assertEqual(sdk.task_run_id, uuid.UUID(TASK_RUN_ID))
        self.assertEqual(sdk.webhook_url, self.server.url)
        self.assertRegex(sdk.log_file, rf"^/tmp/{TASK_RUN_ID}_\d+\.log$")
        self.assertTrue(sdk.update_task(status="RUNNING"))
        self.assertEqual(self.server.events, [status_event("RUNNING", None)])

    def test_an_id_that_is_not_a_string_is_read_as_its_text(self) -> None:
        sdk = self.sdk()
        sdk.configure_aws_lambda_event({"orchestra_task_run_id": uuid.UUID(TASK_RUN_ID)})
        self.assertEqual(sdk.task_run_id, uuid.UUID(TASK_RUN_ID))
        sdk.configure_aws_lambda_event({"orchestra_task_run_id": 12345})
        self.assertIsNone(sdk.task_run_id)
        self.assertIn("orchestra_task_run_id='12345' is not a UUID", self.log_lines("WARNING")[0])

    def test_without_a_url_in_the_event_the_environments_is_used(self) -> None:
        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.server.url
        sdk = self.sdk()
        sdk.configure_aws_lambda_event({"orchestra_task_run_id": TASK_RUN_ID})
        self.assertEqual(sdk.webhook_url, self.server.url)
        self.assertTrue(sdk.update_task(message="x"))
        del os.environ["ORCHESTRA_WEBHOOK_URL"]
        sdk.configure_aws_lambda_event({"orchestra_task_run_id": TASK_RUN_ID})
        self.assertEqual(sdk.webhook_url, "https://webhook.getorchestra.io")

    def test_event_without_orchestra_fields_leaves_the_sdk_unconfigured(self) -> None:
        sdk = self.sdk()
        for bad in ({}, {"orchestra_task_run_id": "nope"}, "not a dict", None):
            with self.subTest(event=bad):
                self.log.lines.clear()
                sdk.configure_aws_lambda_event(bad)  # type: ignore[arg-type]
                self.assertIsNone(sdk.task_run_id)
                self.assertFalse(sdk.update_task(message="x"))
                self.assertEqual(len(self.log_lines("WARNING")), 1)
        self.assertEqual(self.server.requests, [])

    def test_a_later_bad_event_does_not_report_to_the_previous_run(self) -> None:
        sdk = self.sdk()
        sdk.configure_aws_lambda_event({"orchestra_task_run_id": TASK_RUN_ID, "orchestra_webhook_url": self.server.url})
        sdk.configure_aws_lambda_event({"source": "aws.events"})
        self.assertFalse(sdk.update_task(message="x"))
        self.assertEqual(self.server.requests, [])


# ---------------------------------------------------------------------------------------------
# Linked connections
# ---------------------------------------------------------------------------------------------


class LinkedConnectionTest(unittest.TestCase):
    ENV = {
        "SNOWFLAKE__PROD__ACCOUNT": "xy12345",
        "SNOWFLAKE__PROD__PASSWORD": "s3cr3t-pw",
        "SNOWFLAKE__PROD__PORT": "12345",
        "SNOWFLAKE__PROD__ENABLED": "true",
        "SNOWFLAKE__PROD__ROLES": '["a", "b"]',
        "SNOWFLAKE__PROD__KEY": '{"pem": "-----BEGIN-----"}',
        "SNOWFLAKE__PROD__BROKEN": "{not json",
        "POSTGRES__DB_1__HOST": "db.internal",
        "POSTGRES__DB_2__HOST": "db2.internal",
        "lower__case__x": "ignored",
        "A__B": "ignored",
        "A__B__C__D": "ignored",
        "A___B__C": "ignored",
        "_A__B__C": "ignored",
        "PATH": "/usr/bin",
    }

    def test_list_decodes_only_json_objects_and_arrays(self) -> None:
        conns = list_linked_connections(self.ENV)
        self.assertEqual(
            [(c.integration, c.connection_id) for c in conns],
            [("POSTGRES", "DB_1"), ("POSTGRES", "DB_2"), ("SNOWFLAKE", "PROD")],
        )
        prod = conns[2]
        self.assertEqual(prod["port"], "12345")
        self.assertEqual(prod["enabled"], "true")
        self.assertEqual(prod["roles"], ["a", "b"])
        self.assertEqual(prod["key"], {"pem": "-----BEGIN-----"})
        self.assertEqual(prod["broken"], "{not json")

    def test_lookups_are_case_insensitive_and_normalised(self) -> None:
        conn = get_linked_connection("snowflake", environ=self.ENV)
        self.assertEqual(conn["Account"], "xy12345")
        self.assertEqual(get_linked_connection("postgres", "db-1", environ=self.ENV)["host"], "db.internal")
        self.assertEqual(get_linked_connection(" Postgres ", "DB 2", environ=self.ENV).get("HOST"), "db2.internal")
        self.assertEqual(conn.get("missing", "dflt"), "dflt")

    def test_missing_field_is_a_key_error_naming_the_fields(self) -> None:
        with self.assertRaisesRegex(KeyError, "has no field 'user'; fields: ACCOUNT, BROKEN"):
            get_linked_connection("snowflake", environ=self.ENV)["user"]

    def test_none_several_and_unknown_id(self) -> None:
        with self.assertRaisesRegex(LinkedConnectionNotFoundError, "no BIGQUERY connection is linked"):
            get_linked_connection("bigquery", environ=self.ENV)
        with self.assertRaisesRegex(
            LinkedConnectionNotFoundError, r"2 POSTGRES connections are linked \(DB_1, DB_2\); pass connection_id"
        ):
            get_linked_connection("postgres", environ=self.ENV)
        with self.assertRaisesRegex(LinkedConnectionNotFoundError, "no POSTGRES connection 'db3'.*DB_1, DB_2"):
            get_linked_connection("postgres", "db3", environ=self.ENV)

    def test_deeply_nested_json_in_one_variable_breaks_no_look_up(self) -> None:
        env = dict(self.ENV, BROKEN__X__CONFIG="[" * 100000)
        self.assertEqual(get_linked_connection("snowflake", environ=env)["password"], "s3cr3t-pw")
        self.assertEqual(get_linked_connection("broken", environ=env)["config"], "[" * 100000)

    def test_secrets_are_not_in_the_repr(self) -> None:
        conn = get_linked_connection("snowflake", environ=self.ENV)
        text = repr(conn) + str(conn) + repr(list_linked_connections(self.ENV))
        self.assertNotIn("s3cr3t-pw", text)
        self.assertNotIn("xy12345", text)
        self.assertIn("PASSWORD", text)

    def test_connection_is_frozen(self) -> None:
        conn = get_linked_connection("snowflake", environ=self.ENV)
        with self.assertRaisesRegex(AttributeError, "cannot assign to field 'integration'"):
            conn.integration = "x"  # type: ignore[misc]
        with self.assertRaises(TypeError):
            conn.fields["PASSWORD"] = "y"  # type: ignore[index]

    def test_connection_copies_and_pickles_without_showing_its_secrets(self) -> None:
        conn = get_linked_connection("snowflake", environ=self.ENV)
        for clone in (copy.copy(conn), copy.deepcopy(conn), pickle.loads(pickle.dumps(conn))):
            self.assertEqual(clone, conn)
            self.assertEqual(clone["password"], "s3cr3t-pw")
            self.assertNotIn("s3cr3t-pw", repr(clone))
            with self.assertRaises(TypeError):
                clone.fields["PASSWORD"] = "y"  # type: ignore[index]

    def test_reads_os_environ_by_default_and_through_the_sdk(self) -> None:
        with mock.patch.dict(os.environ, {"REDSHIFT__MAIN__USER": "bob"}):
            self.assertEqual(get_linked_connection("redshift")["user"], "bob")
            sdk = OrchestraSDK(api_key="k")
            self.assertEqual(sdk.get_linked_connection("REDSHIFT", "main")["USER"], "bob")
            self.assertIn(LinkedConnection("REDSHIFT", "MAIN", {"USER": "bob"}), sdk.list_linked_connections())


# ---------------------------------------------------------------------------------------------
# Import: the official paths, no side effects, no site-packages
# ---------------------------------------------------------------------------------------------


def run_python(
    code: str, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout
    )


class ImportTest(unittest.TestCase):
    def test_official_import_paths(self) -> None:
        code = textwrap.dedent(
            """\
            from orchestra_sdk.orchestra import OrchestraSDK
            from orchestra_sdk.enum import TaskRunStatus, WebhookEventType
            from orchestra_sdk.errors import (
                LinkedConnectionNotFoundError, MissingEnvironmentKeysError, NoEnvironmentVariablesFoundError)
            from orchestra_sdk.http import HTTPClient
            from orchestra_sdk.check_environment import validate_environment
            from orchestra_sdk.linked_connections import (
                LinkedConnection, get_linked_connection, list_linked_connections)
            import orchestra_sdk
            assert OrchestraSDK is orchestra_sdk.OrchestraSDK and TaskRunStatus.RUNNING.value == 'RUNNING'
            print('ok')
            """
        )
        result = run_python(code)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "ok\n", ""))

    def test_importing_configures_nothing(self) -> None:
        code = textwrap.dedent(
            f"""\
            import os, signal, sys
            sys.path.insert(0, {HERE!r})
            env = dict(os.environ); handler = signal.getsignal(signal.SIGTERM); before = set(sys.modules)
            import orchestra_sdk
            after = set(sys.modules)
            import logging, threading
            assert logging.getLogger().handlers == [] and logging.getLogger('orchestra_sdk').handlers == []
            assert threading.active_count() == 1 and dict(os.environ) == env
            assert signal.getsignal(signal.SIGTERM) is handler
            lazy = ('urllib.request', 'asyncio', 'argparse', 'http.server', 'http.client', 'ssl', 'socket',
                    'typing', 'uuid', 'subprocess', 'random', 'ipaddress', 'email.utils')
            print([m for m in lazy if m in after and m not in before])
            """
        )
        result = run_python(code, "-E")
        self.assertEqual(result.stderr, "")
        self.assertEqual(result.stdout, "[]\n")

    def test_failed_update_reaches_stderr_without_logging_configured(self) -> None:
        env = orchestra_env(f"http://127.0.0.1:{refusing_port(self)}/")
        code = "import orchestra_sdk; print(orchestra_sdk.OrchestraSDK(retries=0).update_task(message='x'))"
        result = run_python(code, env=env)
        self.assertEqual(result.stdout, "False\n")
        self.assertIn("Orchestra did not receive the UPDATE_STATUS event", result.stderr)
        self.assertNotIn(API_KEY, result.stderr)

    def test_pythons_before_3_8_are_told_what_is_required(self) -> None:
        versions = os.path.expanduser("~/.pyenv/versions")
        found = 0
        for name in ("python2.7", "python3.6", "python3.7"):
            candidates = (
                [os.path.join(versions, entry, "bin", name) for entry in sorted(os.listdir(versions))]
                if os.path.isdir(versions)
                else []
            )
            candidates.append(shutil.which(name) or "")
            interpreter = next((c for c in candidates if os.path.exists(c) and "shims" not in c), None)
            if interpreter is None:
                continue
            found += 1
            with self.subTest(python=name):
                result = subprocess.run(
                    [interpreter, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import orchestra_sdk"],
                    capture_output=True,
                    text=True,
                    timeout=WAIT,
                )
                self.assertNotEqual(result.returncode, 0)
                self.assertRegex(result.stderr, "Python 3.8 or newer is required|needs Python 3.8 or newer")
        if not found:
            self.skipTest("no Python older than 3.8 here")

    def test_no_site_packages_import_and_update(self) -> None:
        server = Recorder()
        self.addCleanup(server.close)
        env = orchestra_env(server.url)
        result = run_python(
            "import orchestra_sdk; print(orchestra_sdk.OrchestraSDK().update_task(status='RUNNING'))", "-S", env=env
        )
        self.assertEqual(result.stdout, "True\n", result.stderr)
        self.assertEqual(server.events, [status_event("RUNNING", None)])


# ---------------------------------------------------------------------------------------------
# SIGTERM, in a real child process
# ---------------------------------------------------------------------------------------------


@unittest.skipUnless(hasattr(signal, "SIGTERM") and os.name == "posix", "POSIX signals")
class SigtermTest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Recorder()
        self.addCleanup(self.server.close)
        self.folder = temp_folder(self)
        self.env = orchestra_env(self.server.url)

    def start(self, code: str) -> subprocess.Popen[str]:
        child, ready = spawn(self, [sys.executable, "-c", code], self.env)
        self.assertEqual(ready, "ready\n")
        return child

    def test_sigterm_reports_cancelled_runs_finally_and_exits_143(self) -> None:
        marker = os.path.join(self.folder, "finally-ran")
        code = textwrap.dedent(
            f"""\
            import atexit, sys, time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            atexit.register(lambda: open({marker!r} + '.atexit', 'w').close())
            @sdk.run()
            def job():
                try:
                    print('ready', flush=True)
                    for _ in range(400):  # in slices: 3.14 may not see a signal that came just before a sleep
                        time.sleep(0.05)
                finally:
                    open({marker!r}, 'w').close()
            job()
            """
        )
        child = self.start(code)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 143)
        self.assertTrue(os.path.exists(marker))
        self.assertTrue(os.path.exists(marker + ".atexit"))
        self.assertEqual(self.server.events[-1], status_event("CANCELLED", "job cancelled: received SIGTERM."))

    def test_sigterm_while_an_answer_is_awaited_closes_the_connection(self) -> None:
        self.server.then(delay(1.5, reply(200)))  # RUNNING is answered slowly
        code = textwrap.dedent(
            """\
            import sys, time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            print('ready', flush=True)
            @sdk.run()
            def job():
                for _ in range(100):
                    time.sleep(0.05)
            job()
            """
        )
        child, ready = spawn(self, [sys.executable, "-X", "dev", "-c", code], self.env)
        self.assertEqual(ready, "ready\n")
        self.server.wait_for_requests(1)
        time.sleep(0.2)  # the child now waits for the answer
        child.send_signal(signal.SIGTERM)
        _, errors = child.communicate(timeout=WAIT)
        self.assertEqual(child.returncode, 143, errors)
        self.assertNotIn("ResourceWarning", errors)
        self.assertEqual(self.server.statuses()[-1], ("CANCELLED", "job cancelled: received SIGTERM."))

    def test_sigterm_on_any_line_of_a_connections_life_leaves_no_socket_open(self) -> None:
        self.server.keep_alive = True
        code = textwrap.dedent(
            """\
            import linecache, os, signal, sys, threading, time, orchestra_sdk
            snippet, fired = sys.argv[1], []
            def tracer(frame, event, arg):
                if fired or frame.f_code.co_filename != orchestra_sdk.__file__:
                    return None
                def line(frame, event, arg):
                    text = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
                    if not fired and event == "line" and snippet in text:
                        fired.append(frame.f_lineno)
                        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, on this very line
                    return line
                return line
            sdk = orchestra_sdk.OrchestraSDK(timeout=2, deadline=3)
            @sdk.run("job")
            def job():
                sys.settrace(None)
            sys.settrace(tracer)
            try:
                job()
            finally:
                sys.settrace(None)
                print(fired, flush=True)
            """
        )
        snippets = (
            "head, self._head = self._head, None",  # the head start, taken for the first attempt
            "if head.pid != os.getpid() or conn._tunnel_host",  # ...and checked
            "complete = self.fp is None",  # the answer, being closed
            "self._idle.append((key, conn, time.monotonic()))",  # the connection, put back for reuse
            "return response",  # the answer, on its way to the retry loop
        )
        for snippet in snippets:
            with self.subTest(snippet=snippet):
                self.server.requests.clear()
                result = subprocess.run(
                    [sys.executable, "-X", "dev", "-c", code, snippet],
                    cwd=HERE,
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=WAIT,
                )
                self.assertEqual(result.returncode, 143, result.stderr)
                self.assertRegex(result.stdout, r"^\[\d+\]\n$")  # the signal came on that line
                self.assertNotIn("ResourceWarning", result.stderr)
                self.assertEqual(self.server.statuses()[-1], ("CANCELLED", "job cancelled: received SIGTERM."))

    def test_sigterm_while_an_unread_answer_body_is_drained_closes_the_connection(self) -> None:
        headers_sent = threading.Event()
        stop = threading.Event()
        self.addCleanup(stop.set)
        statuses: List[Optional[str]] = []
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)

        held: List[socket.socket] = []  # RUNNING's connection: open, its body never sent

        def close_held() -> None:
            for connection in held:
                connection.close()

        self.addCleanup(close_held)

        def serve() -> None:  # RUNNING: 200 headers now, the body never; then answers at once
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    connection, _ = listener.accept()
                    with contextlib.ExitStack() as closing:
                        data = b""
                        while b"\r\n\r\n" not in data:
                            data += connection.recv(65536)
                        head, _, body = data.partition(b"\r\n\r\n")
                        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                        while len(body) < length:
                            body += connection.recv(65536)
                        statuses.append(json.loads(body).get("status"))
                        if len(statuses) == 1:
                            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
                            held.append(connection)
                            headers_sent.set()
                        else:
                            closing.callback(connection.close)
                            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        threading.Thread(target=serve, daemon=True).start()
        code = textwrap.dedent(
            """\
            import time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK(timeout=3, deadline=4, retries=0)
            print('ready', flush=True)
            @sdk.run("job")
            def job():
                for _ in range(100):
                    time.sleep(0.05)
            job()
            """
        )
        env = orchestra_env(f"http://127.0.0.1:{listener.getsockname()[1]}/hooks")
        child, ready = spawn(self, [sys.executable, "-X", "dev", "-c", code], env)
        self.assertEqual(ready, "ready\n")
        self.assertTrue(headers_sent.wait(WAIT))
        time.sleep(0.1)  # the child now drains the body it did not read (for at most 0.25 s)
        child.send_signal(signal.SIGTERM)
        _, errors = child.communicate(timeout=WAIT)
        self.assertEqual(child.returncode, 143, errors)
        self.assertNotIn("ResourceWarning", errors)
        self.assertEqual(statuses, ["RUNNING", "CANCELLED"])

    @unittest.skipUnless(hasattr(os, "fork"), "os.fork")
    @unittest.skipIf(sys.version_info >= (3, 14), "asyncio 3.14+ hangs a child forked inside a task that exits")
    def test_a_child_forked_by_another_task_while_running_is_reported_never_hangs_on_an_import(self) -> None:
        code = textwrap.dedent(
            """\
            import asyncio, os, sys, warnings, orchestra_sdk
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose here
            sdk = orchestra_sdk.OrchestraSDK()

            async def forker():
                while "urllib.request" not in sys.modules:  # the run's first report is under way
                    await asyncio.sleep(0.0005)
                pid = os.fork()
                if pid == 0:
                    import urllib.request  # what the report may have been importing at the fork
                    os._exit(0)
                for _ in range(100):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        return "child exited %d" % (status >> 8)
                    await asyncio.sleep(0.05)
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return "child hung"

            @sdk.run("job")
            async def job():
                await asyncio.sleep(0.3)

            async def main():
                forking = asyncio.ensure_future(forker())
                await asyncio.sleep(0)
                await job()
                return await forking

            print(asyncio.run(main()))
            """
        )
        result = run_python(code, env=self.env)
        self.assertEqual(result.stdout, "child exited 0\n", result.stderr)
        self.assertEqual(self.server.statuses(), [("RUNNING", "job started."), ("SUCCEEDED", "job succeeded.")])

    def test_sigterm_in_an_async_run(self) -> None:
        code = textwrap.dedent(
            """\
            import asyncio, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            @sdk.run()
            async def job():
                print('ready', flush=True)
                for _ in range(600):  # in slices: 3.14 may not see a signal that came just before a sleep
                    await asyncio.sleep(0.05)
            asyncio.run(job())
            """
        )
        child = self.start(code)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 143)
        self.assertEqual(self.server.events[-1], status_event("CANCELLED", "job cancelled: received SIGTERM."))

    def test_sigterm_during_the_final_report_waits_for_it_and_the_log(self) -> None:
        self.server.then(reply(200), delay(1.0, reply(200)))  # the final status is answered slowly
        code = textwrap.dedent(
            """\
            import orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK(log_file='/nonexistent/x.log', send_logs=True)
            print('ready', flush=True)
            with sdk.run('job'):
                print('working')
            """
        )
        child = self.start(code)
        self.server.wait_for_requests(2)
        child.send_signal(signal.SIGTERM)  # while the SUCCEEDED request waits for its answer
        self.assertEqual(child.wait(WAIT), 143)
        kinds = [(e["event_type"], e.get("status")) for e in self.server.events]
        self.assertEqual(kinds, [("UPDATE_STATUS", "RUNNING"), ("UPDATE_STATUS", "SUCCEEDED"), ("LOG", None)])

    def test_sigterm_during_a_final_report_that_hangs_ends_the_process_in_bounded_time(self) -> None:
        self.server.then(reply(200))
        self.server.default = hang()  # the final status is never answered; the deadline is 30 s
        code = textwrap.dedent(
            """\
            import orchestra_sdk
            orchestra_sdk.HURRY_SECONDS = 1.0  # the bound under test, shortened for the test's sake
            sdk = orchestra_sdk.OrchestraSDK()
            print('ready', flush=True)
            with sdk.run('job'):
                pass
            """
        )
        child = self.start(code)
        self.server.wait_for_requests(2)
        signalled = time.monotonic()
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 143)
        self.assertLess(time.monotonic() - signalled, 1.0 + 2)  # a bound (HURRY_SECONDS + margin), not a speed
        assert child.stderr is not None
        self.assertIn("Orchestra did not receive the UPDATE_STATUS event", child.stderr.read())

    def test_a_second_sigterm_while_the_run_ends_changes_nothing(self) -> None:
        code = textwrap.dedent(
            """\
            import time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            with sdk.run('job'):
                try:
                    print('ready', flush=True)
                    for _ in range(400):  # in slices: 3.14 may not see a signal that came just before a sleep
                        time.sleep(0.05)
                finally:
                    time.sleep(0.3)  # cleaning up when the second SIGTERM arrives
            """
        )
        for gap in (0.1, 0.6):  # during the body's cleanup; after the final status, while exiting
            with self.subTest(gap=gap):
                self.server.requests.clear()
                child = self.start(code)
                child.send_signal(signal.SIGTERM)
                time.sleep(gap)
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
                self.assertEqual(child.wait(WAIT), 143)
                self.assertEqual(self.server.statuses()[-1], ("CANCELLED", "job cancelled: received SIGTERM."))

    def test_sigterm_while_a_task_of_the_run_blocks_the_loop_ends_it_at_once(self) -> None:
        code = textwrap.dedent(
            """\
            import asyncio, time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            @sdk.run()
            async def job():
                async def blocker():
                    print('ready', flush=True)
                    for _ in range(400):  # in slices: 3.14 may not see a signal that came just before a sleep
                        time.sleep(0.05)  # a synchronous driver in a task the run started
                await asyncio.ensure_future(blocker())
            asyncio.run(job())
            """
        )
        child = self.start(code)
        signalled = time.monotonic()
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 143)
        self.assertLess(time.monotonic() - signalled, 5.0)  # not the 20 s the blocking call lasts
        self.assertEqual(self.server.events[-1], status_event("CANCELLED", "job cancelled: received SIGTERM."))
        assert child.stderr is not None
        self.assertNotIn("Traceback", child.stderr.read())

    def test_sigterm_inside_a_step_reports_the_run_cancelled_without_waiting_for_the_step(self) -> None:
        code = textwrap.dedent(
            """\
            import time, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            with sdk.run('job'):
                with sdk.run('part'):
                    print('ready', flush=True)
                    for _ in range(400):  # in slices: 3.14 may not see a signal that came just before a sleep
                        time.sleep(0.05)
            """
        )
        child = self.start(code)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 143)
        self.assertEqual(
            self.server.statuses(),
            [("RUNNING", "job started."), (None, "part started."), ("CANCELLED", "job cancelled: received SIGTERM.")],
        )

    @unittest.skipUnless(hasattr(os, "fork"), "os.fork")
    @unittest.skipIf(
        sys.version_info >= (3, 14),
        "asyncio 3.14+ cannot unwind a child forked inside a task: it hangs without the SDK too",
    )
    def test_a_child_forked_inside_a_coroutine_run_exits_as_it_says_and_the_parent_reports(self) -> None:
        code = textwrap.dedent(
            """\
            import asyncio, os, sys, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            @sdk.run()
            async def job():
                pid = os.fork()
                if pid == 0:
                    sys.exit(3)  # unwinds through the parent's run, in the child
                _, status = os.waitpid(pid, 0)
                print(status >> 8, flush=True)
                await asyncio.sleep(0.1)
            asyncio.run(job())
            """
        )
        result = run_python(code, env=self.env)
        self.assertEqual((result.returncode, result.stdout), (0, "3\n"), result.stderr)
        self.assertEqual(self.server.statuses(), [("RUNNING", "job started."), ("SUCCEEDED", "job succeeded.")])

    def test_ctrl_c_during_the_final_report_does_not_lose_it(self) -> None:
        self.server.then(reply(200), delay(0.3, reply(503)), delay(0.3, reply(200)))  # SUCCEEDED is retried
        code = textwrap.dedent(
            """\
            import orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK(backoff=0.05)
            print('ready', flush=True)
            with sdk.run('job'):
                pass
            """
        )
        child = self.start(code)
        self.server.wait_for_requests(2)
        child.send_signal(signal.SIGINT)
        self.assertEqual(child.wait(WAIT), -signal.SIGINT)  # then KeyboardInterrupt, as without the SDK
        self.assertEqual(self.server.statuses()[-1], ("SUCCEEDED", "job succeeded."))
        assert child.stderr is not None
        self.assertIn("Interrupted: sending the final status to Orchestra first", child.stderr.read())

    def test_a_process_terminated_inside_a_run_dies_of_sigterm_as_without_the_sdk(self) -> None:
        for kind in ("sync", "async"):
            code = textwrap.dedent(
                f"""\
                import asyncio, multiprocessing, time, orchestra_sdk
                sdk = orchestra_sdk.OrchestraSDK()
                def child():
                    time.sleep(20)
                def body():
                    process = multiprocessing.get_context("fork").Process(target=child)
                    process.start()
                    time.sleep(0.2)
                    process.terminate()
                    process.join(10)
                    print(process.exitcode, flush=True)
                if {kind!r} == "sync":
                    with sdk.run("job"):
                        body()
                else:
                    async def job():
                        async with sdk.run("job"):
                            body()
                    asyncio.run(job())
                """
            )
            with self.subTest(kind=kind):
                self.server.requests.clear()
                result = run_python(code, env=self.env)
                self.assertEqual((result.stdout, result.returncode), ("-15\n", 0), result.stderr)
                self.assertEqual(self.server.statuses()[-1], ("SUCCEEDED", "job succeeded."))

    def test_own_sigterm_handler_is_left_alone(self) -> None:
        code = textwrap.dedent(
            """\
            import os, signal, sys, time, orchestra_sdk
            def mine(signum, frame):
                os.write(1, b'own handler\\n'); sys.exit(5)  # print() here could re-enter print('ready')
            signal.signal(signal.SIGTERM, mine)
            sdk = orchestra_sdk.OrchestraSDK()
            with sdk.run('job'):
                assert signal.getsignal(signal.SIGTERM) is mine
                print('ready', flush=True)
                for _ in range(400):  # in slices: 3.14 may not see a signal that came just before a sleep
                    time.sleep(0.05)
            """
        )
        child = self.start(code)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 5)
        assert child.stdout is not None
        self.assertEqual(child.stdout.read(), "own handler\n")
        self.assertEqual(self.server.events[-1], status_event("FAILED", "job failed. Error: exit code 5"))

    def test_run_in_a_worker_thread_leaves_signals_alone(self) -> None:
        code = textwrap.dedent(
            """\
            import signal, threading, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            seen = []
            def work():
                with sdk.run('job'):
                    seen.append(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
            thread = threading.Thread(target=work); thread.start(); thread.join()
            print(seen)
            """
        )
        result = run_python(code, env=self.env)
        self.assertEqual(result.stdout, "[True]\n", result.stderr)
        self.assertEqual(self.server.events[-1], status_event("SUCCEEDED", "job succeeded."))

    def test_default_disposition_is_restored_after_the_run(self) -> None:
        code = textwrap.dedent(
            """\
            import signal, orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            with sdk.run('job'):
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
            """
        )
        result = run_python(code, env=self.env)
        self.assertEqual(result.stdout, "True\n", result.stderr)


def spawn(test: unittest.TestCase, argv: List[str], env: Dict[str, str]) -> Tuple[subprocess.Popen[str], str]:
    """Start a child (no stdin, text pipes out), ended with the test; return it and its first line."""
    child = subprocess.Popen(
        argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    test.addCleanup(kill_if_running, child)
    assert child.stdout is not None
    return child, wait_for_line(child.stdout)


def wait_for_pid(pid: int, timeout: float = WAIT) -> int:
    """os.waitpid, bounded: a child still running after `timeout` is killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def kill_if_running(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(WAIT)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def wait_for_line(stream: Any, timeout: float = WAIT) -> str:
    """Read one line from a pipe, giving up after `timeout` seconds."""
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


class ConcurrencyTest(SDKTestCase):
    def test_sixteen_threads_sending_a_hundred_updates_each(self) -> None:
        sdk = self.sdk()
        results: List[bool] = []
        lock = threading.Lock()

        def send(thread: int) -> None:
            for n in range(100):
                ok = sdk.update_task(message=f"t{thread}-{n}")
                with lock:
                    results.append(ok)

        threads = [threading.Thread(target=send, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(results.count(True), 1600)
        messages = sorted(e["message"] for e in self.server.events)
        self.assertEqual(messages, sorted(f"t{t}-{n}" for t in range(16) for n in range(100)))
        self.assertTrue(all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in self.server.requests))


# ---------------------------------------------------------------------------------------------
# Command line, as real subprocesses
# ---------------------------------------------------------------------------------------------


class CLITest(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Recorder()
        self.addCleanup(self.server.close)
        self.env = orchestra_env(self.server.url, PYTHON_COLORS="0")  # 3.14's argparse colours help under FORCE_COLOR

    def cli(
        self, *args: str, stdin: Optional[bytes] = None, env: Optional[Dict[str, str]] = None
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [sys.executable, MODULE_FILE, *args],
            cwd=HERE,
            env=env or self.env,
            input=stdin,
            capture_output=True,
            timeout=WAIT,
        )
        for stream in (result.stdout, result.stderr):
            self.assertNotIn(API_KEY.encode(), stream)
        return result

    def test_run_success_passes_output_through_byte_for_byte(self) -> None:
        code = "import sys; sys.stdout.buffer.write(b'out\\x00\\xff\\n'); sys.stderr.buffer.write(b'err\\r\\n')"
        result = self.cli("run", "--", sys.executable, "-c", code)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, b"out\x00\xff\n", b"err\r\n"))
        name = os.path.basename(sys.executable)
        self.assertEqual(self.server.statuses(), [("RUNNING", f"{name} started."), ("SUCCEEDED", f"{name} succeeded.")])

    def test_run_failure_exit_status_and_message(self) -> None:
        result = self.cli("run", "--name", "load", "--", sys.executable, "-c", "import sys; sys.exit(3)")
        self.assertEqual(result.returncode, 3)
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "load failed. Error: exit code 3"))

    def test_run_with_send_logs_keeps_output_and_last_error_line(self) -> None:
        code = (
            "import sys; print('hello'); print('Traceback...', file=sys.stderr); "
            "print('KeyError: x', file=sys.stderr); sys.exit(4)"
        )
        result = self.cli("run", "--name", "job", "--send-logs", "--", sys.executable, "-c", code)
        self.assertEqual(result.returncode, 4)
        self.assertEqual(result.stdout, b"hello\n")
        self.assertEqual(result.stderr, b"Traceback...\nKeyError: x\n")
        events = self.server.events
        self.assertEqual(
            (events[1]["status"], events[1]["message"]), ("FAILED", "job failed. Error: exit code 4: KeyError: x")
        )
        self.assertEqual(events[2]["event_type"], "LOG")
        self.assertEqual(events[2]["log_name"], "job")
        self.assertEqual(sorted(events[2]["data"].splitlines()), sorted(["hello", "Traceback...", "KeyError: x"]))

    def test_run_killed_by_a_signal(self) -> None:
        result = self.cli(
            "run",
            "--name",
            "job",
            "--",
            sys.executable,
            "-c",
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        )
        self.assertEqual(result.returncode, 128 + 9)
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "job failed. Error: killed by SIGKILL (exit code 137)"))

    @unittest.skipUnless(hasattr(signal, "SIGRTMIN"), "real-time signals")
    def test_run_killed_by_a_signal_without_a_name(self) -> None:
        code = "import os, signal; os.kill(os.getpid(), signal.SIGRTMIN + 1)"
        result = self.cli("run", "--name", "job", "--", sys.executable, "-c", code)
        signum = int(signal.SIGRTMIN) + 1
        self.assertEqual(result.returncode, 128 + signum)
        message = f"job failed. Error: killed by signal {signum} (exit code {128 + signum})"
        self.assertEqual(self.server.statuses()[-1], ("FAILED", message))

    def test_send_logs_keeps_a_long_line_without_a_newline(self) -> None:
        code = "import sys; sys.stdout.write('x' * 100000)"
        result = self.cli("run", "--name", "job", "--send-logs", "--", sys.executable, "-c", code)
        self.assertEqual(result.stdout, b"x" * 100000)
        self.assertEqual(self.server.events[-1]["data"], "x" * 100000)

    def test_command_not_found_and_not_executable(self) -> None:
        result = self.cli("run", "--", "no-such-command-xyz")
        self.assertEqual(result.returncode, 127)
        self.assertIn(b"no-such-command-xyz: command not found", result.stderr)
        self.assertEqual(
            self.server.statuses()[-1],
            ("FAILED", "no-such-command-xyz failed. Error: no-such-command-xyz: command not found"),
        )
        folder = temp_folder(self)
        script = os.path.join(folder, "script.sh")
        with open(script, "w") as handle:
            handle.write("#!/bin/sh\necho hi\n")
        self.assertEqual(self.cli("run", "--", script).returncode, 126)

    def test_python_run_inside_the_wrapper_reports_steps(self) -> None:
        code = "import orchestra_sdk\nsdk = orchestra_sdk.OrchestraSDK()\n@sdk.run()\ndef inner():\n    pass\ninner()\n"
        result = self.cli("run", "--name", "job", "--", sys.executable, "-c", code)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            self.server.statuses(),
            [
                ("RUNNING", "job started."),
                (None, "inner started."),
                (None, "inner succeeded."),
                ("SUCCEEDED", "job succeeded."),
            ],
        )

    def test_sigterm_to_the_wrapper_reaches_the_command_and_ends_cancelled(self) -> None:
        code = "import signal, sys, time\nprint('ready', flush=True)\ntime.sleep(30)\n"
        argv = [sys.executable, MODULE_FILE, "run", "--name", "job", "--", sys.executable, "-c", code]
        wrapper, ready = spawn(self, argv, self.env)
        self.assertEqual(ready, "ready\n")
        wrapper.send_signal(signal.SIGTERM)
        self.assertEqual(wrapper.wait(WAIT), 143)
        self.assertEqual(self.server.statuses()[-1], ("CANCELLED", "job cancelled: received SIGTERM."))

    @unittest.skipUnless(sys.platform.startswith("linux"), "a pseudo-terminal as controlling terminal")
    def test_ctrl_c_in_a_terminal_reaches_the_command_exactly_once(self) -> None:
        import pty
        import select

        code = textwrap.dedent(
            """\
            import signal, sys, time
            count = []
            signal.signal(signal.SIGINT, lambda *a: count.append(1))
            print('ready', flush=True)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not count:
                time.sleep(0.01)
            time.sleep(0.3)
            print('sigints', len(count), flush=True)
            """
        )
        argv = [sys.executable, MODULE_FILE, "run", "--name", "job", "--", sys.executable, "-c", code]
        with warnings.catch_warnings():  # 3.15 warns of forkpty() with threads; the child only execs
            warnings.simplefilter("ignore", DeprecationWarning)
            pid, master = pty.fork()  # the child gets a new session with the pty as its terminal
        if pid == 0:  # pragma: no cover - the child process
            os.execve(sys.executable, argv, self.env)
        self.addCleanup(os.close, master)
        output = b""
        deadline = time.monotonic() + WAIT
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 1024)
                except OSError:  # the terminal closed: every process on it has exited
                    break
                if not chunk:
                    break
                output += chunk
            if b"ready" in output and not sent:
                os.write(master, b"\x03")  # Ctrl-C, as typed
                sent = True
        status = wait_for_pid(pid)
        self.assertIn(b"sigints 1", output)
        self.assertEqual(os.WEXITSTATUS(status), 0)
        self.assertEqual(self.server.statuses()[-1], ("SUCCEEDED", "job succeeded."))

    def test_update_output_and_log_commands(self) -> None:
        self.assertEqual(self.cli("update", "--status", "running", "--message", "hi").returncode, 0)
        self.assertEqual(self.cli("output", "rows", "42").returncode, 0)
        self.assertEqual(self.cli("output", "label", "not json").returncode, 0)
        self.assertEqual(self.cli("log", "-", stdin=b"log line\n").returncode, 0)
        events = self.server.events
        self.assertEqual(events[0], status_event("RUNNING", "hi"))
        self.assertEqual((events[1]["output_name"], events[1]["output_value"]), ("rows", 42))
        self.assertEqual(events[2]["output_value"], "not json")
        self.assertEqual(
            (events[3]["event_type"], events[3]["log_name"], events[3]["data"]), ("LOG", "stdin", "log line\n")
        )

    def test_log_command_with_a_missing_file(self) -> None:
        result = self.cli("log", "/nonexistent/orchestra.log")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            b"orchestra-sdk: No log sent to Orchestra: log file '/nonexistent/orchestra.log' not found.\n",
        )
        self.assertEqual(self.server.requests, [])

    def test_update_failures_and_misuse(self) -> None:
        self.server.default = reply(401, b'{"error": "Invalid API key"}')
        result = self.cli("update", "--message", "x")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"HTTP 401: Invalid API key", result.stderr)
        result = self.cli("update", "--status", "bogus")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count(b"\n"), 1)
        self.assertIn(b"unknown status 'bogus'", result.stderr)
        self.assertEqual(self.cli("update").returncode, 2)
        self.assertEqual(self.cli("output", "", "1").returncode, 2)

    def test_output_values_json_cannot_carry_are_sent_as_strings(self) -> None:
        for text in ("NaN", "Infinity", "[" * 100000, '{"a": NaN}'):
            with self.subTest(value=text[:12]):
                self.assertEqual(self.cli("output", "x", text).returncode, 0)
                self.assertEqual(self.server.events[-1]["output_value"], text)
        self.assertEqual(self.cli("output", "x", "[1, 2.5]").returncode, 0)
        self.assertEqual(self.server.events[-1]["output_value"], [1, 2.5])

    def test_log_from_standard_input_keeps_only_the_tail_as_it_streams(self) -> None:
        code = textwrap.dedent(
            """\
            import sys, orchestra_sdk
            status = orchestra_sdk.main(["log", "-"])
            peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
            print(status, int(peak) // 1024)
            """
        )
        big = (b"line of a long log\n" * 60 + b"\xff") * 64 * 1024  # about 73 MiB, bad bytes included
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=HERE, env=self.env, input=big, capture_output=True, timeout=WAIT
        )
        status, peak_mib = result.stdout.split()
        self.assertEqual(status, b"0", result.stderr)
        self.assertLess(int(peak_mib), 45)  # memory, not time: the 73 MiB are never held at once
        data = self.server.events[-1]["data"]
        self.assertLessEqual(len(data.encode()), 1_000_000)
        self.assertTrue(data.endswith("line of a long log\n\ufffd"))

    @unittest.skipUnless(os.path.exists("/bin/sh"), "a POSIX shell")
    def test_log_from_a_closed_standard_input_is_one_error_line(self) -> None:
        result = subprocess.run(
            ["/bin/sh", "-c", 'exec "$0" "$1" log - <&-', sys.executable, MODULE_FILE],
            cwd=HERE,
            env=self.env,
            capture_output=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr, b"orchestra-sdk: error: standard input is closed: pipe the log in, or name a log file\n"
        )
        self.assertEqual(self.server.requests, [])

    def test_arguments_in_a_locale_that_is_not_utf8_are_sent_as_typed(self) -> None:
        env = dict(self.env, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
        argv = [sys.executable.encode(), MODULE_FILE.encode(), b"update", b"--message", "Grüße ✓".encode()]
        result = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, timeout=WAIT)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.server.events[-1]["message"], "Grüße ✓")

    def test_listen_prints_any_event_whatever_the_output_encoding(self) -> None:
        env = dict(self.env, PYTHONIOENCODING="ascii")
        child, first = spawn(self, [sys.executable, MODULE_FILE, "listen"], env)
        url = first.split()[2]
        sdk = OrchestraSDK(api_key=API_KEY, retries=0, timeout=WAIT)
        sdk.webhook_url = url
        sdk.task_run_id = TASK_RUN_ID
        self.assertTrue(sdk.update_task(message="Grüße ✓"))
        assert child.stdout is not None
        self.assertIn('UPDATE_STATUS "Gr\\xfc\\xdfe \\u2713"', wait_for_line(child.stdout))

    def test_a_password_with_a_slash_in_the_url_is_never_shown(self) -> None:
        url = "https://user:s3cr/et@orchestra.example/hook"
        self.assertEqual(orchestra_sdk._redact_url(url), "https://***@orchestra.example/hook")
        result = self.cli("check", env=dict(self.env, ORCHESTRA_WEBHOOK_URL=url))
        self.assertEqual(result.returncode, 2)
        self.assertNotIn(b"s3cr", result.stdout + result.stderr)
        with mock.patch.dict(os.environ, {"ORCHESTRA_WEBHOOK_URL": url}):
            self.assertNotIn("s3cr", repr(OrchestraSDK(api_key=API_KEY)))

    def test_check_lists_every_problem_at_once(self) -> None:
        env = {k: v for k, v in self.env.items() if not k.startswith("ORCHESTRA")}
        env["ORCHESTRA_WEBHOOK_URL"] = "http://orchestra.example/"
        result = self.cli("check", env=env)
        self.assertEqual(result.returncode, 2)
        problems = [line for line in result.stdout.decode().splitlines() if line.startswith("cannot report:")]
        self.assertEqual(len(problems), 3, result.stdout)
        self.assertIn("no API key", problems[0])
        self.assertIn("ORCHESTRA_TASK_RUN_ID is not set", problems[1])
        self.assertIn("uses plain http", problems[2])

    def test_check_reach_connects_without_sending_an_event(self) -> None:
        result = self.cli("check", "--reach")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn(b"ready: updates will be sent (the webhook was reached; no event was sent)", result.stdout)
        self.assertEqual(self.server.requests, [])
        port = refusing_port(self)
        result = self.cli("check", "--reach", env=dict(self.env, ORCHESTRA_WEBHOOK_URL=f"http://127.0.0.1:{port}/"))
        self.assertEqual(result.returncode, 2)
        self.assertIn(f"cannot report: cannot reach 127.0.0.1:{port}: ConnectionRefusedError".encode(), result.stdout)

    def test_plain_http_to_another_host_only_when_explicitly_allowed_and_loudly(self) -> None:
        url = self.server.url.replace("127.0.0.1", "127.1")  # the same server, not named as loopback
        refused = self.cli("update", "--message", "x", env=dict(self.env, ORCHESTRA_WEBHOOK_URL=url))
        self.assertEqual(refused.returncode, 1)
        self.assertIn(b"ORCHESTRA_ALLOW_INSECURE_HTTP=1 allows it anywhere", refused.stderr)
        env = dict(self.env, ORCHESTRA_WEBHOOK_URL=url, ORCHESTRA_ALLOW_INSECURE_HTTP="1")
        allowed = self.cli("update", "--message", "x", env=env)
        self.assertEqual(allowed.returncode, 0, allowed.stderr)
        self.assertIn(b"the API key goes in clear text to http://127.1:", allowed.stderr)
        self.assertEqual(len(self.server.requests), 1)

    def test_listen_answers_a_malformed_request_without_a_traceback(self) -> None:
        listener, first = spawn(self, [sys.executable, MODULE_FILE, "listen"], self.env)
        port = int(first.split()[2].rstrip("/").rpartition(":")[2])
        for request in (
            b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 200000\r\n\r\n" + b"[" * 200000,
        ):
            with socket.create_connection(("127.0.0.1", port), WAIT) as sock:
                sock.settimeout(WAIT)
                sock.sendall(request)
                self.assertTrue(sock.recv(64).startswith(b"HTTP/1.1 400"))
        listener.terminate()
        listener.wait(WAIT)
        assert listener.stderr is not None
        self.assertNotIn("Traceback", listener.stderr.read())

    def test_listen_on_every_interface_says_which_url_a_container_can_use(self) -> None:
        child, first = spawn(self, [sys.executable, MODULE_FILE, "listen", "--host", "0.0.0.0"], self.env)
        assert child.stdout is not None
        second = wait_for_line(child.stdout)
        self.assertIn("Listening on http://0.0.0.0:", first)
        self.assertIn("http://host.docker.internal:", second)
        self.assertIn("ORCHESTRA_ALLOW_INSECURE_HTTP=1", second)

    def test_local_mode_puts_only_this_module_on_the_commands_path(self) -> None:
        code = "import os; print(sorted(os.listdir(os.environ['PYTHONPATH'].split(os.pathsep)[0])))"
        result = self.cli("run", "--local", "--", sys.executable, "-c", code)
        self.assertEqual(result.stdout, b"['orchestra_sdk.py']\n", result.stderr)

    def test_a_final_status_the_command_reported_itself_stands_on_exit_0(self) -> None:
        manual = "import orchestra_sdk; orchestra_sdk.OrchestraSDK().update_task(status='FAILED', message='bad rows')"
        swallowed = textwrap.dedent(
            """\
            import orchestra_sdk
            sdk = orchestra_sdk.OrchestraSDK()
            @sdk.run(reraise=False)
            def load():
                raise ValueError("bad rows")
            load()
            """
        )
        shell = f"{sys.executable} {MODULE_FILE} update --status failed --message 'bad rows'; echo done"
        cases = [
            ([sys.executable, "-c", manual], "bad rows"),
            ([sys.executable, "-c", swallowed], "load failed. Error: bad rows"),
            (["/bin/sh", "-c", shell], "bad rows"),
        ]
        for command, message in cases:
            with self.subTest(command=command[-1][:40]):
                self.server.requests.clear()
                result = self.cli("run", "--name", "job", "--", *command)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual(self.server.statuses()[-1], ("FAILED", message))

    def test_a_non_zero_exit_fails_the_run_whatever_the_command_reported(self) -> None:
        code = "import sys, orchestra_sdk; orchestra_sdk.OrchestraSDK().update_task(status='SUCCEEDED'); sys.exit(3)"
        self.assertEqual(self.cli("run", "--name", "job", "--", sys.executable, "-c", code).returncode, 3)
        self.assertEqual(self.server.statuses()[-1], ("FAILED", "job failed. Error: exit code 3"))

    def test_local_mode_ends_with_the_commands_own_failure(self) -> None:
        code = "import orchestra_sdk; orchestra_sdk.OrchestraSDK().update_task(status='FAILED', message='no')"
        result = self.cli("run", "--local", "--", sys.executable, "-c", code)
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"local run finished: FAILED", result.stderr)

    @unittest.skipUnless(os.path.exists("/bin/sh"), "a POSIX shell")
    def test_a_background_process_holding_the_output_does_not_hold_the_wrapper(self) -> None:
        started = time.monotonic()
        result = self.cli("run", "--name", "job", "--send-logs", "--", "/bin/sh", "-c", "sleep 6 & echo started")
        self.assertLess(time.monotonic() - started, 5.0)  # the background sleep holds the pipe for 6 s
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"a process it started still holds its output", result.stderr)
        self.assertEqual(self.server.statuses()[-2], ("SUCCEEDED", "job succeeded."))
        self.assertEqual(self.server.events[-1]["data"], "started\n")

    @unittest.skipUnless(hasattr(signal, "SIGTERM") and os.name == "posix", "POSIX signals")
    def test_sigterm_while_running_is_being_sent_cancels_before_the_command_starts(self) -> None:
        marker = os.path.join(temp_folder(self), "started")
        self.server.then(delay(1.5, reply(200)))  # RUNNING is answered slowly
        code = f"open({marker!r}, 'w').close()"
        child = subprocess.Popen(
            [sys.executable, MODULE_FILE, "run", "--name", "job", "--", sys.executable, "-c", code],
            cwd=HERE,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(kill_if_running, child)
        self.server.wait_for_requests(1)
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT), 143)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(
            self.server.statuses(), [("RUNNING", "job started."), ("CANCELLED", "job cancelled: received SIGTERM.")]
        )

    def test_check_good_and_broken_environment(self) -> None:
        result = self.cli("check")
        self.assertEqual(result.returncode, 0)
        self.assertIn(TASK_RUN_ID.encode(), result.stdout)
        self.assertIn(b"API key:     set, from ORCHESTRA_API_KEY", result.stdout)
        env = dict(self.env, ORCHESTRA_TASK_RUN_ID="garbage", ORCHESTRA_WEBHOOK_URL="https://u:pw@h.example/")
        result = self.cli("check", env=env)
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"cannot report: ORCHESTRA_TASK_RUN_ID='garbage' is not a UUID", result.stdout)
        self.assertNotIn(b"pw@", result.stdout)
        env = dict(self.env)
        del env["ORCHESTRA_API_KEY"]
        self.assertIn(b"API key:     missing", self.cli("check", env=env).stdout)

    def test_help_for_every_command(self) -> None:
        for command in ("run", "update", "output", "log", "check", "listen"):
            with self.subTest(command=command):
                result = self.cli(command, "--help")
                self.assertEqual(result.returncode, 0)
                self.assertIn(b"usage: orchestra-sdk " + command.encode(), result.stdout)

    def test_python_dash_m_works(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "orchestra_sdk", "--version"], cwd=HERE, capture_output=True, timeout=WAIT
        )
        self.assertEqual(result.stdout.strip(), f"orchestra-sdk {orchestra_sdk.__version__}".encode())

    def test_local_mode_shows_every_event_and_a_summary(self) -> None:
        folder = temp_folder(self)
        shutil.copy(MODULE_FILE, folder)  # only the vendored file: the command must still import it
        env = {k: v for k, v in self.env.items() if not k.startswith("ORCHESTRA") and k != "PYTHONPATH"}
        script = os.path.join(HERE, "examples", "quickstart.py")
        result = subprocess.run(
            [sys.executable, os.path.join(folder, "orchestra_sdk.py"), "run", "--local", "--", sys.executable, script],
            cwd=folder,
            env=env,
            capture_output=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, b"total amount: 9030\n")
        err = result.stderr.decode()
        name = os.path.basename(sys.executable)
        for expected in (
            f'UPDATE_STATUS RUNNING "{name} started."',
            'UPDATE_STATUS "load_orders started."',
            'UPDATE_STATUS "Loaded 42 orders."',
            "SET_OUTPUT rows_loaded = 42",
            "LOG load_orders (",
            f'UPDATE_STATUS SUCCEEDED "{name} succeeded."',
            "local run finished: SUCCEEDED, 7 events",
        ):
            self.assertIn(expected, err)
        self.assertNotIn(API_KEY, err)

    def test_listen_prints_its_url_then_each_event(self) -> None:
        # A suite started in the background (cmd &) ignores SIGINT, and so would the listener.
        code = (
            "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"sys.argv = [{MODULE_FILE!r}, 'listen']; runpy.run_path({MODULE_FILE!r}, run_name='__main__')"
        )
        listener, first = spawn(self, [sys.executable, "-u", "-c", code], self.env)
        assert listener.stdout is not None
        self.assertTrue(first.startswith("Listening on http://127.0.0.1:"), first)
        url = first.split()[2]
        env = dict(self.env, ORCHESTRA_WEBHOOK_URL=url)
        self.assertEqual(self.cli("update", "--status", "FAILED", "--message", "boom", env=env).returncode, 0)
        self.assertEqual(self.cli("output", "n", "[1, 2]", env=env).returncode, 0)
        self.assertTrue(wait_for_line(listener.stdout).endswith('UPDATE_STATUS FAILED "boom"\n'))
        self.assertTrue(wait_for_line(listener.stdout).endswith("SET_OUTPUT n = [1, 2]\n"))
        listener.send_signal(signal.SIGINT)
        self.assertEqual(listener.wait(WAIT), 0)


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


class HTTPTriggerTest(SDKTestCase):
    def test_the_id_is_read_from_headers_in_any_form(self) -> None:
        import email.message

        message = email.message.Message()
        message["Orchestra-Task-Run-Id"] = TASK_RUN_ID
        forms: List[Any] = [
            {"orchestra_task_run_id": TASK_RUN_ID},
            {"ORCHESTRA-TASK-RUN-ID": f" {TASK_RUN_ID.upper()} "},
            [("Content-Type", "application/json"), ("Orchestra_Task_Run_Id", TASK_RUN_ID)],
            {"HTTP_ORCHESTRA_TASK_RUN_ID": TASK_RUN_ID, "wsgi.input": object()},  # a WSGI environ
            message,  # http.server's self.headers
        ]
        for headers in forms:
            with self.subTest(headers=type(headers).__name__):
                sdk = self.sdk()
                sdk.task_run_id = None
                sdk.configure_http_request(headers)
                self.assertEqual(str(sdk.task_run_id), TASK_RUN_ID)

    def test_a_missing_or_malformed_id_is_a_warning_never_an_exception(self) -> None:
        os.environ["ORCHESTRA_WEBHOOK_URL"] = self.server.url
        for headers, problem in [
            ({}, "the request header orchestra_task_run_id is missing (a proxy"),
            ({"orchestra_task_run_id": "nope"}, "orchestra_task_run_id='nope' is not a UUID"),
            (None, "the request headers are not a mapping"),
            ([("a",), 3], "is missing"),
        ]:
            with self.subTest(headers=headers):
                self.log.lines.clear()
                sdk = self.sdk()
                sdk.configure_http_request(headers)
                self.assertIsNone(sdk.task_run_id)
                self.assertFalse(sdk.update_task(message="x"))
                (warning,) = self.log_lines("WARNING")
                self.assertIn(problem, warning)
        self.assertEqual(self.server.requests, [])

    def test_the_webhook_url_never_comes_from_the_request(self) -> None:
        sdk = self.sdk()
        sdk.configure_http_request({"orchestra_task_run_id": TASK_RUN_ID, "orchestra_webhook_url": "https://x.example"})
        self.assertEqual(sdk.webhook_url, self.server.url)

    def test_the_example_service_runs_concurrent_triggers_each_on_its_own(self) -> None:
        import urllib.error
        import urllib.request

        script = os.path.join(HERE, "examples", "http_service.py")
        _child, first = spawn(self, [sys.executable, script, "--port", "0"], orchestra_env(self.server.url))
        service = first.split()[-1]
        run_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        answers: List[int] = []

        def trigger(run_id: Optional[str]) -> None:
            headers = {"orchestra_task_run_id": run_id} if run_id else {}
            request = urllib.request.Request(service, data=b"", headers=headers, method="POST")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with opener.open(request, timeout=WAIT) as response:
                    answers.append(response.status)
            except urllib.error.HTTPError as error:
                answers.append(error.code)

        triggers = [threading.Thread(target=trigger, args=(run_id,)) for run_id in [*run_ids, None]]
        for thread in triggers:
            thread.start()
        for thread in triggers:
            thread.join(WAIT)
        self.assertEqual(sorted(answers), [202, 202, 400])
        deadline = time.monotonic() + WAIT
        while sum(e["event_type"] == "LOG" for e in self.server.events) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for run_id, other in (run_ids, run_ids[::-1]):
            events = [e for e in self.server.events if e["task_run_id"] == run_id]
            kinds = [e.get("status") or e["event_type"] for e in events]
            self.assertEqual(kinds, ["RUNNING", "SET_OUTPUT", "SUCCEEDED", "LOG"])
            log = events[-1]["data"]
            self.assertIn(f"loading orders for run {run_id}", log)
            self.assertIn(f"run {run_id}: 3 orders had no customer", log)
            self.assertNotIn(other, log)
        self.assertEqual(len(self.server.requests), 8)


class ExampleTest(SDKTestCase):
    def test_official_style_example_runs_unchanged(self) -> None:
        folder = temp_folder(self)
        lambda_run_id = str(uuid.uuid4())
        env = dict(
            os.environ,
            PYTHONPATH=HERE,
            EXAMPLE_LOG_FILE=os.path.join(folder, "orchestra.log"),
            EXAMPLE_LAMBDA_TASK_RUN_ID=lambda_run_id,
            SNOWFLAKE__PROD__ACCOUNT="xy123",
            SNOWFLAKE__PROD__USER="loader",
        )
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, "examples", "official_style_task.py")],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "3\n{'statusCode': 200}\n")
        summary = [
            (e["task_run_id"], e["event_type"], e.get("status") or e.get("output_name") or e.get("log_name"))
            for e in self.server.events
        ]
        log_file = os.path.join(folder, "orchestra.log")
        self.assertEqual(
            summary,
            [
                (TASK_RUN_ID, "UPDATE_STATUS", "RUNNING"),
                (TASK_RUN_ID, "UPDATE_STATUS", "RUNNING"),
                (TASK_RUN_ID, "SET_OUTPUT", "rows_processed"),
                (TASK_RUN_ID, "UPDATE_STATUS", "SUCCEEDED"),
                (TASK_RUN_ID, "LOG", log_file),
                (lambda_run_id, "UPDATE_STATUS", "RUNNING"),
                (lambda_run_id, "SET_OUTPUT", "invocation"),
                (lambda_run_id, "UPDATE_STATUS", "SUCCEEDED"),
                (lambda_run_id, "LOG", "lambda_task"),
            ],
        )
        log_data = self.server.events[4]["data"]
        self.assertIn("Running with 1 and 2\nConnecting to account xy123 as loader\n", log_data)


if __name__ == "__main__":
    unittest.main()
