"""Bearer tokens for the REST API.

Two kinds, both checked in constant time:
- the cluster token, derived from the cluster secret for this purpose only
  (`cluster_token(cfg)` = hex of config.key("api"), an HMAC-SHA256 of the secret), so whoever may
  administer the cluster with the CLI can get it (`ophiura web token`) and nothing has to be
  stored; it has the admin role;
- per-user tokens: `[cluster.api_users] NAME = { token_sha256 = HEX, role = "admin"|"read" }`.
  The file is identical on every node and often widely readable, so it holds only a hash; a
  random 256-bit token needs no salt or slow hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from ophiura.cluster.config import ClusterConfig

ADMIN, READ = "admin", "read"


@dataclass(frozen=True)
class Principal:
    """Who made a request: logged with every action so the event log says who did it."""

    name: str
    role: str

    @property
    def may_act(self) -> bool:
        return self.role == ADMIN


def cluster_token(cfg: ClusterConfig) -> str:
    return cfg.key("api").hex()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh user token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class Authenticator:
    def __init__(self, cfg: ClusterConfig) -> None:
        self._cluster = cluster_token(cfg)
        self._users = [(u.token_sha256, Principal(u.name, u.role)) for u in cfg.api_users.values()]

    def check(self, authorization: str | None) -> Principal | None:
        """The principal for an `Authorization: Bearer TOKEN` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            return None
        found = None
        if hmac.compare_digest(token.encode(), self._cluster.encode()):
            found = Principal("cluster", ADMIN)
        digest = token_sha256(token)
        for want, principal in self._users:  # no early exit: time does not depend on the match
            if hmac.compare_digest(digest, want) and found is None:
                found = principal
        return found
