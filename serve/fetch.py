"""{"url": ...} inputs: serve.urlguard's checked fetch, its refusals as typed errors.

Every hop must resolve to public addresses only (see serve.urlguard for the list),
unless the host is on the allow-list (SM_VISION_URL_ALLOW: comma-separated host,
host:port or CIDR; the connection still goes to the address that was checked).
"""

from __future__ import annotations

from dataclasses import dataclass

from container import ServeConfig
from serve import urlguard
from serve.errors import BadInput, PayloadTooLarge


@dataclass(frozen=True)
class FetchPolicy:
    """The URL settings of ServeConfig (from_config), in the shape the guard takes."""

    max_bytes: int  # the payload cap (SAGEMAKER_MAX_PAYLOAD_IN_MB)
    timeout_s: float  # wall clock for the whole fetch
    allow: tuple[str, ...]  # host, host:port or CIDR entries exempt from the address check
    enabled: bool

    parse_allow = staticmethod(urlguard.parse_entries)

    @classmethod
    def from_config(cls, config: ServeConfig) -> FetchPolicy:
        return cls(config.max_payload_bytes, config.url_timeout_s, cls.parse_allow(config.url_allow), config.url_fetch)

    def guard(self) -> urlguard.URLPolicy:
        return urlguard.URLPolicy(
            max_bytes=self.max_bytes, timeout_s=self.timeout_s, exempt=self.allow, refusal_hint=" (see SM_VISION_URL_ALLOW)"
        )


def fetch_url(url: object, policy: FetchPolicy) -> bytes:
    if not policy.enabled:
        raise BadInput("url inputs are disabled on this endpoint (SM_VISION_URL_FETCH=false)")
    try:
        return urlguard.fetch(url, policy.guard())
    except urlguard.FetchError as err:
        # The client named the url, so a refusal or a failing/slow upstream is bad input.
        raise (PayloadTooLarge if err.status == 413 else BadInput)(err.message) from None
