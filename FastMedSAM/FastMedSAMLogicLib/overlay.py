"""The latency readout: per-prediction records, the corner text the slice views show, the last N records."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List


@dataclass(frozen=True)
class TimingRecord:
    model: str
    device: str
    kind: str  # "slice" (2D prompt) or "3D" (propagation / volume model)
    session_ms: Dict[str, float]  # the Session's stages: preprocess, encode, decode, postprocess, total
    logic_ms: Dict[str, float]  # the Logic's own overhead: extract, set_image, prompts, write, total
    encoder_calls: int
    slices: int
    pause: float = 0.0  # the token-pausing knob it ran at (0 = the plain model)
    paused_fraction: float = 0.0  # fraction of the encoder's token computations that pausing skipped
    pause_note: str = ""  # why an asked knob was not applied
    stamp: float = field(default_factory=time.time)

    @property
    def cached(self) -> bool:
        return self.encoder_calls == 0


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def format_pause(record: TimingRecord) -> str:
    """e.g. "pause 0.25 · 31% tokens paused"; empty for the plain model."""
    if record.pause == 0.0:
        return ""
    return f"pause {record.pause:g} · {record.paused_fraction:.0%} tokens paused"


def format_overlay(record: TimingRecord) -> str:
    """Corner text for the slice views, e.g.
    FastMedSAM litemedsam (cpu)
    encode 812 ms | decode 9.1 ms | total 840 ms
    pause 0.25 · 31% tokens paused      (only when token pausing ran, or a note why it did not)
    logic 31 ms"""
    session = record.session_ms
    encode = "encode cached" if record.cached else f"encode {_ms(session.get('encode', 0.0))}"
    if record.kind == "3D" and not record.cached:
        encode += f" ({record.encoder_calls}/{record.slices} slices)"
    lines = [
        f"FastMedSAM {record.model} ({record.device})",
        f"{encode} | decode {_ms(session.get('decode', 0.0))} | total {_ms(session.get('total', 0.0))}",
    ]
    lines += [line for line in (format_pause(record), record.pause_note) if line]
    lines.append(f"logic {_ms(record.logic_ms.get('total', 0.0))}")
    return "\n".join(lines)


def format_history_row(record: TimingRecord) -> List[str]:
    """One row of the panel's timing table: time, model, kind, pause knob (tokens paused), encode, decode, Session
    total, Logic overhead."""
    session = record.session_ms
    return [
        time.strftime("%H:%M:%S", time.localtime(record.stamp)),
        record.model,
        record.kind,
        f"{record.pause:g} ({record.paused_fraction:.0%})" if record.pause else "off",
        "cached" if record.cached else _ms(session.get("encode", 0.0)),
        _ms(session.get("decode", 0.0)),
        _ms(session.get("total", 0.0)),
        _ms(record.logic_ms.get("total", 0.0)),
    ]


HISTORY_COLUMNS = ("time", "model", "prompt", "pause", "encode", "decode", "total", "logic")


class TimingHistory:
    """The last `size` records, newest last."""

    def __init__(self, size: int = 20) -> None:
        self._records: Deque[TimingRecord] = deque(maxlen=size)

    def add(self, record: TimingRecord) -> None:
        self._records.append(record)

    def records(self) -> List[TimingRecord]:
        return list(self._records)

    @property
    def last(self) -> TimingRecord:
        if not self._records:
            raise LookupError("no prediction yet")
        return self._records[-1]

    def __len__(self) -> int:
        return len(self._records)
