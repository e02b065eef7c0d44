"""What the server holds between requests: uploaded images (by owner and digest, LRU by bytes) and sessions
(owner, model, image digest, window; idle ones evicted). A session holds no pixels: it is rebuilt from its digest."""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Tuple

from ..errors import TooManySessionsError
from ..io.images import Image


class BlobStore:
    """Decompressed images keyed by (owner, digest): one owner can never see whether another holds a scan."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: "OrderedDict[Tuple[str, str], Image]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, owner: str, digest: str) -> Optional[Image]:
        with self._lock:
            image = self._items.get((owner, digest))
            if image is not None:
                self._items.move_to_end((owner, digest))
            return image

    def put(self, owner: str, digest: str, image: Image) -> None:
        size = int(image.array.nbytes)
        with self._lock:
            if (owner, digest) in self._items:
                self._items.move_to_end((owner, digest))
                return
            self._items[(owner, digest)] = image
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= int(evicted.array.nbytes)

    def info(self) -> Dict[str, int]:
        with self._lock:
            return {"images": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes}


@dataclass
class ServerSession:
    id: str
    owner: str
    model: str
    digest: str
    window: Optional[Tuple[float, float]]
    points_as_box: bool
    last_used: float = field(default_factory=time.monotonic)


class SessionBoard(Protocol):
    """Session records shared by several server processes (Ray Serve replicas): any replica that holds the image
    can serve any session of it. Records are `dataclasses.asdict(ServerSession)`."""

    def remember(self, record: Dict[str, Any]) -> None: ...

    def recall(self, session_id: str) -> Optional[Dict[str, Any]]: ...

    def forget(self, session_id: str) -> None: ...


class SessionRegistry:
    def __init__(self, max_per_owner: int, idle_s: float, board: Optional[SessionBoard] = None) -> None:
        self.max_per_owner = max_per_owner
        self.idle_s = idle_s
        self.board = board
        self._sessions: Dict[str, ServerSession] = {}
        self._lock = threading.Lock()

    def _sweep(self) -> List[str]:
        now = time.monotonic()
        gone = [sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_s]
        for sid in gone:
            del self._sessions[sid]
        return gone

    def _forget(self, session_ids: List[str]) -> None:
        """Drop closed or expired sessions from the board too (called outside the lock: board calls block), so
        no replica recalls them and the board stays bounded."""
        if self.board is not None:
            for session_id in session_ids:
                self.board.forget(session_id)

    def open(self, owner: str, model: str, digest: str, window: Optional[Tuple[float, float]],
             points_as_box: bool) -> ServerSession:
        with self._lock:
            expired = self._sweep()
            if sum(s.owner == owner for s in self._sessions.values()) >= self.max_per_owner:
                raise TooManySessionsError(f"{self.max_per_owner} sessions already open for this token; close one "
                                       "or wait for idle ones to expire", retry_after=5.0)
            session = ServerSession(secrets.token_urlsafe(12), owner, model, digest, window, points_as_box)
            self._sessions[session.id] = session
        self._forget(expired)
        if self.board is not None:
            self.board.remember(asdict(session))
        return session

    def get(self, owner: str, session_id: str) -> Optional[ServerSession]:
        """The caller's live session (touched), or None when it expired, never existed or is someone else's."""
        with self._lock:
            expired = self._sweep()
            session = self._sessions.get(session_id)
        self._forget(expired)
        if session is None and self.board is not None:  # opened on another replica
            record = self.board.recall(session_id)
            if record is not None:
                window = record["window"]
                session = ServerSession(**{**record, "window": None if window is None else tuple(window),
                                           "last_used": time.monotonic()})
                with self._lock:
                    self._sessions[session.id] = session
        if session is None or session.owner != owner:
            return None
        session.last_used = time.monotonic()
        return session

    def close(self, owner: str, session_id: str) -> bool:
        if self.get(owner, session_id) is None:
            return False
        with self._lock:
            self._sessions.pop(session_id, None)
        self._forget([session_id])
        return True

    def __len__(self) -> int:
        with self._lock:
            expired = self._sweep()
            count = len(self._sessions)
        self._forget(expired)
        return count
