"""Prometheus metrics of separate processes after real traffic: `orchestrator api` (two
processes sharing the port, so multiprocess mode) and `orchestrator worker` with its
metrics port and the Temporal SDK's, scraped over HTTP and counted against what
happened."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.metrics.journeys import reason_of
from orchestrator.metrics.sdk import SDK_METRICS
from orchestrator.stack.processes import free_port
from orchestrator.tables import events
from rules.decision import GLOBAL_CONTROL, Action, Check, Decision
from tests.conftest import StackFactory
from tests.support.receiver import Receiver, Script
from tests.support.stack import terminate_unfinished
from tests.workflows.test_steps import WELCOME

BIN = Path(sys.executable).parent
WRITE_KEY = "wk_dev_backend_c04b6d"  # the example's server-side source, `backend`
SERVER_KEY = "sk_dev_crm_backend_5b0e7c2f9a41d6e3"  # scopes arbitrate and ranking
USERS = [f"metrics-user-{name}-{uuid.uuid4().hex[:6]}" for name in ("ada", "grace", "linus")]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; the sum over the labels not given; 0 when there is none."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def until_up(http: httpx.AsyncClient, url: str) -> None:
    for _ in range(300):
        try:
            if (await http.get(url)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


@pytest.fixture
async def processes(
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    example: Path,
    engine: object,
    tmp_path: Path,
) -> AsyncIterator[dict[str, str]]:
    """Two API processes and a worker on the example workspace; their URLs."""
    api_port, metrics_port, sdk_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "ORCHESTRATOR_DATABASE_URL": postgres_url,
        "ORCHESTRATOR_TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
        "ORCHESTRATOR_WORKSPACE": str(example),
        "ORCHESTRATOR_TASK_QUEUE": f"metrics-{uuid.uuid4().hex[:8]}",
        "ORCHESTRATOR_API_PORT": str(api_port),
        "ORCHESTRATOR_API_PROCESSES": "2",
        "ORCHESTRATOR_METRICS_PORT": str(metrics_port),
        "ORCHESTRATOR_TEMPORAL_METRICS_PORT": str(sdk_port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "api-metrics"),
    }
    deploy = await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), "journeys", "deploy", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await deploy.communicate()
    assert deploy.returncode == 0, output.decode()
    worker_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    api = await asyncio.create_subprocess_exec(str(BIN / "orchestrator"), "api", env=env)
    worker = await asyncio.create_subprocess_exec(
        str(BIN / "orchestrator"), "worker", env=worker_env
    )
    urls = {
        "api": f"http://127.0.0.1:{api_port}",
        "worker": f"http://127.0.0.1:{metrics_port}/metrics",
        "sdk": f"http://127.0.0.1:{sdk_port}/metrics",
        "multiprocess_dir": env["PROMETHEUS_MULTIPROC_DIR"],
    }
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await until_up(http, f"{urls['api']}/healthz")
            await until_up(http, urls["worker"])
            await until_up(http, urls["sdk"])
        yield urls
    finally:
        for process in (api, worker):
            process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in (api, worker)]
        await terminate_unfinished(dev_server.client, engine)  # type: ignore[arg-type]
        assert codes == [0, 0]


async def test_each_process_counts_what_happened(
    processes: dict[str, str], receiver: Receiver
) -> None:
    api = processes["api"]
    receiver.script("/email", Script(503))  # the first email is retried
    async with httpx.AsyncClient(timeout=10, auth=(WRITE_KEY, "")) as http:

        async def send(path: str, body: dict[str, object]) -> httpx.Response:
            # A new connection each time, so the kernel hands requests to both processes.
            async with httpx.AsyncClient(timeout=10, auth=(WRITE_KEY, "")) as once:
                return await once.post(f"{api}{path}", json=body)

        for user in USERS:
            response = await send(
                "/v1/identify", {"userId": user, "traits": {"email": f"{user}@example.com"}}
            )
            assert response.status_code == 200, response.text
            response = await send("/v1/track", {"userId": user, "event": "Signed Up"})
            assert response.status_code == 200, response.text
        # Each user gets the welcome email, the home-page banner and an inbox message.
        await receiver.wait_for(lambda rs: len([r for r in rs if r.path != "/email"]) == 6
                                and len([r for r in rs if r.path == "/email"]) == 4,
                                timeout=60)  # fmt: skip

        refused = await send("/v1/track", {"userId": USERS[0]})  # no event name
        assert refused.status_code == 400
        unknown = await http.post(f"{api}/v1/track", auth=("wk_made_up", ""),
                                  json={"userId": USERS[0], "event": "Signed Up"})  # fmt: skip
        assert unknown.status_code == 401
        headers = {"authorization": f"Bearer {SERVER_KEY}"}
        decided = await http.post(f"{api}/v1/arbitrate", headers=headers, auth=None, json={
            "user_id": USERS[1], "idempotency_key": "metrics-1", "channels": ["email"],
            "category": "transactional",
        })  # fmt: skip
        assert decided.status_code == 200, decided.text
        assert decided.json()["action"] == "send"
        wanted = {"user_id": USERS[2], "slot": "home_hero", "k": 2}
        ranked = await http.post(f"{api}/v1/rank", headers=headers, auth=None, json=wanted)
        assert ranked.status_code == 200, ranked.text
        # A purchase converts the welcome series (its goal ends it).
        bought = await send("/v1/track", {"userId": USERS[0], "event": "Order Completed",
                                           "properties": {"revenue": 20}})  # fmt: skip
        assert bought.status_code == 200

        async def ended() -> Samples:
            for _ in range(300):
                samples = await scrape(http, processes["worker"])
                if value(samples, "orchestrator_journeys_ended_total"):
                    return samples
                await asyncio.sleep(0.1)
            raise AssertionError("the converted journey did not end")

        worker = await ended()
        # The API: whichever process answers adds up both (the same answer every time).
        scrapes = [await scrape(http, f"{api}/metrics") for _ in range(4)]
        api_samples = scrapes[0]
        counted = [value(s, "orchestrator_http_requests_total") for s in scrapes]
        sdk = await scrape(http, processes["sdk"])

    # Ingestion: 3 identify + 4 track accepted, 2 refusals with their reasons.
    assert value(api_samples, "orchestrator_events_accepted_total", source="backend") == 7
    assert value(api_samples, "orchestrator_ingestion_refusals_total", reason="invalid") == 1
    assert value(api_samples, "orchestrator_ingestion_refusals_total",
                 reason="unauthenticated") == 1  # fmt: skip
    assert value(api_samples, "orchestrator_ingestion_refusals_total") == 2
    track = {"route": "/v1/track", "method": "POST"}
    assert value(api_samples, "orchestrator_http_requests_total", **track, status="200") == 4
    assert value(api_samples, "orchestrator_http_requests_total", **track, status="400") == 1
    assert value(api_samples, "orchestrator_http_requests_total", **track, status="401") == 1
    assert value(api_samples, "orchestrator_http_request_duration_seconds_count", **track) == 6
    # Each scrape counts the scrapes before it (all processes' requests added up).
    assert counted == [counted[0] + n for n in range(4)]
    assert list(Path(processes["multiprocess_dir"]).glob("*.db"))
    # Routing: three entries, one purchase told to its journeys; nothing left unrouted.
    assert value(api_samples, "orchestrator_journeys_entered_total", journey="welcome_series",
                 group="treatment") == 3  # fmt: skip
    assert value(api_samples, "orchestrator_routing_lag_seconds_count", kind="entry") == 3
    assert value(api_samples, "orchestrator_routing_lag_seconds_count", kind="signal") == 1
    assert value(api_samples, "orchestrator_journeys_converted_total",
                 journey="welcome_series") == 1  # fmt: skip
    # The API's own arbitration and ranking answers.
    assert value(api_samples, "orchestrator_arbitration_decisions_total", outcome="send",
                 reason="none") == 1  # fmt: skip
    assert value(api_samples, "orchestrator_arbitration_duration_seconds_count") == 1
    assert value(api_samples, "orchestrator_ranking_answers_total", source="baseline") == 1

    # The worker: 9 messages sent, the first email after one retry.
    for channel in ("email", "web", "in_app"):
        assert value(worker, "orchestrator_messages_total", channel=channel, status="sent") == 3
        assert value(worker, "orchestrator_provider_request_duration_seconds_count",
                     channel=channel) == (4 if channel == "email" else 3)  # fmt: skip
    assert value(worker, "orchestrator_messages_total", status="failed") == 0
    assert value(worker, "orchestrator_delivery_retries_total", channel="email") == 1
    assert value(worker, "orchestrator_provider_requests_total", channel="email",
                 outcome="server_error") == 1  # fmt: skip
    assert value(worker, "orchestrator_provider_requests_total", channel="email",
                 outcome="success") == 3  # fmt: skip
    assert value(worker, "orchestrator_arbitration_decisions_total", outcome="send") == 9
    # Email and the banner show ranked products; nothing is trained: the baseline (or,
    # on a busy machine, the model missed its 8 ms deadline).
    assert value(worker, "orchestrator_ranking_answers_total", source="baseline") == 6
    fallbacks = {dict(labels)["fallback"] for name, labels in worker
                 if name == "orchestrator_ranking_answers_total"}  # fmt: skip
    assert "no_model" in fallbacks
    assert fallbacks <= {"no_model", "timeout"}
    assert value(worker, "orchestrator_journeys_ended_total", journey="welcome_series",
                 status="converted") == 1  # fmt: skip
    # The Temporal SDK's own: task latencies of the journeys' workflows and activities.
    assert value(sdk, "temporal_workflow_task_schedule_to_start_latency_seconds_count") > 0
    assert value(sdk, "temporal_activity_schedule_to_start_latency_seconds_count") > 0
    present = {name for name, _ in sdk}
    for name in SDK_METRICS - {"temporal_workflow_task_execution_failed_total",
                               "temporal_activity_execution_failed_total"}:  # fmt: skip
        assert any(have.startswith(name) for have in present), name

    # No label value names a user, and every label set is one of a bounded few.
    for samples in (api_samples, worker):
        for _, labels in samples:
            for _, label in labels:
                assert "metrics-user" not in label, label
                assert all(user not in label for user in USERS)


async def test_the_sweeper_reports_the_unrouted_backlog(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"welcome": WELCOME})
    await stack.track("backlog-user", "Signed Up")  # routed by its request
    old = datetime.now(UTC) - timedelta(hours=1)
    async with engine.begin() as conn:  # stored by a request that died before routing
        await conn.execute(insert(events), [
            {"message_id": f"stuck-{n}", "source": "test", "type": "track", "event": "Viewed",
             "user_id": "backlog-user", "properties": {}, "traits": {}, "context": {},
             "timestamp": old, "received_at": old} for n in range(3)
        ])  # fmt: skip
    router = stack.services.router
    assert await router.sweep(timedelta(seconds=30)) == 3
    gauge = "orchestrator_unrouted_events"
    assert REGISTRY.get_sample_value(gauge, {"age": "overdue"}) == 3  # what it found
    assert REGISTRY.get_sample_value(gauge, {"age": "recent"}) == 0
    assert await router.sweep(timedelta(seconds=30)) == 0
    assert REGISTRY.get_sample_value(gauge, {"age": "overdue"}) == 0


@pytest.mark.parametrize(
    ("checks", "action", "reason"),
    [
        ((Check("channel email", True, "allowed"),), "send", "none"),
        ((Check(GLOBAL_CONTROL, False, "in the group"),), "suppress", "global_control"),
        ((Check("rule vip", False, "suppresses the message"),), "suppress", "rule"),
        ((Check("conflict window", True, "decided with others at 10:00:00"),), "defer",
         "conflict_window"),
        ((Check("channel email", False, "cap daily reached (1 per 1d)"),
          Check("caps", False, "deferred until ...")), "defer", "caps"),
        ((Check("channel email", True, "allowed"), Check("quiet hours", False, "deferred")),
         "defer", "quiet_hours"),
        ((Check("channel push", False, "not reachable: the profile has no device_tokens"),),
         "suppress", "unreachable"),
        ((Check("channel email", False, "suppressed: bounce"),), "suppress", "suppressed"),
        ((Check("channel email", False, "no consent for promotional email"),), "suppress",
         "consent"),
        ((Check("channel web", False, "duplicate: sale went out on email"),), "suppress",
         "duplicate"),
        ((), "suppress", "no_channel"),
    ],
)  # fmt: skip
def test_arbitration_reasons_are_a_fixed_vocabulary(
    checks: tuple[Check, ...], action: Action, reason: str
) -> None:
    assert reason_of(Decision(action, checks=checks)) == reason


async def test_http_labels_stay_bounded(make_stack: StackFactory) -> None:
    stack = await make_stack({"welcome": WELCOME})
    labels = {"route": "/v1/users/{user_id}/journeys", "method": "GET", "status": "401"}
    before = REGISTRY.get_sample_value("orchestrator_http_requests_total", labels) or 0
    await stack.http.get(f"{stack.api_url}/v1/users/someone-secret/journeys")
    await stack.http.request("BREW", f"{stack.api_url}/no/such/path/someone-secret")
    after = REGISTRY.get_sample_value("orchestrator_http_requests_total", labels)
    assert after == before + 1  # by its template: the user id is no label
    unmatched = {"route": "unmatched", "method": "other", "status": "404"}
    assert REGISTRY.get_sample_value("orchestrator_http_requests_total", unmatched)
    text = (await stack.http.get(f"{stack.api_url}/metrics")).text
    assert "someone-secret" not in text
    assert "BREW" not in text


async def test_a_busy_metrics_port_is_one_line_and_exit_1(postgres_url: str, example: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for variable in ("ORCHESTRATOR_METRICS_PORT", "ORCHESTRATOR_TEMPORAL_METRICS_PORT"):
            env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": postgres_url,
                   "ORCHESTRATOR_WORKSPACE": str(example), "ORCHESTRATOR_METRICS_PORT": "0",
                   "ORCHESTRATOR_TEMPORAL_METRICS_PORT": "0", variable: str(port)}  # fmt: skip
            worker = await asyncio.create_subprocess_exec(
                str(BIN / "orchestrator"), "worker", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(worker.communicate(), 60)
            lines = output.decode().strip().splitlines()
            assert worker.returncode == 1
            assert len(lines) == 1, lines
            assert f"127.0.0.1:{port}" in lines[0]
            assert variable in lines[0]
            assert "in use" in lines[0]
