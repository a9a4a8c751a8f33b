"""Python client for a Hivemind coordinator's HTTP API (``/v1``), standard library only.

    from hivemind_client import Client
    client = Client(coordinator_url="http://127.0.0.1:5000")
    task_id = client.submit_task(module=client.upload_module("primes.wasm"), inputs=["1 1000"])
    print(client.get_result(task_id, timeout=60))    # [b"168"]
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

__all__ = [
    "Client",
    "HivemindError",
    "ApiError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "TaskFailed",
    "TaskCancelled",
    "Unreachable",
    "Timeout",
    "parse_size",
    "parse_duration",
]

__version__ = "0.1.0"

FINISHED = ("succeeded", "failed", "cancelled")


class HivemindError(Exception):
    """Every error this client raises."""


class ApiError(HivemindError):
    """The coordinator answered with an error: ``status`` (HTTP), ``code`` and ``message`` from its body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class BadRequest(ApiError):
    """400 or 422: the request was malformed or named something invalid."""


class Unauthorized(ApiError):
    """401: no token, or a token the coordinator does not know."""


class Forbidden(ApiError):
    """403: the token's role may not use this route."""


class NotFound(ApiError):
    """404: no such task, module, worker or route."""


class Conflict(ApiError):
    """409: e.g. the task is not finished yet."""


class PayloadTooLarge(ApiError):
    """413: a body, module or input over the coordinator's caps."""


class TaskFailed(ApiError):
    """The task failed; ``message`` names the failing subtask and its cause."""


class TaskCancelled(HivemindError):
    """The task was cancelled; ``outputs`` holds what had finished (``None`` elsewhere)."""

    def __init__(self, task_id: str, outputs: Optional[List[Optional[bytes]]]):
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id
        self.outputs = outputs


class Unreachable(HivemindError):
    """No coordinator of the list answered."""


class Timeout(HivemindError):
    """``wait`` or ``get_result`` ran out of time before the task finished."""


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
              413: PayloadTooLarge, 422: BadRequest}

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1 << 10, "kib": 1 << 10, "mb": 1000 ** 2, "m": 1 << 20,
               "mib": 1 << 20, "gb": 1000 ** 3, "g": 1 << 30, "gib": 1 << 30}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(value: Union[int, str]) -> int:
    """Bytes from an int or a text such as ``"64MiB"`` (the units of the CLI)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: expected a number such as '64MiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Union[int, float, str]) -> float:
    """Seconds from a number or a text such as ``"500ms"``, ``"5s"``, ``"2m"``."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"invalid duration {value!r}: expected e.g. '500ms', '5s' or '2m'")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def _blob(data: Union[str, bytes, bytearray]) -> Any:
    """The API's blob: JSON text for UTF-8, ``{"base64": ...}`` for other bytes."""
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(data)).decode("ascii")}
    raise TypeError(f"an input must be str or bytes, not {type(data).__name__}")


def _unblob(blob: Any) -> Optional[bytes]:
    if blob is None:
        return None
    if isinstance(blob, str):
        return blob.encode("utf-8")
    return base64.b64decode(blob["base64"])


class Client:
    """A client of one Hivemind cluster.

    ``coordinator_url`` may name several coordinators separated by commas; a request that cannot reach one
    moves on to the next. ``token`` is sent as a bearer token; ``ca_cert`` is a PEM file of a CA to trust
    for ``https://`` coordinators (besides the system's roots).
    """

    def __init__(self, coordinator_url: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 30.0, ca_cert: Optional[str] = None):
        url = coordinator_url or os.environ.get("HIVEMIND_COORDINATOR", "http://127.0.0.1:5000")
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("coordinator_url names no coordinator")
        self.token = token if token is not None else os.environ.get("HIVEMIND_TOKEN")
        self.timeout = timeout
        self._ssl = ssl.create_default_context()
        ca_cert = ca_cert or os.environ.get("HIVEMIND_CA_CERT")
        if ca_cert:
            self._ssl.load_verify_locations(cafile=ca_cert)

    # ---- transport ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
                 timeout: Optional[float] = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if raw is not None:
            data, headers["Content-Type"] = raw, "application/wasm"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode("utf-8"), "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last: Optional[BaseException] = None
        for base in self.urls:
            request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.timeout,
                                            context=self._ssl if base.startswith("https") else None) as reply:
                    payload = reply.read()
                    if reply.headers.get_content_type() == "application/json":
                        return json.loads(payload) if payload else None
                    return payload
            except urllib.error.HTTPError as e:
                raise _api_error(e) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = e
        raise Unreachable(f"no coordinator answered ({', '.join(self.urls)}): {last}")

    # ---- modules --------------------------------------------------------------------------------------

    def module_exists(self, module_id: str) -> bool:
        try:
            self._request("GET", f"/v1/modules/{_q(module_id)}/info")
            return True
        except NotFound:
            return False

    def upload_module(self, module: Union[str, os.PathLike, bytes]) -> str:
        """Uploads a module (a path to a ``.wasm`` file, or its bytes) unless the coordinator already has
        it; returns its content address ``sha256:…``."""
        data = bytes(module) if isinstance(module, (bytes, bytearray)) else open(module, "rb").read()
        module_id = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.module_exists(module_id):
            return module_id
        info = self._request("PUT", f"/v1/modules/{_q(module_id)}", raw=data, timeout=max(self.timeout, 120))
        return info["module_id"]

    # ---- tasks ----------------------------------------------------------------------------------------

    def submit_task(self, module: str, inputs: Iterable[Union[str, bytes]], priority: int = 0,
                    split: bool = False, reduce: bool = False, fuel: Optional[int] = None,
                    memory: Union[int, str, None] = None, timeout: Union[float, str, None] = None,
                    max_attempts: Optional[int] = None, retry_on_error: Optional[bool] = None,
                    idempotency_key: Optional[str] = None, requires: Optional[Mapping[str, str]] = None,
                    deadline: Union[float, str, None] = None,
                    labels: Optional[Mapping[str, str]] = None) -> str:
        """Submits a task and returns its id. ``module`` is a module id or a path to a ``.wasm`` file
        (uploaded first when needed). One map subtask runs per input; with ``split``, give exactly one input
        and the module's split step divides it; ``reduce`` merges the outputs into one result."""
        if not str(module).startswith("sha256:"):
            module = self.upload_module(module)
        body: Dict[str, Any] = {"module_id": module, "inputs": [_blob(i) for i in inputs],
                                "priority": priority}
        if split:
            body["split"] = True
        if reduce:
            body["reduce"] = True
        limits: Dict[str, int] = {}
        if fuel is not None:
            limits["fuel"] = int(fuel)
        if memory is not None:
            limits["memory_bytes"] = parse_size(memory)
        if timeout is not None:
            limits["timeout_ms"] = int(parse_duration(timeout) * 1000)
        if limits:
            body["limits"] = limits
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        if retry_on_error is not None:
            body["retry_on_error"] = retry_on_error
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if requires:
            body["requires"] = dict(requires)
        if labels:
            body["labels"] = dict(labels)
        if deadline is not None:
            body["deadline_ms"] = int(parse_duration(deadline) * 1000)
        return self._request("POST", "/v1/tasks", body)["task_id"]

    def status(self, task_id: str) -> Dict[str, Any]:
        """The task's state, per-state subtask counts, usage totals and error."""
        return self._request("GET", f"/v1/tasks/{_q(task_id)}")

    def wait(self, task_id: str, timeout: Optional[float] = None,
             progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """Waits until the task finishes (long polls); calls ``progress(status)`` as it goes. Raises
        ``Timeout`` after ``timeout`` seconds."""
        started = time.monotonic()
        while True:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            poll_ms = int(min(1.0 if left is None else left, 1.0) * 1000)
            status = self._request("GET", f"/v1/tasks/{_q(task_id)}/wait?timeout_ms={poll_ms}",
                                   timeout=self.timeout + 2)
            if progress is not None:
                progress(status)
            if status["state"] in FINISHED:
                return status
            if left is not None and left <= 0:
                raise Timeout(f"task {task_id} did not finish within {timeout} s (state {status['state']})")

    def get_result(self, task_id: str, timeout: Optional[float] = None) -> Union[bytes, List[Optional[bytes]]]:
        """Waits for the task, then returns its result: ``bytes`` for a reduced or split task, one
        ``bytes`` per input (in input order) for a map task. Raises ``TaskFailed`` (with the failing
        subtask and cause) or ``TaskCancelled`` (carrying the finished outputs)."""
        started = time.monotonic()
        while True:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            poll_ms = max(1, int(min(10.0 if left is None else left, 10.0) * 1000))
            try:
                # The coordinator long-polls until the task finishes, then answers with its result.
                result = self._request("GET", f"/v1/tasks/{_q(task_id)}/result?wait_ms={poll_ms}",
                                       timeout=self.timeout + poll_ms / 1000)
                break
            except ApiError as e:
                if e.code == "task_failed":
                    raise TaskFailed(e.status, e.code, e.message) from None
                if e.code != "task_not_finished":
                    raise
                if left is not None and left <= 0:
                    raise Timeout(f"task {task_id} did not finish within {timeout} s") from None
        outputs = None if result.get("outputs") is None else [_unblob(o) for o in result["outputs"]]
        if result.get("state") == "cancelled":
            raise TaskCancelled(task_id, outputs)
        if result.get("result") is not None:
            return _unblob(result["result"])
        return outputs if outputs is not None else []

    def cancel(self, task_id: str) -> Dict[str, Any]:
        """Cancels the task: queued subtasks are dropped, running ones interrupted; finished results stay."""
        return self._request("POST", f"/v1/tasks/{_q(task_id)}/cancel")

    def list_tasks(self, state: Optional[str] = None, module_id: Optional[str] = None,
                   limit: Optional[int] = None) -> List[Dict[str, Any]]:
        query = {k: v for k, v in (("state", state), ("module_id", module_id), ("limit", limit)) if v is not None}
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self._request("GET", f"/v1/tasks{suffix}")["tasks"]

    def subtasks(self, task_id: str, state: Optional[str] = None, phase: Optional[str] = None,
                 offset: int = 0, limit: int = 100) -> List[Dict[str, Any]]:
        """Per-subtask state, attempts (with worker and error) and usage."""
        query = {"offset": offset, "limit": limit}
        if state:
            query["state"] = state
        if phase:
            query["phase"] = phase
        return self._request("GET", f"/v1/tasks/{_q(task_id)}/subtasks?{urllib.parse.urlencode(query)}")[
            "subtasks"]

    # ---- workers --------------------------------------------------------------------------------------

    def list_workers(self) -> List[Dict[str, Any]]:
        """Every registered worker with its resources, load and usage."""
        return self._request("GET", "/v1/workers")["workers"]


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe=":")


def _api_error(e: "urllib.error.HTTPError") -> ApiError:
    try:
        body = json.loads(e.read() or b"{}")
        code, message = body["error"]["code"], body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {e.code} {e.reason}"
    return _BY_STATUS.get(e.code, ApiError)(e.code, code, message)
