"""Bearer tokens: every configured token is compared in constant time; the match's name is the caller's identity
(it scopes image digests, counts sessions and appears in logs). No tokens configured (loopback only): "local"."""
from __future__ import annotations

import hmac
from typing import Dict, Optional

from ..errors import AuthError

ANONYMOUS = "local"


class TokenCheck:
    def __init__(self, tokens: Dict[str, str]) -> None:
        self._tokens = [(name, secret.encode()) for name, secret in tokens.items()]

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def identify(self, authorization: Optional[str]) -> str:
        if not self._tokens:
            return ANONYMOUS
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AuthError("this server needs a token: send 'Authorization: Bearer <token>'")
        presented = given.strip().encode()
        match = None
        for name, secret in self._tokens:  # compare against all: the time does not depend on which one matched
            if hmac.compare_digest(presented, secret) and match is None:
                match = name
        if match is None:
            raise AuthError("the token is not valid for this server")
        return match
