"""Webhook URLs come from rules: loopback, private and metadata addresses are refused unless listed with
their port, redirects are not followed unless allowed (and then checked), and the ledger keeps little of a
reply (issue 15, finding 6)."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.errors import ValidationError
from connectors.base import RefusedAddress
from connectors.outbound import GuardedResolver, WebhookTargets, is_public
from connectors.settings import AllowedHost, ConnectorSettings, parse_allowed_hosts
from tests.connectors.kit import allow, fast_settings, put_actions, record, running_connectors, wait_all, wait_status
from tests.connectors.providers import FakeMerchant


@pytest.fixture
async def other() -> AsyncIterator[FakeMerchant]:
    """A second receiver on loopback, on another port."""
    server = await FakeMerchant().start()
    yield server
    await server.close()


def hook(user_id: str, url: str, clock: ManualClock, **params: object) -> dict[str, object]:
    return record(user_id, "webhook", {"url": url, **params}, clock.now_ms())


async def test_a_webhook_to_loopback_is_refused_by_default(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: with no allow-list a rule could POST to anything on loopback and read the reply in the ledger."""
    action = hook("o1", merchant.url("/admin"), clock)
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await put_actions(redis_client, [action])
        dead = await wait_status(redis_client, action, {"dead"}, reason="address_not_allowed")
    assert dead["attempts"] == 1 and "loopback" in dead["reply"]
    assert merchant.requests == []


async def test_every_spelling_of_a_loopback_or_metadata_address_is_refused(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: `0`, `2130706433`, `[::1]`, `169.254.169.254` and names resolving to loopback all went out."""
    v6 = await FakeMerchant(host="::1").start()
    try:
        port = merchant.port
        refusals = {
            f"http://0:{port}/h": "invalid_request",  # 0.0.0.0: Linux connects it to loopback
            f"http://2130706433:{port}/h": "invalid_request",  # 127.0.0.1 as one decimal number
            f"http://127.1:{port}/h": "invalid_request",
            f"http://0x7f000001:{port}/h": "address_not_allowed",  # not numeric to aiohttp: the resolver's check
            f"http://0177.0.0.1:{port}/h": "invalid_request",  # octal
            f"http://localhost:{port}/h": "address_not_allowed",  # a name (what `{{event.host}}` renders)
            f"http://[::1]:{v6.port}/h": "address_not_allowed",
            f"http://[::ffff:127.0.0.1]:{port}/h": "address_not_allowed",  # IPv4-mapped IPv6
            "http://169.254.169.254/latest/meta-data/": "address_not_allowed",  # cloud metadata
            "http://[fd00:ec2::254]/latest/meta-data/": "address_not_allowed",  # AWS metadata over IPv6
            "http://10.0.0.1/": "address_not_allowed",
            "http://100.100.100.200/latest/meta-data/": "address_not_allowed",  # Alibaba Cloud metadata (CGNAT)
        }
        actions = {url: hook(f"n{i}", url, clock) for i, url in enumerate(refusals)}
        async with running_connectors(redis_client, fast_settings(merchant), clock):
            await put_actions(redis_client, list(actions.values()))
            final = await wait_all(redis_client, list(actions.values()), {"dead"}, timeout_s=10)
        reasons = {url: status["reason"] for url, status in zip(actions, final, strict=True)}
        assert reasons == refusals
        assert all(status["attempts"] == 1 for status in final)  # refused at once, never retried
        assert merchant.requests == [] and v6.requests == []
    finally:
        await v6.close()


async def test_the_allow_list_names_a_host_with_its_port(
    redis_client: aioredis.Redis, merchant: FakeMerchant, other: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: an allow-list entry matched the host on any port (`127.0.0.1` opened Redis on 6379 too)."""
    listed = hook("a1", merchant.url("/hooks"), clock)
    other_port = hook("a2", other.url("/hooks"), clock)
    settings = fast_settings(merchant, webhook_allowed_hosts=allow(merchant))
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [listed, other_port])
        await wait_status(redis_client, listed, {"delivered"})
        await wait_status(redis_client, other_port, {"dead"}, reason="host_not_allowed")
    bare = hook("a3", merchant.url("/hooks"), clock)
    bare_settings = fast_settings(merchant, webhook_allowed_hosts=parse_allowed_hosts("127.0.0.1"))
    async with running_connectors(redis_client, bare_settings, clock):
        await put_actions(redis_client, [bare])
        # A bare entry means ports 80 and 443, not every port.
        await wait_status(redis_client, bare, {"dead"}, reason="host_not_allowed")
    assert len(merchant.requests) == 1 and other.requests == []


async def test_a_redirect_is_not_followed_by_default(
    redis_client: aioredis.Redis, merchant: FakeMerchant, other: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: an allowed receiver answering 307 sent the POST (and its reply) to an address not allowed."""
    merchant.script.append(f"307:{other.url('/internal')}")
    action = hook("r1", merchant.url("/hooks"), clock)
    async with running_connectors(redis_client, fast_settings(merchant, webhook_allowed_hosts=allow(merchant)), clock):
        await put_actions(redis_client, [action])
        await wait_status(redis_client, action, {"dead"}, reason="redirect_not_followed")
    assert len(merchant.requests) == 1 and other.requests == []


async def test_followed_redirects_are_checked_like_the_first_url(
    redis_client: aioredis.Redis, merchant: FakeMerchant, other: FakeMerchant, clock: ManualClock
) -> None:
    other.webhook_secret = "hook-secret"
    to_unlisted = hook("f1", merchant.url("/a"), clock)
    to_metadata = hook("f2", merchant.url("/b"), clock)
    to_listed = hook("f3", merchant.url("/c"), clock)
    see_other = hook("f4", merchant.url("/d"), clock)
    merchant.script.extend(
        [
            f"307:http://localhost:{other.port}/x",  # another name for loopback, not listed
            "308:http://169.254.169.254/latest/meta-data/",
            f"308:{other.url('/moved')}",
            f"303:{other.url('/see-other')}",  # would turn the POST into a GET: never followed
        ]
    )
    settings = fast_settings(merchant, webhook_allowed_hosts=allow(merchant), webhook_max_redirects=2)
    async with running_connectors(redis_client, settings, clock):
        for action in (to_unlisted, to_metadata):
            await put_actions(redis_client, [action])
            await wait_status(redis_client, action, {"dead"}, reason="host_not_allowed")
        assert other.requests == []
        # Listing the target lets the redirect through, signed as the first request was.
        listed = msgspec.structs.replace(settings, webhook_allowed_hosts=allow(merchant, other))
    async with running_connectors(redis_client, listed, clock):
        await put_actions(redis_client, [to_listed])
        await wait_status(redis_client, to_listed, {"delivered"})
        await put_actions(redis_client, [see_other])
        await wait_status(redis_client, see_other, {"dead"}, reason="redirect_not_followed")
    assert [request.path for request in other.requests] == ["/moved"]
    assert other.outcomes["ok"] == 1  # the signature verified at the redirect's target


async def test_rule_headers_cannot_set_host_or_framing(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: a rule's `Host` reached the receiver (another virtual host than the one checked), and
    `Transfer-Encoding` / `Content-Length` could split the request."""
    headers = {
        "Host": "metadata.google.internal",
        "Transfer-Encoding": "chunked",
        "Content-Length": "0",
        "Connection": "upgrade",
        "X-Tenant": "shop-1",
    }
    action = hook("h1", merchant.url("/hooks"), clock, headers=headers, body={"sku": "A1"})
    async with running_connectors(redis_client, fast_settings(merchant, webhook_allowed_hosts=allow(merchant)), clock):
        await put_actions(redis_client, [action])
        await wait_status(redis_client, action, {"delivered"})
    (request,) = merchant.requests
    assert request.headers["Host"] == f"127.0.0.1:{merchant.port}"
    assert "Transfer-Encoding" not in request.headers
    assert int(request.headers["Content-Length"]) == len(json.dumps(request.body, separators=(",", ":")))
    assert request.headers["X-Tenant"] == "shop-1" and request.body["data"] == {"sku": "A1"}


async def test_a_crlf_in_a_rule_header_is_dead_at_once(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: aiohttp raised ValueError outside the connector error path; the action stayed `delivering`,
    was retried every lease for ever, and never reached dead letters (finding 7)."""
    action = hook("c1", merchant.url("/hooks"), clock, headers={"X-Tenant": "shop\r\nX-Injected: 1"})
    async with running_connectors(redis_client, fast_settings(merchant, webhook_allowed_hosts=allow(merchant)), clock):
        await put_actions(redis_client, [action])
        dead = await wait_status(redis_client, action, {"dead"}, reason="invalid_request")
    assert dead["attempts"] == 1 and merchant.requests == []


async def test_the_ledger_keeps_only_an_excerpt_of_a_webhook_reply(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: up to 2,000 characters of whatever the URL answered were readable through GET /v1/actions."""
    merchant.script.append("text:10000")
    action = hook("e1", merchant.url("/hooks"), clock)
    async with running_connectors(redis_client, fast_settings(merchant, webhook_allowed_hosts=allow(merchant)), clock):
        await put_actions(redis_client, [action])
        delivered = await wait_status(redis_client, action, {"delivered"})
    assert delivered["reply"] == {"http_status": 200, "excerpt": "x" * 200}


async def test_the_resolver_returns_only_addresses_that_may_be_called() -> None:
    """What aiohttp connects to is what the resolver returned: a checked address, not a second lookup."""
    with pytest.raises(RefusedAddress, match=r"127\.0\.0\.1"):
        await GuardedResolver(WebhookTargets()).resolve("localhost", 8080, socket.AF_INET)
    listed = GuardedResolver(WebhookTargets(parse_allowed_hosts("127.0.0.1:8080")))
    assert [entry["host"] for entry in await listed.resolve("localhost", 8080, socket.AF_INET)] == ["127.0.0.1"]
    with pytest.raises(RefusedAddress):
        await listed.resolve("localhost", 8081, socket.AF_INET)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # shared address space (CGNAT)
        ("169.254.169.254", False),  # AWS, GCP and Azure metadata
        ("192.0.0.192", False),  # Oracle Cloud metadata
        ("224.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("::ffff:127.0.0.1", False),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_allow_list_entries() -> None:
    entries = parse_allowed_hosts("Hooks.Example.com, 127.0.0.1:8080, [::1]:9000, [::1], 10.1.0.5/16:*, crm.:443")
    assert entries == {
        AllowedHost("hooks.example.com", frozenset({80, 443})),
        AllowedHost("127.0.0.1", frozenset({8080})),
        AllowedHost("::1", frozenset({9000})),
        AllowedHost("::1", frozenset({80, 443})),
        AllowedHost("10.1.0.0/16", None),
        AllowedHost("crm", frozenset({443})),
    }
    for bad in ("2130706433", "127.1:80", "host:0", "host:http", "[::1", "bad host", "a:b:c:d:e:f:g:h:i"):
        with pytest.raises(ValidationError) as caught:
            ConnectorSettings.from_env({"BEACON_WEBHOOK_ALLOWED_HOSTS": bad})
        assert caught.value.path == "BEACON_WEBHOOK_ALLOWED_HOSTS", bad
