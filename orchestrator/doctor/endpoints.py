"""What the doctor asks the systems outside: do the channel providers, the external
model and the alert and facts webhooks answer at all, and does Kafka."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from aiokafka import AIOKafkaConsumer

from orchestrator.doctor.report import Finding, fail, ok, plain_reason, warn
from orchestrator.workspace import KafkaConfig, WorkspaceConfig


def endpoints_of(config: WorkspaceConfig) -> dict[str, str]:
    """Each URL the workers or the API call, by the check that names it."""
    found = {f"channel {name.value}": ep.url for name, ep in config.channels.items() if ep.url}
    if config.ranking.url:
        found["ranking model"] = config.ranking.url
    if config.alerts.url:
        found["alerts webhook"] = config.alerts.url
    if config.facts_webhook is not None:
        found["facts webhook"] = config.facts_webhook.url
    return found


async def check_endpoints(config: WorkspaceConfig, *, timeout: float) -> list[Finding]:
    """A HEAD request to each URL: any HTTP answer (even 404 or 405) means it is
    reachable; no answer is a warning, since a provider may be down for a while and
    delivery retries (it is still worth knowing before traffic arrives)."""
    endpoints = endpoints_of(config)
    if not endpoints:
        return [ok("endpoints", "no channel or webhook URL configured")]
    async with httpx.AsyncClient(timeout=timeout) as http:
        return list(
            await asyncio.gather(*(_reach(http, name, url) for name, url in endpoints.items()))
        )


async def _reach(http: httpx.AsyncClient, name: str, url: str) -> Finding:
    try:
        response = await http.head(url)
    except httpx.TimeoutException:
        reason = "no answer in time"
    except httpx.HTTPError as exc:
        reason = plain_reason(exc)
    else:
        return ok(name, f"{url} answers (HTTP {response.status_code} to HEAD)")
    return warn(
        name,
        f"{url} is unreachable: {reason}",
        "check the URL in orchestrator.yaml and that this host may reach it "
        "(messages to it are retried until it answers)",
    )


async def check_kafka(kafka: KafkaConfig | None, *, timeout: float) -> Finding:
    """The brokers answer and hold the topics the workspace names."""
    if kafka is None:
        return ok("kafka", "not configured (events arrive over HTTP)")
    consumer = AIOKafkaConsumer(request_timeout_ms=int(timeout * 1000), **kafka.client_options())
    try:
        async with asyncio.timeout(timeout * 2):
            await consumer.start()
            topics = await consumer.topics()
    except (Exception, TimeoutError) as exc:
        return fail(
            "kafka",
            f"cannot reach {kafka.bootstrap_servers}: {plain_reason(exc)}",
            "check kafka.bootstrap_servers (and its security settings) in orchestrator.yaml",
        )
    finally:
        await _stop(consumer)
    wanted = []
    if kafka.consume is not None:
        wanted += [*kafka.consume.topics, kafka.consume.dead_letter_topic]
    if kafka.publish is not None:
        wanted.append(kafka.publish.topic)
    absent = [t for t in wanted if t not in topics]
    if absent:
        return warn(
            "kafka",
            f"{kafka.bootstrap_servers} answers but has no topic {', '.join(absent)}",
            "create them (unless the brokers create topics on first use)",
        )
    return ok("kafka", f"{kafka.bootstrap_servers} answers; topics {', '.join(wanted) or 'none'}"
                       " present")  # fmt: skip


async def _stop(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(Exception):  # a broker that never answered: nothing to stop
        await consumer.stop()
