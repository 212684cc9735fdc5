"""The customers of the fault suite and the way their webhooks reach Loket.

``Front`` plays the provider's side of a webhook: it posts to a random web process that is up and tries
again (another process, after a short pause) until one answers 200, as Telegram and Twilio retry. One
``aiohttp`` session with keep-alive connections and a semaphore bound the load the driver itself makes.

A customer writes ``m <tag>-<i>``; the fault suite's echo step answers ``echo <tag>-<i>``, so every reply can be
traced at the fakes to the message it answers and its place in the conversation.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import aiohttp

from tests.fakes.telegram import FakeTelegram
from tests.fakes.twilio import FakeTwilio

Webhook = tuple[str, bytes, dict[str, str]]  # (path, body, headers)


class WebhookRefused(AssertionError):
    """Loket answered a webhook with a 4xx: a bug in the driver or in Loket, never a fault to ride out."""


class Front:
    def __init__(self, ports: Callable[[], list[int]], *, concurrency: int = 48, seed: int = 11) -> None:
        self.ports = ports
        self.rng = random.Random(seed)
        self.limit = asyncio.Semaphore(concurrency)
        self.session: aiohttp.ClientSession | None = None
        self.posts = 0  # webhooks delivered (answered 200)
        self.attempts = 0  # HTTP attempts it took
        self.closed = False

    async def __aenter__(self) -> Front:
        connector = aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=5, sock_read=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True  # callbacks still retrying give up quietly: the test is over
        if self.session is not None:
            await self.session.close()

    async def post(self, hook: Webhook, deadline: float) -> None:
        path, body, headers = hook
        assert self.session is not None
        while time.monotonic() < deadline:
            if self.closed:
                return
            ports = self.ports()
            if ports:
                self.attempts += 1
                url = f"http://127.0.0.1:{self.rng.choice(ports)}{path}"
                try:
                    async with self.limit, self.session.post(url, data=body, headers=headers) as resp:
                        answer = await resp.read()
                        if resp.status == 200:
                            self.posts += 1
                            return
                        if 400 <= resp.status < 500:  # the request itself is wrong: retrying cannot help
                            raise WebhookRefused(f"{path} answered {resp.status}: {answer[:300]!r}")
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                except RuntimeError:  # "Session is closed": the test ended while a callback was retrying
                    if self.closed:
                        return
                    raise
            await asyncio.sleep(0.05 + self.rng.random() * 0.1)
        raise AssertionError(f"a webhook to {path} was not answered 200 before the deadline")

    async def deliver(self, hook: Webhook, times: int, deadline: float) -> None:
        """The same webhook ``times`` times at once (to random web processes): copies racing each other."""
        await asyncio.gather(*(self.post(hook, deadline) for _ in range(times)))

    async def redeliver(self, hook: Webhook, times: int, deadline: float) -> None:
        """The same webhook ``times`` times, each after the one before was answered: a provider retrying."""
        for _ in range(times):
            await self.post(hook, deadline)


@dataclass
class Customer:
    channel: str  # telegram | whatsapp
    address: str  # the chat id, or the E.164 phone number
    tag: str

    @property
    def conversation(self) -> str:
        return f"{self.channel}:{self.address}"

    def text(self, i: int) -> str:
        return f"m {self.tag}-{i}"

    def reply(self, i: int) -> str:
        return f"echo {self.tag}-{i}"


class Customers:
    """Telegram chats and WhatsApp numbers, and the signed webhooks their messages arrive as."""

    def __init__(self, tg: FakeTelegram, tw: FakeTwilio, *, public_url: str, telegram_secret: str) -> None:
        self.tg = tg
        self.tw = tw
        self.public_url = public_url.rstrip("/")
        self.telegram_secret = telegram_secret

    def make(self, telegram: int, whatsapp: int) -> list[Customer]:
        people = []
        for i in range(telegram):
            chat = 700_000 + i
            self.tg.add_chat(chat, first_name=f"T{i}")
            people.append(Customer("telegram", str(chat), f"t{i}"))
        for i in range(whatsapp):
            people.append(Customer("whatsapp", f"+62812{i:07d}", f"w{i}"))
        return people

    def webhook(self, who: Customer, i: int) -> Webhook:
        if who.channel == "telegram":
            update = self.tg.user_message(int(who.address), who.text(i))
            return "/webhooks/telegram", json.dumps(update).encode(), {
                "Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": self.telegram_secret}
        sender = "whatsapp:" + who.address
        params = self.tw.inbound_params(sender, who.text(i), profile_name=f"W {who.tag}")
        self.tw.last_inbound[sender] = self.tw.clock.now()  # the 24-hour window opens, as at Twilio
        return self.signed_form("/webhooks/twilio/whatsapp", params)

    def signed_form(self, path: str, params: list[tuple[str, str]]) -> Webhook:
        return path, urlencode(params).encode(), {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": self.tw.sign(self.public_url + path, params)}

    def callback_route(self, front: Front, times: int, deadline: Callable[[], float]
                       ) -> Callable[[str, list[tuple[str, str]]], Awaitable[None]]:
        """How the Twilio fake's status callbacks reach Loket: signed for the public URL, delivered ``times``
        times to random web processes, one after the other as Twilio retries a callback (the inbound
        messages' copies race each other instead)."""

        async def deliver(url: str, params: list[tuple[str, str]]) -> None:
            path = urlsplit(url).path
            await front.redeliver(self.signed_form(path, params), times, deadline())

        return deliver


def sent_at_fakes(tg: FakeTelegram, tw: FakeTwilio) -> list[tuple[str, str]]:
    """Every message the fakes accepted, in order: (conversation, text)."""
    out = [(f"telegram:{m.chat_id}", m.text or "") for m in tg.sent]
    out += [(f"whatsapp:{(m.to or '').removeprefix('whatsapp:')}", m.body or "") for m in tw.messages]
    return out
