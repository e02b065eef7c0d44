"""Server settings, read from FASTMEDSAM_* environment variables (e.g. FASTMEDSAM_MAX_BODY_MB=512)."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Dict, Optional

from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import AuthError


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FASTMEDSAM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8765
    # FASTMEDSAM_TOKEN: one token, or named ones "alice=tok1,bob=tok2" (names appear in logs and per-token limits)
    token: Optional[str] = None
    token_file: Optional[Path] = None  # lines "name token" (or a lone token); '#' starts a comment
    device: str = "auto"
    max_body_mb: float = 1024.0  # one request body, compressed
    max_voxels: int = 512 * 512 * 2000
    max_sessions_per_token: int = 32
    blob_store_mb: float = 4096.0  # decompressed images kept, LRU
    embedding_cache_mb: float = 1024.0  # per model, LRU
    session_idle_s: float = 1800.0
    max_queue: int = 16  # requests waiting for one model beyond this get 503 + Retry-After
    job_keep_s: float = 300.0  # a finished job's result is kept this long for its client to fetch

    def tokens(self) -> Dict[str, str]:
        """name -> token from FASTMEDSAM_TOKEN and the token file."""
        found: Dict[str, str] = {}
        if self.token:
            for i, item in enumerate(t.strip() for t in self.token.split(",")):
                if item:
                    name, _, secret = item.rpartition("=")
                    found[name or f"token{i}"] = secret
        if self.token_file is not None:
            try:
                lines = Path(self.token_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise AuthError(f"cannot read the token file {self.token_file}: {exc}") from None
            for i, line in enumerate(raw.split("#", 1)[0].split() for raw in lines):
                if len(line) == 1:
                    found[f"file{i}"] = line[0]
                elif len(line) == 2:
                    found[line[0]] = line[1]
                elif line:
                    raise AuthError(f"token file {self.token_file}, line {i + 1}: expected 'name token' or 'token'")
        if any(len(secret) < 16 for secret in found.values()):
            raise AuthError("every token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        return found

    def check_exposure(self) -> None:
        """Refuse to serve a non-loopback address without a token."""
        if not is_loopback(self.host) and not self.tokens():
            raise AuthError(f"binding {self.host} (not loopback) requires a token: set FASTMEDSAM_TOKEN or --token-file")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
