"""Journeys that read event properties the tracking plan does not define get a warning
at the journey file's position; warnings do not stop validation or a deploy."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.deploy import deploy_workspace
from orchestrator.workspace import load_workspace
from tests.support.db import count
from tests.support.workspace import write_workspace

PLAN = """
events:
  Cart Updated:
    properties:
      cart_value: {type: number}
      cart: {type: object, properties: {id: {type: string}}}
      extra: {type: object}
  Order Completed:
    allOf:
      - properties: {total: {type: number}}
  Signed Up: {}
"""
FILES = {"tracking_plan.yaml": PLAN}
JOURNEY = """\
journey: carts
name: Carts
trigger:
  event: Cart Updated
  when: event.properties.cart_value > 10 and event.properties.cart_valeu < 100
exit_on:
  - {event: Order Completed, where: "event.properties.totl > 0"}
  - {event: Unplanned Thing, where: "event.properties.anything"}
goal: {event: Order Completed, where: "event.properties.total > 1", within: 7d}
start: remind
steps:
  remind:
    send: {channel: push, template: hello}
    next: wait
  wait:
    wait_for:
      event: Signed Up
      where: event.properties.referrer == 'x'
      timeout: 1d
      on_event: after_signup
      on_timeout: check
  after_signup:
    branch:
      - {when: "event.properties['plan'] == 'pro'", next: done}
      - {next: done}
  check:
    branch:
      - {when: "event.properties.cart.id and event.properties.cart.size", next: done}
      - {when: "event.properties.extra.anything", next: done}
      - {next: done}
  done:
    exit: {}
"""


def test_undefined_properties_warn_at_their_positions(tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9",
                           journeys={"carts": JOURNEY}, files=FILES)  # fmt: skip
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert result.exit_code == 0, result.output
    lines = [line.split("journeys/", 1)[-1] for line in result.stdout.strip().splitlines()]
    no = "warning: event.properties"
    assert lines == [
        f"carts.yaml:5:9: trigger.when: {no}.cart_valeu: the tracking plan defines no "
        "property 'cart_valeu' for 'Cart Updated'",
        f"carts.yaml:7:37: exit_on.0.where: {no}.totl: the tracking plan defines no property "
        "'totl' for 'Order Completed'",
        # The hello template's push body reads event.properties.cart_value: defined.
        f"carts.yaml:18:14: steps.wait.wait_for.where: {no}.referrer: the tracking plan "
        "defines no property 'referrer' for 'Signed Up'",
        # After the wait's event, `event` is Signed Up; after its timeout, Cart Updated.
        f"carts.yaml:24:16: steps.after_signup.branch.0.when: {no}.plan: the tracking plan "
        "defines no property 'plan' for 'Signed Up'",
        f"carts.yaml:28:16: steps.check.branch.0.when: {no}.cart.size: the tracking plan "
        "defines no property 'cart.size' for 'Cart Updated'",
    ]
    assert "(5 warning(s))" in result.stderr


async def test_warnings_do_not_stop_a_deploy(tmp_path: Path, engine: AsyncEngine) -> None:
    body = "{{ event.properties.cart_total }} {{ event.properties.get('cart_items', []) }}"
    template = {"hello": f'push:\n  title: Hi\n  body: "{body}"\n'}
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", templates=template,
                           journeys={"carts": JOURNEY}, files=FILES)  # fmt: skip
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert result.exit_code == 0, result.output
    assert "carts.yaml:13:37: steps.remind.send.template: warning: event.properties." \
        "cart_total: the tracking plan defines no property 'cart_total' for 'Cart " \
        "Updated'" in result.stdout  # fmt: skip
    # `.get('cart_items')` reads the property `cart_items`, not one named `get`
    assert "defines no property 'cart_items'" in result.stdout
    assert "'get'" not in result.stdout
    await deploy_workspace(engine, load_workspace(root))
    assert await count(engine, "journey_versions") == 1
    # Without a plan, nothing to warn about.
    (root / "tracking_plan.yaml").unlink()
    quiet = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert (quiet.exit_code, quiet.stdout) == (0, "")
