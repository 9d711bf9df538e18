"""What the tracking plan costs ingestion: the check per event in process (jsonschema-rs,
compiled once, next to the pure-Python `jsonschema` for comparison), and /v1/batch
throughput with no plan, with a plan every event keeps to, and with one every event
breaks (report mode: each counted), in the same run on the same stack.

    .venv/bin/python -m bench.tracking_plan [--events 20000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from bench.harness import bench_stack
from bench.ingest import BATCH, message, through_api
from orchestrator.deploy import deploy_workspace
from orchestrator.sources import parse
from orchestrator.tracking import parse_request
from orchestrator.tracking_plan.enforcement import screen
from orchestrator.tracking_plan.plan import PLAN_FILE, plan_from
from orchestrator.workspace import load_workspace

# bench.ingest's events: Product Viewed with sku, price, category, position.
PLAN = """
mode: report
unplanned_events: report
events:
  Product Viewed:
    type: object
    properties:
      sku: {type: string, pattern: "^SKU-[0-9]+$"}
      price: {type: number, minimum: 0}
      category: {enum: [outerwear, shoes, bags, accessories]}
      position: {type: integer, minimum: 0}
    required: [sku, price, category]
    additionalProperties: false
"""
# The same, where every event breaks a rule (price must be a string).
BROKEN = PLAN.replace("price: {type: number, minimum: 0}", "price: {type: string}")


def _per_event(work: Any, events: int) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) / events * 1e6


def in_process(events: int) -> None:
    import jsonschema

    now = datetime.now(UTC)
    body = {"batch": [message(i, "bench") for i in range(events)]}
    batch = parse_request(body, implied_type=None, max_event_bytes=32_000, now=now)
    plan = plan_from(parse(PLAN, PLAN_FILE))
    broken = plan_from(parse(BROKEN, PLAN_FILE))
    plan.compile()
    broken.compile()
    python = jsonschema.Draft202012Validator(plan.events["Product Viewed"])
    parse_us = _per_event(
        lambda: parse_request(body, implied_type=None, max_event_bytes=32_000, now=now), events
    )
    ok_us = _per_event(lambda: screen(plan, batch, batched=True), events)
    bad_us = _per_event(lambda: screen(broken, batch, batched=True), events)
    py_us = _per_event(lambda: [python.is_valid(m.properties) for m in batch], events)
    print(f"parsing a message (what /v1/batch does without a plan): {parse_us:6.2f} us/event")
    print(f"checking it against the plan (jsonschema-rs), valid:    {ok_us:6.2f} us/event")
    print(f"checking it, every event breaking the plan (report):    {bad_us:6.2f} us/event")
    print(f"the same validity check with Python jsonschema 4.26:    {py_us:6.2f} us/event")


async def _deploy(stack: Any, plan: str | None) -> None:
    path = stack.workspace / PLAN_FILE
    if plan is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(plan)
    await deploy_workspace(stack.engine, load_workspace(stack.workspace))
    await asyncio.sleep(1.5)  # the API process's registry looks again every second


async def over_http(events: int, concurrency: int, rounds: int) -> None:
    async with bench_stack({}, worker=False) as stack:
        await through_api(stack, 2000, concurrency)  # warm up
        rates: dict[str, list[float]] = {}
        for r in range(rounds):
            for name, plan in (("no plan", None), ("plan, every event valid", PLAN),
                               ("plan, every event counted", BROKEN)):  # fmt: skip
                await _deploy(stack, plan)
                rate = await through_api(stack, events, concurrency)
                rates.setdefault(name, []).append(rate)
                print(f"round {r + 1}: {name:<28} {rate:7.0f} events/s")
        for name, found in rates.items():
            print(f"/v1/batch, {name:<28} {sum(found) / len(found):7.0f} events/s "
                  f"(batches of {BATCH}, {concurrency} connections)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    in_process(args.events)
    asyncio.run(over_http(args.events, args.concurrency, args.rounds))
