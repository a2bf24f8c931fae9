"""Fake providers on loopback: a merchant/gateway JSON API and a WeChat/WeCom API, both told how to fail.

They stand in for the external services, speak their request formats, and record what they received.
The merchant API dedupes by `Idempotency-Key` as a real one would, so `effects` counts what a key did.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

# Failure modes a test can script: "ok", "500", "503", "429:<seconds>", "timeout", "400",
# and "apply+500" / "apply+timeout" (the effect happens, then the reply fails or never comes).
# Odd replies: "<status>:<location>" for 301/302/303/307/308 (a redirect), "badutf8:<status>" (a JSON
# reply with invalid UTF-8), "text:<n>" (200 with n characters of text), "flood" (200 with FLOOD_BYTES).
HANG_S = 1.0
FLOOD_BYTES = 64 * 1024 * 1024
REDIRECTS = ("301", "302", "303", "307", "308")


@dataclass
class Request:
    """One request as the provider saw it."""

    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str]
    mode: str = "ok"


@dataclass
class FakeMerchant:
    """Coupon / points / SMS / webhook receiver: POST <any path>, deduped by Idempotency-Key."""

    fail_rate: float = 0.0  # share of requests answered 500 (half of them after applying the effect)
    timeout_rate: float = 0.0  # share of requests that never answer (half after applying the effect)
    seed: int = 7
    webhook_secret: str | None = None
    script: deque[str] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    effects: dict[str, Any] = field(default_factory=dict)
    effect_count: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    host: str = "127.0.0.1"
    flooded: int = 0  # bytes of "flood" replies written before the client stopped reading
    flood_done: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._closing = asyncio.Event()

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str) -> str:
        """Absolute URL of a path on this server."""
        assert self.server is not None
        return str(self.server.make_url(path))

    async def start(self) -> FakeMerchant:
        """Listen on `host` (127.0.0.1 unless told), a free port."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.server = TestServer(app, host=self.host)
        await self.server.start_server()
        return self

    async def close(self) -> None:
        """Release hanging requests and stop."""
        self._closing.set()
        if self.server is not None:
            await self.server.close()

    def _mode(self) -> str:
        if self.script:
            return self.script.popleft()
        roll = self._rng.random()
        apply_first = self._rng.random() < 0.5
        if roll < self.timeout_rate:
            return "apply+timeout" if apply_first else "timeout"
        if roll < self.timeout_rate + self.fail_rate:
            return "apply+500" if apply_first else "500"
        return "ok"

    def _apply(self, key: str, body: Any) -> dict[str, Any]:
        """The effect of a key happens once; a repeat gets the first result back."""
        if key not in self.effects:
            self.effects[key] = {"id": f"E{len(self.effects) + 1}", "body": body}
            self.effect_count[key] += 1
        return {"ok": True, "id": self.effects[key]["id"]}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        mode = self._mode()
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append(Request(request.path, dict(request.headers), body, dict(request.query), mode))
        if self.webhook_secret is not None and not self._signed(request, raw):
            return self._reply("bad_signature", {"error": "bad signature"}, 401)
        if not key:
            return self._reply("400", {"error": "Idempotency-Key required"}, 400)
        if mode.startswith("apply+"):
            self._apply(key, body)
            mode = mode.removeprefix("apply+")
        if mode == "timeout":
            self.outcomes["timeout"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), HANG_S)
            return web.json_response({"late": True})
        if mode.startswith("429"):
            _, _, after = mode.partition(":")
            return self._reply("429", {"error": "slow down"}, 429, {"Retry-After": after or "1"})
        if mode.startswith(REDIRECTS):
            status, _, location = mode.partition(":")
            self.outcomes[status] += 1
            return web.Response(status=int(status), headers={"Location": location})
        if mode.startswith("badutf8:"):
            status = int(mode.partition(":")[2])
            self.outcomes[mode] += 1
            raw_reply = b'{"ok": true, "note": "caf\xe9 \xff\xfe"}'
            return web.Response(body=raw_reply, status=status, content_type="application/json")
        if mode.startswith("text:"):
            self.outcomes["text"] += 1
            return web.Response(text="x" * int(mode.partition(":")[2]))
        if mode == "flood":
            return await self._flood(request)
        if mode in ("500", "503", "400"):
            return self._reply(mode, {"error": mode}, int(mode))
        return self._reply("ok", self._apply(key, body), 200)

    async def _flood(self, request: web.Request) -> web.StreamResponse:
        """A 200 whose body runs to FLOOD_BYTES unless the client stops reading first."""
        self.outcomes["flood"] += 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b"[" + b"0," * (32 * 1024 - 1)
        try:
            while self.flooded < FLOOD_BYTES:
                await response.write(chunk)
                self.flooded += len(chunk)
        except (ConnectionError, RuntimeError):  # the client closed the connection (RuntimeError: transport gone)
            pass
        finally:
            self.flood_done.set()
        return response

    def _reply(self, outcome: str, body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
        self.outcomes[outcome] += 1
        return web.json_response(body, status=status, headers=headers)

    def _signed(self, request: web.Request, raw: bytes) -> bool:
        assert self.webhook_secret is not None
        timestamp = request.headers.get("X-Beacon-Timestamp", "")
        expected = hmac.new(self.webhook_secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        return hmac.compare_digest(request.headers.get("X-Beacon-Signature", ""), f"sha256={expected}")


@dataclass
class FakeWeChat:
    """WeChat official account + mini program + WeCom: token endpoints and the message send APIs."""

    appid: str = "wx-app"
    secret: str = "wx-secret"
    corpid: str = "corp"
    corpsecret: str = "corp-secret"
    expires_in: int = 7200
    errcodes: deque[int] = field(default_factory=deque)  # scripted errcodes for the next sends
    token_fetches: int = 0
    sent: list[Request] = field(default_factory=list)  # every send with a valid token
    accepted: list[Request] = field(default_factory=list)  # the sends answered errcode 0
    valid_tokens: set[str] = field(default_factory=set)
    delay_s: float = 0.0  # how long every request waits before it is answered (a slow provider)
    arrivals: Counter[str] = field(default_factory=Counter)  # requests per path, counted as they arrive
    server: TestServer | None = None

    def url(self, path: str = "") -> str:
        """Absolute URL of a path (the API base when empty)."""
        assert self.server is not None
        return str(self.server.make_url(path)).rstrip("/")

    async def start(self) -> FakeWeChat:
        """Listen on 127.0.0.1, a free port."""
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._token)
        app.router.add_get("/cgi-bin/gettoken", self._wecom_token)
        for path in (
            "/cgi-bin/message/template/send",
            "/cgi-bin/message/custom/send",
            "/cgi-bin/message/subscribe/send",
            "/cgi-bin/message/send",
        ):
            app.router.add_post(path, self._send)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        """Stop."""
        if self.server is not None:
            await self.server.close()

    def revoke_tokens(self) -> None:
        """Every issued token stops working (another client refreshed it, or WeChat expired it early)."""
        self.valid_tokens.clear()

    def _issue(self) -> str:
        self.token_fetches += 1
        token = f"TOKEN-{self.token_fetches}"
        self.valid_tokens.add(token)
        return token

    async def _arrive(self, request: web.Request) -> None:
        self.arrivals[request.path] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    async def _token(self, request: web.Request) -> web.Response:
        await self._arrive(request)
        query = request.query
        if query.get("grant_type") != "client_credential":
            return web.json_response({"errcode": 40002, "errmsg": "invalid grant_type"})
        if (query.get("appid"), query.get("secret")) != (self.appid, self.secret):
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        return web.json_response({"access_token": self._issue(), "expires_in": self.expires_in})

    async def _wecom_token(self, request: web.Request) -> web.Response:
        await self._arrive(request)
        if (request.query.get("corpid"), request.query.get("corpsecret")) != (self.corpid, self.corpsecret):
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "access_token": self._issue(), "expires_in": self.expires_in}
        )

    async def _send(self, request: web.Request) -> web.Response:
        await self._arrive(request)
        body = await request.json()
        if request.query.get("access_token") not in self.valid_tokens:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
        self.sent.append(Request(request.path, dict(request.headers), body, dict(request.query)))
        if self.errcodes:
            code = self.errcodes.popleft()
            if code != 0:
                return web.json_response({"errcode": code, "errmsg": f"scripted {code}"})
        self.accepted.append(self.sent[-1])
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": len(self.sent)})

    def bodies(self, path: str) -> list[Any]:
        """Bodies of the sends answered errcode 0 on one API path."""
        return [request.body for request in self.accepted if request.path == path]
