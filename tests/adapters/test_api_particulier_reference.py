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

from adapters.api_particulier import ROUTES, VERSIONED_ROUTES, ApiParticulierAdapter, Route, raise_for_status
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
from adapters.subjects import FranceConnectSubject, ProviderIdentifier, Subject
from broker.service.problems import problem_for
from schemas.validation import InvalidDocument, Validators

REFERENCE = json.loads((Path(__file__).parent / "data" / "api_particulier_v3_reference.json").read_text("utf-8"))
TOKEN = "reference-token"
CITIZEN_TOKEN = "a-citizen-s-france-connect-token"
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


def _lookups() -> list[tuple[str, int, str, Subject]]:
    found: list[tuple[str, int, str, Subject]] = []
    pivot = directory().citizen("dupont-marie-claire").pivot
    routes: list[tuple[str, int, Route]] = [(d, 1, r) for d, r in ROUTES.items()]
    routes += [(d, v, r) for (d, v), r in VERSIONED_ROUTES.items()]
    for dataset, version, route in routes:
        if route.identity_path is not None:
            found.append((dataset, version, route.identity_path, pivot))
        for scheme, (path, _) in route.identifiers.items():
            value = "0000000503A" if scheme == "ine" else "identifiant-1"
            found.append((dataset, version, path, ProviderIdentifier(scheme, value)))
        if route.france_connect_path is not None:
            found.append((dataset, version, route.france_connect_path, FranceConnectSubject(pivot, CITIZEN_TOKEN)))
    return found


LOOKUPS = _lookups()


async def through_the_adapter(aiohttp_server: ServerFactory, dataset: str, version: int, path: str, subject: Subject,
                              example: Any) -> dict[str, Any]:
    """Serve `example` as upstream's answer at `path`; what the adapter makes of it for `dataset` v`version`."""

    # FranceConnect mode: the citizen's token is the bearer, never the adapter's own
    bearer = subject.access_token if isinstance(subject, FranceConnectSubject) else TOKEN

    async def answer(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {bearer}"
        return web.json_response({"data": example, "links": {}, "meta": {}})

    app = web.Application()
    app.router.add_get(path, answer)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        adapter = ApiParticulierAdapter(name="api-particulier", datasets={dataset: version}, session=session,
                                        base_url=str(server.make_url("")), token=TOKEN)
        document: dict[str, Any] = await adapter.fetch(AdapterQuery(dataset, version, subject, frozenset(), "t",
                                                                    recipient="21750001600019"))
    return document


@pytest.mark.parametrize(("dataset", "version", "path", "subject"), LOOKUPS, ids=[p for _, _, p, _ in LOOKUPS])
async def test_upstream_example_goes_through_the_adapter_and_validates(aiohttp_server: ServerFactory, dataset: str,
                                                                       version: int, path: str,
                                                                       subject: Subject) -> None:
    example = example_of(REFERENCE["paths"][path])
    document = await through_the_adapter(aiohttp_server, dataset, version, path, subject, example)
    VALIDATORS.verify(dataset, version, document)
    assert document, dataset


@pytest.mark.parametrize(("asked", "answered"), [(1, "/v4/cnous/etudiant_boursier/identite"),
                                                 (2, "/v3/cnous/etudiant_boursier/identite")],
                         ids=["newer-shape-for-v1", "older-shape-for-v2"])
async def test_an_answer_of_another_shape_than_the_version_asked_is_refused(aiohttp_server: ServerFactory,
                                                                           asked: int, answered: str) -> None:
    """Upstream answering the Cnous v4 shape where v1 (its v3 shape) is asked, or the reverse, is never released:
    projection keeps only what the asked version declares, and validation finds what it requires missing."""
    path = (VERSIONED_ROUTES["etudiant_boursier", 2] if asked == 2 else ROUTES["etudiant_boursier"]).identity_path
    assert path is not None
    example = example_of(REFERENCE["paths"][answered])
    document = await through_the_adapter(aiohttp_server, "etudiant_boursier", asked, path,
                                         directory().citizen("ndiaye-noel").pivot, example)
    with pytest.raises(InvalidDocument) as refused:
        VALIDATORS.verify("etudiant_boursier", asked, document)
    assert "required" in refused.value.reason


def test_every_endpoint_of_a_served_dataset_is_in_the_reference() -> None:
    for _, _, path, _ in LOOKUPS:
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
