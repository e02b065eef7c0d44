"""One persistent prediction thread (the model stays warm on it), newest request wins.

The GUI submits requests and polls for outcomes from its own (main) thread, where MRML may be touched; the
worker only runs `run(request)`, which must not touch MRML. A request submitted while another waits replaces
it; a result whose request was superseded while running is dropped. Exceptions come back as outcomes.
Several consumers (the module panel and the Segment Editor effect) share one worker: each submits under its own
`owner` name and polls only its own outcomes.

Background requests (prefetching the viewed slices) wait in a lane of their own: they run only when no prompt
waits, never supersede one, the newest replaces a waiting one, and their outcomes (errors included) are dropped —
the prompt that follows reports whatever is wrong.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional


@dataclass
class Outcome:
    ticket: int
    request: Any
    owner: str = ""
    result: Any = None
    error: Optional[BaseException] = None


class PredictionWorker:
    def __init__(self, run: Callable[[Any], Any], name: str = "FastMedSAM-predictor") -> None:
        self._run = run
        self._condition = threading.Condition()
        self._pending: Optional[tuple] = None
        self._background: Optional[Any] = None
        self._running_background = False
        self._outcomes: List[Outcome] = []
        self._latest = 0
        self._running: Optional[int] = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Any, owner: str = "") -> int:
        """Queue `request` for `owner`, superseding any request not finished yet (whoever sent it); its ticket."""
        with self._condition:
            if self._closed:
                raise RuntimeError("the prediction worker is closed")
            self._latest += 1
            self._pending = (self._latest, request, owner)
            self._condition.notify()
            return self._latest

    def submit_background(self, request: Any) -> None:
        """Queue `request` to run once no prompt waits, replacing a background request not started yet."""
        with self._condition:
            if self._closed:
                raise RuntimeError("the prediction worker is closed")
            self._background = request
            self._condition.notify()

    def poll(self, owner: str = "") -> List[Outcome]:
        """`owner`'s outcomes ready since its last poll (only the newest request's; superseded ones are dropped)."""
        with self._condition:
            mine = [o for o in self._outcomes if o.owner == owner]
            self._outcomes = [o for o in self._outcomes if o.owner != owner]
        return mine

    @property
    def busy(self) -> bool:
        with self._condition:
            return self._pending is not None or self._running is not None

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing runs or waits, background requests included."""
        with self._condition:
            return self._condition.wait_for(
                lambda: self._pending is None and self._background is None and self._running is None
                and not self._running_background, timeout)

    def close(self, timeout: float = 5.0) -> None:
        with self._condition:
            self._closed = True
            self._pending = None
            self._background = None
            self._condition.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending is not None or self._background is not None or self._closed)
                if self._closed:
                    return
                background = self._pending is None  # a background request runs only when no prompt waits
                if background:
                    request, self._background = self._background, None
                    self._running_background = True
                else:
                    ticket, request, owner = self._pending
                    self._pending = None
                    self._running = ticket
            if background:
                try:
                    self._run(request)
                except BaseException:
                    pass  # best effort by design: the next prompt reports real trouble
                with self._condition:
                    self._running_background = False
                    self._condition.notify_all()
                continue
            outcome = Outcome(ticket, request, owner)
            try:
                outcome.result = self._run(request)
            except BaseException as error:  # reported to the GUI, never lost in the thread
                outcome.error = error
            with self._condition:
                self._running = None
                if ticket == self._latest:
                    self._outcomes.append(outcome)
                self._condition.notify_all()
