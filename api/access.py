"""Who may call the service without a key, from where it listens.

On the loopback (127.0.0.0/8, ::1, `localhost`) only this machine can reach the service, so
without keys it stays open, as `dinoserve serve` and the demo always were. Anywhere else (the
container's 0.0.0.0, a LAN address, a hostname) anyone who reaches the port could fill the disk
with uploads or empty the collections with deletes, so the service refuses to start without
DINOSERVE_API_KEY unless DINOSERVE_ALLOW_ANONYMOUS says what callers without a key may do:
`read` (writes still need the write or admin key) or `all` (everything but /admin, which always
needs the admin key). Either is logged as a warning at every start.

The check runs wherever the bind address is known: `dinoserve serve` (after --host), the demo,
and the app factory (settings.serve.host; `dinoserve serve` hands --host on to its worker
processes in DINOSERVE_SERVE__HOST).
"""

from __future__ import annotations

import ipaddress
import logging

from core.settings import Settings

log = logging.getLogger(__name__)


class OpenToTheNetwork(ValueError):
    """The service would listen off the loopback with no key and no explicit opt-out (a
    ValueError: the CLI prints it as one line and exits 2, like a bad setting)."""


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only.

    Args:
        host: uvicorn's host: an IPv4/IPv6 address (brackets allowed) or a name. Of names,
            only `localhost` (and `*.localhost`, RFC 6761) count; any other may resolve to a
            network interface. "" and "0.0.0.0"/"::" are every interface.
    """
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])  # fe80::1%eth0: zone dropped
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1
    return address.is_loopback


def anonymous_writes(settings: Settings) -> bool:
    """Whether a write to a collection (POST, PATCH, DELETE under /collections) needs no key:
    only while no key at all is set, and then on the loopback or with
    DINOSERVE_ALLOW_ANONYMOUS=all."""
    s = settings
    if s.api_key or s.write_api_key or s.admin_api_key:
        return False  # any key: writes need the write or the admin key (api.routes.collections)
    if s.allow_anonymous == "none":
        return is_loopback(s.serve.host)
    return s.allow_anonymous == "all"


def check_exposure(settings: Settings, warn: bool = True) -> None:
    """Refuse to serve off the loopback without a key unless anonymous access is asked for;
    log that request loudly when it is.

    Args:
        settings: the settings to serve with (serve.host: the bind address).
        warn: log the opt-out (the app factory does; `dinoserve serve` checks before it
            builds the app, which then logs it once).

    Raises:
        OpenToTheNetwork: no DINOSERVE_API_KEY and DINOSERVE_ALLOW_ANONYMOUS=none off the
            loopback (one line naming the setting and the opt-out).
    """
    s, host = settings, settings.serve.host
    if is_loopback(host) or s.api_key:
        return
    where = f"{host or '*'}:{s.serve.port}"
    if s.allow_anonymous == "none":
        raise OpenToTheNetwork(
            f"refusing to serve on {where} (not a loopback address) without DINOSERVE_API_KEY: "
            "set it (and DINOSERVE_WRITE_API_KEY or DINOSERVE_ADMIN_API_KEY for writes), or "
            "allow callers without a key explicitly with DINOSERVE_ALLOW_ANONYMOUS=read "
            "(reads only) or =all (writes and deletes too)"
        )
    if not warn:
        return
    if anonymous_writes(s):
        rights = "read, add, relabel and delete images"
    elif s.write_api_key or s.admin_api_key:
        rights = "read (writes need DINOSERVE_WRITE_API_KEY or the admin key)"
    else:
        rights = "read (writes are off: no write or admin key is set)"
    log.warning(
        "DINOSERVE_ALLOW_ANONYMOUS=%s: anyone who can reach %s may %s without a key",
        s.allow_anonymous,
        where,
        rights,
    )
