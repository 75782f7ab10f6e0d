"""Who may call what: API keys, held only as sha256 digests, each granting roles.

A route needs one role: `ingest` to send readings, `read` to look, `admin` to forget streams
(and `admin` may do everything). With no keys configured the server is open: every caller is
`ANONYMOUS`, and the command line binds it to the loopback interface only.

>>> keys = KeyRing([ApiKey(name="feeder", roles=["ingest"], key="k" * 16)])
>>> keys.authorize("k" * 16, "ingest").name
'feeder'
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import ForbiddenError, UnauthenticatedError
from service.settings import ApiKey, Role


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a key stands for: its name (safe to log) and its roles."""

    name: str
    roles: frozenset[Role]

    def may(self, role: Role) -> bool:
        return role in self.roles or "admin" in self.roles


ANONYMOUS = Principal("anonymous", frozenset({"admin"}))


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


def key_digest(key: str) -> str:
    """The sha256 hex of a key, as `security.api_keys[].sha256` takes it."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys; finds a presented token's key in time independent of the match."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._entries = [
            _Entry(
                bytes.fromhex(key.sha256 if key.sha256 is not None else key_digest(_secret(key))),
                Principal(key.name, frozenset(key.roles)),
            )
            for key in keys
        ]

    @property
    def open(self) -> bool:
        """No keys configured: every caller is ANONYMOUS."""
        return not self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, token: str | None) -> Principal:
        """The key's principal; UnauthenticatedError when the token is missing or unknown."""
        if self.open:
            return ANONYMOUS
        if not token:
            raise UnauthenticatedError("an API key is required: `Authorization: Bearer <key>`")
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for entry in self._entries:  # every entry is compared, so timing says nothing
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        if found is None:
            raise UnauthenticatedError("the API key is not known")
        return found

    def authorize(self, token: str | None, role: Role) -> Principal:
        """The principal, if its key grants `role`; else Unauthenticated- or ForbiddenError."""
        principal = self.identify(token)
        if not principal.may(role):
            raise ForbiddenError(f"key {principal.name!r} lacks the {role!r} role")
        return principal


LOOPBACK = "127.0.0.1"


def bind_host(host: str, keyed: bool) -> str:
    """Where to listen: `host`, unless the server is open (no keys) and `host` is not loopback.

    >>> bind_host("0.0.0.0", keyed=False), bind_host("0.0.0.0", keyed=True)
    ('127.0.0.1', '0.0.0.0')
    """
    return host if keyed or _is_loopback(host) else LOOPBACK


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _secret(key: ApiKey) -> str:
    assert key.key is not None
    return key.key.get_secret_value()
