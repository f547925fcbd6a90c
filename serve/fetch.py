"""{"url": ...} inputs: serve.urlguard's checked fetch, its refusals as typed errors.

Every hop must resolve to public addresses only (see serve.urlguard for the list),
unless the destination is on the allow-list (SM_VISION_URL_ALLOW: comma-separated
entries that carry their ports: `host` and `10.0.0.0/8` cover ports 80 and 443 only,
`host:8080`, `10.0.0.0/8:443`, `[fd00::/8]:443`, `10.1.2.3:*`; the connection still
goes to the address that was checked). Each fetch ends at SM_VISION_URL_TIMEOUT_S or
at the deadline its caller passes (the request's), whichever comes first, DNS
resolution included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from container import ConfigError, ServeConfig
from serve import urlguard
from serve.errors import BadInput, PayloadTooLarge, Timeout


def parse_allow(text: str | None) -> tuple[str, ...]:
    """SM_VISION_URL_ALLOW as checked entries; ConfigError naming a malformed one."""
    try:
        return urlguard.parse_entries(text)
    except ValueError as err:
        raise ConfigError(f"SM_VISION_URL_ALLOW: {err}") from None


@dataclass(frozen=True)
class FetchPolicy:
    """The URL settings of ServeConfig (from_config), in the shape the guard takes."""

    max_bytes: int  # the payload cap (SAGEMAKER_MAX_PAYLOAD_IN_MB)
    timeout_s: float  # wall clock for the whole fetch
    allow: tuple[str, ...]  # allow-list entries (serve.urlguard.allow_entry) exempt from the address check
    enabled: bool

    parse_allow = staticmethod(parse_allow)

    @classmethod
    def from_config(cls, config: ServeConfig) -> FetchPolicy:
        return cls(config.max_payload_bytes, config.url_timeout_s, cls.parse_allow(config.url_allow), config.url_fetch)

    def guard(self) -> urlguard.URLPolicy:
        return urlguard.URLPolicy(
            max_bytes=self.max_bytes, timeout_s=self.timeout_s, exempt=self.allow, refusal_hint=" (see SM_VISION_URL_ALLOW)"
        )


def fetch_url(url: object, policy: FetchPolicy, deadline: float | None = None) -> bytes:
    """The body at url, or BadInput/PayloadTooLarge. `deadline` is a time.monotonic()
    value (the request's): the fetch stops there even if its own timeout is longer."""
    if not policy.enabled:
        raise BadInput("url inputs are disabled on this endpoint (SM_VISION_URL_FETCH=false)")
    try:
        return urlguard.fetch(url, policy.guard(), deadline=deadline)
    except urlguard.FetchError as err:
        if err.status == 504 and deadline is not None and time.monotonic() >= deadline:
            raise Timeout(err.message) from None  # the request's own deadline, not the url's
        # The client named the url, so a refusal or a failing/slow upstream is bad input.
        raise (PayloadTooLarge if err.status == 413 else BadInput)(err.message) from None
