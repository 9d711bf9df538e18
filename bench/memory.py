"""The worker's memory with many users waiting mid-journey.

Starts the users (through the router's own start request, as bench.entries does),
waits until every one is waiting in the journey, and reads the worker process's
resident memory (VmRSS) and its peak (VmHWM) from /proc.

    .venv/bin/python -m bench.memory [--users 10000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench.entries import bare, enroll_for_bare
from bench.harness import BenchStack, bench_stack

JOURNEY = """
journey: entry
name: Waiting users
trigger: {event: Signed Up}
start: check
steps:
  check:
    branch:
      - when: user.vip
        next: pause
      - next: pause
  pause:
    wait: 7d
    next: done
  done:
    exit: {}
"""


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


async def waiting(stack: BenchStack) -> int:
    query = "JourneyKey = 'entry' AND JourneyStatus = 'waiting'"
    return (await stack.client.count_workflows(query)).count


async def main(users: int, concurrency: int) -> None:
    async with bench_stack({"entry": JOURNEY}) as stack:
        await asyncio.sleep(2)
        before = memory_mb(stack.worker.pid)
        print(f"worker before: {before['VmRSS']:.0f} MB resident")
        started = time.perf_counter()
        for start in range(0, users, 1000):
            names = [f"user-{i}" for i in range(start, min(users, start + 1000))]
            await bare(stack, await enroll_for_bare(stack, names), concurrency)
        while (count := await waiting(stack)) < users:
            print(f"  {count} of {users} waiting ({memory_mb(stack.worker.pid)['VmRSS']:.0f} MB)")
            await asyncio.sleep(5)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(5)
        after = memory_mb(stack.worker.pid)
        print(f"{users} users waiting mid-journey after {elapsed:.0f} s")
        print(f"worker resident memory: {after['VmRSS']:.0f} MB "
              f"(peak {after['VmHWM']:.0f} MB; target: under 1 GB)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.concurrency))
