"""The API Particulier adapter against upstream's own published OpenAPI (tests/adapters/data, extracted unchanged):
for every endpoint the adapter calls, upstream's example answer goes through the adapter, over HTTP, and validates
against the dataset schema; every error example upstream documents maps to an adapter error, hence a problem type."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.api_particulier import ROUTES, ApiParticulierAdapter, raise_for_status
from adapters.base import (
    AdapterError,
    AdapterQuery,
    IdentityAmbiguous,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotFound,
)
from adapters.sandbox import directory
from adapters.subjects import ProviderIdentifier, Subject
from broker.service.problems import problem_for
from schemas.validation import Validators

REFERENCE = json.loads((Path(__file__).parent / "data" / "api_particulier_v3_reference.json").read_text("utf-8"))
TOKEN = "reference-token"
VALIDATORS = Validators()
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def example_of(schema: dict[str, Any]) -> Any:
    """Upstream's example document, assembled from its schema's per-member `example`s (OpenAPI 3.0)."""
    if "example" in schema:
        return schema["example"]
    kind = schema.get("type")
    if kind == "object":
        return {name: example_of(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [example_of(schema["items"])]
    if schema.get("nullable"):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    raise AssertionError(f"no example for {schema}")


def _lookups() -> list[tuple[str, str, Subject]]:
    found: list[tuple[str, str, Subject]] = []
    pivot = directory().citizen("dupont-marie-claire").pivot
    for dataset, route in ROUTES.items():
        if route.identity_path is not None:
            found.append((dataset, route.identity_path, pivot))
        for scheme, (path, _) in route.identifiers.items():
            value = "0000000503A" if scheme == "ine" else "identifiant-1"
            found.append((dataset, path, ProviderIdentifier(scheme, value)))
    return found


LOOKUPS = _lookups()


@pytest.mark.parametrize(("dataset", "path", "subject"), LOOKUPS, ids=[p for _, p, _ in LOOKUPS])
async def test_upstream_example_goes_through_the_adapter_and_validates(aiohttp_server: ServerFactory, dataset: str,
                                                                       path: str, subject: Subject) -> None:
    example = example_of(REFERENCE["paths"][path])

    async def answer(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return web.json_response({"data": example, "links": {}, "meta": {}})

    app = web.Application()
    app.router.add_get(path, answer)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        adapter = ApiParticulierAdapter(name="api-particulier", datasets={dataset: 1}, session=session,
                                        base_url=str(server.make_url("")), token=TOKEN)
        document = await adapter.fetch(AdapterQuery(dataset, 1, subject, frozenset(), "t",
                                                    recipient="21750001600019"))
    VALIDATORS.verify(dataset, 1, document)
    assert document, dataset


def test_every_endpoint_of_a_served_dataset_is_in_the_reference() -> None:
    for _, path, _ in LOOKUPS:
        assert path in REFERENCE["paths"], path


ERRORS = REFERENCE["errors"]


@pytest.mark.parametrize("error", ERRORS, ids=[f"{e['status']}-{e['name']}" for e in ERRORS])
def test_every_documented_upstream_error_maps_to_a_problem_type(error: dict[str, Any]) -> None:
    status, body = error["status"], json.dumps(error["body"]).encode()
    code = error["body"]["errors"][0]["code"]
    with pytest.raises(AdapterError) as info:
        raise_for_status(f"api-particulier {error['path']}", status, body)
    exc = info.value
    problem = problem_for(exc)
    assert problem.slug == exc.slug != "provider-error", (status, code)
    expected: type[AdapterError] | None = {404: SubjectNotFound, 429: ProviderRateLimited}.get(status)
    if status == 422 and code == "00391":
        expected = IdentityAmbiguous
    if status == 504:
        expected = {"001": ProviderUnavailable, "008": ProviderRateLimited}.get(code[-3:], ProviderTimeout) \
            if not code.startswith("00") else ProviderTimeout
    if expected is not None:
        assert type(exc) is expected, (status, code, type(exc).__name__)
    # the message names the endpoint and the code, never a query string (it would hold an identity)
    assert "?" not in str(exc)
