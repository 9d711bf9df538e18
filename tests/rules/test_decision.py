"""The pure arbitration decision, table by table: every rule kind and how they interact."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rules.decision import (
    Contact,
    Decision,
    Peer,
    SendRequest,
    Suppressed,
    UserState,
    decide,
)
from rules.policy import Policy

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)  # 13:00 in London, 14:00 in Paris
REACHABLE = {"email": "ada@example.com", "device_tokens": ["tok-1"], "timezone": "Europe/London"}


def request(**changes: Any) -> SendRequest:
    base = SendRequest(
        key="m1", user_id="ada", channels=("push", "email"), category="promotional",
        priority=50, requested_at=NOW, journey="welcome", template="hello", tags=("onboarding",),
    )  # fmt: skip
    return replace(base, **changes)


def state(**changes: Any) -> UserState:
    return replace(UserState(traits=REACHABLE), **changes)


def policy(**data: Any) -> Policy:
    return Policy.model_validate({"conflicts": {"windows": {"promotional": 0, "service": 0}},
                                  **data})  # fmt: skip


def sent(minutes_ago: float, channel: str = "push", **changes: Any) -> Contact:
    base = Contact(key=f"c{minutes_ago}{channel}", channel=channel, category="promotional",
                   sent_at=NOW - timedelta(minutes=minutes_ago), journey="other")  # fmt: skip
    return replace(base, **changes)


def outcome(decision: Decision) -> tuple[str, str | None]:
    return decision.action, decision.channel


# ---- channels, reachability, consent, suppression -------------------------------


@pytest.mark.parametrize(
    ("traits", "suppressions", "req", "expected", "why"),
    [
        (REACHABLE, [], {}, ("send", "push"), "channel push: allowed"),
        (
            {**REACHABLE, "device_tokens": []},
            [],
            {},
            ("send", "email"),
            "not reachable: the profile has no device_tokens",
        ),
        ({"timezone": "UTC"}, [], {}, ("suppress", None), "no email"),
        (
            {**REACHABLE, "consent": {"push": False}},
            [],
            {},
            ("send", "email"),
            "no consent for promotional push",
        ),
        (
            {**REACHABLE, "consent": {"push": {"promotional": False}, "email": False}},
            [],
            {},
            ("suppress", None),
            "no consent for promotional email",
        ),
        (
            {**REACHABLE, "consent": {"push": {"promotional": False}}},
            [],
            {"category": "service"},
            ("send", "push"),
            "channel push: allowed",
        ),
        (
            REACHABLE,
            [Suppressed("unsubscribe", "push", "promotional")],
            {},
            ("send", "email"),
            "unsubscribed from promotional push",
        ),
        (
            REACHABLE,
            [Suppressed("unsubscribe", "push", "promotional")],
            {"category": "service"},
            ("send", "push"),
            "allowed",
        ),
        (
            REACHABLE,
            [Suppressed("bounce", "push")],
            {"category": "transactional"},
            ("send", "email"),
            "suppressed: bounce",
        ),
        (
            {**REACHABLE, "do_not_contact": True},
            [],
            {"category": "transactional"},
            ("suppress", None),
            "suppressed: do_not_contact",
        ),
        (
            REACHABLE,
            [Suppressed("unsubscribe")],
            {"category": "transactional"},
            ("send", "push"),
            "allowed",
        ),  # unsubscribing does not stop receipts
    ],
)
def test_channel_checks(
    traits: dict[str, Any],
    suppressions: list[Suppressed],
    req: dict[str, Any],
    expected: tuple[str, str | None],
    why: str,
) -> None:
    decision = decide(request(**req), state(traits=traits, suppressions=suppressions),
                      policy(), NOW)  # fmt: skip
    assert outcome(decision) == expected
    assert why in " | ".join(f"{c.rule}: {c.detail}" for c in decision.checks)


def test_opt_in_channels_need_an_explicit_yes() -> None:
    strict = policy(consent={"channels": {"push": "opt_in"}})
    assert outcome(decide(request(), state(), strict, NOW)) == ("send", "email")
    yes = state(traits={**REACHABLE, "consent": {"push": True}})
    assert outcome(decide(request(), yes, strict, NOW)) == ("send", "push")


def test_transactional_obeys_only_the_listed_hard_suppressions() -> None:
    lenient = policy(suppression={"transactional_obeys": ["bounce"]})
    dnc = state(traits={**REACHABLE, "do_not_contact": True})
    assert outcome(decide(request(category="transactional"), dnc, lenient, NOW)) == (
        "send", "push")  # fmt: skip
    assert outcome(decide(request(), dnc, lenient, NOW)) == ("suppress", None)


# ---- caps ----------------------------------------------------------------------

WEEKLY = {"caps": [{"name": "promo_week", "max": 2, "window": "7d", "category": "promotional"}]}


@pytest.mark.parametrize(
    ("contacts", "expected"),
    [
        ([sent(60)], ("send", "push")),
        ([sent(60), sent(120)], ("suppress", None)),
        # the window is rolling: a contact exactly 7 days old no longer counts
        ([sent(60), sent(7 * 24 * 60)], ("send", "push")),
        ([sent(60), sent(7 * 24 * 60 - 1)], ("suppress", None)),
        # other categories and transactional messages do not count
        (
            [sent(60), sent(30, category="service"), sent(10, category="transactional")],
            ("send", "push"),
        ),
    ],
)
def test_caps_over_rolling_windows(
    contacts: list[Contact], expected: tuple[str, str | None]
) -> None:
    assert outcome(decide(request(), state(contacts=contacts), policy(**WEEKLY), NOW)) == expected


def test_channel_caps_fall_back_to_another_channel() -> None:
    caps = {
        "caps": [
            {"name": "push_day", "max": 1, "window": "24h", "channel": "push"},
            {"name": "email_week", "max": 3, "window": "7d", "channel": "email"},
        ]
    }
    contacts = [sent(30, "push")]
    decision = decide(request(), state(contacts=contacts), policy(**caps), NOW)
    assert outcome(decision) == ("send", "email")
    assert any("cap push_day reached (1 per 1d)" in c.detail for c in decision.checks)
    contacts += [sent(60 * 24 * i, "email") for i in (1, 2, 3)]
    assert outcome(decide(request(), state(contacts=contacts), policy(**caps), NOW)) == (
        "suppress", None)  # fmt: skip


def test_transactional_is_exempt_but_counted_where_a_cap_says_so() -> None:
    caps = {"caps": [{"name": "all_day", "max": 1, "window": "24h", "counts_transactional": True}]}
    receipt = sent(10, category="transactional")
    assert outcome(decide(request(category="transactional"), state(contacts=[receipt]),
                          policy(**caps), NOW)) == ("send", "push")  # fmt: skip
    assert outcome(decide(request(), state(contacts=[receipt]), policy(**caps), NOW)) == (
        "suppress", None)  # fmt: skip


def test_capped_messages_can_wait_for_room() -> None:
    waiting = policy(**WEEKLY, on_cap="defer", max_defer="3d")
    contacts = [sent(60), sent(6 * 24 * 60)]  # the older one leaves the window in 1 day
    decision = decide(request(), state(contacts=contacts), waiting, NOW)
    assert decision.action == "defer"
    assert decision.until == NOW - timedelta(minutes=6 * 24 * 60) + timedelta(days=7)
    later = [sent(60), sent(2 * 24 * 60)]  # room only in 5 days: past max_defer
    assert decide(request(), state(contacts=later), waiting, NOW).action == "suppress"


# ---- quiet hours ---------------------------------------------------------------

NIGHTS = {"quiet_hours": [{"channels": ["push", "email"], "start": "21:00", "end": "08:00"}]}


@pytest.mark.parametrize(
    ("now", "timezone", "until"),
    [
        # 23:30 in London: quiet until 08:00 London (BST, UTC+1)
        (
            datetime(2026, 6, 10, 22, 30, tzinfo=UTC),
            "Europe/London",
            datetime(2026, 6, 11, 7, 0, tzinfo=UTC),
        ),
        # 02:00 in London, after midnight: quiet until 08:00 the same day
        (
            datetime(2026, 6, 11, 1, 0, tzinfo=UTC),
            "Europe/London",
            datetime(2026, 6, 11, 7, 0, tzinfo=UTC),
        ),
        # the night the clocks go forward: 08:00 BST is 07:00 UTC
        (
            datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
            "Europe/London",
            datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
        ),
        # the night they go back: 08:00 GMT is 08:00 UTC
        (
            datetime(2026, 10, 24, 23, 0, tzinfo=UTC),
            "Europe/London",
            datetime(2026, 10, 25, 8, 0, tzinfo=UTC),
        ),
        # 14:00 UTC is 22:00 in Singapore
        (
            datetime(2026, 6, 10, 14, 0, tzinfo=UTC),
            "Asia/Singapore",
            datetime(2026, 6, 11, 0, 0, tzinfo=UTC),
        ),
        # no timezone trait: the workspace default (UTC here)
        (datetime(2026, 6, 10, 21, 30, tzinfo=UTC), None, datetime(2026, 6, 11, 8, 0, tzinfo=UTC)),
        # outside quiet hours
        (datetime(2026, 6, 10, 12, 0, tzinfo=UTC), "Europe/London", None),
    ],
)
def test_quiet_hours_defer_to_their_local_end(
    now: datetime, timezone: str | None, until: datetime | None
) -> None:
    traits = {**REACHABLE, "timezone": timezone} if timezone else {
        k: v for k, v in REACHABLE.items() if k != "timezone"}  # fmt: skip
    decision = decide(request(requested_at=now), state(traits=traits), policy(**NIGHTS), now)
    if until is None:
        assert outcome(decision) == ("send", "push")
    else:
        assert (decision.action, decision.until) == ("defer", until)
        assert "quiet hours" in decision.reason


def test_transactional_ignores_quiet_hours_and_other_channels_keep_theirs() -> None:
    night = datetime(2026, 6, 10, 23, 0, tzinfo=UTC)
    receipt = request(category="transactional", requested_at=night)
    assert outcome(decide(receipt, state(), policy(**NIGHTS), night)) == ("send", "push")
    push_only = policy(quiet_hours=[{"channels": ["push"], "start": "21:00", "end": "08:00"}])
    assert decide(request(channels=("email",)), state(), push_only, night).action == "send"


# ---- CRM and loyalty rules -----------------------------------------------------

RULES = {
    "rules": [
        {"name": "no_discount_with_reward",
         "when": "'discount' in message.tags and user.loyalty_reward_active",
         "then": "suppress"},
        {"name": "gold_gets_email", "when": "user.loyalty_tier == 'gold' and "
         "message.category == 'promotional' and message.channel == 'push'",
         "then": {"reroute": "email"}},
        {"name": "no_cross_sell_with_ticket",
         "when": "'cross_sell' in message.tags and user.open_ticket", "then": "suppress"},
        {"name": "receipts_by_email", "when": "message.journey == 'receipts'",
         "then": {"require_channel": "email"}},
        {"name": "vip_unlimited", "when": "user.vip", "then": "exempt_from_caps"},
    ]
}  # fmt: skip


@pytest.mark.parametrize(
    ("traits", "req", "expected", "why"),
    [
        (
            {"loyalty_reward_active": True},
            {"tags": ("discount",)},
            ("suppress", None),
            "rule no_discount_with_reward: suppresses the message",
        ),
        ({"loyalty_reward_active": True}, {"tags": ("news",)}, ("send", "push"), "allowed"),
        (
            {"loyalty_tier": "gold"},
            {},
            ("send", "email"),
            "rule gold_gets_email: rerouted push, email -> email",
        ),
        ({"loyalty_tier": "gold"}, {"category": "service"}, ("send", "push"), "allowed"),
        (
            {"open_ticket": True},
            {"tags": ("cross_sell",)},
            ("suppress", None),
            "no_cross_sell_with_ticket",
        ),
        ({}, {"journey": "receipts"}, ("send", "email"), "requires email"),
        (
            {},
            {"journey": "receipts", "channels": ("push",)},
            ("suppress", None),
            "requires email, not offered",
        ),
    ],
)
def test_crm_and_loyalty_rules(
    traits: dict[str, Any], req: dict[str, Any], expected: tuple[str, str | None], why: str
) -> None:
    decision = decide(request(**req), state(traits={**REACHABLE, **traits}), policy(**RULES), NOW)
    assert outcome(decision) == expected
    assert why in " | ".join(f"{c.rule}: {c.detail}" for c in decision.checks)


def test_a_reroute_into_a_capped_channel_is_not_sent() -> None:
    rules = policy(**RULES, caps=[{"name": "email_day", "max": 1, "window": "1d",
                                   "channel": "email"}])  # fmt: skip
    gold = state(traits={**REACHABLE, "loyalty_tier": "gold"}, contacts=[sent(30, "email")])
    decision = decide(request(), gold, rules, NOW)
    assert outcome(decision) == ("suppress", None)
    assert "cap email_day reached" in decision.reason


def test_exemption_from_caps() -> None:
    rules = policy(**RULES, **WEEKLY)
    full = [sent(10), sent(20)]
    assert decide(request(), state(contacts=full), rules, NOW).action == "suppress"
    vip = state(traits={**REACHABLE, "vip": True}, contacts=full)
    assert outcome(decide(request(), vip, rules, NOW)) == ("send", "push")


# ---- cross-channel de-duplication ---------------------------------------------------


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        (sent(60, "email", content_key="hello"), ("suppress", None)),
        (sent(60, "push", content_key="hello"), ("send", "push")),  # same channel: a resend
        (sent(25 * 60, "email", content_key="hello"), ("send", "push")),  # outside 24h
        (sent(60, "email", content_key="other"), ("send", "push")),
    ],
)
def test_the_same_content_is_not_sent_on_another_channel(
    contact: Contact, expected: tuple[str, str | None]
) -> None:
    dedupe = policy(dedupe={"window": "24h"})
    decision = decide(request(channels=("push",)), state(contacts=[contact]), dedupe, NOW)
    assert outcome(decision) == expected


# ---- conflicts -------------------------------------------------------------------

WINDOWED = {"conflicts": {"windows": {"promotional": "10m", "service": "1m", "transactional": 0},
                          "losers": "suppress"}}  # fmt: skip


def test_a_request_opens_a_window_and_waits_for_it_to_close() -> None:
    decision = decide(request(), state(), Policy.model_validate(WINDOWED), NOW)
    assert (decision.action, decision.until, decision.window_end) == (
        "defer",
        NOW + timedelta(minutes=10),
        NOW + timedelta(minutes=10),
    )
    # a later request joins the open window rather than opening its own
    peer = Peer(request(key="m0"), NOW + timedelta(minutes=4))
    joined = decide(request(), state(peers=[peer]), Policy.model_validate(WINDOWED), NOW)
    assert joined.window_end == NOW + timedelta(minutes=4)


@pytest.mark.parametrize(
    ("mine", "theirs", "i_win"),
    [
        ({"priority": 80}, {"priority": 50}, True),
        ({"priority": 50}, {"priority": 80}, False),
        ({"priority": 50, "value": 3}, {"priority": 80}, True),  # 150 beats 80
        ({"priority": 50, "value": 2, "propensity": 0.5}, {"priority": 60}, False),
        # a tie goes to the earlier request
        ({"priority": 50}, {"priority": 50, "requested_at": NOW - timedelta(minutes=1)}, False),
        (
            {"priority": 50, "requested_at": NOW - timedelta(minutes=2)},
            {"priority": 50, "requested_at": NOW - timedelta(minutes=1)},
            True,
        ),
    ],
)
def test_the_highest_score_in_a_window_wins(
    mine: dict[str, Any], theirs: dict[str, Any], i_win: bool
) -> None:
    window_end = NOW
    rival = Peer(request(key="rival", journey="cart", **theirs), window_end)
    decision = decide(request(**mine), state(peers=[rival], window_end=window_end),
                      Policy.model_validate(WINDOWED), NOW)  # fmt: skip
    assert decision.action == ("send" if i_win else "suppress")
    if not i_win:
        assert "lost to cart" in decision.reason


@pytest.mark.parametrize(
    ("theirs", "traits"),
    [
        ({"channels": ("push",)}, {"email": "ada@example.com"}),  # no device tokens
        ({"channels": ("push",), "tags": ("discount",)}, REACHABLE),  # a rule stops it
    ],
    ids=["unreachable", "suppressed-by-rule"],
)
def test_a_rival_that_could_never_be_sent_does_not_win(
    theirs: dict[str, Any], traits: dict[str, Any]
) -> None:
    rules = {"rules": [{"name": "no_discounts", "when": "'discount' in message.tags",
                        "then": "suppress"}]}  # fmt: skip
    rival = Peer(request(key="rival", journey="cart", priority=99, **theirs), NOW)
    mine = request(channels=("email",), priority=10)
    decision = decide(mine, state(traits=traits, peers=[rival], window_end=NOW),
                      Policy.model_validate({**WINDOWED, **rules}), NOW)  # fmt: skip
    assert outcome(decision) == ("send", "email")


def test_losers_can_be_deferred_and_priority_rules_count() -> None:
    defer = Policy.model_validate({**WINDOWED, "conflicts": {**WINDOWED["conflicts"],
                                   "losers": "defer", "defer_losers_by": "2h"},
                                   "rules": [{"name": "boost", "when": "message.journey == 'cart'",
                                              "then": {"priority": 99}}]})  # fmt: skip
    rival = Peer(request(key="rival", journey="cart", priority=10), NOW)
    decision = decide(request(priority=90), state(peers=[rival], window_end=NOW), defer, NOW)
    assert (decision.action, decision.until) == ("defer", NOW + timedelta(hours=2))


def test_transactional_messages_are_never_held() -> None:
    rival = Peer(request(key="rival", priority=100), NOW + timedelta(minutes=3))
    receipt = request(category="transactional", priority=1)
    assert decide(receipt, state(peers=[rival]), Policy.model_validate(WINDOWED), NOW).action == (
        "send")  # fmt: skip


def test_the_same_inputs_give_the_same_decision() -> None:
    p = policy(**WEEKLY, **RULES, **NIGHTS)
    s = state(contacts=[sent(5)], traits={**REACHABLE, "loyalty_tier": "gold"})
    assert decide(request(), s, p, NOW) == decide(request(), s, p, NOW)


# ---- the one-line reason ----------------------------------------------------------

BOOST = {"name": "boost_cart", "when": "message.journey == 'cart'", "then": {"priority": 99}}


@pytest.mark.parametrize(
    ("traits", "req", "extra", "now", "reason"),
    [
        # a rule that rerouted the message is why it went out where it did
        (
            {"loyalty_tier": "gold"},
            {"channels": ("push",)},
            {},
            NOW,
            "rule gold_gets_email: rerouted push -> email",
        ),
        ({"vip": True}, {}, WEEKLY, NOW, "rule vip_unlimited: exempts the message from caps"),
        ({}, {"journey": "receipts"}, {}, NOW, "rule receipts_by_email: requires email"),
        ({}, {"journey": "cart"}, {"rules": [BOOST]}, NOW, "rule boost_cart: sets priority 99"),
        # no rule acted: the last check, as before
        ({}, {}, NIGHTS, NOW, "quiet hours: outside quiet hours"),
        ({"loyalty_tier": "gold"}, {"category": "transactional"}, {}, NOW, "channel push: allowed"),
        # a rule acted and a later check held the message: both
        (
            {"loyalty_tier": "gold"},
            {"channels": ("push",)},
            WINDOWED,
            NOW,
            "rule gold_gets_email: rerouted push -> email; "
            "conflict window: decided with other requests at 12:10:00",
        ),
        # a failed check is the reason, whatever rules did before it
        (
            {"loyalty_tier": "gold"},
            {"channels": ("push",), "requested_at": datetime(2026, 6, 10, 22, 0, tzinfo=UTC)},
            NIGHTS,
            datetime(2026, 6, 10, 22, 0, tzinfo=UTC),
            "quiet hours: email deferred until 2026-06-11T07:00:00+00:00 (user's local time)",
        ),
        (
            {"loyalty_reward_active": True},
            {"tags": ("discount",)},
            {},
            NOW,
            "rule no_discount_with_reward: suppresses the message",
        ),
    ],
)
def test_the_reason_names_the_rule_that_changed_the_outcome(
    traits: dict[str, Any], req: dict[str, Any], extra: dict[str, Any], now: datetime, reason: str
) -> None:
    rules = RULES["rules"] + extra.get("rules", [])
    p = Policy.model_validate({"conflicts": {"windows": {"promotional": 0, "service": 0}},
                               **extra, "rules": rules})  # fmt: skip
    decision = decide(request(**req), state(traits={**REACHABLE, **traits}), p, now)
    assert decision.reason == reason
