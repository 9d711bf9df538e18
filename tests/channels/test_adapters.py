"""Email and push adapters against a real HTTP server that checks our signatures with
the reference Standard Webhooks library; every failure class of delivery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.adapters import ChannelDeps, EmailChannel, PushChannel
from channels.base import DeliveryRequest, PermanentDeliveryError, RetryableDeliveryError
from channels.delivery import RateLimit, SignedPoster
from channels.templates import RenderError, Template
from channels.unsubscribe import InvalidLink, Unsubscribe, UnsubscribeLinks
from orchestrator.inbox import PostgresMessageBox
from orchestrator.stack.processes import free_port
from tests.support.receiver import Receiver, Script, running_receiver
from tests.support.workspace import SECRETS
from workflows.activities import _failure

LINKS = UnsubscribeLinks(base_url="https://api.example.com", secret=SECRETS["links"])
USER = {"id": "u1", "first_name": "Ada", "email": "ada@example.com", "device_tokens": ["tok-1"]}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def poster(http: httpx.AsyncClient, url: str, *secrets: str, **options: Any) -> SignedPoster:
    return SignedPoster(url=url, secrets=list(secrets), client=http, **options)


def deps(engine: AsyncEngine) -> ChannelDeps:
    return ChannelDeps(links=LINKS, box=PostgresMessageBox(engine))


def request(channel: str, fields: dict[str, Any], **extra: Any) -> DeliveryRequest:
    section = Template.model_validate({channel: fields}).fields(channel)
    return DeliveryRequest(
        message_id=extra.pop("message_id", "msg-1"),
        user_id="u1",
        fields=section,
        context={"user": USER, "event": {"properties": {"total": 12}}, "journey": {}},
        metadata={"journey": "j", "step": "s", "category": "promotional"},
        **extra,
    )


EMAIL = {
    "subject": "Hi {{ user.first_name }},\nyour cart",
    "html": "<p>{{ user.first_name }}</p><a href='{{ unsubscribe_url }}'>unsubscribe</a>",
    "text": "Total {{ event.properties.total }}",
    "from_name": "Northwind",
    "reply_to": "help@example.com",
}


async def test_email_is_signed_idempotent_and_carries_a_one_click_unsubscribe(
    receiver: Receiver, engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    email = EmailChannel(
        poster=poster(http, f"{receiver.url}/email", SECRETS["email"]), deps=deps(engine)
    )
    rendered = await email.build(request("email", EMAIL))
    receipt = await email.deliver(rendered, idempotency_key="msg-1")
    [got] = receiver.requests
    assert got.verified
    assert (got.msg_id, got.headers["idempotency-key"]) == ("msg-1", "msg-1")
    assert (receipt.status_code, receipt.provider_message_id) == (200, "provider-1")
    data = got.json["data"]
    assert got.json["type"] == "message.email"
    assert data["recipient"] == {
        "user_id": "u1", "email": "ada@example.com", "device_tokens": ["tok-1"],
    }  # fmt: skip
    content = data["content"]
    assert content["subject"] == "Hi Ada, your cart"  # one line: no header injection
    assert content["text"] == "Total 12"
    headers = content["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"].strip("<>")
    assert url == content["unsubscribe_url"]
    assert f"href='{url}'" in content["html"]
    token = url.removeprefix("https://api.example.com/v1/unsubscribe/")
    assert LINKS.read(token) == Unsubscribe("u1", "email", "promotional", "msg-1")
    with pytest.raises(InvalidLink):
        LINKS.read(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))


@pytest.mark.parametrize(
    "address", ["ada@example.com\r\nBcc: all@example.com", "a@b.com, c@d.com", ["a@b.com"]]
)
async def test_an_email_trait_that_is_not_one_address_never_reaches_the_provider(
    receiver: Receiver, engine: AsyncEngine, http: httpx.AsyncClient, address: Any
) -> None:
    email = EmailChannel(
        poster=poster(http, f"{receiver.url}/email", SECRETS["email"]), deps=deps(engine)
    )
    bad = request("email", EMAIL)
    context = {**bad.context, "user": {**USER, "email": address}}
    with pytest.raises(RenderError, match="not one address"):
        await email.build(bad.model_copy(update={"context": context}))
    assert receiver.requests == []


async def test_push_goes_to_the_device_tokens_within_its_limits(
    receiver: Receiver, engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    push = PushChannel(
        poster=poster(http, f"{receiver.url}/push", SECRETS["push"]), deps=deps(engine)
    )
    fields = {
        "title": "{{ user.first_name }} " + "x" * 80,
        "body": "Your total is {{ event.properties.total }}",
        "deep_link": "northwind://cart",
        "data": {"total": "{{ event.properties.total }}"},
    }
    rendered = await push.build(request("push", fields))
    await push.deliver(rendered, idempotency_key="msg-1")
    [got] = receiver.requests
    assert got.verified
    content = got.json["data"]["content"]
    assert len(content["title"]) == 65
    assert content["title"].endswith("…")
    assert content["data"] == {"total": "12"}
    assert got.json["data"]["recipient"]["device_tokens"] == ["tok-1"]
    # a payload over 4 KB once rendered with this user's data fails the message
    big = {**fields, "data": {"blob": "{{ 'y' * 5000 }}"}}
    with pytest.raises(RenderError, match="4096"):
        await push.build(request("push", big))


async def test_secret_rotation_signs_with_both_so_either_receiver_accepts(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    old, new = SECRETS["email"], SECRETS["links"]
    for known in (old, new):
        async with running_receiver({"email": known}) as receiving:
            email = EmailChannel(
                poster=poster(http, f"{receiving.url}/email", new, old), deps=deps(engine)
            )
            await email.deliver(await email.build(request("email", EMAIL)), idempotency_key="m")
            assert [r.verified for r in receiving.requests] == [True]


@pytest.mark.parametrize(
    ("script", "error", "retry_after"),
    [
        (Script(503), RetryableDeliveryError, None),
        (Script(500), RetryableDeliveryError, None),
        (Script(429, headers={"retry-after": "7"}), RetryableDeliveryError, 7.0),
        (Script(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),
         RetryableDeliveryError, 0.0),  # a date in the past: retry now
        (Script(200, delay=1.0), RetryableDeliveryError, None),  # our 0.2 s timeout
        (Script(400), PermanentDeliveryError, None),
        (Script(422), PermanentDeliveryError, None),
    ],
)  # fmt: skip
async def test_each_failure_is_classified_for_the_retry_policy(
    receiver: Receiver,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    script: Script,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    receiver.script("/email", script)
    email = EmailChannel(
        poster=poster(http, f"{receiver.url}/email", SECRETS["email"], timeout=0.2),
        deps=deps(engine),
    )
    rendered = await email.build(request("email", EMAIL))
    with pytest.raises(error) as raised:
        await email.deliver(rendered, idempotency_key="msg-1")
    failure = _failure(raised.value)  # type: ignore[arg-type]
    if error is PermanentDeliveryError:
        # no retry, and the provider's reason is kept for the message
        assert failure.non_retryable
        assert f"answered {script.status}" in str(raised.value)
        assert "scripted" in str(raised.value)
    else:
        assert not failure.non_retryable
        assert getattr(raised.value, "retry_after", None) == retry_after
        delay = failure.next_retry_delay
        assert (delay.total_seconds() if delay is not None else None) == retry_after


async def test_an_unreachable_provider_is_retryable(
    engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    email = EmailChannel(
        poster=poster(http, f"http://127.0.0.1:{free_port()}/email", SECRETS["email"]),
        deps=deps(engine),
    )
    with pytest.raises(RetryableDeliveryError, match="could not reach"):
        await email.deliver(await email.build(request("email", EMAIL)), idempotency_key="m")


async def test_the_provider_rate_limit_paces_deliveries(
    receiver: Receiver, engine: AsyncEngine, http: httpx.AsyncClient
) -> None:
    limit = RateLimit(per_second=10, burst=2)
    email = EmailChannel(
        poster=poster(http, f"{receiver.url}/email", SECRETS["email"], rate_limit=limit),
        deps=deps(engine),
    )
    rendered = [await email.build(request("email", EMAIL, message_id=f"m{i}")) for i in range(7)]
    await asyncio.gather(*(email.deliver(r, idempotency_key=r.message_id) for r in rendered))
    arrivals = sorted(r.at for r in receiver.requests)
    # two at once (the burst), then one every 100 ms: at least 0.5 s for the last five
    assert len(arrivals) == 7
    assert arrivals[-1] - arrivals[0] >= 0.45
    with pytest.raises(ValueError, match="per_second"):
        RateLimit(per_second=0)


WRONG_SHAPES = [b"[1, 2, 3]", b"xx", b'["a", "email", "*"]', b'{"user": "a"}',
                b'["a\\u0000", "email", "*", "m"]']  # fmt: skip


@pytest.mark.parametrize("payload", WRONG_SHAPES)
def test_a_signed_link_of_the_wrong_shape_is_refused(payload: bytes) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    token = f"{b64(payload)}.{b64(LINKS._mac(payload))}"  # as if the secret had leaked
    with pytest.raises(InvalidLink, match="malformed"):
        LINKS.read(token)
