"""Which URLs a webhook may name and which addresses a delivery may reach.

A webhook makes the server send requests where a caller says: without a rule, to
the cloud's metadata service (169.254.169.254), to the database on the private
network, to the API itself.  So by default every address that is not public is
refused: loopback, link-local (169.254.0.0/16, fe80::/10), private ranges
(10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), multicast, reserved,
unspecified.  An admin may allow CIDR ranges (``CONVEYOR_EVENTS_ALLOW_CIDRS``,
e.g. a receiver on the private network, or 127.0.0.1/32 for tests).

The name is resolved and every address it resolves to is checked when the
webhook is created (the caller is told why it is refused) and again before every
delivery; the delivery then connects to the address it checked, never resolving
a second time, so DNS rebinding (public at creation, private later) finds
nothing to rebind.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from conveyor.errors import InvalidRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL = 2048


class WebhookRefused(InvalidRequest):
    """A webhook URL the address policy refuses; the message says which rule."""

    code = "webhook_refused"


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_cidrs(values: Iterable[str]) -> list[Network]:
    out: list[Network] = []
    for v in values:
        v = v.strip()
        if not v:
            continue
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise InvalidRequest(f"not a CIDR range: {v!r}") from None
    return out


def why_refused(ip: Address) -> str | None:
    """The rule that refuses ``ip`` by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return why_refused(ip.ipv4_mapped)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        meta = " (the cloud metadata service)" if str(ip) == "169.254.169.254" else ""
        return f"a link-local address{meta}"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address (reserved or shared range)"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``) and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


@dataclass
class AddressPolicy:
    allow: list[Network]
    resolver: Resolver = _system_resolver

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], resolver: Resolver | None = None) -> AddressPolicy:
        return cls(parse_cidrs(cidrs), resolver or _system_resolver)

    def allowed(self, ip: Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def check_url(self, url: str) -> tuple[str, str, int]:
        """``(scheme, host, port)`` of a URL a webhook may name (its form only)."""
        if len(url) > MAX_URL:
            raise WebhookRefused(f"a webhook URL is at most {MAX_URL} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise WebhookRefused(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise WebhookRefused("a webhook URL starts with http:// or https://")
        if not parts.hostname:
            raise WebhookRefused("a webhook URL names a host")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("a webhook URL carries no user or password; sign, not log in")
        if parts.fragment:
            raise WebhookRefused("a webhook URL has no #fragment")
        default = 443 if parts.scheme == "https" else 80
        return parts.scheme, parts.hostname, port or default

    def resolve(self, url: str) -> Target:
        """Check ``url`` and every address its host resolves to; the address to use.

        Raises :class:`WebhookRefused` naming the rule (and the address) that refuses it.
        """
        scheme, host, port = self.check_url(url)
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise WebhookRefused(f"the webhook host {host!r} does not resolve: {exc}") from None
            if not addresses:
                raise WebhookRefused(f"the webhook host {host!r} does not resolve")
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            reason = why_refused(ip)
            if reason is not None and not self.allowed(ip):
                named = host if literal is not None else f"{host} ({ip})"
                raise WebhookRefused(
                    f"webhook address refused: {named} is {reason}; an admin may allow it "
                    "with CONVEYOR_EVENTS_ALLOW_CIDRS"
                )
        return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])
