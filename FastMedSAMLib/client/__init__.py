"""The torch-free client of a FastMedSAM server: numpy and the standard library only (zstandard when installed),
so it runs inside 3D Slicer's Python. `protocol` (paths, headers, version) and `serialization` (frames, digests,
bit-packed masks) are shared with the server; `RemoteSession` is the `SessionLike` over HTTP."""
from __future__ import annotations

from .remote_session import RemoteSession

__all__ = ["RemoteSession"]
