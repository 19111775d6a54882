"""Report a self-hosted Task's status to Orchestra, with nothing but the standard library.

Orchestra (https://www.getorchestra.io/) triggers a Task; the Task tells Orchestra it is
RUNNING, then SUCCEEDED or FAILED, and may send messages, outputs and logs, by POSTing JSON
events to Orchestra's webhook. This one file does that, and can be vendored next to a script,
``pip install``-ed, or imported in AWS Lambda::

    from orchestra_sdk import OrchestraSDK

    orchestra = OrchestraSDK(api_key="...")      # or set ORCHESTRA_API_KEY

    @orchestra.run()
    def load_orders():
        orchestra.set_output("rows_loaded", 42)

Reporting never breaks the Task: a network or server problem is logged (logger
``orchestra_sdk``) and the call returns ``False``. Misuse (an unknown status, an output value
that is not JSON) raises at once. The same file is a command line (``python3 orchestra_sdk.py
--help``) for Tasks that are not Python, with a local receiver to try any Task end to end.
Documentation, including the wire format: README.md, shipped with this file.
"""

from __future__ import annotations  # Python 3.8 or newer is required

import contextvars
import dataclasses
import functools
import inspect
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from enum import Enum

# A Python older than 3.8 stops at one of the two lines below (or at the __future__ import), and
# its error shows that line, comment included: the comment is the message.
_MINIMUM_PYTHON: Tuple[int, int] = (3, 8)  # Python 3.8 or newer is required
if sys.version_info < _MINIMUM_PYTHON:
    raise ImportError(f"orchestra_sdk needs Python 3.8 or newer, not {sys.version.split()[0]}")

# What nearly every run needs is imported above. These are imported where they are used, each
# by the few paths that need it, because together they cost more than the rest of the module
# on every Lambda cold start and container run (see benchmarks/compare.py):
#   urllib.request, http.client, ssl, socket, email.utils, random  - the transport, only when sending
#   asyncio                                                         - async runs
#   uuid                                                            - only for a UUID object (3-10 ms)
#   traceback, collections                                          - captured logs (send_logs)
#   argparse, subprocess, http.server                               - the command line
#   typing                                                          - type checkers only (TYPE_CHECKING)
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import types
    import uuid
    from typing import (
        Any,
        Callable,
        Coroutine,
        Dict,
        FrozenSet,
        List,
        Literal,
        Mapping,
        Optional,
        Protocol,
        Sequence,
        Set,
        TextIO,
        Tuple,
        TypeVar,
        Union,
        overload,
    )

    F = TypeVar("F", bound=Callable[..., Any])
    R = TypeVar("R")

    class _QuietContext(Protocol):
        def __enter__(self) -> _Run: ...

        def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool: ...

        async def __aenter__(self) -> _Run: ...

        async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool: ...

    if sys.version_info >= (3, 10):
        from typing import ParamSpec

        P = ParamSpec("P")

        class _QuietRun(_QuietContext, Protocol):
            """What ``run(reraise=False)`` is to a type checker: the function may return None."""

            @overload
            def __call__(
                self, func: Callable[P, Coroutine[Any, Any, R]]
            ) -> Callable[P, Coroutine[Any, Any, Optional[R]]]: ...

            @overload
            def __call__(self, func: Callable[P, R]) -> Callable[P, Optional[R]]: ...

    else:  # no ParamSpec before 3.10: the arguments are not checked, the result still is

        class _QuietRun(_QuietContext, Protocol):
            @overload
            def __call__(
                self, func: Callable[..., Coroutine[Any, Any, R]]
            ) -> Callable[..., Coroutine[Any, Any, Optional[R]]]: ...

            @overload
            def __call__(self, func: Callable[..., R]) -> Callable[..., Optional[R]]: ...


__version__ = "1.1.0.dev0"

__all__ = [
    "DEFAULT_WEBHOOK_URL",
    "HTTPClient",
    "LinkedConnection",
    "LinkedConnectionNotFoundError",
    "MissingEnvironmentKeysError",
    "NoEnvironmentVariablesFoundError",
    "OrchestraSDK",
    "RetryPolicy",
    "TaskRunStatus",
    "WebhookEventType",
    "get_linked_connection",
    "list_linked_connections",
    "main",
    "validate_environment",
]

LOGGER_NAME = "orchestra_sdk"
_log = logging.getLogger(LOGGER_NAME)  # no handler: the application decides where records go

# ---------------------------------------------------------------------------------------------
# Protocol: every byte that goes on the wire, and every message a run sends
# ---------------------------------------------------------------------------------------------


class TaskRunStatus(Enum):
    """The statuses a Task run can report; values equal names."""

    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    WARNING = "WARNING"


class WebhookEventType(Enum):
    """The kinds of event the webhook accepts; each has one builder below."""

    LOG = "LOG"
    UPDATE_STATUS = "UPDATE_STATUS"
    SET_OUTPUT = "SET_OUTPUT"


DEFAULT_WEBHOOK_URL = "https://webhook.getorchestra.io"
ENV_TASK_RUN_ID = "ORCHESTRA_TASK_RUN_ID"
ENV_WEBHOOK_URL = "ORCHESTRA_WEBHOOK_URL"
ENV_API_KEY = "ORCHESTRA_API_KEY"
# Set by `orchestra-sdk run` for its command: the wrapper owns the Task's status.
ENV_WRAPPED = "ORCHESTRA_SDK_WRAPPED"
# "1": plain http to any host, for local testing (a container reporting to `listen` on its host).
ENV_ALLOW_INSECURE_HTTP = "ORCHESTRA_ALLOW_INSECURE_HTTP"

_USER_AGENT = f"orchestra-sdk-py/{__version__} (standalone)"
_FINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_ERROR_TEXT_LIMIT = 250  # characters of an error in a FAILED message, as the official package
DEFAULT_MAX_LOG_BYTES = 1_000_000


@dataclasses.dataclass(frozen=True)
class _Event:
    """One webhook event: its type and its own fields, in wire order."""

    type: WebhookEventType
    fields: Dict[str, Any]
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)  # always {} but from HTTPClient

    def is_final_status(self) -> bool:
        """A status that ends a run: it always gets the retry policy's whole budget."""
        return self.fields.get("status") in _FINAL_STATUSES

    def body(self, task_run_id: str) -> bytes:
        """The request body. Key order and separators match the official package (requests'
        ``json.dumps`` with its defaults), so the bytes are the same."""
        envelope: Dict[str, Any] = {
            "event_type": self.type.value,
            "metadata": self.metadata,
            "task_run_id": task_run_id,
        }
        envelope.update(self.fields)
        return json.dumps(envelope).encode("utf-8")


def _status_event(status: Optional[TaskRunStatus], message: Optional[str]) -> _Event:
    """UPDATE_STATUS: a status, a message, or both; a key is left out when not given."""
    fields: Dict[str, Any] = {}
    if status is not None:
        fields["status"] = status.value
    if message is not None:
        fields["message"] = _clean_text(message)
    return _Event(WebhookEventType.UPDATE_STATUS, fields)


def _output_event(name: str, value: Any) -> _Event:
    """SET_OUTPUT: one named output and its JSON value."""
    return _Event(WebhookEventType.SET_OUTPUT, {"output_name": name, "output_value": value})


def _log_event(log_name: str, data: str) -> _Event:
    """LOG: a named log text (the official package names it after the log file's path)."""
    return _Event(WebhookEventType.LOG, {"log_name": _clean_text(log_name), "data": _clean_text(data)})


# The wording of a run's messages: the official package's, so Orchestra shows the same text.


def _started(name: str) -> str:
    return f"{name} started."


def _succeeded(name: str) -> str:
    return f"{name} succeeded."


def _failed(name: str, error: str) -> str:
    return f"{name} failed. Error: {error[:_ERROR_TEXT_LIMIT]}"


def _cancelled(name: str, signum: int = 0) -> str:
    return f"{name} cancelled: received {_signal_name(signum)}." if signum else f"{name} cancelled."


def _outcome(
    name: str,
    *,
    exc: Optional[BaseException] = None,
    exit_status: int = 0,
    signum: int = 0,
    detail: str = "",
) -> Tuple[TaskRunStatus, str]:
    """The final status and message of a run, however it ended: the one place that decides.

    exc: what the body raised (None: it returned); exit_status: a command's exit status;
    signum: the signal that ended or cancelled it (SIGINT and SIGTERM cancel, others fail);
    detail: text for a failure without an exception (a command's last error line).
    """
    if signum in _CANCEL_SIGNALS:
        return TaskRunStatus.CANCELLED, _cancelled(name, signum)
    if isinstance(exc, SystemExit):
        exit_status = _exit_status(exc.code)
        if exit_status and not (exc.code is None or isinstance(exc.code, int)):
            detail = detail or _safe_str(exc.code)  # sys.exit("message") prints it and exits 1
    elif exc is not None:
        if _is_cancellation(exc):
            return TaskRunStatus.CANCELLED, _cancelled(name)
        return TaskRunStatus.FAILED, _failed(name, _safe_str(exc) or type(exc).__name__)
    if signum:
        error = f"killed by {_signal_name(signum)} (exit code {128 + signum})"
    elif exit_status == 0:
        return TaskRunStatus.SUCCEEDED, _succeeded(name)
    else:
        error = f"exit code {exit_status}"
    return TaskRunStatus.FAILED, _failed(name, f"{error}: {detail}" if detail else error)


_CANCEL_SIGNALS = frozenset(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))
_SIGTERM_EXIT_STATUS = 128 + int(getattr(signal, "SIGTERM", 15))  # what a shell reports for a process it ended


def _exit_status(code: object) -> int:
    """The exit status the interpreter gives ``sys.exit(code)``: None is 0, an int is taken
    modulo 256 by the system (beyond a C long, 255), anything else (a message, 0.0, Decimal(0))
    is printed and exits 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(2**63) <= code < 2**63 else 255  # a C long, cut to its low byte
    return 1


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    asyncio = sys.modules.get("asyncio")  # a CancelledError exists only once asyncio is loaded
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"


def _safe_str(value: object) -> str:
    """str(value), or '' when its __str__ raises: describing a failure must not fail."""
    try:
        return str(value)
    except Exception:
        return ""


def _clean_text(text: str) -> str:
    """Replace lone surrogates, which strict JSON parsers reject, with U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def _coerce_status(status: Union[TaskRunStatus, str]) -> TaskRunStatus:
    """A `TaskRunStatus`, or a status name in any case; anything else is misuse."""
    if isinstance(status, TaskRunStatus):
        return status
    if isinstance(status, str):
        try:
            return TaskRunStatus[status.strip().upper()]
        except KeyError:
            valid = ", ".join(s.value for s in TaskRunStatus)
            raise ValueError(f"unknown status {status!r}; valid statuses: {valid}") from None
    raise TypeError(f"status must be a TaskRunStatus or a status name, not {type(status).__name__}")


# What Orchestra's documentation shows in output names (its own example is "Output_4"). The
# server decides which names it takes: others are sent, with a warning, never refused here.
_OUTPUT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _check_output_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"output name must be a str, not {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"output name must not be empty or blank, not {name!r}; e.g. 'rows_loaded'")
    if not set(name) <= _OUTPUT_NAME_CHARS:
        _log.warning(
            "Output name %r has characters other than letters, digits, '_' and '-'; "
            "Orchestra may refuse it (its answer is logged if so).",
            name,
        )
    return name


def _check_output_value(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except RecursionError:
        raise TypeError(f"output {name!r} is nested too deeply to send as JSON") from None
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"output {name!r} must be a JSON value (str, int, float, bool, None, "
            f"or lists and dicts of them; no NaN or infinity): {exc}"
        ) from None


def _describe_event(event: Any) -> str:
    """One readable line for an event as received (the local receiver prints these)."""
    if not isinstance(event, dict):
        return f"? {_shorten(json.dumps(event), 200)}"
    kind = event.get("event_type", "?")
    if kind == WebhookEventType.UPDATE_STATUS.value:
        parts = [str(event["status"])] if "status" in event else []
        if "message" in event:
            parts.append(json.dumps(_shorten(str(event["message"]), 300), ensure_ascii=False))
        return f"{kind} {' '.join(parts)}"
    if kind == WebhookEventType.SET_OUTPUT.value:
        value = _shorten(json.dumps(event.get("output_value"), ensure_ascii=False), 200)
        return f"{kind} {event.get('output_name')} = {value}"
    if kind == WebhookEventType.LOG.value:
        data = str(event.get("data", ""))
        size, lines = len(data.encode("utf-8", "replace")), data.count("\n")
        return f"{kind} {event.get('log_name')} ({size} bytes, {lines} lines)"
    return f"{kind} {_shorten(json.dumps(event, ensure_ascii=False), 200)}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class LinkedConnectionNotFoundError(LookupError):
    """No linked connection matches, or several do and no connection id chose one."""


class MissingEnvironmentKeysError(Exception):
    """Environment variables the SDK needs are missing (`missing_keys`); the official name."""

    def __init__(self, missing_keys: Set[str]) -> None:
        super().__init__(f"missing environment variables: {', '.join(sorted(missing_keys))}")
        self.missing_keys = missing_keys


class NoEnvironmentVariablesFoundError(Exception):
    """The process has no environment variables at all; the official name."""


# ---------------------------------------------------------------------------------------------
# Configuration: the environment (or a Lambda event) read into one record
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    """Where to report: the run (canonical id, as sent) and the webhook, or why the id is unusable."""

    task_run_id: Optional[str]
    task_run_id_problem: Optional[str]
    webhook_url: str


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _canonical_uuid(text: str) -> Optional[str]:
    """The canonical form (lower case, 8-4-4-4-12) of anything `uuid.UUID` accepts, or None.

    Parsed here because every run needs it and `uuid` costs 3-10 ms of start-up.
    """
    digits = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    if len(digits) != 32 or not set(digits) <= _HEX_DIGITS:
        return None
    d = digits.lower()
    return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"


def _parse_task_run_id(raw: Optional[str], source: str) -> Tuple[Optional[str], Optional[str]]:
    """(canonical id, None) or (None, problem); surrounding blanks, braces and upper case are fine."""
    if raw is None:
        return None, f"{source} is not set"
    text = raw.strip()
    if not text:
        return None, f"{source} is empty"
    canonical = _canonical_uuid(text)
    if canonical is None:
        return None, f"{source}={_shorten(text, 60)!r} is not a UUID"
    return canonical, None


def _read_config(env: Mapping[str, str]) -> _Config:
    """Read the task run id and webhook URL from an environment mapping."""
    task_run_id, problem = _parse_task_run_id(env.get(ENV_TASK_RUN_ID), ENV_TASK_RUN_ID)
    webhook_url = (env.get(ENV_WEBHOOK_URL) or "").strip() or DEFAULT_WEBHOOK_URL
    return _Config(task_run_id, problem, webhook_url)


def _read_lambda_event(event: Any) -> _Config:
    """Read the task run id and webhook URL from an AWS Lambda invocation event."""
    from collections.abc import Mapping as MappingABC

    if not isinstance(event, MappingABC):
        return _Config(None, "the Lambda event is not a JSON object", _read_config(os.environ).webhook_url)
    raw = event.get("orchestra_task_run_id")
    if raw is not None and not isinstance(raw, str):
        raw = str(raw)
    task_run_id, problem = _parse_task_run_id(raw, "the Lambda event's orchestra_task_run_id")
    url = event.get("orchestra_webhook_url")
    if isinstance(url, str) and url.strip():
        webhook_url = url.strip()
    else:  # the event, then the environment, then the default
        webhook_url = (os.environ.get(ENV_WEBHOOK_URL) or "").strip() or DEFAULT_WEBHOOK_URL
    return _Config(task_run_id, problem, webhook_url)


def validate_environment() -> Optional[uuid.UUID]:
    """The task run id in ``ORCHESTRA_TASK_RUN_ID``, or None with a log line saying why.

    The official package's ``orchestra_sdk.check_environment.validate_environment()``.
    """
    try:
        if not os.environ:
            raise NoEnvironmentVariablesFoundError
        if ENV_TASK_RUN_ID not in os.environ:
            raise MissingEnvironmentKeysError({ENV_TASK_RUN_ID})
    except NoEnvironmentVariablesFoundError:
        _log.warning("No environment variables loaded.")
        return None
    except MissingEnvironmentKeysError as exc:
        _log.warning("Missing environment variables: %s.", ", ".join(sorted(exc.missing_keys)))
        return None
    task_run_id, problem = _parse_task_run_id(os.environ[ENV_TASK_RUN_ID], ENV_TASK_RUN_ID)
    if task_run_id is None:
        _log.error("Error processing environment variables: %s.", problem)
        return None
    import uuid

    return uuid.UUID(task_run_id)


HTTP_TRIGGER_HEADER = "orchestra_task_run_id"  # the header Orchestra's HTTP trigger sends


def _read_http_headers(headers: Any) -> _Config:
    """Read the task run id from an HTTP request's headers: any mapping (or list of pairs) of
    names in any case, with '-' or '_', or a WSGI environ (HTTP_ORCHESTRA_TASK_RUN_ID). The
    webhook URL never comes from a request (whoever can call the endpoint could redirect the
    key): it is ORCHESTRA_WEBHOOK_URL's, or the default."""
    webhook_url = _read_config(os.environ).webhook_url
    try:
        items = list(headers.items() if hasattr(headers, "items") else headers)
    except TypeError:
        return _Config(None, "the request headers are not a mapping", webhook_url)
    found = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str):
            continue
        key = name.lower().replace("-", "_")
        if key in (HTTP_TRIGGER_HEADER, "http_" + HTTP_TRIGGER_HEADER):
            found.append(value)
    source = f"the request header {HTTP_TRIGGER_HEADER}"
    if not found:
        problem = (
            f"{source} is missing (a proxy in front of the service may drop header names "
            "with '_': see the README's HTTP-triggered Tasks)"
        )
        return _Config(None, problem, webhook_url)
    value = found[-1]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    task_run_id, id_problem = _parse_task_run_id(value if isinstance(value, str) else str(value), source)
    return _Config(task_run_id, id_problem, webhook_url)


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where plain http cannot leave the machine."""
    host = host.lower().strip("[]")
    if host in ("localhost", "::1", "0:0:0:0:0:0:0:1"):
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isascii() and p.isdigit() and int(p) < 256 for p in parts)


def _redact_url(url: str) -> str:
    """The URL with any user:password@ replaced, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # Up to the last '@' before any query or fragment: a password may hold '/' (u:s3cr/et@host).
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    return f"{scheme}://***@{rest[at + 1 :]}" if at >= 0 else url


def _webhook_url_problem(url: str) -> Optional[str]:
    """Why a webhook URL must not be used, or None when it is safe to send the key there."""
    from urllib.parse import urlsplit

    shown = _redact_url(url)
    if not url.isascii():
        return f"webhook URL {shown!r} is not ASCII; percent-encode it (and use punycode hosts)"
    if any(char <= " " or char == "\x7f" for char in url):  # urlsplit drops tabs that urllib.request keeps
        return f"webhook URL {shown!r} has a space or a control character in it; percent-encode it"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:  # its text may quote a part of the URL: a password, say
        return f"webhook URL {shown!r} is malformed: its host or port cannot be read"
    if parts.username is not None or parts.password is not None:
        return (
            f"webhook URL {shown!r} carries credentials; remove them "
            f"(the API key goes in {ENV_API_KEY} or the api_key argument)"
        )
    if parts.scheme not in ("https", "http") or not host:
        return f"webhook URL {shown!r} must be an absolute https:// URL"
    if parts.scheme == "http" and not _is_loopback(host) and os.environ.get(ENV_ALLOW_INSECURE_HTTP) != "1":
        return (
            f"webhook URL {shown!r} uses plain http; https is required so that the API key "
            "is never sent in clear text (http is allowed only to localhost, 127.0.0.0/8 and ::1; "
            f"for local testing, {ENV_ALLOW_INSECURE_HTTP}=1 allows it anywhere)"
        )
    return None


def _api_key_problem(api_key: Optional[str]) -> Optional[str]:
    """Why a key cannot be sent, or None. Says why, never what: the key is a secret."""
    if not api_key:
        return f"no API key: pass api_key= or set {ENV_API_KEY}"
    if not (api_key.isascii() and api_key.isprintable()):
        # http.client would refuse it, quoting the whole header in its error.
        return (
            "the API key has characters that cannot go in an HTTP header "
            "(a line break, a control or non-ASCII character)"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Transport: one POST with a timeout, a retry policy and a total deadline; never raises
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Attempt:
    """What one attempt came to: delivered, or an HTTP status or network problem."""

    delivered: bool
    problem: str = ""
    status: Optional[int] = None  # None: no HTTP answer (a network problem)
    retryable_network_error: bool = False
    retry_after: Optional[float] = None


_DELIVERED = _Attempt(True)
_RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How one event is delivered: attempts, which failures are retried, and how long in all.

    timeout: seconds for one attempt (each socket operation, see README); retries: extra
    attempts after the first; deadline: seconds for the whole update, every attempt and wait;
    backoff: the first wait, doubled each retry up to backoff_max, with jitter; retry_statuses:
    the HTTP statuses worth another attempt (network errors always are). Validated on creation.
    """

    timeout: float = 10.0
    retries: int = 3
    deadline: float = 30.0
    backoff: float = 0.5
    backoff_max: float = 8.0
    retry_statuses: FrozenSet[int] = _RETRY_STATUSES

    def __post_init__(self) -> None:
        for name in ("timeout", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {self.retries!r}")
        try:
            statuses: FrozenSet[Any] = frozenset(self.retry_statuses)
        except TypeError:
            statuses = frozenset({None})  # refused just below
        if not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses):
            raise ValueError(f"retry_statuses must be HTTP statuses (ints 100-599), not {self.retry_statuses!r}")
        for name in ("timeout", "deadline", "backoff", "backoff_max"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "retry_statuses", statuses)

    def backoff_delay(self, retry_number: int, jitter: float) -> float:
        """The wait before retry `retry_number` (1-based); `jitter` in [0, 1) spreads clients out."""
        base = min(self.backoff_max, self.backoff * 2.0 ** (retry_number - 1))
        return base * (0.5 + jitter / 2)

    def next_wait(
        self, attempts: int, result: _Attempt, remaining: float, jitter: float
    ) -> Tuple[Optional[float], str]:
        """After `attempts` failed with `result`: (seconds to wait, "") before another attempt, or
        (None, why not): "final" (not worth retrying), "exhausted" or "deadline"."""
        retryable = result.retryable_network_error if result.status is None else result.status in self.retry_statuses
        if not retryable:
            return None, "final"
        if attempts > self.retries:
            return None, "exhausted"
        delay = result.retry_after if result.retry_after is not None else self.backoff_delay(attempts, jitter)
        if delay >= remaining:
            return None, "deadline"
        return delay, ""


def _parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # '²'.isdigit() is true too, and float() refuses it
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - now)


_ERROR_BODY_LIMIT = 64 * 1024


def _mask(text: str, secret: str) -> str:
    """`text` with `secret` replaced by ***. A secret under 8 characters cannot be told from
    ordinary text (masking one letter garbles every message); Orchestra's keys are far longer."""
    return text.replace(secret, "***") if len(secret) >= 8 else text


def _error_text(body: bytes, secret: str) -> str:
    """Orchestra's error message from a response body: JSON code/error/message, else its start.
    The secret is masked before anything is cut, so a cut cannot leave a part of it."""
    text = _mask(body.decode("utf-8", "replace"), secret).strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        parts = [str(parsed[k]) for k in ("code", "error", "message") if parsed.get(k)]
        if parts:
            return _shorten(": ".join(parts), 300)
    return _shorten(" ".join(text.split()), 200) or "(empty body)"


def _read_error_body(response: Any, until: float) -> bytes:
    """Read at most _ERROR_BODY_LIMIT bytes, stopping at `until` even if the server trickles."""
    chunks: List[bytes] = []
    size = 0
    try:
        while size < _ERROR_BODY_LIMIT and time.monotonic() < until:
            chunk = response.read1(_ERROR_BODY_LIMIT - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except Exception:  # a reset or timeout mid-body: keep what arrived
        pass
    return b"".join(chunks)


def _attempt(opener: Any, request: Any, timeout: float, secret: str, where: str) -> _Attempt:
    """Send one request and classify the outcome; never raises for a network reason."""
    started = time.monotonic()
    try:
        response = opener.open(request, timeout=timeout)
    except Exception as exc:
        return _failed_attempt(exc, timeout, where)
    try:
        if response is None:  # no handler took the URL (the checks before sending rule it out)
            return _Attempt(False, f"unexpected error: urllib found no handler for the URL to {where}")
        status = response.status
        if 200 <= status < 300:
            return _DELIVERED
        if 300 <= status < 400:
            location = _redact_url(response.getheader("Location") or "?")
            problem = f"HTTP {status}: redirect to {location!r} not followed (the API key goes only to the webhook URL)"
            return _Attempt(False, problem, status)
        body = _read_error_body(response, started + timeout)
        retry_after = _parse_retry_after(response.getheader("Retry-After"), time.time())
        return _Attempt(False, f"HTTP {status}: {_error_text(body, secret)}", status, retry_after=retry_after)
    except Exception as exc:  # whatever a hostile answer does, it is a failed attempt
        return _failed_attempt(exc, timeout, where)
    finally:
        if response is not None:
            response.close()


def _failed_attempt(exc: Exception, timeout: float, where: str) -> _Attempt:
    """An attempt that got no HTTP answer: a certificate problem is final, network trouble is not.
    `where` is the webhook's host and port, to say which server (never the credentials)."""
    import http.client
    import ssl
    import urllib.error

    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return _Attempt(False, f"{where}'s certificate could not be verified ({reason.verify_message})")
        problem = f"could not connect to {where}: {_describe_error(reason, timeout)}"
        return _Attempt(False, problem, retryable_network_error=True)
    if isinstance(exc, (OSError, http.client.HTTPException)):  # resets, timeouts, garbled answers
        return _Attempt(False, f"{where}: {_describe_error(exc, timeout)}", retryable_network_error=True)
    # An unexpected library error: report it, never crash the Task.
    return _Attempt(False, f"unexpected error: {_describe_error(exc, timeout)}")


def _describe_error(exc: Any, timeout: float) -> str:
    """A short text for a network error; a timeout says how long we waited."""
    import socket

    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:.3g} s"
    if not isinstance(exc, BaseException):
        return str(exc)
    text, kind = _safe_str(exc), type(exc).__name__
    return f"{kind}: {text}" if text and kind not in text else (text or kind)


def _post_event(
    opener: Any,
    webhook_url: str,
    api_key: str,
    event_type: str,
    event_body: bytes,
    policy: RetryPolicy,
    method: str = "POST",
    budget: Optional[_Budget] = None,
) -> _Delivery:
    """POST one event, retrying within the policy; delivered only when Orchestra answered 2xx.

    `event_type` is the event's name, for messages. The failure line is the caller's to log.
    """
    import urllib.request

    request = urllib.request.Request(
        webhook_url,
        data=event_body,
        method=method,
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
        },
    )
    request.budget = budget = budget or _Budget(policy.deadline)  # type: ignore[attr-defined]
    started = time.monotonic()
    what = f"Orchestra did not receive the {event_type} event"
    where = webhook_url.partition("://")[2].partition("/")[0].rpartition("@")[2]  # host[:port]
    attempts, result = 0, _Attempt(False, "no attempt was made")
    while True:
        remaining = budget.ends_at - time.monotonic()
        if remaining <= 0:  # a retry's sleep overshot: no attempt starts after the deadline
            problem = _mask(result.problem, api_key)
            return _Delivery(False, result, f"{what}: {problem}; the {budget.seconds:g} s deadline passed.")
        attempts += 1
        timeout = min(policy.timeout, remaining)
        _log.debug("POST %s event to %s (attempt %d, timeout %.1f s)", event_type, webhook_url, attempts, timeout)
        result = _attempt(opener, request, timeout, api_key, where)
        if result.delivered:
            _log.debug("%s event delivered in %.3f s", event_type, time.monotonic() - started)
            return _Delivery(True, result)
        import random

        problem = _mask(result.problem, api_key)  # a library error could quote the request
        delay, stop = policy.next_wait(attempts, result, budget.ends_at - time.monotonic(), random.random())
        if stop == "final":
            return _Delivery(False, result, f"{what}: {problem} (not retried).")
        if stop == "exhausted":
            return _Delivery(False, result, f"{what} after {attempts} attempts: {problem}.")
        if delay is None:
            return _Delivery(
                False,
                result,
                f"{what}: {problem}; gave up after {attempts} attempts, "
                f"as the next would start past the {budget.seconds:g} s deadline.",
            )
        _log.debug("attempt %d failed (%s); retrying in %.2f s", attempts, problem, delay)
        time.sleep(delay)


class _Budget:
    """The time one event may take in all. It can only be cut short: after a SIGTERM or Ctrl-C,
    what is still to be reported gets at most HURRY_SECONDS more, so the process ends in time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds

    def hurry(self) -> None:
        self.ends_at = min(self.ends_at, time.monotonic() + HURRY_SECONDS)


HURRY_SECONDS = 4.0  # each report still to be sent after a SIGTERM or Ctrl-C gets at most this


@dataclasses.dataclass(frozen=True)
class _Delivery:
    """How sending one event ended: delivered, or the last attempt and the line that says why not."""

    delivered: bool
    last: _Attempt
    error: str = ""

    def refusal(self, task_run_id: str) -> Optional[str]:
        """What to check when Orchestra refused the key or the run for good, else None."""
        status, problem = self.last.status, self.last.problem.lower()
        if status in (401, 403):
            return (
                f"Orchestra refused the API key (HTTP {status}): check {ENV_API_KEY} (or the api_key "
                "argument); no more events are sent for this run"
            )
        run_unknown = any(text in problem for text in ("task_not_found", "task run not found", "invalid task_run_id"))
        if status is not None and 400 <= status < 500 and run_unknown:
            return (
                f"Orchestra does not know task run {task_run_id}: check {ENV_TASK_RUN_ID} (or the Lambda "
                "event's orchestra_task_run_id); no more events are sent for this run"
            )
        return None


# -- connections: kept alive, fork-safe, every read bounded by the attempt's end -------------

KEEP_ALIVE_IDLE = 15.0  # seconds an idle connection may wait before it is not reused
_POOL_SIZE = 8  # idle connections kept (one per thread that sends at the same time)
_DRAIN_LIMIT = 64 * 1024  # a response body read to its end (so the connection can be reused)
_DRAIN_TIME = 0.25  # ...when it arrives this quickly
_READ_SLICE = 0.5  # seconds a read waits before it looks at its time left again
_STALE_ERRORS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)  # RemoteDisconnected is one


class _TrustStore:
    """The TLS contexts for the webhook. Trust anchors are looked up when a handshake needs them,
    from the system's hashed certificate directory, instead of parsing every CA certificate up
    front (about 20 ms of a cold start); the full default store is used where there is no such
    directory, where ``SSL_CERT_FILE`` names a file, and once the lazy lookup failed to verify."""

    def __init__(self, capath: Optional[str] = None, full: Optional[Callable[[], Any]] = None) -> None:
        self._full_factory = full  # None: ssl.create_default_context
        self._lazy_capath = capath  # None: the hashed directory, found when first needed
        self._context: Any = None
        self.lazy = False
        self._lock = threading.Lock()

    def context(self) -> Any:
        """The context to connect with; made (``ssl`` imported) on first use, in any thread."""
        with self._lock:
            if self._context is None:
                capath = self._lazy_capath if self._lazy_capath is not None else _hashed_ca_directory()
                if capath:
                    import ssl

                    self._context, self.lazy = ssl.create_default_context(capath=capath), True
                else:
                    self._context = self._full()
            return self._context

    def _full(self) -> Any:
        import ssl

        return (self._full_factory or ssl.create_default_context)()

    def fall_back(self, failed: Any) -> bool:
        """After `failed` (a lazy context) could not verify: use the full store. False when there
        is nothing else to try."""
        with self._lock:
            if not self.lazy or failed is not self._context:
                return failed is not self._context  # another thread already switched: try again
            self._context, self.lazy = self._full(), False
            return True


def _hashed_ca_directory() -> Optional[str]:
    """The default verify paths' CA directory when lazy look-ups can use it, else None."""
    import ssl

    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env) or not paths.capath:
        return None  # an explicit CA file must be honoured: the full store reads it
    try:
        with os.scandir(paths.capath) as entries:
            for entry in entries:
                name, dot, suffix = entry.name.partition(".")
                if dot and len(name) == 8 and suffix.isdigit() and set(name) <= _HEX_DIGITS:
                    return paths.capath  # hashed (c_rehash / openssl rehash): lookups work
    except OSError:
        pass
    return None


def _start_thread(target: Callable[[], None], name: str) -> Optional[threading.Thread]:
    """A daemon thread running `target`, or None where Python allows no new thread (Python 3.12
    while the interpreter shuts down: an update sent from an atexit handler must still go)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:
        return None
    return thread


def _connect(address: Tuple[str, int], timeout: Optional[float], source_address: Any = None) -> Any:
    """socket.create_connection, with the DNS look-up bounded too (getaddrinfo ignores socket
    timeouts and can hang for minutes): it runs in a thread that is given up on at `timeout`."""
    import socket

    host, port = address
    if _is_ip_literal(host) or timeout is None:
        return socket.create_connection(address, timeout, source_address)
    try:
        host.encode("idna")  # getaddrinfo's codec, loaded here: the look-up thread imports nothing (fork)
    except UnicodeError:
        pass  # getaddrinfo says so
    found: List[Any] = []

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as exc:
            found.append(exc)

    started = time.monotonic()
    lookup = _start_thread(resolve, "orchestra-sdk-dns")
    if lookup is None:
        resolve()  # no new thread at interpreter shutdown (3.12): an unbounded look-up beats none
    else:
        lookup.join(timeout)
    if not found:
        raise socket.timeout(f"DNS look-up of {host} gave no answer within {timeout:g} s")
    if isinstance(found[0], BaseException):
        raise found[0]
    error: Optional[BaseException] = None
    for family, kind, proto, _, sockaddr in found[0]:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            sock.settimeout(timeout)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or socket.timeout(f"could not connect to {host} within {timeout:g} s")


class _HeadStart:
    """The first connection to the webhook, opened in a thread while ``urllib.request`` loads:
    on a cold start the TCP and TLS handshakes overlap those imports (about 15 ms) instead of
    following them. Handed to the first new connection for the same target in this process;
    what stopped it is that connection's error, as if it had connected itself.

    The thread imports nothing: a fork while it held a module's import lock would leave the
    child stuck on that import. What it needs (``socket``, ``ssl``, the IDNA codec, a TLS
    context) is loaded by the caller first; on one core that costs no time, it is work that
    would have to come first anyway."""

    def __init__(self, https: bool, host: str, port: int, context: Any, timeout: float) -> None:
        self.target = (https, host, port)
        self.pid = os.getpid()
        self._context = context  # None for plain http
        self._ends_at = time.monotonic() + timeout  # the first attempt's end, for connect and handshake
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None  # the connected socket, or the exception that stopped it
        self._handshaking: Any = None  # the socket while its TLS handshake runs
        self._unwanted = False
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def prepare(cls, https: bool, host: str, port: int, trust: Optional[_TrustStore], timeout: float) -> _HeadStart:
        """Load what the thread will use, in this thread (see the class docstring)."""
        import socket  # noqa: F401

        _is_ip_literal(host)  # loads ipaddress
        host.encode("idna")  # loads the codec that getaddrinfo and the TLS server name use
        return cls(https, host, port, trust.context() if https and trust is not None else None, timeout)

    def start(self) -> bool:
        self._thread = _start_thread(self._open, "orchestra-sdk-connect")
        if self._thread is None:
            self._done.set()  # no thread: whoever takes it connects as usual
        return self._thread is not None

    def _open(self) -> None:
        import socket

        result: Any
        try:
            _, host, port = self.target
            sock = _connect((host, port), max(0.001, self._ends_at - time.monotonic()))
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client does
            except OSError:
                pass
            if self._context is not None:
                try:
                    tls = self._context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                except BaseException:
                    sock.close()
                    raise
                with self._lock:
                    self._handshaking = None if self._unwanted else tls
                try:
                    if self._handshaking is None:
                        raise socket.timeout("not wanted any more")
                    tls.settimeout(max(0.001, self._ends_at - time.monotonic()))
                    tls.do_handshake()
                except BaseException:
                    tls.close()
                    raise
                finally:
                    with self._lock:
                        self._handshaking = None
                sock = tls
            result = sock
        except BaseException as exc:
            result = exc
        with self._lock:
            self._result, unwanted = result, self._unwanted
        self._done.set()
        if unwanted and not isinstance(result, BaseException):
            result.close()

    def take(self, time_left: Callable[[], float]) -> Any:
        """The connected socket (None: there is none, connect as usual); raises what stopped
        it, or a timeout when `time_left` runs out first."""
        import socket

        try:
            while not self._done.wait(max(0.0, min(time_left(), _READ_SLICE))):
                if time_left() <= 0:
                    raise socket.timeout("timed out")
                if (self._thread is None or not self._thread.is_alive()) and not self._done.is_set():
                    self.discard()  # it never ran (a signal handler's exception stopped its start)
                    return None
        except BaseException:  # a timeout, or a signal handler's exception (Ctrl-C)
            self.discard()
            raise
        if self._thread is not None:
            self._thread.join(1.0)  # it has only to return: a fork right after must find no thread of ours
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result

    def discard(self) -> None:
        """Not wanted after all: its connection is closed now, or as soon as it is made (a TLS
        handshake under way is cut short, so the thread ends at once)."""
        handshaking = None
        if self.pid != os.getpid():  # a forked child: the thread is not here, its lock may be held
            result = self._result if self._done.is_set() else None
        else:
            with self._lock:
                self._unwanted, result, handshaking = True, self._result, self._handshaking
        if handshaking is not None:
            import socket

            try:  # the TCP socket under it, not close(): the thread still uses the object
                socket.socket.shutdown(handshaking, socket.SHUT_RDWR)
            except OSError:
                pass
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(0.5)  # it ends at once now: a fork right after finds no thread of ours
        if result is not None and not isinstance(result, BaseException):
            result.close()


def _host_and_port(url: str) -> Optional[Tuple[bool, str, int]]:
    """(https, host, port) the way urllib and http.client read them from the webhook URL, or
    None when that is not plain (a head start is only an optimisation: when unsure, none)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https"):
        return None
    netloc = rest
    for separator in "/?#":
        netloc = netloc.partition(separator)[0]
    https = scheme.lower() == "https"
    if "@" in netloc or "%" in netloc or not netloc:
        return None
    host, port = netloc, 443 if https else 80
    colon = netloc.rfind(":")
    if colon > netloc.rfind("]"):
        host, digits = netloc[:colon], netloc[colon + 1 :]
        if digits:
            if not (digits.isascii() and digits.isdigit()):
                return None
            port = int(digits)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (https, host, port) if host else None


def _goes_direct(host: str) -> bool:
    """Whether urllib will connect straight to `host`, with no proxy: only then can the first
    connection be opened before ``urllib.request`` is loaded to say so."""
    if _is_loopback(host):
        return True  # the opener ignores proxies for loopback
    if sys.platform in ("darwin", "win32"):
        return False  # urllib reads the system's proxy settings there
    return not any(value and name.lower().endswith("_proxy") for name, value in os.environ.items())


def _time_left(ends_at: float, budget: Optional[_Budget]) -> float:
    """Seconds left for an attempt: its own end, or the update's budget when that comes first."""
    if budget is not None:
        ends_at = min(ends_at, budget.ends_at)
    return max(0.001, ends_at - time.monotonic())


def _answered_early(conn: Any) -> bool:
    """Whether the server has already sent something (an answer before the whole request)."""
    import select

    try:
        return bool(select.select([conn.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _is_ip_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _response_class() -> Any:
    """http.client.HTTPResponse, made to read within a hard end, skip interim (1xx) answers,
    never print, and give its connection back for reuse when closed after a complete body."""
    import http.client
    import socket

    class DeadlineIO(socket.SocketIO):
        def __init__(self, sock: Any, response: Any) -> None:
            super().__init__(sock, "rb")
            self._timed_sock = sock
            self._response = response

        def readinto(self, buffer: Any) -> Optional[int]:
            # Waits in short slices, so a trickling server cannot stretch an attempt past its end
            # and a budget cut short (a SIGTERM) takes effect at once.
            while True:
                remaining = self._response.time_left()
                if remaining <= 0:
                    raise socket.timeout("the attempt's time is up")
                self._timed_sock.settimeout(min(remaining, _READ_SLICE))
                try:
                    return int(self._timed_sock.recv_into(buffer))
                except socket.timeout:
                    continue

    class Response(http.client.HTTPResponse):
        def __init__(
            self,
            sock: Any,
            debuglevel: int = 0,
            method: Optional[str] = None,
            url: Any = None,
            *,
            ends_at: float,
            budget: Optional[_Budget] = None,
        ) -> None:
            super().__init__(sock, 0, method, url)  # debuglevel 0: headers (the key) are never printed
            self.fp.close()
            self.fp = io.BufferedReader(DeadlineIO(sock, self))
            self.ends_at = ends_at
            self.budget = budget
            self.on_close: Optional[Callable[[bool], None]] = None

        def time_left(self) -> float:
            ends_at = self.ends_at if self.budget is None else min(self.ends_at, self.budget.ends_at)
            return ends_at - time.monotonic()

        def begin(self) -> None:
            super().begin()
            for _ in range(20):  # 103 Early Hints and the like are not the answer: skip them
                if not (100 <= self.status < 200 and self.status != 101):
                    return
                self.headers = self.msg = None  # type: ignore[assignment]
                super().begin()
            if 100 <= self.status < 200 and self.status != 101:
                raise http.client.HTTPException("more than 20 interim (1xx) answers and no final one")

        def close(self) -> None:
            complete = False
            try:
                complete = self.fp is None  # the body was read to its end
                if not complete and not self.will_close and self.length is not None and self.length <= _DRAIN_LIMIT:
                    self.ends_at = min(self.ends_at, time.monotonic() + _DRAIN_TIME)
                    try:
                        self.read()
                        complete = True
                    except Exception:
                        pass
            finally:  # a SIGTERM's SystemExit during the drain included: the connection is closed
                super().close()
                on_close, self.on_close = self.on_close, None
                if on_close is not None:
                    on_close(complete and not self.will_close)

    return Response


class _Transport:
    """How one client reaches its webhook: ``urllib.request`` with handlers that keep one
    connection alive between updates (reused after a complete answer, at most KEEP_ALIVE_IDLE
    seconds idle, never across a fork, never by two threads at once) and read within the
    attempt's time. Proxies (HTTPS_PROXY, NO_PROXY) and the no-redirect rule are urllib's."""

    head_start: Optional[bool] = None  # connect while urllib.request loads; None: when it is not loaded yet

    def __init__(self, trust: Optional[_TrustStore] = None) -> None:
        self._opener: Optional[Tuple[str, Any]] = None
        self._trust = trust
        self._head: Optional[_HeadStart] = None
        self._busy: Dict[int, Any] = {}  # thread id: the connection that thread's update is using
        self._idle: List[Tuple[Any, Any, float]] = []  # (key, connection, idle since)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.connections_opened = 0

    def post(
        self,
        webhook_url: str,
        api_key: str,
        event: _Event,
        task_run_id: str,
        policy: RetryPolicy,
        method: str = "POST",
        budget: Optional[_Budget] = None,
    ) -> _Delivery:
        opener, head = self._opener, None
        try:
            if opener is None or opener[0] != webhook_url:
                if opener is None:
                    left = budget.ends_at - time.monotonic() if budget else policy.deadline
                    head = self._start_head_start(webhook_url, max(0.001, min(policy.timeout, left)))
                opener = self._opener = (webhook_url, self._build_opener(webhook_url))
            body = event.body(task_run_id)
            return _post_event(opener[1], webhook_url, api_key, event.type.value, body, policy, method, budget)
        except BaseException:  # a signal handler's exception (SIGTERM, Ctrl-C) mid-request
            self._release(cut_short=True)
            raise
        finally:
            self._release(cut_short=False)
            if head is not None:  # not taken (no attempt was made): it must not wait for a later update
                self._drop_head(head)

    def _start_head_start(self, webhook_url: str, timeout: float) -> Optional[_HeadStart]:
        """Open the first connection in a thread, when that is worth it and safe; the head start."""
        wanted = self.head_start if self.head_start is not None else "urllib.request" not in sys.modules
        target = _host_and_port(webhook_url) if wanted else None
        if target is None or self._pid != os.getpid() or not _goes_direct(target[1]):
            return None  # (a forked child: the pool's lock is reset first, by _checkout)
        https, host, port = target
        if https and self._trust is None:
            self._trust = _TrustStore()
        try:
            head = _HeadStart.prepare(https, host, port, self._trust, timeout)
        except Exception:  # an unusable host or trust store: the attempt will say so
            return None
        with self._lock:
            if self._head is not None or self._opener is not None:
                return None  # another thread's first update got here first
            self._head = head  # before it starts: a second thread's first update must see it
        try:
            if head.start():
                _log.debug("connecting to %s while urllib.request loads", _redact_url(webhook_url))
        except BaseException:  # a signal handler's exception: leave nothing half-started behind
            self._drop_head(head)
            raise
        return head

    def _drop_head(self, head: _HeadStart) -> None:
        """`head` is not wanted: closed, unless an attempt already took it (then it is that one's)."""
        with self._lock:
            if self._head is not head:
                return
            self._head = None
        head.discard()

    def _build_opener(self, webhook_url: str) -> Any:
        """An opener that follows no redirect, raises for no status, and skips proxies for loopback."""
        import urllib.request
        from urllib.parse import urlsplit

        transport = self

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req: Any) -> Any:
                return transport._open(req, https=False)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req: Any) -> Any:
                return transport._open(req, https=True)

        opener = urllib.request.OpenerDirector()
        loopback = _is_loopback(urlsplit(webhook_url).hostname or "")
        opener.add_handler(urllib.request.ProxyHandler({} if loopback else None))
        opener.add_handler(HTTP())
        opener.add_handler(HTTPS())
        return opener

    def _open(self, req: Any, https: bool) -> Any:
        """urllib's do_open, keeping the connection: one request on a reused or new connection."""
        import http.client
        import ssl
        import urllib.error

        if not req.host:
            raise urllib.error.URLError("no host given")
        headers = dict(req.unredirected_hdrs)
        headers.update({k: v for k, v in req.headers.items() if k not in headers})
        headers = {name.title(): value for name, value in headers.items()}
        tunnel_headers = {}
        if req._tunnel_host and "Proxy-Authorization" in headers:  # for the proxy, never the origin
            tunnel_headers["Proxy-Authorization"] = headers.pop("Proxy-Authorization")
        key = (https, req.host, req._tunnel_host)
        ends_at = time.monotonic() + req.timeout
        budget = getattr(req, "budget", None)
        for _ in range(3):  # a stale kept-alive connection, a lazy trust store: each retried once, at once
            conn, reused = self._checkout(key)
            if conn is None:
                conn = self._new_connection(req, https, tunnel_headers)
            with self._lock:
                self._busy[threading.get_ident()] = conn  # post() closes it if a signal cuts the update short
            conn.response_class = functools.partial(_response_class(), ends_at=ends_at, budget=budget)
            time_left = _time_left(ends_at, budget)
            conn.timeout = time_left  # the connection, TLS handshake included, gets what is left
            try:
                try:
                    if conn.sock is None:
                        self._connect_new(conn, https, ends_at, budget)
                    conn.sock.settimeout(_time_left(ends_at, budget))  # and the request, body and all
                    conn.request(req.get_method(), req.selector, req.data, headers)
                except (BrokenPipeError, ConnectionResetError) as err:
                    if conn.sock is None or not _answered_early(conn):
                        raise urllib.error.URLError(err) from err
                    # The server answered (a 401, say) without reading the whole body: read that.
                except OSError as err:
                    raise urllib.error.URLError(err) from err
                response = conn.getresponse()
                response.on_close = functools.partial(self._checkin, key, conn)
                response.url = req.get_full_url()
                response.msg = response.reason  # what urllib's own handlers leave there
            except BaseException as exc:
                conn.close()  # whatever stopped it, a SystemExit from a SIGTERM included
                if not isinstance(exc, (OSError, http.client.HTTPException)):
                    raise
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if reused and isinstance(reason, _STALE_ERRORS):
                    continue  # the server closed it while idle; the request never reached it
                lazy_trust_failed = https and isinstance(reason, ssl.SSLCertVerificationError)
                if lazy_trust_failed and self._trust is not None and self._trust.fall_back(conn._context):
                    continue
                raise
            return response
        raise urllib.error.URLError("the connection was closed before an answer, three times")

    def _connect_new(self, conn: Any, https: bool, ends_at: float, budget: Optional[_Budget]) -> None:
        """Connect `conn`, with the head start's connection when it was opened for this target."""

        def time_left() -> float:
            return min(ends_at, budget.ends_at if budget else ends_at) - time.monotonic()

        head = None
        try:
            with self._lock:
                head, self._head = self._head, None
            if head is not None:
                if head.pid != os.getpid() or conn._tunnel_host or head.target != (https, conn.host, conn.port):
                    head.discard()
                else:
                    sys.audit("http.client.connect", conn, conn.host, conn.port)  # as conn.connect() does
                    conn.sock = head.take(time_left)
        except BaseException:  # a signal handler's exception included: the head start is not left open
            if head is not None and conn.sock is None:
                head.discard()
            raise
        if conn.sock is None:
            conn.connect()

    def _new_connection(self, req: Any, https: bool, tunnel_headers: Dict[str, str]) -> Any:
        import http.client

        if https:
            if self._trust is None:
                self._trust = _TrustStore()
            conn: Any = http.client.HTTPSConnection(req.host, timeout=req.timeout, context=self._trust.context())
        else:
            conn = http.client.HTTPConnection(req.host, timeout=req.timeout)
        conn.set_debuglevel(0)  # http.client.HTTPConnection.debuglevel = 1 must not print the key
        if hasattr(conn, "_create_connection"):
            conn._create_connection = _connect
        if req._tunnel_host:
            conn.set_tunnel(req._tunnel_host, headers=tunnel_headers)
        self.connections_opened += 1
        return conn

    def _checkout(self, key: Any) -> Tuple[Any, bool]:
        """An idle connection for `key` that is still good, or (None, False)."""
        import select

        if self._pid != os.getpid():
            # A forked child: the parent's connections are not ours, nor its lock, which another
            # thread may have held at the fork. (Closing here closes only the child's copies.)
            self._lock, self._pid, inherited, self._idle = threading.Lock(), os.getpid(), self._idle, []
            for entry in inherited:
                entry[1].close()
            head, self._head, self._busy = self._head, None, {}
            if head is not None:
                head.discard()
        with self._lock:
            now = time.monotonic()
            stale = [entry for entry in self._idle if entry[0] != key or now - entry[2] >= KEEP_ALIVE_IDLE]
            self._idle = [entry for entry in self._idle if entry not in stale]
            found = self._idle.pop()[1] if self._idle else None  # the most recently used
            self._forget(found)
        for entry in stale:
            entry[1].close()
        if found is None:
            return None, False
        try:  # readable while idle: the server closed it (or sent junk); do not reuse
            readable = found.sock is None or select.select([found.sock], [], [], 0)[0]
        except (OSError, ValueError):
            readable = True
        if readable:
            found.close()
            return None, False
        return found, True

    def _checkin(self, key: Any, conn: Any, reusable: bool) -> None:
        if self._pid != os.getpid():  # a forked child: _checkout resets the pool and its lock first
            conn.close()
            return
        if not reusable or conn.sock is None:
            conn.close()
            with self._lock:
                self._forget(conn)
            return
        with self._lock:
            self._idle.append((key, conn, time.monotonic()))
            surplus = self._idle[:-_POOL_SIZE]
            del self._idle[:-_POOL_SIZE]
            self._forget(conn)  # its exchange is over: post() must not close it any more
        for entry in surplus:
            entry[1].close()

    def _forget(self, conn: Any) -> None:
        """No update is using `conn` now (it is idle, or another update took it). Lock held."""
        for thread in [thread for thread, used in self._busy.items() if used is conn]:
            del self._busy[thread]

    def _release(self, cut_short: bool) -> None:
        """This thread's update is over. Cut short (a signal handler's exception), the connection
        it was using is closed, taken out of the pool first: it may be half-way through an exchange."""
        if self._pid != os.getpid():
            return  # a forked child: _checkout resets the pool and its lock before any use
        with self._lock:
            conn = self._busy.pop(threading.get_ident(), None)
            if cut_short and conn is not None:
                self._idle = [entry for entry in self._idle if entry[1] is not conn]
        if cut_short and conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the idle connections (they are also closed when the client is collected)."""
        with self._lock:
            idle, self._idle = self._idle, []
            head, self._head = self._head, None
        for entry in idle:
            entry[1].close()
        if head is not None:
            head.discard()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit, modules may be half torn down
            pass


class HTTPClient:
    """Sends webhook events for one run: the official ``orchestra_sdk.http.HTTPClient``, on this
    module's transport (timeouts, retries within a deadline, https only, the key never shown)."""

    def __init__(
        self,
        api_key: str,
        task_run_id: Union[uuid.UUID, str],
        webhook_url: str = DEFAULT_WEBHOOK_URL,
        *,
        retry_policy: Optional[RetryPolicy] = None,
    ) -> None:
        self.api_key = api_key
        self.task_run_id = task_run_id
        self.webhook_url = webhook_url
        self.retry_policy = RetryPolicy() if retry_policy is None else retry_policy
        self._transport = _Transport()

    def __repr__(self) -> str:
        key = "set" if self.api_key else "missing"
        url = _redact_url(self.webhook_url)
        return f"HTTPClient(task_run_id={self.task_run_id!s}, webhook_url={url!r}, api_key=<{key}>)"

    def request(
        self,
        event_type: Union[WebhookEventType, str],
        metadata: Optional[Mapping[str, Any]] = None,
        json: Optional[Mapping[str, Any]] = None,
        method: str = "POST",
    ) -> bool:
        """Send one event: ``{"event_type", "metadata", "task_run_id", **json}``. True when
        Orchestra answered 2xx; False, logged, for any network, server or configuration problem."""
        kind = _coerce_event_type(event_type)
        api_key, webhook_url, task_run_id = self.api_key, self.webhook_url, str(self.task_run_id)
        webhook_url = webhook_url.strip() if isinstance(webhook_url, str) else webhook_url  # as OrchestraSDK
        event = _Event(kind, dict(json or {}), dict(metadata or {}))
        problem = _api_key_problem(api_key) or _webhook_url_problem(webhook_url)
        if problem is None and _canonical_uuid(task_run_id) is None:
            problem = f"task_run_id {_shorten(task_run_id, 60)!r} is not a UUID"
        if problem is not None:
            _log.error("Cannot report to Orchestra: %s.", problem)
            return False
        delivery = self._transport.post(webhook_url, api_key, event, task_run_id, self.retry_policy, method)
        if not delivery.delivered:
            _log.error("%s", delivery.error)
        return delivery.delivered


def _coerce_event_type(event_type: Union[WebhookEventType, str]) -> WebhookEventType:
    if isinstance(event_type, WebhookEventType):
        return event_type
    try:
        return WebhookEventType[str(event_type).upper()]
    except KeyError:
        valid = ", ".join(e.value for e in WebhookEventType)
        raise ValueError(f"unknown event type {event_type!r}; valid event types: {valid}") from None


# ---------------------------------------------------------------------------------------------
# Log text: bounded to the most recent part, with a marker
# ---------------------------------------------------------------------------------------------


_MARKER_ROOM = 120  # bytes kept free for the marker line, which is shorter


def _tail_text(data: bytes, max_bytes: int, cut: int = 0) -> str:
    """Decode log bytes as UTF-8 (bad bytes replaced), keeping the most recent part so that what
    is sent, marker included, is at most `max_bytes` of UTF-8.

    `cut` counts bytes already dropped before `data`; when anything was dropped, a first line
    says how much.
    """
    text = data.decode("utf-8", "replace")
    encoded = text.encode("utf-8")  # a replaced byte takes three: the bound holds on these bytes
    if not cut and len(encoded) <= max_bytes:
        return text
    kept = encoded[len(encoded) - min(len(encoded), max_bytes - _MARKER_ROOM) :]
    skip = 0
    while skip < 3 and skip < len(kept) and 0x80 <= kept[skip] <= 0xBF:
        skip += 1  # do not start inside a multi-byte character
    dropped = cut + len(encoded) - len(kept) + skip
    marker = f"[orchestra_sdk: {dropped} earlier bytes cut to keep the log within {max_bytes} bytes]\n"
    return marker + kept[skip:].decode("utf-8")


def _read_log_file(path: str, max_bytes: int) -> Tuple[Optional[str], Optional[str]]:
    """(text, None), or (None, why the file cannot be sent). Reads only the tail of a huge file."""
    try:
        with open(path, "rb") as handle:
            head_cut = max(0, os.fstat(handle.fileno()).st_size - max_bytes)
            handle.seek(head_cut)
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        return None, f"log file {path!r} not found"
    except IsADirectoryError:
        return None, f"log file {path!r} is a directory"
    except OSError as exc:
        return None, f"log file {path!r} cannot be read: {exc.strerror or exc}"
    return _tail_text(data, max_bytes, head_cut), None


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


class OrchestraSDK:
    """Reports one Task run to Orchestra: statuses, messages, outputs and logs.

    ``api_key`` falls back to ``ORCHESTRA_API_KEY``; the task run id and webhook URL come
    from ``ORCHESTRA_TASK_RUN_ID`` and ``ORCHESTRA_WEBHOOK_URL`` (or a Lambda event). Every
    method that reports returns ``True`` only when Orchestra accepted the event. ``timeout``,
    ``retries``, ``deadline`` and ``backoff`` override fields of ``retry_policy`` (default
    `RetryPolicy()`).
    """

    _config: _Config

    def __init__(
        self,
        api_key: Optional[str] = None,
        log_file: Union[str, os.PathLike[str]] = "orchestra.log",
        send_logs: bool = False,
        *,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
        deadline: Optional[float] = None,
        backoff: Optional[float] = None,
        retry_policy: Optional[RetryPolicy] = None,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        if isinstance(max_log_bytes, bool) or not isinstance(max_log_bytes, int) or max_log_bytes < 1024:
            raise ValueError(f"max_log_bytes must be an int >= 1024, not {max_log_bytes!r}")
        overrides: Dict[str, Any] = {"timeout": timeout, "retries": retries, "deadline": deadline, "backoff": backoff}
        policy = RetryPolicy() if retry_policy is None else retry_policy
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, not {type(policy).__name__}")
        self.retry_policy = dataclasses.replace(policy, **{k: v for k, v in overrides.items() if v is not None})
        # Blanks around a key (a trailing newline from a secrets file) are never part of it.
        self.api_key: Optional[str] = (api_key or os.environ.get(ENV_API_KEY) or "").strip() or None
        self.log_file = log_file
        self.send_logs = send_logs
        self.max_log_bytes = max_log_bytes
        self._apply_config(_read_config(os.environ))
        self._transport = _Transport()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._in_flight: Set[_Budget] = set()  # the budgets of the events being sent now
        self._hurried = False  # a SIGTERM or Ctrl-C arrived: what is left to send gets HURRY_SECONDS
        self._outermost_runs: List[_ActiveRun] = []  # active, in any thread
        self._refused: Optional[Tuple[_Config, str]] = None  # Orchestra refused this key or run for good
        self._struggling: Optional[Tuple[_Config, str]] = None  # the last update gave up on retryable failures
        self._url_problems: Dict[str, Optional[str]] = {}
        self._current_run: contextvars.ContextVar[Optional[_ActiveRun]] = contextvars.ContextVar(
            "orchestra_sdk_run", default=None
        )

    # -- configuration ------------------------------------------------------------------------

    @property
    def retry_policy(self) -> RetryPolicy:
        """How each event is delivered; assign a `RetryPolicy` to change it."""
        return self._retry_policy

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy, not {type(policy).__name__}")
        self._retry_policy = policy

    @property
    def log_file(self) -> str:
        """The log file sent as the LOG event when ``send_logs`` is on (a str or path-like)."""
        return self._log_file

    @log_file.setter
    def log_file(self, path: Union[str, os.PathLike[str]]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"log_file must be a str or os.PathLike, not {type(path).__name__}")
        self._log_file = os.fspath(path)
        if not isinstance(self._log_file, str):
            raise TypeError(f"log_file must name a path as text, not {type(self._log_file).__name__}")

    @property
    def webhook_url(self) -> str:
        """Where events go: ``ORCHESTRA_WEBHOOK_URL``, the Lambda event's, or the default."""
        return self._config.webhook_url

    @webhook_url.setter
    def webhook_url(self, url: str) -> None:
        if not isinstance(url, str):
            raise TypeError(f"webhook_url must be a str, not {type(url).__name__}")
        self._config = dataclasses.replace(self._config, webhook_url=url.strip())  # as the environment's

    @property
    def task_run_id(self) -> Optional[uuid.UUID]:
        """The run reported on; assign a UUID or its string form when the environment lacks it."""
        if self._config.task_run_id is None:
            return None
        import uuid

        return uuid.UUID(self._config.task_run_id)

    @task_run_id.setter
    def task_run_id(self, value: Union[uuid.UUID, str, None]) -> None:
        uuid = sys.modules.get("uuid")  # a UUID object exists only once uuid is imported
        if value is None:
            parsed, problem = None, "task_run_id was set to None"
        elif uuid is not None and isinstance(value, uuid.UUID):
            parsed, problem = str(value), None
        elif isinstance(value, str):
            parsed, problem = _parse_task_run_id(value, "task_run_id")
            if parsed is None:
                raise ValueError(f"{problem}; expected e.g. '0f9c3a5e-8f4e-4a4e-9b1a-2f6f3c9d7e10'")
        else:
            raise TypeError(f"task_run_id must be a uuid.UUID or str, not {type(value).__name__}")
        self._apply_config(_Config(parsed, problem, self.webhook_url))

    def _apply_config(self, config: _Config) -> None:
        """Take a new configuration; the one-time warnings may be given again for it."""
        self._config = config
        self._warned: Set[str] = set()

    def configure_aws_lambda_event(self, event: Mapping[str, Any]) -> None:
        """Take the task run id and webhook URL from a Lambda invocation event.

        The log file moves to ``/tmp/<task run id>_<random int>.log`` (Lambda can write only
        under /tmp). An event without a valid id leaves the SDK unconfigured, with a warning.
        """
        import random

        config = _read_lambda_event(event)
        self._apply_config(config)
        if config.task_run_id is None:
            problem = config.task_run_id_problem or "no task run id"
            _log.warning("Orchestra is not configured for this invocation: %s; updates will be skipped.", problem)
            self._warned.add(problem)  # said once here, not again at the first update
            return
        self.log_file = f"/tmp/{config.task_run_id}_{random.randint(0, 10000)}.log"

    def configure_http_request(self, headers: Any) -> None:
        """Take the task run id from the request that triggered this run (Orchestra's HTTP trigger
        sends it in the header ``orchestra_task_run_id``): any mapping of headers, in any case,
        with '-' or '_', or a WSGI ``environ``. A missing or malformed id leaves the SDK
        unconfigured, with a warning; it never raises. Use one SDK object per request."""
        config = _read_http_headers(headers)
        self._apply_config(config)
        if config.task_run_id is None:
            problem = config.task_run_id_problem or "no task run id"
            _log.warning("Orchestra is not configured for this request: %s; updates will be skipped.", problem)
            self._warned.add(problem)

    def __repr__(self) -> str:
        key = "set" if self.api_key else "missing"
        url = _redact_url(self.webhook_url)
        return f"OrchestraSDK(task_run_id={self._config.task_run_id}, webhook_url={url!r}, api_key=<{key}>)"

    # -- reporting: one method per event type -------------------------------------------------

    def update_task(self, status: Union[TaskRunStatus, str, None] = None, message: Optional[str] = None) -> bool:
        """Send a status, a message, or both. Returns True only when Orchestra answered 2xx.

        Raises ValueError for an unknown status or when neither is given, TypeError for a
        status or message of the wrong type.
        """
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        if status is None and not message:
            raise ValueError("update_task() needs a status, a non-empty message, or both")
        return self._send(_status_event(None if status is None else _coerce_status(status), message or None))

    def set_output(self, name: str, value: Any) -> bool:
        """Set a Task output: `name` is letters, '_' and '-'; `value` any JSON value."""
        _check_output_name(name)
        _check_output_value(name, value)
        return self._send(_output_event(name, value))

    # The official package's names for the decorator's three reports.

    def send_running_status(self, name: str) -> bool:
        """RUNNING, "<name> started." (as the decorator sends at a run's start)."""
        return self._send(_status_event(TaskRunStatus.RUNNING, _started(name)))

    def send_success_status(self, name: str) -> bool:
        """SUCCEEDED, "<name> succeeded."."""
        return self._send(_status_event(TaskRunStatus.SUCCEEDED, _succeeded(name)))

    def send_failed_status(self, name: str, error: Union[BaseException, str]) -> bool:
        """FAILED, "<name> failed. Error: <the first 250 characters of str(error)>"."""
        return self._send(_status_event(TaskRunStatus.FAILED, _failed(name, _safe_str(error))))

    @property
    def http_client(self) -> Optional[HTTPClient]:
        """An `HTTPClient` for this run (sharing this client's connection and retry policy), or
        None, with a warning, when the SDK cannot report."""
        config, api_key = self._config, self.api_key
        blocked = self._cannot_report(config, api_key)
        if blocked is not None or config.task_run_id is None or api_key is None:
            reason = blocked[1] if blocked else "not configured"
            _log.warning("Environment not configured correctly to send update for Task: %s.", reason)
            return None
        client = HTTPClient(api_key, config.task_run_id, config.webhook_url, retry_policy=self._retry_policy)
        client._transport = self._transport
        return client

    def list_linked_connections(self) -> List[LinkedConnection]:
        """The connections linked to this Task (see `list_linked_connections`)."""
        return list_linked_connections()

    def get_linked_connection(self, integration: str, connection_id: Optional[str] = None) -> LinkedConnection:
        """One linked connection (see `get_linked_connection`)."""
        return get_linked_connection(integration, connection_id)

    # -- run ----------------------------------------------------------------------------------

    if TYPE_CHECKING:  # pragma: no cover - signatures for type checkers only

        @overload
        def run(self, name: F, *, reraise: Literal[True] = True) -> F: ...

        @overload
        def run(self, name: Optional[str] = None, *, reraise: Literal[True] = True) -> _Run: ...

        @overload
        def run(self, name: Optional[str] = None, *, reraise: Literal[False]) -> _QuietRun: ...

        @overload
        def run(self, name: Optional[str] = None, *, reraise: bool) -> Union[_Run, _QuietRun]: ...

    def run(self, name: Any = None, *, reraise: bool = True) -> Any:
        """Report a function or block as a Task run: RUNNING, then how it ended.

        Use as ``@run()``, ``@run``, ``@run("name")``, ``with run("name"):`` or
        ``async with run("name"):``. Exceptions are reported, then re-raised (with
        ``reraise=False`` an ``Exception`` is reported and swallowed, returning None).
        """
        if callable(name) and not isinstance(name, str):
            return _Run(self, None, reraise)(name)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"run() takes a name (str) or a function, not {type(name).__name__}")
        return _Run(self, name, reraise)

    # -- internals ------------------------------------------------------------------------------

    def _send(self, event: _Event) -> bool:
        """Deliver one event, or say once why it cannot be. One snapshot of the configuration is
        checked and used, so a thread changing it meanwhile cannot redirect the key."""
        if event.is_final_status():
            _note_final_status(TaskRunStatus(event.fields["status"]), event.fields.get("message"))
        config, api_key = self._config, self.api_key
        blocked = self._cannot_report(config, api_key)
        if blocked is not None:
            level, reason = blocked
            if reason in self._warned:
                _log.debug("%s event not sent: %s", event.type.value, reason)
            else:
                self._warned.add(reason)
                _log.log(level, "Cannot report to Orchestra: %s. Updates are skipped; the Task itself runs on.", reason)
            return False
        assert config.task_run_id is not None and api_key is not None
        if self._refused == (config, api_key):
            _log.debug("%s event not sent: Orchestra refused this run or key before", event.type.value)
            return False
        policy = self._retry_policy
        if self._struggling == (config, api_key) and not event.is_final_status():
            # The webhook could not be reached lately: one attempt, until one gets through.
            policy = dataclasses.replace(policy, retries=0, deadline=min(policy.deadline, policy.timeout))
        budget = _Budget(policy.deadline)
        if self._pid != os.getpid():  # a forked child: another thread may have held the lock at the fork
            self._lock, self._pid, self._in_flight = threading.Lock(), os.getpid(), set()
        with self._lock:
            self._in_flight.add(budget)
            if self._hurried:
                budget.hurry()
        try:
            delivery = self._transport.post(
                config.webhook_url, api_key, event, config.task_run_id, policy, budget=budget
            )
        finally:
            with self._lock:
                self._in_flight.discard(budget)
        if delivery.delivered:
            self._struggling = None
            return True
        refusal = delivery.refusal(config.task_run_id)
        if refusal is not None:
            self._refused = (config, api_key)
            _log.error("%s %s.", delivery.error, refusal[0].upper() + refusal[1:])
        else:
            _log.error("%s", delivery.error)
            if delivery.last.status is None or delivery.last.status in policy.retry_statuses:
                self._struggling = (config, api_key)
        return False

    def _runs_elsewhere(self) -> bool:
        """Whether an outermost run of this client is active in another thread."""
        here = threading.get_ident()
        return any(run.thread != here for run in self._outermost_runs)

    def _hurry(self) -> None:
        """From now on, and for the events being sent, at most HURRY_SECONDS each. Safe to call
        from a signal handler: it only lowers numbers."""
        self._hurried = True
        try:
            in_flight = list(self._in_flight)
        except RuntimeError:  # changed while copied (free-threaded builds): hurry what is new
            in_flight = []
        for budget in in_flight:
            budget.hurry()

    def _send_log(self, log_name: str, text: str) -> bool:
        return self._send(_log_event(log_name, text))

    def _cannot_report(self, config: _Config, api_key: Optional[str]) -> Optional[Tuple[int, str]]:
        """(log level, reason) when no event can be sent with this configuration, else None."""
        problem = _api_key_problem(api_key)
        if problem is not None:
            return (logging.ERROR if api_key else logging.WARNING), problem
        if config.task_run_id is None:
            return logging.WARNING, config.task_run_id_problem or f"{ENV_TASK_RUN_ID} is not set"
        problem = self._url_problem(config.webhook_url)
        return (logging.ERROR, problem) if problem else None

    def _url_problem(self, url: str) -> Optional[str]:
        if url not in self._url_problems:  # check each URL once, not on every update
            problem = self._url_problems[url] = _webhook_url_problem(url)
            if problem is None and url.lower().startswith("http://"):
                from urllib.parse import urlsplit

                if not _is_loopback(urlsplit(url).hostname or ""):
                    _log.warning(
                        "%s=1: the API key goes in clear text to %s. For local testing only, never in production.",
                        ENV_ALLOW_INSECURE_HTTP,
                        _redact_url(url),
                    )
        return self._url_problems[url]

    def _send_log_file(self, path: str) -> Optional[bool]:
        """Send a log file; None (with a warning) when it cannot be read."""
        text, problem = _read_log_file(path, self.max_log_bytes)
        if text is None:
            _log.warning("No log sent to Orchestra: %s.", problem)
            return None
        return self._send_log(path, text)


# ---------------------------------------------------------------------------------------------
# run(): decorator and context manager; the outcome is decided in one place
# ---------------------------------------------------------------------------------------------

DEFAULT_RUN_NAME = "task"


class _Run:
    """What `OrchestraSDK.run()` returns: a decorator, a context manager and an async one.

    Each call of a decorated function, and each ``with`` block, is a fresh `_ActiveRun`.
    """

    def __init__(self, sdk: OrchestraSDK, name: Optional[str], reraise: bool) -> None:
        self._sdk = sdk
        self._name = name
        self._reraise = reraise
        self._active: List[_ActiveRun] = []

    def __call__(self, func: F) -> F:
        name = self._name or getattr(func, "__name__", None) or DEFAULT_RUN_NAME
        sdk, reraise = self._sdk, self._reraise
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"run() cannot report the generator function {name!r}: it would be SUCCEEDED before its "
                f"first item. Report the code that consumes it: `with orchestra.run({name!r}): for item in ...`"
            )
        if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with _ActiveRun(sdk, name, reraise):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _ActiveRun(sdk, name, reraise):
                return _not_awaitable(func(*args, **kwargs), name)

        return wrapper  # type: ignore[return-value]

    def __enter__(self) -> _Run:
        active = _ActiveRun(self._sdk, self._name or DEFAULT_RUN_NAME, self._reraise)
        active.__enter__()
        self._active.append(active)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        return self._active.pop().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> _Run:
        active = _ActiveRun(self._sdk, self._name or DEFAULT_RUN_NAME, self._reraise)
        await active.__aenter__()
        self._active.append(active)
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        return await self._active.pop().__aexit__(exc_type, exc, tb)


def _not_awaitable(result: Any, name: str) -> Any:
    """The result of a function run() took for synchronous: a coroutine there means its body has
    not run yet (a wrapper that is not async-aware), so SUCCEEDED would be a lie: refuse it."""
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: no "coroutine was never awaited" warning on top
        raise TypeError(
            f"{name!r} returned {type(result).__name__} without running its body: run() took it for "
            "a plain function (a wrapper that is not async-aware hides the async def). Decorate the "
            "async def itself, or use `async with orchestra.run(...)` around the await"
        )
    return result


class _ActiveRun:
    """One execution of a run, as a context manager (sync or async): reports its start and how it
    ended, and owns the SIGTERM handling and output capture of an outermost run."""

    ended: bool  # its reports are done and it is cleaned up

    def __init__(self, sdk: OrchestraSDK, name: str, reraise: bool) -> None:
        self.sdk = sdk
        self.name = name
        self.reraise = reraise
        # A run inside another run of the same client is a step of it: in the same context, or in
        # another thread while that run is active (whether or not threads inherit the context,
        # as with -X thread_inherit_context=1, the default of free-threaded 3.14).
        # A run the context still names but that has ended (a pool thread that inherited the
        # context of a run long finished) is no parent.
        parent = sdk._current_run.get()
        self.outermost = (parent is None or parent.ended) and not sdk._runs_elsewhere()
        # A step only sends messages, so it can never mark the whole Task as finished.
        self.is_step = not self.outermost or bool(os.environ.get(ENV_WRAPPED))
        self.pid = os.getpid()  # a forked child must never report its parent's run
        self.thread = threading.get_ident()
        self.finishing = False
        self.sigterm: Optional[_SigtermGuard] = None
        self.capture: Optional[_OutputCapture] = None
        self.task: Any = None  # the asyncio task, for async runs
        self._token: Any = None
        self._reports = threading.Lock()  # a run's reports go out one after another, in order
        self._final_sent = False
        self.ended = False

    # -- sync -----------------------------------------------------------------------------------

    def __enter__(self) -> _ActiveRun:
        self._enter()
        try:
            self._report_start()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        """Report how the run ended; True when the exception is to be swallowed."""
        self.finishing = True
        try:
            with _SigintHeld(self.sdk if self.outermost else None):  # Ctrl-C must not cut the final report
                self._finish(exc)
        finally:
            self._cleanup()
        return self._after(exc)

    # -- async: the HTTP requests run in a thread of their own, so the event loop keeps going ---

    async def __aenter__(self) -> _ActiveRun:
        import asyncio

        self.task = asyncio.current_task()
        self._enter()
        try:
            await _in_thread(self._report_start)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        import asyncio

        self.finishing = True
        if os.getpid() != self.pid:  # a forked child unwinding through the parent's run: not ours
            return False
        try:
            await _in_thread(self._finish, exc)
        except asyncio.CancelledError:
            if not self._sigterm_received():
                raise
        finally:
            self._cleanup()
        return self._after(exc)

    # -- the parts ------------------------------------------------------------------------------

    def _enter(self) -> None:
        self._token = self.sdk._current_run.set(self)
        if self.outermost:
            with self.sdk._lock:
                self.sdk._outermost_runs.append(self)
            if self.sdk.send_logs:
                self.capture = _OutputCapture(self.sdk.max_log_bytes)
                self.capture.start()
            self.sigterm = _SigtermGuard.install(self)

    def _report_start(self) -> None:
        self._report(TaskRunStatus.RUNNING, _started(self.name), final=False)

    def _finish(self, exc: Optional[BaseException]) -> None:
        """The final status, then the log."""
        self._report_end(exc)
        self._send_logs()

    def _sigterm_received(self) -> bool:
        """Whether SIGTERM ended this run (or, for a step, the outermost run it belongs to)."""
        runs = [self] if self.outermost else list(self.sdk._outermost_runs)
        return any(run.sigterm is not None and run.sigterm.received for run in runs)

    def _report_end(self, exc: Optional[BaseException]) -> None:
        sigterm = self._sigterm_received()
        status, message = _outcome(self.name, exc=exc, signum=signal.SIGTERM if sigterm else 0)
        if self.capture is not None and exc is not None and status is not TaskRunStatus.SUCCEEDED:
            import traceback

            self.capture.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        self._report(status, message, final=True)

    def _report(self, status: TaskRunStatus, message: str, final: bool) -> None:
        if os.getpid() != self.pid:
            return  # a forked child unwinding through the parent's run
        if self.outermost and self.is_step and status in (TaskRunStatus.FAILED, TaskRunStatus.CANCELLED):
            _note_final_status(status, message)  # under `orchestra-sdk run`: the wrapper must know
        if not self.outermost and self.sdk._hurried:
            return  # the process is being stopped: a step's message must not delay the final status
        with self._reports:  # a RUNNING still being retried is never overtaken by the final status
            if self._final_sent:
                return  # the final status went first (a SIGTERM as RUNNING was starting): RUNNING is moot
            self._final_sent = final
            self.sdk.update_task(status=None if self.is_step else status, message=message)

    def _send_logs(self) -> None:
        """One LOG event per outermost run: the log file when it exists, else what was captured."""
        if self.capture is None or os.getpid() != self.pid:  # not outermost, send_logs off, or a fork
            return
        self.capture.stop()  # the log is complete: what sending it logs does not belong in it
        path = self.sdk.log_file
        if not os.path.exists(path) or self.sdk._send_log_file(path) is None:
            self.sdk._send_log(self.name, self.capture.text())

    def _cleanup(self) -> None:
        """Undo what _enter did; SIGTERM handling ends only after the last report."""
        self.ended = True
        with self.sdk._lock:
            if self in self.sdk._outermost_runs:
                self.sdk._outermost_runs.remove(self)
        if self.capture is not None:
            self.capture.stop()
        if self.sigterm is not None:
            self.sigterm.restore()
        try:
            self.sdk._current_run.reset(self._token)
        except (ValueError, RuntimeError):  # reset from another context: set it back plainly
            self.sdk._current_run.set(None)

    def _after(self, exc: Optional[BaseException]) -> bool:
        """The one exit rule, once the final status is sent: a SIGTERM ends the process with
        status 143 (unless the exception already is that exit); else say whether to swallow."""
        if self.sigterm is not None and self.sigterm.received and not isinstance(exc, SystemExit):
            if self.sigterm.exiting_elsewhere and exc is not None and _is_cancellation(exc):
                return False  # another task of the run carries SystemExit(143); the loop is winding down
            raise SystemExit(_SIGTERM_EXIT_STATUS) from exc
        return exc is not None and isinstance(exc, Exception) and not self.reraise


def _load_transport_modules() -> None:
    """Import, in this thread, what sending an event can import. A report thread that imported
    them itself could hold a module's import lock just as another task forks (a process pool),
    and the child would hang on that import for good."""
    import email.utils  # noqa: F401
    import http.client  # noqa: F401
    import ipaddress  # noqa: F401
    import random  # noqa: F401
    import select  # noqa: F401
    import socket  # noqa: F401
    import ssl  # noqa: F401
    import urllib.error
    import urllib.parse
    import urllib.request  # noqa: F401

    "".encode("idna")  # the codec that DNS look-ups and TLS server names use


async def _in_thread(func: Callable[..., None], *args: Any) -> None:
    """Run a report in a thread of its own and wait for it, whatever happens to the waiting task.

    Not the loop's default executor: a report must not queue behind the program's own threads.
    A cancellation that arrives meanwhile is held until the report is done, then raised, so a
    report is never abandoned half-way (and a RUNNING never lands after the final status).
    """
    import asyncio

    _load_transport_modules()
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(error: Optional[BaseException]) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    finished = threading.Event()
    errors: List[Optional[BaseException]] = []

    def work() -> None:
        error: Optional[BaseException] = None
        try:
            func(*args)
        except BaseException as exc:
            error = exc
        errors.append(error)
        finished.set()
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    thread = threading.Thread(target=work, name="orchestra-sdk-report", daemon=True)
    _ReportThreads.start(thread)
    cancelled: Optional[BaseException] = None
    while not done.done():
        try:
            # Woken by call_soon_threadsafe, and every 50 ms all the same: a child forked from
            # this process that closed its copy of the loop can unregister the wake-up pipe.
            await asyncio.wait({done}, timeout=0.05)
        except asyncio.CancelledError as exc:
            cancelled = exc  # finish the report first
        if not done.done() and finished.is_set():
            settle(errors[0])
    thread.join(1.0)  # it has only to return: no thread of ours is left (a fork right after would warn)
    if cancelled is not None and done.exception() is None:
        raise cancelled
    done.result()


class _ReportThreads:
    """Report threads still running when the interpreter exits are waited for, each bounded by
    its retry deadline: if the event loop is torn down meanwhile (a second Ctrl-C on Python 3.8
    to 3.10), the final status still goes out. Daemon threads joined at exit rather than
    non-daemon ones, which a process forked while one runs could wait for forever."""

    _lock = threading.Lock()
    _running: Set[threading.Thread] = set()
    _registered = False
    _pid = os.getpid()

    @classmethod
    def start(cls, thread: threading.Thread) -> None:
        with cls._lock:
            if not cls._registered:
                import atexit

                atexit.register(cls.join_all)
                cls._registered = True
            if cls._pid != os.getpid():  # a forked child starting reports of its own
                cls._pid, cls._running = os.getpid(), set()
            cls._running = {t for t in cls._running if t.is_alive()} | {thread}
        thread.start()

    @classmethod
    def join_all(cls) -> None:
        if os.getpid() != cls._pid:
            return  # a forked child: those threads were the parent's
        for thread in list(cls._running):
            thread.join(RetryPolicy().deadline + HURRY_SECONDS)


class _SigintHeld:
    """Holds Ctrl-C (SIGINT) back while the final report is sent, then raises KeyboardInterrupt.

    Only where Python's own handler is installed and in the main thread; a no-op elsewhere.
    The report itself is bounded by the retry policy's deadline.
    """

    def __init__(self, sdk: Optional[OrchestraSDK]) -> None:
        self.sdk = sdk
        self.received = False
        self.previous: Any = None

    def __enter__(self) -> None:
        if self.sdk is None or not hasattr(signal, "SIGINT"):
            return
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self.previous = None

    def _handle(self, signum: int, frame: Optional[types.FrameType]) -> None:
        if not self.received:
            _log.warning("Interrupted: sending the final status to Orchestra first (%g s at most).", HURRY_SECONDS)
        self.received = True
        if self.sdk is not None:
            self.sdk._hurry()

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self.previous is None:
            return
        if signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self.previous)
        if self.received and exc is None:
            raise KeyboardInterrupt


class _SigtermGuard:
    """Turns SIGTERM into a CANCELLED report and exit status 143, while an outermost run is active."""

    def __init__(self, active: _ActiveRun) -> None:
        self.active = active
        self.received = False
        self.exiting_elsewhere = False  # SystemExit(143) was raised in another task of the run

    @classmethod
    def install(cls, active: _ActiveRun) -> Optional[_SigtermGuard]:
        if not hasattr(signal, "SIGTERM") or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None  # the program handles SIGTERM itself: leave it alone
        guard = cls(active)
        try:
            signal.signal(signal.SIGTERM, guard._handle)
        except ValueError:  # not the main thread: only it can handle signals
            return None
        return guard

    def _handle(self, signum: int, frame: Optional[types.FrameType]) -> None:
        if os.getpid() != self.active.pid:  # a forked child: SIGTERM does what it would by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.active.sdk._hurry()  # the reports still to come get little time: a SIGKILL follows
        if self.received or self.active.finishing:
            self.received = True
            return  # the run is already ending (a second SIGTERM, or the final report is being sent)
        self.received = True
        task = self.active.task
        if task is not None:
            import asyncio

            loop = task.get_loop()
            holder = asyncio.current_task(loop)
            if holder is None or (holder is not task and self.active.sdk._current_run.get() is None):
                # The loop is free, or held by a task outside the run: cancel the run's task there.
                loop.call_soon_threadsafe(task.cancel)
                return
            # The run's task, or a task it started, holds the loop (time.sleep, a blocking
            # driver): end it right here; the run's task is then cancelled as the loop winds down.
            self.exiting_elsewhere = holder is not task
        raise SystemExit(_SIGTERM_EXIT_STATUS)

    def restore(self) -> None:
        if signal.getsignal(signal.SIGTERM) != self._handle:
            return
        if self.received:  # the process is ending with status 143: a second SIGTERM must not kill it first
            signal.signal(signal.SIGTERM, _ignore_after_sigterm)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _ignore_after_sigterm(signum: int, frame: Optional[types.FrameType]) -> None:
    """SIGTERM once the run has reported CANCELLED and the process is exiting 143: nothing to do.
    (A handler, not SIG_IGN, which processes started meanwhile would inherit.)"""


# ---------------------------------------------------------------------------------------------
# Captured output (send_logs without a log file): what the run printed and logged, bounded
# ---------------------------------------------------------------------------------------------


class _TailBuffer:
    """The most recent `max_bytes` of what was appended, and how many bytes were dropped.

    Safe to re-enter (a signal handler that prints while a write is being kept): an append
    never waits for the lock; what it cannot store now is stored by whoever holds the lock.
    """

    def __init__(self, max_bytes: int) -> None:
        import collections

        self._max_bytes = max_bytes
        self._chunks: collections.deque[bytes] = collections.deque()
        self._pending: List[bytes] = []  # list.append is atomic, so any thread or handler may add
        self._size = 0
        self._cut = 0
        self._lock = threading.Lock()

    def append(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        if self._lock.acquire(blocking=False):
            try:
                self._store()
            finally:
                self._lock.release()

    def _store(self) -> None:
        while self._pending:
            chunk = self._pending.pop(0)
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size > self._max_bytes and self._chunks:
                excess = self._size - self._max_bytes
                first = self._chunks[0]
                if len(first) <= excess:
                    self._chunks.popleft()
                else:  # keep the end of a chunk bigger than what is left to cut
                    self._chunks[0], first = first[excess:], first[:excess]
                self._size -= len(first)
                self._cut += len(first)

    def text(self) -> str:
        """The kept bytes as text, after a marker line when anything was cut."""
        with self._lock:
            self._store()
            data, cut = b"".join(self._chunks), self._cut
        return _tail_text(data, self._max_bytes, cut)


_CAPTURE: contextvars.ContextVar[Optional[_OutputCapture]] = contextvars.ContextVar(
    "orchestra_sdk_capture", default=None
)


class _OutputCapture:
    """Keeps, bounded, what one run printed (stdout, stderr) and logged (records at INFO and
    above that the program's own handlers do not already show there), in the order it happened.

    The program's streams and logging stay as they are: nothing is added to the root logger (so
    ``logging.basicConfig()`` inside the run still works) and every write still reaches the
    stream it was meant for.
    """

    FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self, max_bytes: int) -> None:
        self.buffer = _TailBuffer(max_bytes)
        self._token: Any = None
        self._on = False

    def start(self) -> None:
        self._token = _CAPTURE.set(self)
        _Router.enter(self)
        self._on = True

    def stop(self) -> None:
        if not self._on:
            return
        self._on = False
        _Router.leave(self)
        try:
            _CAPTURE.reset(self._token)
        except (ValueError, RuntimeError):  # stopped from another context
            _CAPTURE.set(None)

    def append(self, text: str) -> None:
        self.buffer.append(_clean_text(text).encode("utf-8"))

    def text(self) -> str:
        return self.buffer.text()


class _Router:
    """Hands what the process prints and logs to the capture of the run it belongs to: the one
    in the writer's context (its thread or task), or else the only capture running.

    The streams and the log-record factory belong to the process, so this state does too: the
    first capture to start installs the router, the last to stop removes it, in any order.
    """

    _lock = threading.Lock()
    _active: List[_OutputCapture] = []
    _installed: List[Tuple[str, Any, Any]] = []  # (sys attribute, original stream, our tee)
    _factory: Optional[Tuple[Any, Any]] = None  # (the factory before ours, ours)

    @classmethod
    def owner(cls) -> Optional[_OutputCapture]:
        capture = _CAPTURE.get()
        if capture is not None and capture._on:
            return capture
        active = cls._active
        return active[0] if len(active) == 1 else None

    @classmethod
    def enter(cls, capture: _OutputCapture) -> None:
        with cls._lock:
            if not cls._active:
                for attr in ("stdout", "stderr"):
                    stream = getattr(sys, attr)
                    if stream is not None:
                        tee = _Tee(stream)
                        setattr(sys, attr, tee)
                        cls._installed.append((attr, stream, tee))
                previous = logging.getLogRecordFactory()
                ours = _record_factory(previous)
                logging.setLogRecordFactory(ours)
                cls._factory = (previous, ours)
            cls._active.append(capture)

    @classmethod
    def leave(cls, capture: _OutputCapture) -> None:
        with cls._lock:
            if capture in cls._active:
                cls._active.remove(capture)
            if cls._active:
                return
            for attr, stream, tee in cls._installed:
                if getattr(sys, attr) is tee:  # replaced by the program since: its own, left alone
                    setattr(sys, attr, stream)
            cls._installed = []
            if cls._factory is not None and logging.getLogRecordFactory() is cls._factory[1]:
                logging.setLogRecordFactory(cls._factory[0])
            cls._factory = None

    @classmethod
    def consoles(cls) -> List[Any]:
        """The streams whose writes are kept as written: our tees (a handler made before the run
        holds the original stream, which they never see)."""
        return [tee for _, _, tee in cls._installed]


def _record_factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """The program's record factory, also keeping each record at INFO and above for its run."""
    formatter = logging.Formatter(_OutputCapture.FORMAT)

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            if record.levelno >= logging.INFO:
                capture = _Router.owner()
                if capture is not None and not _shown_on_console(record):
                    capture.append(formatter.format(record) + "\n")
        except Exception:  # keeping a copy must never break the program's logging
            pass
        return record

    return factory


def _shown_on_console(record: logging.LogRecord) -> bool:
    """Whether the program's own handlers (or Python's last resort) will write `record` through
    the captured stdout or stderr, where it is kept as shown; looked up as Logger.callHandlers does."""
    consoles = _Router.consoles()
    node: Optional[logging.Logger] = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    any_handler = False
    while node is not None:
        for handler in node.handlers:
            any_handler = True
            stream = getattr(handler, "stream", None)
            if record.levelno >= handler.level and any(stream is console for console in consoles):
                return True
        node = node.parent if node.propagate else None
    last_resort = logging.lastResort
    return not any_handler and last_resort is not None and record.levelno >= last_resort.level


class _Tee:
    """A text stream that writes through to the original and gives a copy to the writer's run."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        capture = _Router.owner()
        if capture is not None:
            capture.append(text)
        return written

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# ---------------------------------------------------------------------------------------------
# Linked connections: credentials Orchestra passes as INTEGRATION__CONNECTION_ID__FIELD
# ---------------------------------------------------------------------------------------------


def _normalise(part: str) -> str:
    """Runs of characters other than ASCII letters and digits become '_'; trimmed; upper case."""
    out: List[str] = []
    for ch in part:
        if ch.isascii() and ch.isalnum():
            out.append(ch.upper())
            continue
        if out and out[-1] != "_":
            out.append("_")
    return "".join(out).strip("_")


def _decode_field(value: str) -> Any:
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to decode: a string
            pass
    return value


@dataclasses.dataclass(frozen=True, repr=False)
class LinkedConnection:
    """One linked connection's credentials; read a field with ``conn["field"]``.

    Immutable, and copies and pickles like its fields (to pass it to a worker process). Field
    values are secrets: they are never shown in the repr.
    """

    integration: str
    connection_id: str
    fields: Mapping[str, Any]

    def __post_init__(self) -> None:
        import types

        object.__setattr__(self, "fields", types.MappingProxyType(dict(self.fields)))

    def __hash__(self) -> int:
        return hash((self.integration, self.connection_id))

    def __reduce__(self) -> Tuple[Any, ...]:  # a mapping proxy cannot be pickled; its dict can
        return (type(self), (self.integration, self.connection_id, dict(self.fields)))

    def __getitem__(self, name: str) -> Any:
        key = _normalise(name)
        if key not in self.fields:
            raise KeyError(
                f"{self.integration} connection {self.connection_id!r} has no field {name!r}; "
                f"fields: {', '.join(sorted(self.fields)) or '(none)'}"
            )
        return self.fields[key]

    def get(self, name: str, default: Any = None) -> Any:
        """A field's value, or `default` when the connection has no such field."""
        return self.fields.get(_normalise(name), default)

    def __repr__(self) -> str:
        names = ", ".join(sorted(self.fields))
        return (
            f"LinkedConnection(integration={self.integration!r}, "
            f"connection_id={self.connection_id!r}, fields=<{names}>)"
        )


def list_linked_connections(environ: Optional[Mapping[str, str]] = None) -> List[LinkedConnection]:
    """The connections linked to this Task, read from `environ` (default: os.environ)."""
    env = os.environ if environ is None else environ
    found: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for name, value in env.items():
        parts = name.split("__")
        if len(parts) != 3 or any(not p or _normalise(p) != p for p in parts):
            continue
        integration, connection_id, field_name = parts
        found.setdefault((integration, connection_id), {})[field_name] = _decode_field(value)
    return [
        LinkedConnection(integration, connection_id, fields)
        for (integration, connection_id), fields in sorted(found.items())
    ]


def get_linked_connection(
    integration: str, connection_id: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> LinkedConnection:
    """The linked connection of `integration` (case-insensitive), by id or the only one.

    Raises LinkedConnectionNotFoundError when none matches, or when several do and no
    `connection_id` was given.
    """
    wanted = _normalise(integration)
    candidates = [c for c in list_linked_connections(environ) if c.integration == wanted]
    ids = ", ".join(c.connection_id for c in candidates)
    if connection_id is not None:
        wanted_id = _normalise(connection_id)
        for conn in candidates:
            if conn.connection_id == wanted_id:
                return conn
        raise LinkedConnectionNotFoundError(
            f"no {wanted} connection {connection_id!r} is linked to this Task"
            + (f"; linked {wanted} connections: {ids}" if ids else "")
        )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LinkedConnectionNotFoundError(
            f"no {wanted} connection is linked to this Task (looked for variables named "
            f"{wanted}__<CONNECTION_ID>__<FIELD>)"
        )
    raise LinkedConnectionNotFoundError(
        f"{len(candidates)} {wanted} connections are linked ({ids}); pass connection_id to choose one"
    )


# ---------------------------------------------------------------------------------------------
# Command line: run, update, output, log, check, listen
# ---------------------------------------------------------------------------------------------

_CLI = "orchestra-sdk"


def _cli_error(text: str) -> None:
    print(f"{_CLI}: error: {text}", file=sys.stderr)


_RECEIVER_MAX_BODY = 64 * 1024 * 1024


class _Receiver:
    """A local stand-in for Orchestra's webhook: accepts events and hands each to a callback."""

    def __init__(self, host: str, port: int, on_event: Callable[[Any], None]) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                text = (self.headers.get("Content-Length") or "0").strip()
                if not (text.isascii() and text.isdigit()) or int(text) > _RECEIVER_MAX_BODY:
                    self._answer(400, {"success": False, "error": "a Content-Length of 0 to 64 MiB is needed"})
                    return
                body = self.rfile.read(int(text))
                try:
                    event = json.loads(body)
                except (ValueError, RecursionError):
                    self._answer(400, {"success": False, "error": "body is not JSON"})
                    return
                try:
                    on_event(event)
                except Exception:  # showing it failed; it was received all the same
                    pass
                self._answer(200, {"success": True})

            def do_GET(self) -> None:
                self._answer(200, {"success": True, "info": "orchestra-sdk local receiver: POST events here"})

            def _answer(self, status: int, payload: Dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                head = (
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Bad Request'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                self.wfile.write(head.encode() + body)  # one write: no delayed-ACK stall
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                error = sys.exc_info()[1]  # one line, never a traceback: a client misbehaved
                print(f"{_CLI}: listen: request from {client_address[0]}: {_describe_error(error, 0)}", file=sys.stderr)

        self.server = Server((host, port), Handler)
        self.server.daemon_threads = True
        bound_host, bound_port = str(self.server.server_address[0]), int(self.server.server_address[1])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="orchestra-receiver", daemon=True
        )

    def start(self) -> _Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _parser() -> Any:
    import argparse

    def command(name: str, summary: str, description: str) -> Any:
        return commands.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            epilog=_CLI_ENVIRONMENT,
        )

    parser = argparse.ArgumentParser(
        prog=_CLI,
        description="Report a Task to Orchestra from the command line, or try one locally.",
        epilog=_CLI_ENVIRONMENT,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = command(
        "run",
        "run a command as the Task: RUNNING, then its outcome",
        "Run COMMAND as the Task: report RUNNING, run it (its output passes through unchanged), then "
        "report how it ended: exit 0 is SUCCEEDED (unless the command reported a final status itself), "
        "SIGINT or SIGTERM is CANCELLED, anything else FAILED. Exits with the command's exit status.",
    )
    run.add_argument("--name", help="the name in messages (default: the command's base name)")
    run.add_argument(
        "--send-logs", action="store_true", help="keep the command's output and send it as a LOG event at the end"
    )
    run.add_argument(
        "--local",
        action="store_true",
        help="report to a receiver started on 127.0.0.1 for this run, and print each event, instead of Orchestra",
    )
    run.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]", help="the command and its arguments"
    )

    update = command("update", "send a status and/or a message", "Send one UPDATE_STATUS event.")
    update.add_argument("--status", help="one of " + ", ".join(s.value for s in TaskRunStatus) + " (any case)")
    update.add_argument("--message", help="a message to show in Orchestra")

    output = command("output", "set a Task output", "Send one SET_OUTPUT event.")
    output.add_argument("name", help="the output's name, e.g. rows_loaded (Orchestra decides which names it takes)")
    output.add_argument(
        "value", help="decoded as JSON when it is a JSON value (42, true, [1, 2], {...}), else sent as the string"
    )

    log = command("log", "send a log file (or - for standard input)", "Send one LOG event with the file's text.")
    log.add_argument(
        "file", help="the log file, or - for standard input; only the last 1,000,000 bytes are kept, with a marker"
    )

    check = command(
        "check",
        "show the configuration and every reason the SDK could not report",
        "Show the configuration and list every problem at once; exit 0 when updates would be sent, 2 when not.",
    )
    check.add_argument(
        "--reach",
        action="store_true",
        help="also look up, connect to and (for https) shake hands with the webhook; no event is sent",
    )

    listen = command(
        "listen",
        "a local receiver that prints each event it gets",
        "A stand-in for Orchestra's webhook: accept events and print one line for each. Set "
        f"{ENV_WEBHOOK_URL} to the URL it prints.",
    )
    listen.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface, e.g. for containers)"
    )
    listen.add_argument("--port", type=int, default=0, help="the port (0: any free port)")
    return parser


_CLI_ENVIRONMENT = (
    f"Configuration comes from {ENV_TASK_RUN_ID}, {ENV_WEBHOOK_URL} (default {DEFAULT_WEBHOOK_URL}) and {ENV_API_KEY}."
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (see ``orchestra-sdk --help``)."""
    args = _parser().parse_args(_recovered_arguments(sys.argv[1:] if argv is None else argv))
    # The CLI is a program: its own problems go to stderr, prefixed, whatever logging says.
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{_CLI}: %(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    command = {
        "run": _cmd_run,
        "update": _cmd_update,
        "output": _cmd_output,
        "log": _cmd_log,
        "check": _cmd_check,
        "listen": _cmd_listen,
    }[args.command]
    try:
        return int(command(args))
    except (ValueError, TypeError) as exc:
        _cli_error(str(exc))
        return 2
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _recovered_arguments(argv: Sequence[str]) -> List[str]:
    """Arguments as the user typed them: in a locale that is not UTF-8, Python decodes UTF-8
    arguments into mojibake or lone surrogates; their original bytes are UTF-8 text again."""
    recovered = []
    for arg in argv:
        try:
            recovered.append(os.fsencode(arg).decode("utf-8"))
        except (UnicodeError, TypeError):  # not UTF-8 as typed either: keep the locale's reading
            recovered.append(arg)
    return recovered


def _cmd_update(args: Any) -> int:
    if args.status is None and not args.message:
        _cli_error("give --status, --message, or both")
        return 2
    return 0 if OrchestraSDK().update_task(status=args.status, message=args.message) else 1


def _cmd_output(args: Any) -> int:
    return 0 if OrchestraSDK().set_output(args.name, _cli_value(args.value)) else 1


def _cli_value(text: str) -> Any:
    """A JSON value when `text` is one that can be sent (not NaN or Infinity, not nested beyond
    what can be decoded), else the string itself."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return text


def _cmd_log(args: Any) -> int:
    sdk = OrchestraSDK()
    if args.file != "-":
        return 0 if sdk._send_log_file(args.file) else 1
    stdin = getattr(sys.stdin, "buffer", None)
    if stdin is None:
        _cli_error("standard input is closed: pipe the log in, or name a log file")
        return 2
    tail = _TailBuffer(sdk.max_log_bytes)  # only the tail is kept, however much streams in
    try:
        while True:
            chunk = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
            if not chunk:
                break
            tail.append(chunk)
    except OSError as exc:
        _cli_error(f"cannot read standard input: {exc.strerror or exc}")
        return 2
    return 0 if sdk._send_log("stdin", tail.text()) else 1


def _cmd_check(args: Any) -> int:
    sdk = OrchestraSDK()
    config, api_key = sdk._config, sdk.api_key
    env_url = os.environ.get(ENV_WEBHOOK_URL, "").strip()
    print(f"task run id: {config.task_run_id or '(none)'}")
    print(f"webhook URL: {_redact_url(config.webhook_url)} ({'from ' + ENV_WEBHOOK_URL if env_url else 'default'})")
    print(f"API key:     {'set, from ' + ENV_API_KEY if api_key else 'missing'}")
    problems = [_api_key_problem(api_key), config.task_run_id_problem, sdk._url_problem(config.webhook_url)]
    if args.reach and problems[2] is None:
        problems.append(_reach(config.webhook_url, sdk.retry_policy.timeout))
    found = [problem for problem in problems if problem]
    for problem in found:
        print(f"cannot report: {problem}")
    if found:
        return 2
    reached = " (the webhook was reached; no event was sent)" if args.reach else ""
    print(f"ready: updates will be sent{reached}")
    return 0


def _reach(webhook_url: str, timeout: float) -> Optional[str]:
    """Why the webhook cannot be reached (DNS, TCP, TLS), or None; sends no HTTP request. Through
    a proxy (HTTPS_PROXY), only the proxy itself is reached."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(webhook_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not _is_loopback(host) and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        where = f"the proxy {proxy_parts.hostname}:{proxy_parts.port or 80}"
        address = (proxy_parts.hostname or "", proxy_parts.port or 80)
    else:
        where, address = f"{host}:{port}", (host, port)
    try:
        sock = _connect(address, timeout)
    except OSError as exc:
        return f"cannot reach {where}: {_describe_error(exc, timeout)}"
    try:
        if parts.scheme == "https" and address == (host, port):
            import ssl

            trust = _TrustStore()
            for _ in range(2):
                try:
                    trust.context().wrap_socket(sock, server_hostname=host).close()
                    break
                except ssl.SSLCertVerificationError as exc:
                    sock.close()
                    if not trust.fall_back(trust.context()):
                        return f"{where}'s certificate could not be verified ({exc.verify_message})"
                    sock = _connect(address, timeout)
    except OSError as exc:
        return f"no TLS handshake with {where}: {_describe_error(exc, timeout)}"
    finally:
        sock.close()
    return None


def _cmd_listen(args: Any) -> int:
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # an event in any language prints, whatever the locale
        reconfigure(errors="backslashreplace")

    def show(event: Any) -> None:
        print(f"{time.strftime('%H:%M:%S')} {_describe_event(event)}", flush=True)

    try:
        receiver = _Receiver(args.host, args.port, show)
    except OSError as exc:
        _cli_error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 2
    print(f"Listening on {receiver.url} (set {ENV_WEBHOOK_URL} to it); Ctrl-C to stop.", flush=True)
    if args.host in ("0.0.0.0", "::", ""):
        port = receiver.url.rstrip("/").rpartition(":")[2]
        print(
            f"On every interface. From this machine: http://127.0.0.1:{port}/; from a container on it: "
            f"http://host.docker.internal:{port}/ (Docker Desktop, or docker run "
            f"--add-host=host.docker.internal:host-gateway), with {ENV_ALLOW_INSECURE_HTTP}=1 set in the "
            "container: plain http to a host that is not this one sends the key in clear text.",
            flush=True,
        )
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()
    return 0


def _module_only_folder() -> str:
    """A new folder holding a copy of this module and nothing else, for a command's PYTHONPATH:
    the module's own folder may be a virtual environment's site-packages, which would shadow the
    command's packages (and, installed, the module is a package's __init__.py)."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="orchestra-sdk-local-")
    shutil.copyfile(os.path.abspath(__file__), os.path.join(folder, "orchestra_sdk.py"))
    return folder


class _LocalRun:
    """`run --local`: a receiver on loopback and the environment that points a command at it."""

    def __init__(self) -> None:
        import uuid

        self.events: List[Any] = []
        self.started = time.monotonic()
        self.receiver = _Receiver("127.0.0.1", 0, self._show).start()
        here = self.module_folder = _module_only_folder()
        path = os.environ.get("PYTHONPATH")
        self.environ = {
            ENV_WEBHOOK_URL: self.receiver.url,
            ENV_TASK_RUN_ID: str(uuid.uuid4()),
            ENV_API_KEY: "local-placeholder-key",
            "PYTHONPATH": here + (os.pathsep + path if path else ""),  # this module and nothing else
        }
        print(
            f"{_CLI}: local run {self.environ[ENV_TASK_RUN_ID]}, events go to {self.receiver.url}",
            file=sys.stderr,
            flush=True,
        )

    def _show(self, event: Any) -> None:
        self.events.append(event)
        print(f"[orchestra] {time.strftime('%H:%M:%S')} {_describe_event(event)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        import shutil

        self.receiver.close()
        shutil.rmtree(self.module_folder, ignore_errors=True)
        statuses = [e.get("status") for e in self.events if isinstance(e, dict) and e.get("status")]
        final = statuses[-1] if statuses else "no status"
        print(
            f"{_CLI}: local run finished: {final}, {len(self.events)} events, {time.monotonic() - self.started:.2f} s",
            file=sys.stderr,
            flush=True,
        )


def _cmd_run(args: Any) -> int:
    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _cli_error("run needs a command: orchestra-sdk run [--name NAME] -- COMMAND [ARG...]")
        return 2
    local = _LocalRun() if args.local else None
    try:
        if local is not None:
            os.environ.update(local.environ)
        sdk = OrchestraSDK()
        name = args.name or os.path.basename(command[0]) or command[0]
        return _run_command(sdk, name, command, args.send_logs)
    finally:
        if local is not None:
            local.close()


PIPE_GRACE = 2.0  # seconds the wrapper waits for a command's output after the command exited


def _run_command(sdk: OrchestraSDK, name: str, command: List[str], send_logs: bool) -> int:
    """Run `command` as the Task: report RUNNING, its outcome, and (optionally) its output.

    SIGINT and SIGTERM are handled from the first moment: before the command starts they cancel
    the run (the command never starts); after, they are passed on to it.
    """
    import subprocess
    import tempfile

    received: List[int] = []
    child: List[Any] = []  # the command, once started

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        sdk._hurry()
        # Ctrl-C in a terminal already reached the command through the process group.
        if child and not (signum == signal.SIGINT and _terminal_delivers_sigint()):
            try:
                child[0].send_signal(signum)
            except OSError:
                pass

    handled = [s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None]
    previous = {s: signal.signal(s, forward) for s in handled}
    channel = tempfile.mkdtemp(prefix="orchestra-sdk-run-")
    try:
        env = dict(os.environ)
        # run() inside the command reports steps, and the final statuses the command reports itself
        # are written to this file, so that the wrapper never overrules them.
        env[ENV_WRAPPED] = os.path.join(channel, "statuses")
        if send_logs:
            env["PYTHONUNBUFFERED"] = "1"
        sdk.update_task(status=TaskRunStatus.RUNNING, message=_started(name))
        if received:  # cancelled before the command could start
            status, message = _outcome(name, signum=received[0])
            sdk.update_task(status=status, message=message)
            return 128 + received[0]
        pipe = subprocess.PIPE if send_logs else None
        try:
            child.append(subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe))
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            reason = "command not found" if code == 127 else f"cannot run it: {exc.strerror or exc}"
            _cli_error(f"{command[0]}: {reason}")
            sdk.update_task(status=TaskRunStatus.FAILED, message=_failed(name, f"{command[0]}: {reason}"))
            return code
        for signum in received:  # arrived while the command was being started
            child[0].send_signal(signum)
        output = _OutputPump(child[0], sdk.max_log_bytes) if send_logs else None
        returncode = child[0].wait()  # our handlers run meanwhile; PEP 475 resumes the wait
        if output is not None and not output.join(PIPE_GRACE):
            _log.warning(
                "The command exited, but a process it started still holds its output; "
                "the output after %g s is not in the log.",
                PIPE_GRACE,
            )
        killed_by = -returncode if returncode < 0 else 0
        exit_status = 128 + killed_by if killed_by else returncode
        # A Python command may turn our forwarded signal into exit status 128+N itself.
        signum = killed_by or (exit_status - 128 if exit_status - 128 in received else 0)
        detail = output.last_error_line if output is not None else ""
        status, message = _outcome(name, exit_status=exit_status, signum=signum, detail=detail)
        own = _reported_final_status(env[ENV_WRAPPED]) if status is TaskRunStatus.SUCCEEDED else None
        if own is not None:  # exit 0, and the command said how it ended: that stands
            status, message = own
        sdk.update_task(status=status, message=message)
        if output is not None:
            sdk._send_log(name, output.text())
        return exit_status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        import shutil

        shutil.rmtree(channel, ignore_errors=True)


def _note_final_status(status: TaskRunStatus, message: Optional[str]) -> None:
    """Inside `orchestra-sdk run`: tell the wrapper the final status this command reported."""
    path = os.environ.get(ENV_WRAPPED, "")
    if len(path) <= 1:  # not wrapped, or by an older wrapper ("1")
        return
    try:
        with open(path, "a", encoding="utf-8") as channel:
            channel.write(json.dumps({"status": status.value, "message": message}) + "\n")
    except OSError as exc:
        _log.debug("could not tell the wrapper the final status: %s", exc)


def _reported_final_status(path: str) -> Optional[Tuple[TaskRunStatus, str]]:
    """The last final status the command reported itself, if any, from the wrapper's file."""
    try:
        with open(path, encoding="utf-8") as channel:
            lines = channel.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
            return TaskRunStatus(entry["status"]), str(entry.get("message") or "")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: look further back
    return None


def _terminal_delivers_sigint() -> bool:
    """True when we are in the terminal's foreground group, so Ctrl-C reached the child too."""
    for stream in (sys.stdin, sys.stderr, sys.stdout):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except (AttributeError, OSError, ValueError):
            continue
    return False


class _OutputPump:
    """Copies a child's stdout and stderr through live, keeping a bounded copy for a LOG event."""

    def __init__(self, child: Any, max_bytes: int) -> None:
        self.buffer = _TailBuffer(max_bytes)
        self._stderr_tail = b""
        self._threads = [
            threading.Thread(target=self._pump, args=(child.stdout, sys.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(child.stderr, sys.stderr, True), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, source: Any, target: TextIO, is_stderr: bool) -> None:
        sink = getattr(target, "buffer", None)
        partial = b""  # kept lines are whole lines, so stdout and stderr interleave cleanly
        while True:
            chunk = os.read(source.fileno(), 65536)
            if not chunk:
                if partial:
                    self._keep(partial, is_stderr)
                break
            if sink is not None:
                try:
                    sink.write(chunk)
                    sink.flush()
                except (OSError, ValueError):  # our own output is gone; keep draining the child
                    sink = None
            lines, newline, partial = (partial + chunk).rpartition(b"\n")
            if newline:
                self._keep(lines + newline, is_stderr)
            if len(partial) > 65536:  # a very long line without a newline: keep it anyway
                self._keep(partial, is_stderr)
                partial = b""
        source.close()

    def _keep(self, chunk: bytes, is_stderr: bool) -> None:
        self.buffer.append(chunk)
        if is_stderr:
            self._stderr_tail = (self._stderr_tail + chunk)[-4096:]

    def join(self, timeout: float) -> bool:
        """Wait for both streams to end; False when they are still open after `timeout` (a
        background process the command started holds them)."""
        ends_at = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, ends_at - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def last_error_line(self) -> str:
        lines = [ln.strip() for ln in self._stderr_tail.decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def text(self) -> str:
        return self.buffer.text()


# ---------------------------------------------------------------------------------------------
# The official package's import paths, served by this one module
# ---------------------------------------------------------------------------------------------

_OFFICIAL_SUBMODULES = ("orchestra", "enum", "errors", "linked_connections", "http", "check_environment")


def _register_official_import_paths() -> None:
    """Make ``from orchestra_sdk.orchestra import OrchestraSDK`` (and the others) work."""
    module = sys.modules[__name__]
    for submodule in _OFFICIAL_SUBMODULES:
        sys.modules.setdefault(f"{__name__}.{submodule}", module)
        if not hasattr(module, submodule):  # so that orchestra_sdk.orchestra.OrchestraSDK works too
            setattr(module, submodule, module)


if __name__ != "__main__":
    _register_official_import_paths()

if __name__ == "__main__":
    sys.exit(main())
