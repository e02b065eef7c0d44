"""Frames: how arrays travel. A frame is `MAGIC`, a little-endian u32 header length, a JSON header, then the
payload compressed with the header's codec (zstd when the `zstandard` package is installed, else zlib).

Images are addressed by `image_digest` (voxels + geometry + modality), so the server can re-hash an upload and
refuse a mismatch. Masks travel as the bounding box of their non-zero voxels, bit-packed (`pack_mask`)."""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import UploadError

try:  # 5-10x faster than zlib at a similar ratio on CT; optional so a bare Slicer Python still works
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

MAGIC = b"FMS1"
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20
DTYPES = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64", "int64", "uint64"}


def default_codec() -> str:
    return "zstd" if zstandard is not None else "zlib"


def _compress(raw: bytes, codec: str) -> bytes:
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=1, threads=-1).compress(raw)
    if codec == "zlib":
        return zlib.compress(raw, 1)
    if codec == "none":
        return raw
    raise ValueError(f"unknown codec {codec!r}")


def _decompress(payload: bytes, codec: str, size: int) -> bytes:
    try:
        if codec == "zstd":
            if zstandard is None:
                raise UploadError("this frame is zstd-compressed but the zstandard package is not installed here")
            return zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
        if codec == "zlib":
            return zlib.decompress(payload)
        if codec == "none":
            return payload
    except (zlib.error, getattr(zstandard, "ZstdError", zlib.error)) as exc:
        raise UploadError(f"the payload is corrupt or truncated ({codec}: {exc})") from None
    raise UploadError(f"unknown codec {codec!r} (known: zstd, zlib, none)")


def pack_frame(header: Dict[str, Any], raw: bytes, codec: Optional[str] = None) -> bytes:
    codec = codec or default_codec()
    head = json.dumps({**header, "codec": codec, "raw_bytes": len(raw)}).encode()
    return MAGIC + _LENGTH.pack(len(head)) + head + _compress(raw, codec)


def unpack_frame(frame: bytes, max_raw_bytes: Optional[int] = None) -> Tuple[Dict[str, Any], bytes]:
    """(header, raw payload); UploadError for anything truncated, corrupt or oversized."""
    if len(frame) < 8 or frame[:4] != MAGIC:
        raise UploadError("not a FastMedSAM frame (bad magic): the body is truncated or of another format")
    (length,) = _LENGTH.unpack_from(frame, 4)
    if length > MAX_HEADER_BYTES or 8 + length > len(frame):
        raise UploadError("the frame header is truncated")
    try:
        header = json.loads(frame[8:8 + length])
        size = int(header["raw_bytes"])
        codec = str(header["codec"])
    except (ValueError, KeyError, TypeError):
        raise UploadError("the frame header is not valid JSON with raw_bytes and codec") from None
    if max_raw_bytes is not None and size > max_raw_bytes:
        from ..errors import LimitError

        raise LimitError(f"the payload would be {size} bytes uncompressed; this server takes at most {max_raw_bytes}")
    raw = _decompress(frame[8 + length:], codec, size)
    if len(raw) != size:
        raise UploadError(f"the payload is truncated: {len(raw)} of {size} bytes")
    return header, raw


# -- images ------------------------------------------------------------------------------------------------------
def image_digest(array: np.ndarray, geometry: Dict[str, Any]) -> str:
    """Content address of an image: dtype, shape, spacing, origin, direction, modality and every voxel."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((array.shape, np.dtype(array.dtype).str)).encode())
    h.update(json.dumps(_canonical(geometry), sort_keys=True).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def _canonical(geometry: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key in ("spacing", "origin", "direction"):
        value = geometry.get(key)
        out[key] = None if value is None else [float(v) for v in np.asarray(value, dtype=np.float64).ravel()]
    out["modality"] = geometry.get("modality")
    return out


def pack_image(array: np.ndarray, geometry: Dict[str, Any], codec: Optional[str] = None) -> Tuple[str, bytes]:
    """(digest, frame) for an image array in index order and its geometry."""
    array = np.ascontiguousarray(array)
    if array.dtype.name not in DTYPES:
        from ..errors import ImageError

        raise ImageError(f"image voxels must be numbers, not {array.dtype}")
    digest = image_digest(array, geometry)
    header = {"kind": "image", "digest": digest, "dtype": array.dtype.name, "shape": list(array.shape),
              **_canonical(geometry)}
    return digest, pack_frame(header, array.data.tobytes() if array.size else b"", codec)


def unpack_image(frame: bytes, max_voxels: Optional[int] = None,
                 max_raw_bytes: Optional[int] = None) -> Tuple[str, np.ndarray, Dict[str, Any]]:
    """(digest the server re-computed, array, geometry); UploadError when the frame is bad or the digest differs."""
    header, raw = unpack_frame(frame, max_raw_bytes)
    try:
        dtype = np.dtype(str(header["dtype"]))
        shape = tuple(int(n) for n in header["shape"])
    except (KeyError, TypeError, ValueError):
        raise UploadError("the image header needs dtype and shape") from None
    if dtype.name not in DTYPES or any(n < 0 for n in shape):
        raise UploadError(f"unsupported image dtype {dtype} or shape {shape}")
    voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        from ..errors import LimitError

        raise LimitError(f"the image has {voxels} voxels; this server takes at most {max_voxels}")
    if voxels * dtype.itemsize != len(raw):
        raise UploadError(f"the payload holds {len(raw)} bytes; shape {shape} of {dtype} needs {voxels * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    geometry = {key: header.get(key) for key in ("spacing", "origin", "direction", "modality")}
    digest = image_digest(array, geometry)
    if digest != header.get("digest"):
        raise UploadError("the image does not match its digest (corrupted in transit?): nothing was stored")
    return digest, array, geometry


# -- masks -------------------------------------------------------------------------------------------------------
def mask_bbox(mask: np.ndarray) -> Optional[Tuple[Tuple[int, int], ...]]:
    """Per axis (start, stop) of the non-zero voxels, or None for an empty mask."""
    if not mask.any():
        return None
    bounds = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.nonzero(mask.any(axis=other))[0]
        bounds.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(bounds)


def pack_mask(mask: np.ndarray, header: Dict[str, Any], codec: Optional[str] = None) -> bytes:
    """A frame with the mask's shape, the bounding box of its voxels and only that box's bits."""
    mask = np.asarray(mask, dtype=bool)
    bbox = mask_bbox(mask)
    region = mask[tuple(slice(a, b) for a, b in bbox)] if bbox else np.zeros((0,), bool)
    head = {**header, "kind": "mask", "shape": list(mask.shape), "bbox": bbox and [list(b) for b in bbox]}
    return pack_frame(head, np.packbits(region.ravel()).tobytes(), codec)


def unpack_mask(frame: bytes) -> Tuple[np.ndarray, Dict[str, Any]]:
    header, raw = unpack_frame(frame)
    shape: Sequence[int] = tuple(int(n) for n in header["shape"])
    mask = np.zeros(shape, dtype=bool)
    if header.get("bbox"):
        box = tuple(slice(int(a), int(b)) for a, b in header["bbox"])
        size = int(np.prod([s.stop - s.start for s in box]))
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=size)
        mask[box] = bits.reshape([s.stop - s.start for s in box]).astype(bool)
    return mask, header
