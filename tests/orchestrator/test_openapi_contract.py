"""The OpenAPI document tells the truth: schemathesis calls every operation with data it
generates from the document (valid and invalid), with a fixed seed, and checks each
answer: no server errors, every status code documented, bodies as their schema says,
invalid data refused, nothing served without its credential.

Not checked: that everything the schema allows is accepted. The document cannot say
that strings must not contain NUL characters (Postgres stores none), which the API
refuses with a 400 naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from tests.conftest import StackFactory
from tests.support.workspace import ADMIN_KEY, WRITE_KEY
from tests.workflows.test_steps import WELCOME

# About a minute in all on the CI machine.
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 15}


def credentials(operation: schemathesis.APIOperation) -> dict[str, str]:
    """The credential the operation documents (a write key, else an admin's key)."""
    schemes = {name for requirement in operation.definition.raw.get("security", [])
               for name in requirement}  # fmt: skip
    if "writeKey" in schemes:
        return {"authorization": _basic(WRITE_KEY)}
    if schemes:
        return {"authorization": f"Bearer {ADMIN_KEY}"}
    return {}


def _basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def exercise(url: str) -> dict[str, list[str]]:
    """Every operation, both generation modes; the failures of each, by operation."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    failures: dict[str, list[str]] = {}
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            found = _failures(url, operation, mode, examples)
            if found:
                failures.setdefault(operation.label, []).extend(found)
    return failures


def _failures(
    url: str, operation: schemathesis.APIOperation, mode: GenerationMode, examples: int
) -> list[str]:
    headers = credentials(operation)
    found: list[str] = []

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, headers=headers, timeout=30)
        try:
            case.validate_response(
                response, headers=headers, excluded_checks=[positive_data_acceptance]
            )
        except (AssertionError, BaseExceptionGroup) as exc:
            if not _text_in_a_query(str(exc)):
                found.append(f"{mode.value}: {response.status_code} {response.text[:300]}\n{exc}")

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing in it can be made invalid
    return [text[:2000] for text in found]


def _text_in_a_query(failure: str) -> bool:
    """A "schema-violating request accepted" whose only violation is an object or a list
    put in a query parameter: a query string carries text, so it arrives as the plain
    text it was serialised to (`?subject=U`), which a text parameter rightly takes."""
    if "Schema-violating request accepted" not in failure:
        return False
    violations = [line.strip() for line in failure.splitlines() if line.strip().startswith("- ")]
    invalid = [v for v in violations if "violates" in v]
    return bool(invalid) and all(
        (v.startswith("- query: violates `type`") and ("became object" in v or "became array" in v))
        or v.startswith("- header: violates `required`")
        for v in invalid
    )


@pytest.mark.timeout(600)
async def test_every_operation_keeps_to_its_documented_contract(make_stack: StackFactory) -> None:
    stack = await make_stack({"welcome": WELCOME})
    failures = await asyncio.to_thread(exercise, stack.api_url)
    report: list[Any] = [f"{label}:\n  " + "\n  ".join(f[:3]) for label, f in failures.items()]
    assert not failures, "\n".join(report)


async def test_the_document_requires_an_identity_and_resolves_every_reference(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack({"welcome": WELCOME})
    document = (await stack.http.get(f"{stack.api_url}/openapi.json")).json()
    track = document["paths"]["/v1/track"]["post"]["requestBody"]["content"]["application/json"]
    [rules] = track["schema"]["allOf"]
    assert rules["required"] == ["event"]
    assert [branch["required"] for branch in rules["anyOf"]] == [["userId"], ["anonymousId"]]
    receipt = document["paths"]["/v1/webhooks/receipts/{channel}"]["post"]["requestBody"]
    reference = receipt["content"]["application/json"]["schema"]["$ref"]
    assert reference.removeprefix("#/components/schemas/") in document["components"]["schemas"]

    def refs(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [r for v in value.values() for r in refs(v)] + (
                [value["$ref"]] if isinstance(value.get("$ref"), str) else []
            )
        return [r for v in value for r in refs(v)] if isinstance(value, list) else []

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"]
