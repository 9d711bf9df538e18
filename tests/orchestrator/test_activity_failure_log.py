"""A failed delivery attempt is one log line, not a traceback per retry."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import StackFactory
from tests.support.receiver import Receiver, Script
from tests.workflows.test_delivery import ONE_SEND, LosesTheFirstAnswer

SDK_LOGGER = "temporalio.activity"


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SDK_LOGGER and r.levelno == logging.WARNING]


async def test_a_failed_delivery_attempt_is_one_line(
    make_stack: StackFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # as `orchestrator worker` logs
    receiver.script("/email", Script(503), Script(503))
    stack = await make_stack({"once": ONE_SEND})
    await stack.track("u1", "Signed Up")
    assert (await stack.result("once", "u1")).messages_sent == 1
    first, second = failures(caplog)
    assert first.getMessage() == (
        "send_message failed (attempt 1, workflow journey:once:u1): RetryableDeliveryError: "
        f'{receiver.url}/email answered 503: {{"error":"scripted"}}'
    )
    assert "(attempt 2, " in second.getMessage()
    assert "Traceback" not in caplog.text
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in (first, second))


async def test_a_refused_message_says_it_is_not_retried(
    make_stack: StackFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # as `orchestrator dev` logs
    receiver.script("/email", Script(400))
    stack = await make_stack({"once": ONE_SEND})
    await stack.track("u1", "Signed Up")
    await stack.result("once", "u1")
    [refused] = failures(caplog)
    assert refused.getMessage().startswith(
        "send_message failed (attempt 1, workflow journey:once:u1): PermanentDeliveryError: "
    )
    assert refused.getMessage().endswith("; not retried")
    assert "Traceback" not in caplog.text


async def test_debug_logging_keeps_the_traceback(
    make_stack: StackFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=SDK_LOGGER)
    receiver.script("/email", Script(503))
    stack = await make_stack({"once": ONE_SEND})
    await stack.track("u1", "Signed Up")
    await stack.result("once", "u1")
    [failed] = failures(caplog)
    assert failed.exc_info is not None
    assert "answered 503" in caplog.text
    assert "Traceback (most recent call last)" in caplog.text


async def test_an_unexpected_error_keeps_its_traceback(
    make_stack: StackFactory, engine: object, caplog: pytest.LogCaptureFixture
) -> None:
    # Not a failure we raise on purpose, so most likely a bug: the traceback helps.
    caplog.set_level(logging.INFO)
    store = LosesTheFirstAnswer(engine)
    stack = await make_stack({"once": ONE_SEND}, store=store)
    await stack.track("u1", "Signed Up")
    await stack.result("once", "u1")
    [crashed] = failures(caplog)
    assert crashed.getMessage().startswith("Completing activity as failed")
    assert "ConnectionError: worker lost its connection" in caplog.text
    assert "Traceback (most recent call last)" in caplog.text
