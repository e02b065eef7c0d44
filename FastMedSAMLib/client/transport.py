"""HTTP over the standard library's `http.client`: one keep-alive connection per thread, JSON errors turned
back into the `errors.py` types. Socket waits release the GIL, so a thread that only does this never starves a
GUI thread (and vice versa)."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

from ..errors import AuthError, BackendBusyError, BackendError, BackendUnreachableError, LimitError
from .protocol import ERROR_TYPES, FRAME_MEDIA_TYPE, HEADER_AUTH, HEADER_RETRY_AFTER, HEADER_ROUTE, HEADER_SERVER_MS


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_ms: float  # the whole round trip as the client saw it

    @property
    def is_frame(self) -> bool:
        return self.headers.get("content-type", "").startswith(FRAME_MEDIA_TYPE)

    @property
    def server_ms(self) -> float:
        return float(self.headers.get(HEADER_SERVER_MS.lower(), 0.0))

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class Transport:
    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"server URL must look like http://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.route: Optional[str] = None  # the image digest, sent for replica affinity (ignored by a single server)
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Optional[bytes] = None, json_body: Any = None,
                content_type: Optional[str] = None, expected: tuple = (200,)) -> Response:
        """Send one request; a status outside `expected` raises the error the server named (or one for the status)."""
        headers: Dict[str, str] = {}
        if self._token:
            headers[HEADER_AUTH] = f"Bearer {self._token}"
        if self.route:
            headers[HEADER_ROUTE] = self.route
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        start = time.perf_counter()
        for attempt in (0, 1):  # a kept-alive socket the server closed fails once: reconnect and resend
            conn = self._connection()
            try:
                conn.request(method, self._base + path, body=body, headers=headers)
                raw = conn.getresponse()
                data = raw.read()
                break
            except (ConnectionError, http.client.HTTPException, socket.timeout, OSError) as exc:
                self.close()
                if attempt == 1 or isinstance(exc, (ConnectionRefusedError, socket.timeout)):
                    raise BackendUnreachableError(f"no FastMedSAM server answers at {self.url} ({exc})") from None
        response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data,
                            (time.perf_counter() - start) * 1000.0)
        if response.status not in expected:
            raise error_for(response)
        return response


def error_for(response: Response) -> Exception:
    """The `errors.py` exception a non-success answer stands for."""
    status = response.status
    kind, message = "", response.body[:300].decode("utf-8", "replace")
    try:
        payload = json.loads(response.body)["error"]
        kind, message = str(payload["type"]), str(payload["message"])
    except (ValueError, KeyError, TypeError):
        pass
    retry = float(response.headers.get(HEADER_RETRY_AFTER.lower(), 1) or 1)
    busy = ERROR_TYPES.get(kind, BackendBusyError) if status in (429, 503) else None
    if busy is not None and issubclass(busy, BackendBusyError):
        return busy(f"server busy: {message}", retry_after=retry)
    if kind in ERROR_TYPES:
        return ERROR_TYPES[kind](message)
    if status in (401, 403):
        return AuthError(f"unauthorised: {message}")
    if status == 413:
        return LimitError(message)
    return BackendError(f"server answered {status}: {message}")
