"""Outbound HTTP to URLs that rules choose (webhooks): which hosts and addresses may be called.

A rule author picks the URL (or renders it from an event: `http://{{event.host}}`), so without a check a
webhook reaches whatever the connector process can: Redis on loopback, the cloud metadata service, the
private network. Three checks close that, each on what is actually connected to:

1. the URL: http or https, and, when `BEACON_WEBHOOK_ALLOWED_HOSTS` is set, a listed host and port;
2. the address: an IP literal in the URL, or every address a name resolves to, must be public unless an
   address or network entry of the allow-list names it with the port. `GuardedResolver` does this inside
   aiohttp, which connects to the addresses the resolver returns: the checked address is the connected
   one, so a name that resolves elsewhere a moment later (DNS rebinding) cannot slip past;
3. redirects: not followed by aiohttp; the webhook follows 307/308 itself, checking each like the first.

Provider URLs from settings (merchant API, SMS gateway, WeChat) are the operator's and are not checked.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from connectors.base import RefusedAddress
from connectors.policy import connector_error
from connectors.settings import AllowedHost

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not public although Python before 3.13 calls them global: IETF protocol assignments (Oracle Cloud's
# metadata service answers on 192.0.0.192).
_ALSO_DENIED = (ipaddress.ip_network("192.0.0.0/24"),)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 reached through a NAT64 gateway


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, 6to4, Teredo client, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address.packed[:12] == bytes(12):
        return ipaddress.IPv4Address(address.packed[12:])
    return None


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet: not loopback, link-local (where cloud metadata lives),
    private, shared (CGNAT), reserved, multicast or unspecified; IPv4 inside IPv6 is judged as IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    if (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    ):
        return False
    if isinstance(address, ipaddress.IPv4Address) and any(address in network for network in _ALSO_DENIED):
        return False
    return address.is_global


def normal_host(host: str) -> str:
    """A URL host as allow-list entries are written: lower case, no trailing dot."""
    return host.lower().rstrip(".")


def looks_numeric(host: str) -> bool:
    """aiohttp's test for an IP literal: such a host is connected to without asking the resolver, and a
    non-canonical one (`0`, `2130706433`, `127.1`) would reach the address the C library makes of it."""
    return ":" in host or host.replace(".", "").isdigit()


class WebhookTargets:
    """The outbound policy of webhooks: the allow-list, and the deny-list of non-public addresses."""

    def __init__(self, allowed: frozenset[AllowedHost] = frozenset()) -> None:
        self.restricted = bool(allowed)
        self._names: dict[str, list[AllowedHost]] = {}
        self._networks: list[tuple[IPNetwork, AllowedHost]] = []
        for entry in allowed:
            try:
                self._networks.append((ipaddress.ip_network(entry.host), entry))
            except ValueError:
                self._names.setdefault(entry.host, []).append(entry)

    def name_listed(self, host: str, port: int) -> bool:
        """Whether a name entry covers `host` on `port`."""
        return any(entry.allows_port(port) for entry in self._names.get(normal_host(host), ()))

    def address_listed(self, address: IPAddress, port: int) -> bool:
        """Whether an address or network entry covers `address` on `port`."""
        return any(address in network and entry.allows_port(port) for network, entry in self._networks)

    def address_allowed(self, address: IPAddress, port: int) -> bool:
        """Whether a webhook may connect to `address` on `port`: public, or listed."""
        return is_public(address) or self.address_listed(address, port)

    def check(self, url: str) -> URL:
        """The URL to call, parsed once (aiohttp gets this object, so nothing re-parses it differently); a
        ConnectorError `invalid_request`, `host_not_allowed` or `address_not_allowed` when it may not be."""
        try:
            parsed = URL(url)
            host, port = parsed.raw_host, parsed.port
        except (ValueError, TypeError, UnicodeError) as exc:
            raise connector_error("invalid_request", f"webhook URL is not valid: {exc}"[:300]) from None
        if parsed.scheme not in ("http", "https") or not host or port is None:
            raise connector_error("invalid_request", f"webhook URL {str(parsed)[:100]!r} is not http(s)://host/...")
        address = None
        if looks_numeric(host):
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                raise connector_error(
                    "invalid_request", f"{host!r} is not a canonical IP address (decimal, octal, short forms)"
                ) from None
        listed = self.address_listed(address, port) if address is not None else self.name_listed(host, port)
        if self.restricted and not listed:
            raise connector_error("host_not_allowed", f"{host}:{port} is not in BEACON_WEBHOOK_ALLOWED_HOSTS")
        if address is not None and not self.address_allowed(address, port):
            raise connector_error("address_not_allowed", f"{host} is {_kind(address)}: webhooks may not call it")
        return parsed


def _kind(address: IPAddress) -> str:
    inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if address.is_loopback or (inner is not None and inner.is_loopback):
        return "a loopback address"
    if address.is_link_local or (inner is not None and inner.is_link_local):
        return "a link-local address (where cloud metadata services answer)"
    return "not a public address"


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's threaded resolver, then keeps only the addresses webhooks may connect to."""

    def __init__(self, targets: WebhookTargets, inner: AbstractResolver | None = None) -> None:
        self._targets = targets
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of `host` that are public or listed; RefusedAddress when none is."""
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()  # made here: it needs the running loop
        found = await self._inner.resolve(host, port, family)
        kept = [entry for entry in found if self._targets.address_allowed(ipaddress.ip_address(entry["host"]), port)]
        if not kept:
            refused = ", ".join(sorted({str(entry["host"]) for entry in found}))
            raise RefusedAddress(f"{host} resolves to {refused}: not public, and not in BEACON_WEBHOOK_ALLOWED_HOSTS")
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        if self._inner is not None:
            await self._inner.close()


def webhook_session(targets: WebhookTargets) -> aiohttp.ClientSession:
    """A session for webhooks alone: the guarded resolver, no cookies kept between rules' hosts, and reply
    bodies left compressed (a webhook keeps only an excerpt; no decompression bomb is ever inflated)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(targets))
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
