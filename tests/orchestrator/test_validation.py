"""Every kind of journey problem is reported at its file, line and column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.deploy import deploy_workspace
from orchestrator.sources import InvalidSource, load
from orchestrator.validation import check_files, check_journey, check_workspace
from orchestrator.workspace import load_workspace
from tests.support.db import count
from tests.support.workspace import write_workspace

VALID = """\
journey: welcome
name: Welcome
trigger:
  event: Signed Up
  when: user.country == 'GB'
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: pause
  pause:
    wait: 2h
    next: done
  done:
    exit: {}
"""


@pytest.fixture
def workspace(tmp_path: Path):
    root = write_workspace(
        tmp_path / "ws",
        receiver_url="http://127.0.0.1:9",
        journeys={"welcome": VALID},
        templates={
            "hello": """
                email:
                  subject: "Hi {{ user.first_name }}"
                  text: "Hello"
            """,
            "broken": """
                email:
                  subject: "Hi {{ user.first_name }"
                  text: "x"
            """,
            "crashes": """
                push:
                  title: "Hi"
                  body: |
                    Line one
                    {{ user.first_name * 3 + 1 }}
            """,
        },
        channels=("email", "push"),
    )
    return root


def problems_for(workspace: Path, text: str) -> list[tuple[int, int, str]]:
    path = workspace / "journeys" / "case.yaml"
    path.write_text(textwrap.dedent(text))
    found = check_files([path], load_workspace(workspace))
    return [(p.line, p.col, f"{p.file}: {p.path}: {p.message}") for p in found]


def test_the_valid_journey_has_no_problems(workspace: Path) -> None:
    assert problems_for(workspace, VALID) == []


CASES = [
    pytest.param(
        VALID.replace(
            "start: hello\n", "exit_on:\n  - {event: Stop, any_instance: true}\nstart: hello\n"
        ),
        [(7, 33, "exit_on.0.any_instance: `any_instance` needs a keyed journey (`instance:`)")],
        id="any-instance-unkeyed",
    ),
    pytest.param(
        VALID.replace("start: hello\n", "instance: event.properties.cart_id +\nstart: hello\n"),
        [(6, 11, "instance: ")],
        id="instance-syntax",
    ),
    pytest.param(
        VALID.replace("    next: pause\n", "    next: pause\n    retries: 3\n"),
        [(11, 5, "steps.hello.retries: unknown key")],
        id="unknown-key",
    ),
    pytest.param(
        VALID.replace("name: Welcome\n", "name: Welcome\nprority: 10\n"),
        [(3, 1, "prority: unknown key")],
        id="unknown-top-level-key",
    ),
    pytest.param(
        VALID.replace("    next: pause\n", ""),
        [(8, 3, "steps.hello.next: missing required key 'next'")],
        id="missing-next",
    ),
    pytest.param(
        VALID.replace("next: done", "next: finish"),
        [
            (13, 11, "steps.pause.next: next step 'finish' is not defined in steps"),
            (14, 3, "steps.done: step 'done' is unreachable from 'hello'"),
        ],
        id="dangling-next",
    ),
    pytest.param(
        VALID.replace("start: hello", "start: helo"),
        [(6, 8, "start: start step 'helo' is not defined in steps")],
        id="missing-start",
    ),
    pytest.param(
        VALID + "  orphan:\n    exit: {}\n",
        [(16, 3, "steps.orphan: step 'orphan' is unreachable from 'hello'")],
        id="unreachable-step",
    ),
    pytest.param(
        VALID.replace("    next: pause\n", "    next: check\n")
        + "  check:\n    branch:\n      - when: user.vip\n        next: hello\n"
        + "      - next: pause\n",
        [(8, 3, "steps.hello: steps loop with no wait: hello -> check -> hello")],
        id="cycle-without-wait",
    ),
    pytest.param(
        VALID.replace("user.country == 'GB'", "user.country =="),
        [(5, 9, "trigger.when: expression does not parse: unexpected 'end of template'")],
        id="unparsable-expression",
    ),
    pytest.param(
        VALID.replace("wait: 2h", "wait: two hours"),
        [(12, 11, "steps.pause.wait: 'two hours' is not a duration")],
        id="bad-duration",
    ),
    pytest.param(
        VALID.replace("wait: 2h", "wait: {until: '25:00'}"),
        [(12, 19, "steps.pause.wait.until: '25:00' is not a time of day")],
        id="bad-time-of-day",
    ),
    pytest.param(
        VALID.replace("channel: email", "channel: web"),
        [
            (
                9,
                21,
                "steps.hello.send.channel: unknown channel 'web': "
                "orchestrator.yaml configures email, push",
            )
        ],
        id="unconfigured-channel",
    ),
    pytest.param(
        VALID.replace("channel: email", "channel: fax"),
        [(9, 21, "steps.hello.send.channel: Input should be 'email', 'push', 'in_app' or 'web'")],
        id="unknown-channel-kind",
    ),
    pytest.param(
        VALID.replace("template: hello", "template: helo"),
        [
            (
                9,
                38,
                "steps.hello.send.template: "
                "unknown template 'helo' (known: broken, crashes, hello)",
            )
        ],
        id="unknown-template",
    ),
    pytest.param(
        VALID.replace(
            "channel: email, template: hello", "channels: [email, push], template: hello"
        ),
        [(9, 30, "steps.hello.send.channels.1: template 'hello' has no push section")],
        id="template-missing-channel-section",
    ),
    pytest.param(
        VALID.replace("template: hello", "template: broken"),
        [(2, 12, "templates/broken.yaml: email.subject: template does not parse: unexpected '}'")],
        id="template-syntax-error",
    ),
    pytest.param(
        VALID.replace("channel: email, template: hello", "channel: push, template: crashes"),
        [(5, 5, "templates/crashes.yaml: push.body: fails to render against the sample profile")],
        id="template-fails-to-render",
    ),
    pytest.param(
        VALID.replace(
            "    wait: 2h\n", "    wait: 2h\n    send: {channel: email, template: hello}\n"
        ),
        [(11, 3, "steps.pause: a step needs exactly one of: wait, wait_for, branch")],
        id="two-kinds-in-a-step",
    ),
    pytest.param(
        VALID.replace("  hello:\n    send:", "  hello:\n    sned:"),
        [(8, 3, "steps.hello: a step needs exactly one of")],
        id="no-kind-in-a-step",
    ),
    pytest.param(
        VALID.replace(
            "    wait: 2h\n    next: done\n",
            "    wait_for: {event: Bought, timeout: 1d, on_event: done}\n",
        ),
        [(12, 5, "steps.pause.wait_for.on_timeout: missing required key 'on_timeout'")],
        id="wait-for-missing-branch",
    ),
    pytest.param(
        VALID.replace(
            "  done:\n    exit: {}\n",
            "  done:\n    branch:\n      - when: user.a\n        next: hello\n",
        ),
        [(15, 5, "steps.done.branch: the last arm of a branch is the default")],
        id="branch-without-default",
    ),
    pytest.param(
        VALID.replace("start: hello\n", "start: hello\nholdout: 120\n"),
        [(7, 10, "holdout: Input should be less than 100")],
        id="out-of-range",
    ),
    pytest.param(
        "journey: welcome\nname: [unclosed\n",
        [(3, 1, "YAML: ")],
        id="yaml-syntax",
    ),
    pytest.param(
        VALID.replace("  pause:\n", "  hello:\n    exit: {}\n  pause:\n"),
        [(11, 3, 'YAML: found duplicate key "hello"')],
        id="duplicate-step-id",
    ),
    pytest.param(
        VALID.replace("update_profile", "x").replace(
            "    next: done\n",
            "    next: tag\n  tag:\n    update_profile: {set: {greeting: '{{ user.name '}}\n"
            "    next: done\n",
        ),
        [(15, 38, "steps.tag.update_profile.set.greeting: template does not parse")],
        id="inline-template-syntax",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_each_problem_is_reported_at_its_position(
    workspace: Path, text: str, expected: list[tuple[int, int, str]]
) -> None:
    found = problems_for(workspace, text)
    assert len(found) == len(expected), found
    for (line, col, message), (want_line, want_col, want) in zip(found, expected, strict=True):
        assert (line, col) == (want_line, want_col), (line, col, message)
        assert want in message, message


def test_every_problem_is_reported_not_only_the_first(workspace: Path) -> None:
    text = VALID.replace("next: done", "next: finish").replace("wait: 2h", "wait: soon")
    found = problems_for(workspace, text)
    assert {line for line, _, _ in found} == {12}
    text = VALID.replace("template: hello", "template: helo").replace("next: done", "next: nope")
    assert {line for line, _, _ in problems_for(workspace, text)} == {9, 13, 14}


def test_journey_keys_must_be_unique_across_files(workspace: Path) -> None:
    (workspace / "journeys" / "copy.yaml").write_text(VALID)
    checked, problems = check_workspace(load_workspace(workspace))
    assert [c.journey.journey for c in checked] == ["welcome"]
    assert len(problems) == 1
    assert problems[0].message == "journey key 'welcome' is also used by journeys/copy.yaml"
    assert (problems[0].file, problems[0].line) == ("journeys/welcome.yaml", 1)


def test_workspace_config_problems_have_positions(tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={})
    config = root / "orchestrator.yaml"
    config.write_text(
        config.read_text()
        .replace("default_timezone: UTC", "default_timezone: Mars/Olympus")
        .replace("signing_secret: whsec_SN6", "signing_secret: nope_SN6")
        + "retension: 30d\n"  # misspelt
    )
    with pytest.raises(InvalidSource) as raised:
        load_workspace(root)
    text = str(raised.value)
    assert "orchestrator.yaml:2:19: default_timezone: unknown timezone 'Mars/Olympus'" in text
    assert "orchestrator.yaml:10:21: channels.email.signing_secret: a signing secret starts" in text
    assert "retension: unknown key" in text


def test_environment_references_in_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={})
    config = root / "orchestrator.yaml"
    config.write_text(
        config.read_text().replace("write_key: wk_test_0123456789", "write_key: ${TEST_WRITE_KEY}")
    )
    with pytest.raises(InvalidSource, match="environment variable TEST_WRITE_KEY is not set"):
        load_workspace(root)
    monkeypatch.setenv("TEST_WRITE_KEY", "wk_from_environment")
    assert load_workspace(root).config.sources[0].write_key == "wk_from_environment"


def test_the_example_workspace_is_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "retail"
    checked, problems = check_workspace(load_workspace(root))
    assert problems == []
    assert sorted(c.journey.journey for c in checked) == [
        "cart_abandonment",
        "weekly_newsletter",
        "welcome_series",
        "win_back",
    ]


def test_a_non_mapping_journey_file(workspace: Path) -> None:
    path = workspace / "journeys" / "case.yaml"
    path.write_text("- just\n- a list\n")
    journey, problems = check_journey(
        load(path, display="journeys/case.yaml"), load_workspace(workspace)
    )
    assert journey is None
    assert [str(p) for p in problems] == [
        "journeys/case.yaml:1:1: a journey file must be a mapping"
    ]


LIMITS_JOURNEY = """\
journey: limits
name: Limits
trigger: {event: Signed Up}
start: mail
steps:
  mail:
    send: {channel: email, template: long_mail}
    next: buzz
  buzz:
    send: {channel: push, template: long_push}
    next: picks
  picks:
    send:
      channel: push
      template: picks
      content: {recommendations: {slot: home, k: 40}}
    next: done
  done:
    exit: {}
"""


async def test_channel_limits_are_checked_at_deploy_with_the_sample_profile(
    tmp_path: Path, engine: AsyncEngine
) -> None:
    root = write_workspace(
        tmp_path / "ws",
        receiver_url="http://127.0.0.1:9",
        journeys={"limits": LIMITS_JOURNEY},
        channels=("email", "push"),
        templates={
            "long_mail": """
                email:
                  subject: "{{ user.first_name * 100 }}"
                  reply_to: "support at example"
                  text: "hello"
            """,
            "long_push": """
                push:
                  title: "Hello"
                  body: "{{ 'x' * 300 }}"
                  deep_link: "cart"
            """,
            "picks": """
                push:
                  title: "Picks"
                  body: "For you"
                  data:
                    items: "{% for i in recommendations %}{{ i.name * 20 }}{% endfor %}"
            """,
        },
    )
    _, problems = check_workspace(load_workspace(root))
    shown = sorted((p.file, p.line, p.col, f"{p.path}: {p.message}") for p in problems)
    assert shown == [
        ("templates/long_mail.yaml", 2, 12,
         "email.subject: with the sample profile, renders to 300 characters; email allows 200"),
        ("templates/long_mail.yaml", 3, 13,
         "email.reply_to: with the sample profile, must render to an email address, "
         "not 'support at example'"),
        ("templates/long_push.yaml", 3, 9,
         "push.body: with the sample profile, renders to 300 characters; push allows 240"),
        ("templates/long_push.yaml", 4, 14,
         "push.deep_link: with the sample profile, must render to an absolute URL, not 'cart'"),
        ("templates/picks.yaml", 4, 3,
         "push.data: with the sample profile, the payload is 8854 bytes; push allows 4096"),
    ]  # fmt: skip
    with pytest.raises(InvalidSource):
        await deploy_workspace(engine, load_workspace(root))
    assert await count(engine, "journey_versions") == 0


def test_channel_sections_are_checked_when_the_workspace_loads(tmp_path: Path) -> None:
    root = write_workspace(
        tmp_path / "ws",
        receiver_url="http://127.0.0.1:9",
        journeys={},
        channels=("in_app", "web"),
        templates={
            "hero": """
                web:
                  placement: Home Hero
                  body: "Hi"
                  expires_after: soon
                in_app:
                  title: "Hi"
                  body: "There"
                  cta_colour: red
            """,
        },
    )
    with pytest.raises(InvalidSource) as raised:
        load_workspace(root)
    text = str(raised.value)
    assert "templates/hero.yaml:2:14: web.placement: String should match pattern" in text
    assert "templates/hero.yaml:4:18: web.expires_after: 'soon' is not a duration" in text
    assert "templates/hero.yaml:8:3: in_app.cta_colour: unknown key" in text


def test_email_and_push_need_a_url_and_email_needs_a_link_secret(tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={})
    config = root / "orchestrator.yaml"
    original = config.read_text()
    config.write_text(original.replace("    url: http://127.0.0.1:9/push\n", ""))
    with pytest.raises(InvalidSource, match=r"channels\.push\.url is required"):
        load_workspace(root)
    without_links = (
        original.split("links:")[0] + "sample_profile:" + original.split("sample_profile:")[1]
    )
    config.write_text(without_links)
    with pytest.raises(InvalidSource, match=r"links\.signing_secret is required with email"):
        load_workspace(root)
    # in-app and web without a URL are stored only, which is fine
    config.write_text(original.replace("    url: http://127.0.0.1:9/in_app\n", ""))
    assert load_workspace(root).config.channels["in_app"].url is None  # type: ignore[index]
