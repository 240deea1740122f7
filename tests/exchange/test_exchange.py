"""The exchange endpoint end to end: real broker, real PostgreSQL, the API Particulier sandbox over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestServer

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.signing.keys import generate_private_key
from broker.storage import ids
from broker.tlog.jcs import canonicalize
from tests.broker_harness import EXCHANGES, Harness, broker_config, exchange_body, pivot, start_broker
from tests.factories import (
    CONSUMER,
    SANDBOX_TOKEN,
    TOKEN_ENV,
    Consumer,
    consumer,
    registry_toml,
)

PROBLEM = "https://dlnuf.org/problems/"


@pytest.fixture
async def sandbox(aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN, slow_delay=3.0))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def paris() -> Consumer:
    return consumer()


@pytest.fixture
async def broker(database_url: str, aiohttp_client: Any, sandbox: str, paris: Consumer, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    # database_url comes first so it is torn down last, after the broker closed its pool
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    text = registry_toml([paris], provider_url=sandbox, timeout=1.0)
    yield await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)


async def test_signed_request_returns_minimised_logged_signed_data(broker: Harness) -> None:
    answer = await broker.exchange()
    assert answer.status == 200, answer.body
    await broker.verify(answer)
    body = answer.json
    assert set(body["data"]) == {"quotient_familial", "enfants"}  # allocataires and adresse were not asked
    assert body["fields_released"] == ["quotient_familial", "enfants"]
    assert body["data_sha256"] == hashlib.sha256(canonicalize(body["data"])).hexdigest()

    [row] = await broker.log_rows()
    assert row["outcome"] == "released" and row["http_status"] == 200
    assert str(row["id"]) == body["log_entry_id"]
    # time-ordered (UUIDv7), drawn with the entry: the month's index grows at its right edge
    assert row["id"].version == 7
    assert -1 < row["logged_at"].timestamp() * 1000 - ids.unix_ts_ms(row["id"]) < 1000  # drawn just before it
    assert row["consumer"] == CONSUMER and row["kid"] == broker.consumer.key.kid
    # v2: a salted commitment, whose salt the consumer got with the data; no plain hash of the payload is kept
    assert row["payload_sha256"] is None
    assert body["log"]["payload_salt"] == base64.b64encode(row["payload_salt"]).decode()
    assert row["payload_commitment"] == hmac.new(row["payload_salt"], canonicalize(body["data"]), "sha256").hexdigest()
    assert row["legal_basis_type"] == "information" and row["habilitation_id"] == f"cantine-{CONSUMER}"
    assert list(row["fields_released"]) == ["quotient_familial", "enfants"]
    # the subject is a keyed hash: nothing of the identity in clear
    assert len(row["subject_key"]) == 64 and "dupont" not in json.dumps(dict(row), default=str).lower()


async def test_sub_field_release_and_subunit_recipient(broker: Harness) -> None:
    answer = await broker.exchange(exchange_body(fields=["quotient_familial.valeur"],
                                                 recipient=f"{CONSUMER}/cantine"))
    assert answer.status == 200, answer.body
    assert answer.json["data"] == {"quotient_familial": {"valeur": answer.json["data"]["quotient_familial"]["valeur"]}}


async def test_same_person_gets_the_same_subject_key_whatever_the_spelling(broker: Harness) -> None:
    spelled = pivot("dupont-marie-claire")
    spelled["pivot_identity"]["family_name"] = "DUPONT"
    spelled["pivot_identity"]["given_name"] = "marie  claire"
    assert (await broker.exchange()).status == 200
    assert (await broker.exchange(exchange_body(spelled))).status == 200
    a, b = await broker.log_rows()
    assert a["subject_key"] == b["subject_key"]


async def assert_refused(broker: Harness, answer: Any, slug: str, status: int, *, detail: bool = False) -> Any:
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    problem = answer.json
    assert problem["type"] == PROBLEM + slug
    assert problem["status"] == status
    assert ("detail" in problem) == detail, problem
    assert "data" not in problem
    rows = await broker.log_rows()
    assert rows, "a refusal must be logged"
    assert rows[-1]["problem_type"] == PROBLEM + slug
    assert rows[-1]["outcome"] in ("refused", "failed") and rows[-1]["payload_sha256"] is None
    return rows[-1]


async def assert_unauthenticated(broker: Harness, answer: Any, slug: str, status: int, reason: str, *,
                                 detail: bool = False, logged: int = 0) -> Any:
    """Refused before any signature verified: a problem, no access-log row (beyond the `logged` ones the test
    made), and the last unauthenticated attempt says why."""
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    problem = answer.json
    assert (problem["type"], problem["status"]) == (PROBLEM + slug, status)
    assert ("detail" in problem) == detail, problem
    assert len(await broker.log_rows()) == logged, "an unauthenticated refusal is not an access-log entry"
    attempt = (await broker.attempt_rows())[-1]
    assert (attempt["reason"], attempt["problem_type"], attempt["http_status"]) == (reason, PROBLEM + slug, status)
    assert attempt["request_id"] == problem["request_id"] and attempt["source"] == "127.0.0.1"
    return attempt


def _body(**overrides: Any) -> bytes:
    return json.dumps(exchange_body(**overrides)).encode()


async def test_unsigned_request_is_refused_and_kept_out_of_the_log(broker: Harness) -> None:
    answer = await broker.send(_body(), {"Content-Type": "application/json"})
    attempt = await assert_unauthenticated(broker, answer, "signature-rejected", 401, "missing-signature")
    assert (attempt["method"], attempt["path"], attempt["kid"]) == ("POST", EXCHANGES, None)
    assert "Signature" in answer.headers and "Signature-Input" in answer.headers  # refusals are signed too
    async with broker.client.get("/metrics") as resp:
        assert 'dlnuf_unauthenticated_refusals_total{reason="missing-signature"} 1.0' in await resp.text()


async def test_malformed_signature_input_is_refused(broker: Harness) -> None:
    raw = _body()
    headers = broker.signed_headers(raw)
    headers["Signature-Input"] = 'sig1=("@method" "@target-uri";created=oops'
    await assert_unauthenticated(broker, await broker.send(raw, headers), "signature-rejected", 401, "malformed")


async def test_a_valid_signature_plus_an_invalid_one_is_refused(broker: Harness) -> None:
    raw = _body()
    headers = broker.signed_headers(raw)
    member = headers["Signature-Input"].removeprefix("sig1=")
    headers["Signature-Input"] += f", sig2={member}"
    headers["Signature"] += ", sig2=:" + base64.b64encode(b"\0" * 64).decode() + ":"
    attempt = await assert_unauthenticated(broker, await broker.send(raw, headers), "signature-rejected", 401,
                                           "several-signatures")
    assert attempt["kid"] == broker.consumer.key.kid  # claimed, not verified: kept for the record


async def test_a_repeated_label_is_refused_not_last_wins(broker: Harness) -> None:
    # (a repeated Content-Digest algorithm, under a signature that covers it: tests/signing/test_signing.py)
    raw = _body()
    headers = broker.signed_headers(raw)
    headers["Signature-Input"] = 'sig1=("@method");created=1;keyid="x";nonce="n", ' + headers["Signature-Input"]
    headers["Signature"] = "sig1=:AA==:, " + headers["Signature"]
    await assert_unauthenticated(broker, await broker.send(raw, headers), "signature-rejected", 401, "malformed")


@pytest.mark.parametrize("tamper", ["body", "method", "path", "query", "header"])
async def test_tampered_request_is_refused(broker: Harness, tamper: str) -> None:
    raw = _body()
    headers = broker.signed_headers(raw)
    method, path = "POST", EXCHANGES
    if tamper == "body":
        raw = _body(fields=["quotient_familial", "enfants", "adresse"])
    elif tamper == "method":
        method = "PUT"
    elif tamper == "path":
        path = EXCHANGES + "/"
    elif tamper == "query":
        path = EXCHANGES + "?x=1"
    elif tamper == "header":
        headers["Content-Type"] = "application/json; charset=latin-1"
    answer = await broker.send(raw, headers, method=method, path=path)
    if tamper in ("method", "path"):
        # another route: the router answers before the pipeline, still as a problem, and nothing is released
        assert answer.status in (404, 405) and answer.json["type"].startswith(PROBLEM)
        return
    await assert_unauthenticated(broker, answer, "signature-rejected", 401,
                                 "digest-mismatch" if tamper == "body" else "bad-signature")


async def test_wrong_key_unknown_kid_and_alg_mismatch_are_refused(broker: Harness) -> None:
    raw = _body()
    kid = broker.consumer.key.kid
    for key, reason in (
        (generate_private_key("ed25519", kid=kid), "bad-signature"),  # same kid, another key
        (generate_private_key("ed25519", kid="nobody-knows-me"), "unknown-key"),
        # a P-256 signature under the Ed25519 key's id
        (generate_private_key("ecdsa-p256-sha256", kid=kid), "alg-mismatch"),
    ):
        answer = await broker.send(raw, broker.signed_headers(raw, consumer=Consumer(CONSUMER, key)))
        attempt = await assert_unauthenticated(broker, answer, "signature-rejected", 401, reason)
        assert attempt["kid"] == key.kid


@pytest.mark.parametrize(
    ("created", "expires"),
    [(-120, None), (120, None), (-30, -1)],
    ids=["too-old", "in-the-future", "expired"],
)
async def test_stale_or_expired_signature_is_refused(broker: Harness, created: int, expires: int | None) -> None:
    # offsets, not datetimes, in the parameters: they are computed at collection, long before the test runs
    now = datetime.now(UTC)
    sign_args: dict[str, Any] = {"created": now + timedelta(seconds=created)}
    if expires is not None:
        sign_args["expires"] = now + timedelta(seconds=expires)
    raw = _body()
    await assert_unauthenticated(broker, await broker.send(raw, broker.signed_headers(raw, **sign_args)),
                                 "signature-rejected", 401, "expired" if expires else "created-out-of-window")


async def test_nonce_replay_is_refused(broker: Harness) -> None:
    raw = _body()
    headers = broker.signed_headers(raw)
    assert (await broker.send(raw, headers)).status == 200
    # a replay proves nothing about who sends it now: an unauthenticated attempt, not the consumer's entry
    await assert_unauthenticated(broker, await broker.send(raw, headers), "signature-rejected", 401, "nonce-replay",
                                 logged=1)
    rows = await broker.log_rows()
    assert [r["outcome"] for r in rows] == ["released"]


async def test_unknown_dataset(broker: Harness) -> None:
    row = await assert_refused(broker, await broker.exchange(exchange_body(dataset="horoscope")),
                               "unknown-dataset", 404, detail=True)
    assert row["consumer"] == CONSUMER
    await assert_refused(broker, await broker.exchange(exchange_body(version=99)), "unknown-dataset", 404, detail=True)


@pytest.mark.parametrize(
    "overrides",
    [{"purpose": "curiosite"}, {"fields": ["quotient_familial", "pointure"]}, {"recipient": "21690123100011"},
     {"recipient": f"{CONSUMER}/police"}, {"dataset": "statut_etudiant", "fields": ["admissions"]}],
    ids=["purpose", "field", "recipient", "sub-unit", "dataset-without-habilitation"],
)
async def test_outside_habilitation_is_refused_without_detail(broker: Harness, overrides: dict[str, Any]) -> None:
    row = await assert_refused(broker, await broker.exchange(exchange_body(**overrides)), "not-authorized", 403)
    assert row["consumer"] == CONSUMER


@pytest.mark.parametrize(
    "subject",
    [None, {}, {"pivot_identity": {"family_name": "Dupont"}}, {"identifier": {"scheme": "INE!", "value": "x"}},
     {"pivot_identity": {**pivot("dupont-marie-claire")["pivot_identity"], "birthdate": "1985-02-30"}},
     {"siret": "21750001600018"}, {"siren": "21750001"}, {"rna": "X751234567"},
     {"siren": "217500016", "siret": "21750001600019"}],
    ids=["missing", "empty", "incomplete", "bad-identifier", "impossible-date", "siret-check-digit", "siren-short",
         "rna-letter", "two-kinds"],
)
async def test_missing_or_malformed_subject(broker: Harness, subject: Any) -> None:
    body = exchange_body()
    if subject is None:
        del body["subject"]
    else:
        body["subject"] = subject
    await assert_refused(broker, await broker.exchange(body), "invalid-subject", 400, detail=True)


@pytest.mark.parametrize(
    "subject",
    [{"siren": "217500016"}, {"siret": "21750001600019"}, {"rna": "W751234567"},
     {"identifier": {"scheme": "ine", "value": "0000000503A"}}],
    ids=["siren", "siret", "rna", "ine"],
)
async def test_a_dataset_refuses_a_subject_kind_it_does_not_accept(broker: Harness, subject: Any) -> None:
    # quotient_familial is about a household's beneficiary, looked up by pivot identity only
    row = await assert_refused(broker, await broker.exchange(exchange_body(subject)), "subject-kind-not-accepted",
                               400, detail=True)
    assert row["outcome"] == "refused" and row["subject_key"] is not None  # logged, against that subject


async def test_france_connect_mode_outside_a_consent_flow_is_refused(broker: Harness) -> None:
    row = await assert_refused(broker, await broker.exchange(exchange_body({"france_connect": {}})),
                               "france-connect-needs-consent", 400, detail=True)
    assert row["subject_key"] is None  # there is no citizen to log it against


async def test_dataset_parameters_reach_the_provider_and_the_access_log(broker: Harness) -> None:
    current = await broker.exchange(exchange_body(fields=["quotient_familial"]))
    qf = current.json["data"]["quotient_familial"]
    asked = {"annee": qf["annee"], "mois": qf["mois"]}
    answer = await broker.exchange(exchange_body(fields=["quotient_familial"], parameters=asked))
    assert answer.status == 200 and answer.json["data"] == current.json["data"]
    # the sandbox keeps one month: another month is not found, so the parameters did reach it
    other = await broker.exchange(exchange_body(fields=["quotient_familial"],
                                                parameters={"annee": qf["annee"] - 1, "mois": qf["mois"]}))
    assert other.status == 404, other.body
    rows = await broker.log_rows()
    logged = [r["parameters"] if r["parameters"] is None else json.loads(r["parameters"]) for r in rows]
    assert logged == [None, asked, {**asked, "annee": qf["annee"] - 1}]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"parameters": {"mois": 3}}, "annee"),  # a month needs its year
     ({"parameters": {"annee": 2024, "mois": 13}}, "/mois"),
     ({"parameters": {"annee": "2024"}}, "/annee"),
     ({"parameters": {"annee": 2024, "semaine": 2}}, "semaine"),
     ({"parameters": [2024]}, "parameters"),
     ({"parameters": {"annee": 2024}, "dataset": "statut_etudiant", "fields": ["admissions"]}, "no parameters")],
    ids=["missing", "out-of-range", "string", "unknown", "not-an-object", "dataset-without-parameters"],
)
async def test_missing_or_malformed_dataset_parameters(broker: Harness, overrides: dict[str, Any],
                                                       named: str) -> None:
    row = await assert_refused(broker, await broker.exchange(exchange_body(**overrides)), "invalid-parameters",
                               400, detail=True)
    assert named in (await broker.exchange(exchange_body(**overrides))).json["detail"]
    assert row["outcome"] == "refused"


async def test_not_json_and_wrong_shapes(broker: Harness) -> None:
    raw = b"{not json"
    await assert_refused(broker, await broker.send(raw, broker.signed_headers(raw)), "invalid-request", 400,
                         detail=True)
    await assert_refused(broker, await broker.exchange(exchange_body(fields=[])), "invalid-request", 400, detail=True)
    await assert_refused(broker, await broker.exchange(exchange_body(colour="blue")), "invalid-request", 400,
                         detail=True)


async def test_body_too_large(broker: Harness) -> None:
    raw = _body(padding="x" * (70 * 1024))
    await assert_unauthenticated(broker, await broker.send(raw, broker.signed_headers(raw)), "body-too-large", 413,
                                 "body-too-large", detail=True)


async def test_wrong_media_type(broker: Harness) -> None:
    raw = _body()
    headers = broker.signed_headers(raw)
    headers["Content-Type"] = "text/plain"
    await assert_unauthenticated(broker, await broker.send(raw, headers), "unsupported-media-type", 415,
                                 "unsupported-media-type", detail=True)


@pytest.mark.parametrize(
    ("citizen", "slug", "status"),
    [("panne-indisponible", "provider-unavailable", 502), ("panne-lenteur", "provider-timeout", 504),
     ("panne-invalide", "provider-answer-invalid", 502), ("panne-non-json", "provider-answer-malformed", 502),
     ("roche-bernard", "subject-not-found", 404)],
)
async def test_provider_faults_release_nothing(broker: Harness, citizen: str, slug: str, status: int) -> None:
    row = await assert_refused(broker, await broker.exchange(exchange_body(pivot(citizen))), slug, status)
    assert row["outcome"] == ("failed" if status >= 500 else "refused")
    async with broker.client.get("/metrics") as resp:
        metrics = await resp.text()
    if slug.startswith("provider-") and slug != "provider-answer-invalid":
        assert f'dlnuf_provider_errors_total{{adapter="api-particulier",kind="{slug}"}} 1.0' in metrics
    assert "dupont" not in metrics.lower() and "lenteur" not in metrics.lower()  # no personal data


async def test_ambiguous_identity(broker: Harness) -> None:
    twins = pivot("martin-jean-pierre")
    twins["pivot_identity"]["given_name"] = "Jean"
    await assert_refused(broker, await broker.exchange(exchange_body(twins)), "identity-ambiguous", 409)


async def test_provider_down(database_url: str, aiohttp_client: Any, paris: Consumer, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    text = registry_toml([paris], provider_url=f"http://127.0.0.1:{unused_tcp_port}")
    h = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)
    await assert_refused(h, await h.exchange(), "provider-unavailable", 502)


async def test_consent_basis_without_consent_is_refused(database_url: str, aiohttp_client: Any, sandbox: str,
                                                        paris: Consumer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    text = registry_toml([paris], provider_url=sandbox, basis="consent")
    h = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)
    await assert_refused(h, await h.exchange(), "legal-basis-refused", 403)


async def test_proactive_basis_honours_objections(database_url: str, aiohttp_client: Any, sandbox: str,
                                                  paris: Consumer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import asyncpg

    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    text = registry_toml([paris], provider_url=sandbox, basis="proactive")
    h = await start_broker(aiohttp_client, broker_config(tmp_path, database_url, text), paris)
    assert (await h.exchange()).status == 200
    [row] = await h.log_rows()
    conn = await asyncpg.connect(database_url)
    await conn.execute("INSERT INTO objections (id, subject_key, consumer) VALUES ($1, $2, $3)",
                       uuid.uuid4(), row["subject_key"], CONSUMER)
    await conn.close()
    await assert_refused(h, await h.exchange(), "legal-basis-refused", 403)


async def test_problem_answers_are_signed(broker: Harness) -> None:
    answer = await broker.exchange(exchange_body(purpose="curiosite"))
    assert answer.status == 403
    await broker.verify(answer)  # bound to the request's signature too


async def test_registry_changes_are_seen_without_restart(broker: Harness, database_url: str, sandbox: str) -> None:
    import asyncio

    from broker import registry
    from broker.storage import db

    lyon = consumer("21690123100011")
    conn = await db.connect(database_url)
    try:
        report = await registry.apply(conn, registry.parse_registry(
            registry_toml([broker.consumer, lyon], provider_url=sandbox)))
    finally:
        await conn.close()
    assert report.changed
    raw = json.dumps(exchange_body(recipient=lyon.siret)).encode()
    for _ in range(50):
        if broker.state().registry.current.version == report.version:
            break
        await asyncio.sleep(0.05)
    answer = await broker.send(raw, broker.signed_headers(raw, consumer=lyon))
    assert answer.status == 200, answer.body


# ------------------------------------------------------------------------------------- what an exchange waited for


def _sample(metrics: str, name: str) -> float | None:
    """The value of one sample of the Prometheus text (`name` with its labels), None when it is absent."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _metrics(broker: Harness) -> str:
    async with broker.client.get("/metrics") as resp:
        return await resp.text()


PROVIDER = 'dlnuf_provider_seconds_{}{{adapter="api-particulier",outcome="answered"}}'
TIMED_OUT = 'dlnuf_provider_seconds_{}{{adapter="api-particulier",outcome="provider-timeout"}}'
WAIT = 'dlnuf_exchange_database_wait_seconds_{}{{statement="{}"}}'


async def test_a_released_exchange_says_what_it_waited_for(broker: Harness) -> None:
    with structlog.testing.capture_logs() as lines:
        answer = await broker.exchange()
    assert answer.status == 200, answer.body
    [line] = [line for line in lines if line["event"] == "exchange released"]
    waits = {step: line[f"{step}_ms"] for step in ("claim", "provider", "log")}
    assert all(ms > 0 for ms in waits.values()), line
    # the three run one after the other inside the exchange, whose own time holds them all
    assert line["ms"] >= sum(waits.values()), line
    metrics = await _metrics(broker)
    assert _sample(metrics, PROVIDER.format("count")) == 1.0
    assert _sample(metrics, WAIT.format("count", "nonce_claim")) == 1.0
    assert _sample(metrics, WAIT.format("count", "access_log")) == 1.0
    # the metrics and the log line measured the same waits
    assert _sample(metrics, PROVIDER.format("sum")) == pytest.approx(waits["provider"] / 1000, abs=1e-6)
    assert _sample(metrics, WAIT.format("sum", "nonce_claim")) == pytest.approx(waits["claim"] / 1000, abs=1e-6)
    assert _sample(metrics, WAIT.format("sum", "access_log")) == pytest.approx(waits["log"] / 1000, abs=1e-6)


async def test_a_slow_provider_shows_in_its_latency(broker: Harness) -> None:
    with structlog.testing.capture_logs() as lines:
        await assert_refused(broker, await broker.exchange(exchange_body(pivot("panne-lenteur"))), "provider-timeout",
                             504)
    [line] = [line for line in lines if line["event"] == "exchange refused"]
    assert line["provider_ms"] >= 1000, line  # the adapter's timeout (the broker fixture's: 1 s), waited in full
    metrics = await _metrics(broker)
    # under its outcome: a timeout is not the provider's usual pace, nor is a fast "not found"
    assert _sample(metrics, TIMED_OUT.format("count")) == 1.0
    assert _sample(metrics, PROVIDER.format("count")) is None
    assert _sample(metrics, 'dlnuf_provider_seconds_bucket{adapter="api-particulier",le="0.5",'
                            'outcome="provider-timeout"}') == 0.0
    assert _sample(metrics, WAIT.format("count", "access_log")) == 1.0  # the refusal is logged, and waited for


async def test_a_refusal_before_the_provider_waits_for_no_provider(broker: Harness) -> None:
    await assert_refused(broker, await broker.exchange(exchange_body(purpose="curiosite")), "not-authorized", 403)
    metrics = await _metrics(broker)
    assert _sample(metrics, PROVIDER.format("count")) is None
    assert _sample(metrics, WAIT.format("count", "nonce_claim")) == 1.0
    assert _sample(metrics, WAIT.format("count", "access_log")) == 1.0


async def test_a_refusal_says_its_whole_time_and_a_replay_its_claim(broker: Harness) -> None:
    raw = _body(purpose="curiosite")
    headers = broker.signed_headers(raw)
    with structlog.testing.capture_logs() as lines:
        assert (await broker.send(raw, headers)).status == 403
    [line] = [line for line in lines if line["event"] == "exchange refused"]
    assert line["claim_ms"] > 0 and line["log_ms"] > 0, line  # written after the refusal's commit
    assert line["ms"] >= line["claim_ms"] + line["log_ms"], line
    assert "provider_ms" not in line
    # the same request again: its claim runs (and finds the nonce used) before the refusal, unauthenticated
    assert (await broker.send(raw, headers)).status == 401
    metrics = await _metrics(broker)
    assert _sample(metrics, WAIT.format("count", "nonce_claim")) == 2.0
    assert _sample(metrics, WAIT.format("count", "access_log")) == 1.0  # a replay is not an access-log entry
