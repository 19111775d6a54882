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
that is not JSON) raises at once. The same file is a command line (``python orchestra_sdk.py
--help``) for Tasks that are not Python, with a local receiver to try any Task end to end.
Documentation: README.md beside this file.
"""

from __future__ import annotations

import os
import sys
import time
from enum import Enum

# Start-up cost is paid on every Lambda cold start and container run, so this module imports
# only what every path needs. typing is for type checkers only; logging, json, uuid, urllib,
# asyncio and the rest are imported by the functions that use them (see benchmarks/).
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import logging
    import types
    import urllib.request
    import uuid
    from typing import (
        Any,
        Callable,
        Dict,
        FrozenSet,
        List,
        Mapping,
        Optional,
        Sequence,
        Set,
        TextIO,
        Tuple,
        TypeVar,
        Union,
        overload,
    )

    F = TypeVar("F", bound=Callable[..., Any])


__version__ = "1.0.0"

__all__ = [
    "LinkedConnection",
    "LinkedConnectionNotFoundError",
    "OrchestraSDK",
    "TaskRunStatus",
    "WebhookEventType",
    "get_linked_connection",
    "list_linked_connections",
    "main",
]

# ---------------------------------------------------------------------------------------------
# Plumbing: the module logger (logging is imported only when needed) and immutable records
# ---------------------------------------------------------------------------------------------

LOGGER_NAME = "orchestra_sdk"
_WARNING, _ERROR = 30, 40  # logging.WARNING and logging.ERROR


def _logger() -> logging.Logger:
    """The module logger, ``orchestra_sdk``; logging is imported on first use."""
    import logging

    return logging.getLogger(LOGGER_NAME)


def _debug(message: str, *args: Any) -> None:
    """Log at DEBUG. When nothing has imported logging, nothing can have enabled DEBUG either."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(LOGGER_NAME).debug(message, *args)


class _Record:
    """Base of the small immutable records below: a frozen dataclass, less the import.

    `dataclasses` imports `inspect`, which alone costs more than the rest of this module's
    import; these records need only immutability, equality and a repr.
    """

    __slots__: Tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot delete {name!r}")

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"


# ---------------------------------------------------------------------------------------------
# Protocol: what goes on the wire (see orchestra-protocol.md)
# ---------------------------------------------------------------------------------------------


class TaskRunStatus(Enum):
    """The statuses a Task run can report; values equal names."""

    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    WARNING = "WARNING"


class WebhookEventType(Enum):
    """The kinds of event the webhook accepts."""

    LOG = "LOG"
    UPDATE_STATUS = "UPDATE_STATUS"
    SET_OUTPUT = "SET_OUTPUT"


DEFAULT_WEBHOOK_URL = "https://webhook.getorchestra.io"
ENV_TASK_RUN_ID = "ORCHESTRA_TASK_RUN_ID"
ENV_WEBHOOK_URL = "ORCHESTRA_WEBHOOK_URL"
ENV_API_KEY = "ORCHESTRA_API_KEY"
# Set by `orchestra-sdk run` for its command: the wrapper owns the Task's status.
ENV_WRAPPED = "ORCHESTRA_SDK_WRAPPED"

_USER_AGENT = f"orchestra-sdk-py/{__version__} (standalone)"
_OUTPUT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-")
_ERROR_TEXT_LIMIT = 250  # characters of str(exc) in a FAILED message, as the official package
DEFAULT_MAX_LOG_BYTES = 1_000_000


def _event_body(event_type: WebhookEventType, task_run_id: str, fields: Dict[str, Any]) -> bytes:
    """The one place an event's JSON is built; key order and separators match the official SDK."""
    body: Dict[str, Any] = {
        "event_type": event_type.value,
        "metadata": {},
        "task_run_id": task_run_id,
    }
    body.update(fields)
    import json

    # Byte-compatible with the official package (requests' json.dumps with default separators and
    # ensure_ascii). NaN cannot reach here: set_output() refuses it before building the body.
    return json.dumps(body).encode("utf-8")


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


def _check_output_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"output name must be a str, not {type(name).__name__}")
    if not name or not set(name) <= _OUTPUT_NAME_CHARS:
        raise ValueError(
            f"invalid output name {name!r}: use letters, '_' and '-' only (no digits, no spaces), e.g. 'rows_loaded'"
        )
    return name


def _check_output_value(name: str, value: Any) -> None:
    import json

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"output {name!r} must be a JSON value (str, int, float, bool, None, "
            f"or lists and dicts of them; no NaN or infinity): {exc}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class LinkedConnectionNotFoundError(LookupError):
    """No linked connection matches, or several do and no connection id chose one."""


# ---------------------------------------------------------------------------------------------
# Configuration: the environment (or a Lambda event) read into one record
# ---------------------------------------------------------------------------------------------


class _Config(_Record):
    """What the SDK needs to report, and why it cannot when the task run id is missing."""

    __slots__ = ("task_run_id", "task_run_id_problem", "webhook_url")
    task_run_id: Optional[str]  # canonical form, as sent
    task_run_id_problem: Optional[str]
    webhook_url: str

    def __init__(self, task_run_id: Optional[str], task_run_id_problem: Optional[str], webhook_url: str) -> None:
        self._set(task_run_id=task_run_id, task_run_id_problem=task_run_id_problem, webhook_url=webhook_url)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _canonical_uuid(text: str) -> Optional[str]:
    """The canonical form (lower case, 8-4-4-4-12) of anything `uuid.UUID` accepts, or None.

    Parsed by hand: `uuid` imports `platform`, and most runs never need a UUID object.
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
        return _Config(None, "the Lambda event is not a JSON object", DEFAULT_WEBHOOK_URL)
    raw = event.get("orchestra_task_run_id")
    if raw is not None and not isinstance(raw, str):
        raw = str(raw)
    task_run_id, problem = _parse_task_run_id(raw, "the Lambda event's orchestra_task_run_id")
    url = event.get("orchestra_webhook_url")
    webhook_url = url.strip() if isinstance(url, str) and url.strip() else DEFAULT_WEBHOOK_URL
    return _Config(task_run_id, problem, webhook_url)


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
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}"


def _webhook_url_problem(url: str) -> Optional[str]:
    """Why a webhook URL must not be used, or None when it is safe to send the key there."""
    from urllib.parse import urlsplit

    shown = _redact_url(url)
    if not url.isascii():
        return f"webhook URL {shown!r} is not ASCII; percent-encode it (and use punycode hosts)"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"webhook URL {shown!r} is malformed: {exc}"
    if parts.username is not None or parts.password is not None:
        return (
            f"webhook URL {shown!r} carries credentials; remove them "
            f"(the API key goes in {ENV_API_KEY} or the api_key argument)"
        )
    if parts.scheme not in ("https", "http") or not host:
        return f"webhook URL {shown!r} must be an absolute https:// URL"
    if parts.scheme == "http" and not _is_loopback(host):
        return (
            f"webhook URL {shown!r} uses plain http; https is required so that the API key "
            "is never sent in clear text (http is allowed only to localhost, 127.0.0.0/8 and ::1)"
        )
    return None


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Transport: one POST with a timeout, a retry policy and a total deadline; never raises
# ---------------------------------------------------------------------------------------------


_RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})


class RetryPolicy(_Record):
    """How one event is delivered: attempts, which failures are retried, and how long in all.

    timeout: seconds for one attempt (each socket operation, see README); retries: extra
    attempts after the first; deadline: seconds for the whole update, every attempt and wait;
    backoff: the first wait, doubled each retry up to backoff_max, with jitter.
    """

    __slots__ = ("timeout", "retries", "deadline", "backoff", "backoff_max", "retry_statuses")
    timeout: float
    retries: int
    deadline: float
    backoff: float
    backoff_max: float
    retry_statuses: FrozenSet[int]

    def __init__(
        self,
        timeout: float = 10.0,
        retries: int = 3,
        deadline: float = 30.0,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        retry_statuses: FrozenSet[int] = _RETRY_STATUSES,
    ) -> None:
        self._set(
            timeout=timeout,
            retries=retries,
            deadline=deadline,
            backoff=backoff,
            backoff_max=backoff_max,
            retry_statuses=retry_statuses,
        )


def _backoff_delay(policy: RetryPolicy, retry_number: int, jitter: float) -> float:
    """The wait before retry `retry_number` (1-based); `jitter` in [0, 1) spreads clients out."""
    base = min(policy.backoff_max, policy.backoff * 2.0 ** (retry_number - 1))
    return base * (0.5 + jitter / 2)


def _parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - now)


class _Attempt(_Record):
    """What one attempt came to: delivered, or an HTTP status or network problem."""

    __slots__ = ("delivered", "problem", "status", "retryable_network_error", "retry_after")
    delivered: bool
    problem: str
    status: Optional[int]  # None: no HTTP answer (a network problem)
    retryable_network_error: bool
    retry_after: Optional[float]

    def __init__(
        self,
        delivered: bool,
        problem: str = "",
        status: Optional[int] = None,
        retryable_network_error: bool = False,
        retry_after: Optional[float] = None,
    ) -> None:
        self._set(
            delivered=delivered,
            problem=problem,
            status=status,
            retryable_network_error=retryable_network_error,
            retry_after=retry_after,
        )

    def retryable(self, policy: RetryPolicy) -> bool:
        if self.status is None:
            return self.retryable_network_error
        return self.status in policy.retry_statuses


_DELIVERED = _Attempt(True)
_ERROR_BODY_LIMIT = 64 * 1024


def _build_opener(webhook_url: str) -> urllib.request.OpenerDirector:
    """An opener that follows no redirect, raises for no status, and skips proxies for loopback."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(webhook_url)
    opener = urllib.request.OpenerDirector()
    loopback = _is_loopback(parts.hostname or "")
    opener.add_handler(urllib.request.ProxyHandler({} if loopback else None))
    opener.add_handler(urllib.request.HTTPHandler())
    if parts.scheme == "https":
        import ssl

        # One context per opener: a context per request would reload the CA store every time.
        opener.add_handler(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    return opener


def _error_text(body: bytes) -> str:
    """Orchestra's error message from a response body: JSON code/error/message, else its start."""
    import json

    text = body.decode("utf-8", "replace").strip()
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


def _attempt(opener: Any, request: Any, timeout: float) -> _Attempt:
    """Send one request and classify the outcome; never raises for a network reason."""
    started = time.monotonic()
    try:
        response = opener.open(request, timeout=timeout)
    except Exception as exc:
        return _failed_attempt(exc, timeout)
    try:
        status = response.status
        if 200 <= status < 300:
            return _DELIVERED
        if 300 <= status < 400:
            location = _redact_url(response.getheader("Location") or "?")
            problem = f"HTTP {status}: redirect to {location!r} not followed (the API key goes only to the webhook URL)"
            return _Attempt(False, problem, status)
        body = _read_error_body(response, started + timeout)
        retry_after = _parse_retry_after(response.getheader("Retry-After"), time.time())
        return _Attempt(False, f"HTTP {status}: {_error_text(body)}", status, retry_after=retry_after)
    finally:
        response.close()


def _failed_attempt(exc: Exception, timeout: float) -> _Attempt:
    """An attempt that got no HTTP answer: a certificate problem is final, network trouble is not."""
    import http.client
    import ssl
    import urllib.error

    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return _Attempt(False, f"the server's certificate could not be verified ({reason.verify_message})")
        return _Attempt(False, f"could not connect: {_describe_error(reason, timeout)}", retryable_network_error=True)
    if isinstance(exc, (OSError, http.client.HTTPException)):  # resets, timeouts, garbled answers
        return _Attempt(False, _describe_error(exc, timeout), retryable_network_error=True)
    # An unexpected library error: report it, never crash the Task.
    return _Attempt(False, f"unexpected error: {_describe_error(exc, timeout)}")


def _describe_error(exc: Any, timeout: float) -> str:
    """A short text for a network error; a timeout says how long we waited."""
    import socket

    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if not isinstance(exc, BaseException):
        return str(exc)
    text, kind = str(exc), type(exc).__name__
    return f"{kind}: {text}" if text and kind not in text else (text or kind)


def _post_event(
    opener: Any,
    webhook_url: str,
    api_key: str,
    event_type: str,
    event_body: bytes,
    policy: RetryPolicy,
) -> bool:
    """POST one event, retrying within the policy; True only when Orchestra answered 2xx.

    `event_type` is the event's name, for messages.
    """
    import urllib.request

    request = urllib.request.Request(
        webhook_url,
        data=event_body,
        method="POST",
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
        },
    )
    started = time.monotonic()
    deadline_at = started + policy.deadline
    attempts = 0
    while True:
        remaining = deadline_at - time.monotonic()
        attempts += 1
        timeout = min(policy.timeout, remaining)
        _debug("POST %s event to %s (attempt %d, timeout %.1f s)", event_type, webhook_url, attempts, timeout)
        result = _attempt(opener, request, timeout)
        if result.delivered:
            _debug("%s event delivered in %.3f s", event_type, time.monotonic() - started)
            return True
        what = f"Orchestra did not receive the {event_type} event"
        problem = result.problem.replace(api_key, "***")  # a library error could quote the request
        if not result.retryable(policy):
            _logger().error("%s: %s (not retried).", what, problem)
            return False
        if attempts > policy.retries:
            _logger().error("%s after %d attempts: %s.", what, attempts, problem)
            return False
        if result.retry_after is not None:
            delay = result.retry_after
        else:
            import random

            delay = _backoff_delay(policy, attempts, random.random())
        if time.monotonic() + delay >= deadline_at:
            _logger().error(
                "%s: %s; gave up after %d attempts, as the next would start past the %g s deadline.",
                what,
                problem,
                attempts,
                policy.deadline,
            )
            return False
        _debug("attempt %d failed (%s); retrying in %.2f s", attempts, problem, delay)
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------
# Log text: bounded to the most recent part, with a marker
# ---------------------------------------------------------------------------------------------


def _tail_text(data: bytes, max_bytes: int, cut: int = 0) -> str:
    """Decode log bytes as UTF-8 (bad bytes replaced), keeping the last `max_bytes`.

    `cut` counts bytes already dropped before `data`; when anything was dropped, a one-line
    marker says how much.
    """
    extra = max(0, len(data) - max_bytes)
    kept = data[extra:]
    cut += extra
    if not cut:
        return kept.decode("utf-8", "replace")
    skip = 0
    while skip < 3 and skip < len(kept) and 0x80 <= kept[skip] <= 0xBF:
        skip += 1  # do not start inside a multi-byte character
    marker = f"[orchestra_sdk: {cut + skip} earlier bytes cut; the log keeps its last {max_bytes} bytes]\n"
    return marker + kept[skip:].decode("utf-8", "replace")


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
    method that reports returns ``True`` only when Orchestra accepted the event.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        log_file: str = "orchestra.log",
        send_logs: bool = False,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        deadline: float = 30.0,
        backoff: float = 0.5,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ) -> None:
        import contextvars

        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        _check_positive("timeout", timeout)
        _check_positive("deadline", deadline)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 0:
            raise ValueError(f"backoff must be a number >= 0, not {backoff!r}")
        if isinstance(max_log_bytes, bool) or not isinstance(max_log_bytes, int) or max_log_bytes < 1024:
            raise ValueError(f"max_log_bytes must be an int >= 1024, not {max_log_bytes!r}")
        # Blanks around a key (a trailing newline from a secrets file) are never part of it.
        self.api_key: Optional[str] = (api_key or os.environ.get(ENV_API_KEY) or "").strip() or None
        self.log_file = log_file
        self.send_logs = send_logs
        self.max_log_bytes = max_log_bytes
        self.retry_policy = RetryPolicy(
            timeout=float(timeout), retries=retries, deadline=float(deadline), backoff=float(backoff)
        )
        self._apply_config(_read_config(os.environ))
        self._opener: Optional[Tuple[str, Any]] = None
        self._current_run: contextvars.ContextVar[Optional[_ActiveRun]] = contextvars.ContextVar(
            "orchestra_sdk_run", default=None
        )

    def _apply_config(self, config: _Config) -> None:
        self._task_run_id = config.task_run_id
        self._task_run_id_problem = config.task_run_id_problem
        self.webhook_url: str = config.webhook_url
        self._warned: Set[str] = set()
        self._checked_url: Tuple[str, Optional[str]] = ("", None)

    @property
    def task_run_id(self) -> Optional[uuid.UUID]:
        """The run reported on; assign a UUID or its string form when the environment lacks it."""
        if self._task_run_id is None:
            return None
        import uuid

        return uuid.UUID(self._task_run_id)

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
        self._task_run_id, self._task_run_id_problem = parsed, problem
        self._warned = set()

    def __repr__(self) -> str:
        key = "set" if self.api_key else "missing"
        url = _redact_url(self.webhook_url)
        return f"OrchestraSDK(task_run_id={self.task_run_id!s}, webhook_url={url!r}, api_key=<{key}>)"

    # -- reporting ------------------------------------------------------------------------

    def update_task(self, status: Union[TaskRunStatus, str, None] = None, message: Optional[str] = None) -> bool:
        """Send a status, a message, or both. Returns True only when Orchestra answered 2xx.

        Raises ValueError for an unknown status or when neither is given, TypeError for a
        status or message of the wrong type.
        """
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a str, not {type(message).__name__}")
        if status is None and not message:
            raise ValueError("update_task() needs a status, a non-empty message, or both")
        fields: Dict[str, Any] = {}
        if status is not None:
            fields["status"] = _coerce_status(status).value
        if message:
            fields["message"] = _clean_text(message)
        return self._send(WebhookEventType.UPDATE_STATUS, fields)

    def set_output(self, name: str, value: Any) -> bool:
        """Set a Task output: `name` is letters, '_' and '-'; `value` any JSON value."""
        _check_output_name(name)
        _check_output_value(name, value)
        return self._send(WebhookEventType.SET_OUTPUT, {"output_name": name, "output_value": value})

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
            _logger().warning("Orchestra is not configured for this invocation: %s; updates will be skipped.", problem)
            self._warned.add(problem)  # said once here, not again at the first update
            return
        self.log_file = f"/tmp/{config.task_run_id}_{random.randint(0, 10000)}.log"

    def list_linked_connections(self) -> List[LinkedConnection]:
        """The connections linked to this Task (see `list_linked_connections`)."""
        return list_linked_connections()

    def get_linked_connection(self, integration: str, connection_id: Optional[str] = None) -> LinkedConnection:
        """One linked connection (see `get_linked_connection`)."""
        return get_linked_connection(integration, connection_id)

    # -- run ----------------------------------------------------------------------------------

    if TYPE_CHECKING:  # pragma: no cover - signatures for type checkers only

        @overload
        def run(self, name: F, *, reraise: bool = True) -> F: ...

        @overload
        def run(self, name: Optional[str] = None, *, reraise: bool = True) -> _Run: ...

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

    def _cannot_report(self) -> Optional[Tuple[int, str]]:
        """(log level, reason) when no event can be sent now, else None."""
        if not self.api_key:
            return _WARNING, f"no API key: pass api_key= or set {ENV_API_KEY}"
        if not (self.api_key.isascii() and self.api_key.isprintable()):
            # http.client would refuse it, quoting the whole header in its error: say why, not what.
            return (
                _ERROR,
                "the API key has characters that cannot go in an HTTP header "
                "(a line break, a control or non-ASCII character)",
            )
        if self._task_run_id is None:
            return _WARNING, self._task_run_id_problem or f"{ENV_TASK_RUN_ID} is not set"
        if self._checked_url[0] != self.webhook_url:  # check each URL once, not on every update
            self._checked_url = (self.webhook_url, _webhook_url_problem(self.webhook_url))
        problem = self._checked_url[1]
        return (_ERROR, problem) if problem else None

    def _send(self, event_type: WebhookEventType, fields: Dict[str, Any]) -> bool:
        blocked = self._cannot_report()
        if blocked is not None:
            level, reason = blocked
            if reason in self._warned:
                _debug("%s event not sent: %s", event_type.value, reason)
            else:
                self._warned.add(reason)
                _logger().log(
                    level, "Cannot report to Orchestra: %s. Updates are skipped; the Task itself runs on.", reason
                )
            return False
        assert self._task_run_id is not None and self.api_key is not None
        event_body = _event_body(event_type, self._task_run_id, fields)
        opener = self._opener
        if opener is None or opener[0] != self.webhook_url:
            opener = self._opener = (self.webhook_url, _build_opener(self.webhook_url))
        return _post_event(opener[1], self.webhook_url, self.api_key, event_type.value, event_body, self.retry_policy)

    def _send_log(self, log_name: str, text: str) -> bool:
        return self._send(WebhookEventType.LOG, {"log_name": _clean_text(log_name), "data": _clean_text(text)})

    def _send_log_file(self, path: str) -> Optional[bool]:
        """Send a log file; None (with a warning) when it cannot be read."""
        text, problem = _read_log_file(path, self.max_log_bytes)
        if text is None:
            _logger().warning("No log sent to Orchestra: %s.", problem)
            return None
        return self._send_log(path, text)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")


# ---------------------------------------------------------------------------------------------
# run(): decorator and context manager; the outcome is decided in one place
# ---------------------------------------------------------------------------------------------

DEFAULT_RUN_NAME = "task"
_SIGTERM_EXIT_STATUS = 143  # 128 + SIGTERM, what a shell reports for a process it ended


def _exception_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    return text[:_ERROR_TEXT_LIMIT] or type(exc).__name__


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    asyncio = sys.modules.get("asyncio")  # a CancelledError exists only once asyncio is loaded
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _outcome(name: str, exc: Optional[BaseException], sigterm: bool) -> Tuple[TaskRunStatus, str]:
    """The final status and message for a run that ended with `exc` (None: it returned)."""
    if exc is None:
        return TaskRunStatus.SUCCEEDED, f"{name} succeeded."
    if sigterm:
        return TaskRunStatus.CANCELLED, f"{name} cancelled: received SIGTERM."
    if _is_cancellation(exc):
        return TaskRunStatus.CANCELLED, f"{name} cancelled."
    if isinstance(exc, SystemExit):
        if exc.code is None or exc.code == 0:
            return TaskRunStatus.SUCCEEDED, f"{name} succeeded."
        return TaskRunStatus.FAILED, f"{name} failed. Error: exit code {_shorten(str(exc.code), 200)}"
    return TaskRunStatus.FAILED, f"{name} failed. Error: {_exception_text(exc)}"


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE


def _is_coroutine_function(func: Any) -> bool:
    """inspect.iscoroutinefunction, without importing inspect (about 10 ms of start-up)."""
    import functools

    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)  # a bound method
    code = getattr(func, "__code__", None)
    return bool(code is not None and code.co_flags & _CO_COROUTINE) or hasattr(func, "_is_coroutine_marker")


class _Run:
    """What `OrchestraSDK.run()` returns: a decorator, a context manager and an async one."""

    def __init__(self, sdk: OrchestraSDK, name: Optional[str], reraise: bool) -> None:
        self._sdk = sdk
        self._name = name
        self._reraise = reraise
        self._active: List[_ActiveRun] = []

    def __call__(self, func: F) -> F:
        import functools

        name = self._name or getattr(func, "__name__", None) or DEFAULT_RUN_NAME
        sdk, reraise = self._sdk, self._reraise
        if _is_coroutine_function(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                active = _ActiveRun(sdk, name, reraise)
                await active.astart()
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    if await active.afinish(exc):
                        return None
                    raise
                await active.afinish(None)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            active = _ActiveRun(sdk, name, reraise)
            active.start()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                if active.finish(exc):
                    return None
                raise
            active.finish(None)
            return result

        return wrapper  # type: ignore[return-value]

    def __enter__(self) -> _Run:
        active = _ActiveRun(self._sdk, self._name or DEFAULT_RUN_NAME, self._reraise)
        active.start()
        self._active.append(active)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        return self._active.pop().finish(exc)

    async def __aenter__(self) -> _Run:
        active = _ActiveRun(self._sdk, self._name or DEFAULT_RUN_NAME, self._reraise)
        await active.astart()
        self._active.append(active)
        return self

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        return await self._active.pop().afinish(exc)


class _ActiveRun:
    """One execution of a run: reports its start and end, and owns its SIGTERM and capture."""

    def __init__(self, sdk: OrchestraSDK, name: str, reraise: bool) -> None:
        self.sdk = sdk
        self.name = name
        self.reraise = reraise
        self.outermost = sdk._current_run.get() is None
        # A step only sends messages, so it can never mark the whole Task as finished.
        self.is_step = not self.outermost or bool(os.environ.get(ENV_WRAPPED))
        self.finishing = False
        self.sigterm: Optional[_SigtermGuard] = None
        self.capture: Optional[_OutputCapture] = None
        self.task: Any = None  # the asyncio task, for async runs
        self._token: Any = None

    # -- the two reports ------------------------------------------------------------------------

    def _enter(self) -> None:
        self._token = self.sdk._current_run.set(self)
        if self.outermost:
            if self.sdk.send_logs:
                self.capture = _OutputCapture(self.sdk.max_log_bytes)
                self.capture.start()
            self.sigterm = _SigtermGuard.install(self)

    def _report_start(self) -> None:
        if self.is_step:
            self.sdk.update_task(message=f"{self.name} started.")
        else:
            self.sdk.update_task(status=TaskRunStatus.RUNNING, message=f"{self.name} started.")

    def _report_end(self, exc: Optional[BaseException]) -> None:
        status, message = _outcome(self.name, exc, self.sigterm is not None and self.sigterm.received)
        if self.capture is not None and exc is not None and status is not TaskRunStatus.SUCCEEDED:
            import traceback

            self.capture.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        if self.is_step:
            self.sdk.update_task(message=message)
        else:
            self.sdk.update_task(status=status, message=message)

    def _send_logs(self) -> None:
        """One LOG event per outermost run: the log file when it exists, else what was captured."""
        if self.capture is None:  # not the outermost run, or send_logs is off
            return
        self.capture.stop()  # the log is complete: what sending it logs does not belong in it
        path = self.sdk.log_file
        if not os.path.exists(path) or self.sdk._send_log_file(path) is None:
            self.sdk._send_log(self.name, self.capture.text())

    def _cleanup(self) -> None:
        """Undo what _enter did; SIGTERM handling ends only after the last report."""
        if self.capture is not None:
            self.capture.stop()
        if self.sigterm is not None:
            self.sigterm.restore()
        try:
            self.sdk._current_run.reset(self._token)
        except (ValueError, RuntimeError):  # reset from another context: set it back plainly
            self.sdk._current_run.set(None)

    def _swallow(self, exc: Optional[BaseException]) -> bool:
        return exc is not None and isinstance(exc, Exception) and not self.reraise

    def _sigterm_pending(self, exc: Optional[BaseException]) -> bool:
        """SIGTERM arrived while the final report was being sent: exit now that it is done."""
        return self.sigterm is not None and self.sigterm.received and not isinstance(exc, SystemExit)

    # -- sync -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._enter()
        try:
            self._report_start()
        except BaseException as exc:
            self.finish(exc)
            raise

    def finish(self, exc: Optional[BaseException]) -> bool:
        """Report how the run ended; True when the exception is to be swallowed."""
        self.finishing = True
        try:
            self._report_end(exc)
            self._send_logs()
        finally:
            self._cleanup()
        if self._sigterm_pending(exc):
            raise SystemExit(_SIGTERM_EXIT_STATUS)
        return self._swallow(exc)

    # -- async: the HTTP requests run in a worker thread, so the event loop keeps going -----

    async def astart(self) -> None:
        import asyncio

        self.task = asyncio.current_task()
        self._enter()
        try:
            await _in_thread(self._report_start)
        except BaseException as exc:
            await self.afinish(exc)
            raise

    async def afinish(self, exc: Optional[BaseException]) -> bool:
        self.finishing = True
        try:
            await _in_thread(self._report_end, exc)
            await _in_thread(self._send_logs)
        finally:
            self._cleanup()
        if self.sigterm is not None and self.sigterm.received:
            # SIGTERM cancelled the task; end the process as a SIGTERM would, after reporting.
            raise SystemExit(_SIGTERM_EXIT_STATUS) from exc
        return self._swallow(exc)


async def _in_thread(func: Callable[..., None], *args: Any) -> None:
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, func, *args)


class _SigtermGuard:
    """Turns SIGTERM into a CANCELLED report and exit status 143, while an outermost run is active."""

    def __init__(self, active: _ActiveRun) -> None:
        self.active = active
        self.received = False

    @classmethod
    def install(cls, active: _ActiveRun) -> Optional[_SigtermGuard]:
        import signal

        if not hasattr(signal, "SIGTERM") or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None  # the program handles SIGTERM itself: leave it alone
        guard = cls(active)
        try:
            signal.signal(signal.SIGTERM, guard._handle)
        except ValueError:  # not the main thread: only it can handle signals
            return None
        return guard

    def _handle(self, signum: int, frame: Optional[types.FrameType]) -> None:
        self.received = True
        if self.active.finishing:
            return  # the final report is being sent; finish() exits afterwards
        task = self.active.task
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
            return
        raise SystemExit(_SIGTERM_EXIT_STATUS)

    def restore(self) -> None:
        import signal

        if signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _TailBuffer:
    """The most recent `max_bytes` of what was appended, and how many bytes were dropped."""

    def __init__(self, max_bytes: int) -> None:
        import collections
        import threading

        self._max_bytes = max_bytes
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._cut = 0
        self._lock = threading.Lock()

    def append(self, chunk: bytes) -> None:
        with self._lock:
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size > self._max_bytes and len(self._chunks) > 1:
                dropped = self._chunks.popleft()
                self._size -= len(dropped)
                self._cut += len(dropped)

    def text(self) -> str:
        """The kept bytes as text, after a marker line when anything was cut."""
        with self._lock:
            data, cut = b"".join(self._chunks), self._cut
        return _tail_text(data, self._max_bytes, cut)


class _OutputCapture:
    """Keeps, bounded, what a run printed: stdout, stderr and log records at INFO and above."""

    FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self, max_bytes: int) -> None:
        import threading

        self.buffer = _TailBuffer(max_bytes)
        self._quiet = threading.local()  # set while we forward a record to stderr ourselves
        self._streams: List[Tuple[str, Any, _Tee]] = []
        self._handler: Optional[logging.Handler] = None

    def start(self) -> None:
        import logging

        for attr in ("stdout", "stderr"):
            stream = getattr(sys, attr)
            if stream is not None:
                tee = _Tee(stream, self)
                setattr(sys, attr, tee)
                self._streams.append((attr, stream, tee))
        self._handler = _capture_handler(self)
        logging.getLogger().addHandler(self._handler)

    def stop(self) -> None:
        import logging

        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler = None
        for attr, stream, tee in self._streams:
            if getattr(sys, attr) is tee:  # someone else replaced it since: leave theirs
                setattr(sys, attr, stream)
        self._streams = []

    def append(self, text: str, from_stream: bool = False) -> None:
        if not (from_stream and getattr(self._quiet, "on", False)):
            self.buffer.append(_clean_text(text).encode("utf-8"))

    def text(self) -> str:
        return self.buffer.text()

    def on_record(self, record: logging.LogRecord, handler: logging.Handler) -> None:
        import logging

        self.append(handler.format(record) + "\n")
        last_resort = logging.lastResort
        if last_resort is not None and record.levelno >= last_resort.level and not _has_other_handlers(record, handler):
            # Our handler hides Python's last-resort stderr output; keep it as it was.
            self._quiet.on = True
            try:
                last_resort.handle(record)
            finally:
                self._quiet.on = False


def _capture_handler(capture: _OutputCapture) -> logging.Handler:
    """A root-logger handler that hands each record at INFO and above to `capture`."""
    import logging

    class CaptureHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                capture.on_record(record, self)
            except Exception:
                self.handleError(record)

    handler = CaptureHandler(logging.INFO)
    handler.setFormatter(logging.Formatter(_OutputCapture.FORMAT))
    return handler


def _has_other_handlers(record: logging.LogRecord, ours: logging.Handler) -> bool:
    """Whether a handler besides `ours` takes the record, as Logger.callHandlers would look."""
    import logging

    node: Optional[logging.Logger] = logging.getLogger(record.name)
    while node is not None:
        if any(h is not ours and record.levelno >= h.level for h in node.handlers):
            return True
        node = node.parent if node.propagate else None
    return False


class _Tee:
    """A text stream that writes through to the original and keeps a copy."""

    def __init__(self, stream: TextIO, capture: _OutputCapture) -> None:
        self._stream = stream
        self._capture = capture

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._capture.append(text, from_stream=True)
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
        import json

        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


class LinkedConnection(_Record):
    """One linked connection's credentials; read a field with ``conn["field"]``.

    Immutable. Field values are secrets: they are never shown in the repr.
    """

    __slots__ = ("integration", "connection_id", "fields")
    integration: str
    connection_id: str
    fields: Mapping[str, Any]

    def __init__(self, integration: str, connection_id: str, fields: Mapping[str, Any]) -> None:
        import types

        self._set(integration=integration, connection_id=connection_id, fields=types.MappingProxyType(dict(fields)))

    def __hash__(self) -> int:
        return hash((self.integration, self.connection_id))

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


def _describe_event(event: Any) -> str:
    """One readable line for a received event."""
    import json

    if not isinstance(event, dict):
        return f"? {_shorten(json.dumps(event), 200)}"
    kind = event.get("event_type", "?")
    if kind == "UPDATE_STATUS":
        parts = [str(event["status"])] if "status" in event else []
        if "message" in event:
            parts.append(json.dumps(_shorten(str(event["message"]), 300), ensure_ascii=False))
        return f"{kind} {' '.join(parts)}"
    if kind == "SET_OUTPUT":
        value = _shorten(json.dumps(event.get("output_value"), ensure_ascii=False), 200)
        return f"{kind} {event.get('output_name')} = {value}"
    if kind == "LOG":
        data = str(event.get("data", ""))
        size, lines = len(data.encode("utf-8", "replace")), data.count("\n")
        return f"{kind} {event.get('log_name')} ({size} bytes, {lines} lines)"
    return f"{kind} {_shorten(json.dumps(event, ensure_ascii=False), 200)}"


class _Receiver:
    """A local stand-in for Orchestra's webhook: accepts events and hands each to a callback."""

    def __init__(self, host: str, port: int, on_event: Callable[[Any], None]) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import json

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    event = json.loads(body)
                except ValueError:
                    self._answer(400, {"success": False, "error": "body is not JSON"})
                    return
                on_event(event)
                self._answer(200, {"success": True})

            def do_GET(self) -> None:
                self._answer(200, {"success": True, "info": "orchestra-sdk local receiver: POST events here"})

            def _answer(self, status: int, payload: Dict[str, Any]) -> None:
                import json

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

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
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

    parser = argparse.ArgumentParser(
        prog=_CLI,
        description="Report a Task to Orchestra from the command line, or try one locally.",
        epilog="Configuration comes from ORCHESTRA_TASK_RUN_ID, ORCHESTRA_WEBHOOK_URL and ORCHESTRA_API_KEY.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run a command as the Task: RUNNING, then its outcome")
    run.add_argument("--name", help="the name in messages (default: the command's base name)")
    run.add_argument("--send-logs", action="store_true", help="keep the command's output and send it as a LOG event")
    run.add_argument(
        "--local", action="store_true", help="report to a local receiver instead of Orchestra and print each event"
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    update = commands.add_parser("update", help="send a status and/or a message")
    update.add_argument("--status", help="one of " + ", ".join(s.value for s in TaskRunStatus) + " (any case)")
    update.add_argument("--message", help="a message to show in Orchestra")

    output = commands.add_parser("output", help="set a Task output")
    output.add_argument("name", help="letters, '_' and '-' only")
    output.add_argument("value", help="decoded as JSON when it parses, else sent as a string")

    log = commands.add_parser("log", help="send a log file (or - for standard input)")
    log.add_argument("file")

    commands.add_parser("check", help="show the configuration and whether the SDK can report")

    listen = commands.add_parser("listen", help="a local receiver that prints each event it gets")
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--port", type=int, default=0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (see ``orchestra-sdk --help``)."""
    import logging

    args = _parser().parse_args(argv)
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


def _cmd_update(args: Any) -> int:
    if args.status is None and not args.message:
        _cli_error("give --status, --message, or both")
        return 2
    return 0 if OrchestraSDK().update_task(status=args.status, message=args.message) else 1


def _cmd_output(args: Any) -> int:
    import json

    try:
        value: Any = json.loads(args.value)
    except ValueError:
        value = args.value
    return 0 if OrchestraSDK().set_output(args.name, value) else 1


def _cmd_log(args: Any) -> int:
    sdk = OrchestraSDK()
    if args.file == "-":
        data = sys.stdin.buffer.read()
        return 0 if sdk._send_log("stdin", _tail_text(data, sdk.max_log_bytes)) else 1
    return 0 if sdk._send_log_file(args.file) else 1


def _cmd_check(args: Any) -> int:
    sdk = OrchestraSDK()
    env_url = os.environ.get(ENV_WEBHOOK_URL, "").strip()
    print(f"task run id: {sdk.task_run_id or '(none)'}")
    print(f"webhook URL: {_redact_url(sdk.webhook_url)} ({'from ' + ENV_WEBHOOK_URL if env_url else 'default'})")
    print(f"API key:     {'set, from ' + ENV_API_KEY if sdk.api_key else 'missing'}")
    blocked = sdk._cannot_report()
    if blocked is not None:
        print(f"cannot report: {blocked[1]}")
        return 2
    print("ready: updates will be sent")
    return 0


def _cmd_listen(args: Any) -> int:
    def show(event: Any) -> None:
        print(f"{time.strftime('%H:%M:%S')} {_describe_event(event)}", flush=True)

    try:
        receiver = _Receiver(args.host, args.port, show)
    except OSError as exc:
        _cli_error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 2
    print(f"Listening on {receiver.url} (set {ENV_WEBHOOK_URL} to it); Ctrl-C to stop.", flush=True)
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()
    return 0


class _LocalRun:
    """`run --local`: a receiver on loopback and the environment that points a command at it."""

    def __init__(self) -> None:
        import uuid

        self.events: List[Any] = []
        self.started = time.monotonic()
        self.receiver = _Receiver("127.0.0.1", 0, self._show).start()
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.environ.get("PYTHONPATH")
        self.environ = {
            ENV_WEBHOOK_URL: self.receiver.url,
            ENV_TASK_RUN_ID: str(uuid.uuid4()),
            ENV_API_KEY: "local-placeholder-key",
            "PYTHONPATH": here + (os.pathsep + path if path else ""),  # the module, even vendored
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
        self.receiver.close()
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


def _run_command(sdk: OrchestraSDK, name: str, command: List[str], send_logs: bool) -> int:
    """Run `command` as the Task: report RUNNING, its outcome, and (optionally) its output."""
    import signal
    import subprocess

    env = dict(os.environ)
    env[ENV_WRAPPED] = "1"  # run() inside the command reports steps; the exit code decides
    if send_logs:
        env["PYTHONUNBUFFERED"] = "1"
    sdk.update_task(status=TaskRunStatus.RUNNING, message=f"{name} started.")
    pipe = subprocess.PIPE if send_logs else None
    try:
        child = subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe)
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        reason = "command not found" if code == 127 else f"cannot run it: {exc.strerror or exc}"
        _cli_error(f"{command[0]}: {reason}")
        sdk.update_task(status=TaskRunStatus.FAILED, message=f"{name} failed. Error: {command[0]}: {reason}")
        return code

    received: List[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        # Ctrl-C in a terminal already reached the command through the process group.
        if not (signum == signal.SIGINT and _terminal_delivers_sigint()):
            try:
                child.send_signal(signum)
            except OSError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    output = _OutputPump(child, sdk.max_log_bytes) if send_logs else None
    try:
        returncode = child.wait()  # our handlers run meanwhile; PEP 475 resumes the wait
        if output is not None:
            output.join()
        killed_by = -returncode if returncode < 0 else 0
        exit_status = 128 + killed_by if killed_by else returncode
        # A Python command may turn our forwarded signal into exit status 128+N itself.
        cancelled_by = killed_by or (exit_status - 128 if exit_status - 128 in received else 0)
        if exit_status == 0:
            sdk.update_task(status=TaskRunStatus.SUCCEEDED, message=f"{name} succeeded.")
        elif cancelled_by in (signal.SIGINT, signal.SIGTERM):
            signame = _signal_name(cancelled_by)
            sdk.update_task(status=TaskRunStatus.CANCELLED, message=f"{name} cancelled: received {signame}.")
        else:
            detail = f"exit code {exit_status}"
            if killed_by:
                detail = f"killed by {_signal_name(killed_by)} (exit code {exit_status})"
            if output is not None and output.last_error_line:
                detail += f": {output.last_error_line}"
            sdk.update_task(status=TaskRunStatus.FAILED, message=f"{name} failed. Error: {detail[:_ERROR_TEXT_LIMIT]}")
        if output is not None:
            sdk._send_log(name, output.text())
        return exit_status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"


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
        import threading

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

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    @property
    def last_error_line(self) -> str:
        lines = [ln.strip() for ln in self._stderr_tail.decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def text(self) -> str:
        return self.buffer.text()


# ---------------------------------------------------------------------------------------------
# The official package's import paths, served by this one module
# ---------------------------------------------------------------------------------------------

_OFFICIAL_SUBMODULES = ("orchestra", "enum", "errors", "linked_connections")


def _register_official_import_paths() -> None:
    """Make ``from orchestra_sdk.orchestra import OrchestraSDK`` (and the others) work."""
    module = sys.modules[__name__]
    for submodule in _OFFICIAL_SUBMODULES:
        sys.modules.setdefault(f"{__name__}.{submodule}", module)


if __name__ != "__main__":
    _register_official_import_paths()

if __name__ == "__main__":
    sys.exit(main())
