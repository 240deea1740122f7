"""The consent flow end to end: a consumer sends the citizen to the broker, the citizen logs in (FranceConnect
sandbox), sees their actual values, unticks what they won't share, accepts or refuses; the consumer gets a
key-bound token and exchanges it for exactly what was agreed, once. Every refusal the issue lists is here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from broker.consumer.client import BrokerProblem, OAuthFailed
from broker.service.state import STATE
from broker.signing.keys import public_keys_from_jwks
from consent import receipts, tokens
from tests.consent_harness import CALLBACK, LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE, PURPOSE_LABEL, QF_FIELDS

PROBLEM = "https://dlnuf.org/problems/"


@pytest.fixture
async def stack(start_consent_stack: StartConsentStack) -> ConsentStack:  # noqa: F811
    return await start_consent_stack()


async def consent_and_token(stack: ConsentStack, browser: aiohttp.ClientSession, *, fields: tuple[str, ...] = QF_FIELDS,
                            untick: tuple[str, ...] = (), frequency: str = "one_time",
                            citizen: str = "dupont-marie-claire") -> tuple[Any, Any]:
    async with stack.client() as client:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=fields, frequency=frequency, duration_days=30)
        arrival = await stack.walk(browser, auth.url, untick=untick, citizen=citizen)
        assert arrival.params.get("state") == auth.state, arrival
        assert "code" in arrival.params, arrival
        token = await client.exchange_code(code=arrival.params["code"], code_verifier=auth.code_verifier,
                                           redirect_uri=CALLBACK)
        return auth, token


async def test_consent_then_one_exchange_of_exactly_what_was_agreed(stack: ConsentStack) -> None:
    async with stack.browser() as browser:
        _, token = await consent_and_token(stack, browser, untick=("adresse",))
    assert token.authorization_details[0]["fields"] == ["quotient_familial", "allocataires", "enfants"]
    async with stack.client() as client:
        answer = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                       fields=["quotient_familial", "enfants"], access_token=token.access_token)
        assert answer.data["quotient_familial"]["valeur"] == 582  # Marie Claire Dupont's household
        # one-time: the same token cannot serve twice
        with pytest.raises(BrokerProblem) as again:
            await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                  fields=["quotient_familial"], access_token=token.access_token)
        assert again.value.type == PROBLEM + "legal-basis-refused"
    [consent] = await stack.sql("SELECT * FROM consents")
    assert consent["state"] == "used_up" and consent["uses"] == 1
    assert list(consent["fields_refused"]) == ["adresse"]
    events = [r["event"] for r in await stack.sql("SELECT event FROM consent_events ORDER BY at")]
    assert events == ["given", "used"]
    rows = await stack.sql("SELECT purpose, consumer, outcome, subject_key FROM access_log ORDER BY seq")
    # the consent screen's preview, the exchange, and the refused second use: all logged, same citizen
    assert [(r["purpose"], r["outcome"]) for r in rows] == [
        ("apercu-consentement", "released"), (PURPOSE, "released"), (PURPOSE, "refused")]
    assert len({r["subject_key"] for r in rows}) == 1
    assert {r["consumer"] for r in rows} == {LYON}  # the preview is logged under the administration that asked


async def test_france_connect_mode_inside_a_consent_flow(stack: ConsentStack) -> None:
    """The consent carries the citizen's FranceConnect token (sealed): in FranceConnect mode the provider is asked
    with it, not with the identity; the entry is logged against the same citizen as by identity."""
    async with stack.browser() as browser:
        _, token = await consent_and_token(stack, browser, frequency="periodic")
    async with stack.client() as client:
        by_token = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                         fields=["quotient_familial"], access_token=token.access_token,
                                         france_connect=True)
        by_identity = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                            fields=["quotient_familial"], access_token=token.access_token)
        assert by_token.data == by_identity.data and by_token.data["quotient_familial"]["valeur"] == 582
    rows = await stack.sql("SELECT outcome, subject_key FROM access_log WHERE purpose = $1 ORDER BY seq", PURPOSE)
    assert [r["outcome"] for r in rows] == ["released", "released"]
    assert len({r["subject_key"] for r in rows}) == 1
    [consent] = await stack.sql("SELECT identity_ciphertext FROM consents")
    assert b"access_token" not in bytes(consent["identity_ciphertext"])  # sealed, never in clear


async def test_unticked_field_is_refused(stack: ConsentStack) -> None:
    async with stack.browser() as browser:
        _, token = await consent_and_token(stack, browser, untick=("adresse",), frequency="periodic")
    async with stack.client() as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                  fields=["adresse"], access_token=token.access_token)
        assert refused.value.type == PROBLEM + "legal-basis-refused"
        ok = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                   fields=["enfants"], access_token=token.access_token)
        assert set(ok.data) == {"enfants"}


async def test_refusal_is_recorded_and_reported_to_the_consumer(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        arrival = await stack.walk(browser, auth.url, decision="refuse")
    assert arrival.params["error"] == "access_denied" and arrival.params["state"] == auth.state
    [consent] = await stack.sql("SELECT state FROM consents")
    assert consent["state"] == "refused"


async def test_the_consent_screen_shows_who_what_why_and_the_actual_values(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=("quotient_familial",))
        async with browser.get(auth.url) as resp:  # follows to the OP's picker
            page = await resp.text()
        from yarl import URL

        from tests.adapters.test_franceconnect_sandbox import pick_citizen

        action, form = pick_citizen(page, "dupont-marie-claire")
        async with browser.post(resp.url.join(URL(action)), data=form) as resp:
            assert resp.status == 200 and "/oauth/consent/" in str(resp.url)
            html = await resp.text()
            csp = resp.headers["Content-Security-Policy"]
    assert "Commune " + LYON in html and LYON in html  # who asks
    assert PURPOSE_LABEL in html and PURPOSE not in html  # why, by its registry label
    assert "Votre consentement" in html  # on which basis
    assert ">582\u202f€<" in html  # the actual value, fetched for this citizen, as people write it
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "http://127.0.0.1:9" in csp


@pytest.mark.parametrize(
    ("change", "expect_page"),
    [({"client_id": "00000000000000"}, True), ({"redirect_uri": "https://evil.example/cb"}, True),
     ({"code_challenge_method": "plain"}, False), ({"code_challenge": None}, False),
     ({"authorization_details": '[{"type":"dlnuf_exchange","dataset":"quotient_familial","purpose":"x",'
                                '"fields":["quotient_familial"]}]'}, False),
     ({"authorization_details": '[{"type":"dlnuf_exchange","dataset":"quotient_familial",'
                                '"purpose":"tarification-restauration-scolaire","fields":["pointure"]}]'}, False)],
    ids=["unknown-client", "unregistered-redirect", "plain-pkce", "no-pkce", "purpose-outside", "field-outside"],
)
async def test_authorization_request_refusals(stack: ConsentStack, change: dict[str, Any], expect_page: bool) -> None:
    from urllib.parse import parse_qsl, urlencode, urlsplit

    async with stack.client() as client:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
    params = dict(parse_qsl(urlsplit(auth.url).query))
    params.update(change)
    url = stack.broker + "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})
    async with stack.browser() as browser, browser.get(url, allow_redirects=False) as resp:
        if expect_page:
            assert resp.status == 400 and "text/html" in resp.headers["Content-Type"]
            assert "Location" not in resp.headers  # never a redirect to an unverified URI
        else:
            assert resp.status == 302
            location = resp.headers["Location"]
            assert location.startswith(CALLBACK)
            error = dict(parse_qsl(urlsplit(location).query))["error"]
            assert error in ("invalid_request", "invalid_authorization_details")


async def test_code_reused_expired_or_wrong_verifier(stack: ConsentStack) -> None:
    async with stack.browser() as browser, stack.client() as client:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        code = (await stack.walk(browser, auth.url)).params["code"]
        with pytest.raises(OAuthFailed) as wrong:
            await client.exchange_code(code=code, code_verifier="x" * 50, redirect_uri=CALLBACK)
        assert wrong.value.error == "invalid_grant"
        # the failed attempt consumed the code: single use means single use
        with pytest.raises(OAuthFailed) as reused:
            await client.exchange_code(code=code, code_verifier=auth.code_verifier, redirect_uri=CALLBACK)
        assert reused.value.error == "invalid_grant"

        auth2 = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                             fields=QF_FIELDS)
        code2 = (await stack.walk(browser, auth2.url)).params["code"]
        await stack.sql("UPDATE authorization_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        with pytest.raises(OAuthFailed) as expired:
            await client.exchange_code(code=code2, code_verifier=auth2.code_verifier, redirect_uri=CALLBACK)
        assert expired.value.error == "invalid_grant" and "expired" in expired.value.description


async def test_token_endpoint_needs_the_clients_own_key(stack: ConsentStack) -> None:
    async with stack.browser() as browser, stack.client() as client:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        code = (await stack.walk(browser, auth.url)).params["code"]
    # Paris signs a client assertion claiming to be Lyon
    async with stack.client(stack.paris) as paris:
        paris.client_id = LYON
        with pytest.raises(OAuthFailed) as refused:
            await paris.exchange_code(code=code, code_verifier=auth.code_verifier, redirect_uri=CALLBACK)
    # 400, not 401: private_key_jwt is no HTTP authentication scheme, so there is no challenge (RFC 6749 §5.2)
    assert refused.value.status == 400 and refused.value.error == "invalid_client"
    assert refused.value.description == "client authentication failed"  # which check failed is for the log


async def test_token_presented_with_another_consumers_key_or_expired(stack: ConsentStack) -> None:
    async with stack.browser() as browser:
        _, token = await consent_and_token(stack, browser, frequency="periodic")
    async with stack.client(stack.paris) as paris:
        # Paris has its own consent-based habilitation, so what refuses is the token's binding to Lyon's key
        with pytest.raises(BrokerProblem) as stolen:
            await paris.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=stack.paris.siret,
                                 fields=["quotient_familial"], access_token=token.access_token)
    assert stolen.value.type == PROBLEM + "invalid-token"
    assert "detail" not in stolen.value.problem

    state = stack.app[STATE]
    claims = tokens.verify_access_token(token.access_token, broker_key=state.signing_key.public_key(owner="b"),
                                        issuer=stack.broker, now=datetime.now(UTC))
    old, _ = tokens.issue_access_token(signing_key=state.signing_key, issuer=stack.broker,
                                       consent_ids=claims.consent_ids, client_id=LYON, jkt=claims.jkt,
                                       authorization_details=claims.authorization_details,
                                       now=datetime.now(UTC) - timedelta(hours=1))
    async with stack.client() as client:
        with pytest.raises(BrokerProblem) as expired:
            await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                  fields=["quotient_familial"], access_token=old)
    assert expired.value.type == PROBLEM + "invalid-token"


async def test_exchange_without_consent_is_refused(stack: ConsentStack) -> None:
    from tests.broker_harness import pivot

    async with stack.client() as client:
        with pytest.raises(BrokerProblem) as refused:
            await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                  fields=["quotient_familial"], subject=pivot("dupont-marie-claire"))
    assert refused.value.type == PROBLEM + "legal-basis-refused"


async def test_revocation_expiry_and_refresh(stack: ConsentStack) -> None:
    async with stack.browser() as browser:
        _, token = await consent_and_token(stack, browser, frequency="periodic")
        assert token.refresh_token
        async with stack.client() as client:
            refreshed = await client.refresh(token.refresh_token)
            await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                  fields=["quotient_familial"], access_token=refreshed.access_token)
            # the citizen revokes from their API: the very next exchange is refused
            async with browser.get(stack.broker + "/citizen/api/consents") as resp:
                [consent] = (await resp.json())["consents"]
            csrf = await _csrf(stack, browser)
            async with browser.post(f"{stack.broker}/citizen/api/consents/{consent['id']}/revoke",
                                    headers={"X-CSRF-Token": csrf}) as resp:
                assert resp.status == 200 and (await resp.json())["state"] == "revoked"
            with pytest.raises(BrokerProblem) as revoked:
                await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                      fields=["quotient_familial"], access_token=refreshed.access_token)
            assert revoked.value.type == PROBLEM + "legal-basis-refused"
            with pytest.raises(OAuthFailed):
                await client.refresh(token.refresh_token)

        _, token2 = await consent_and_token(stack, browser, frequency="periodic")
        await stack.sql("UPDATE consents SET expires_at = now() - interval '1 second' WHERE state = 'active'")
        async with stack.client() as client:
            with pytest.raises(BrokerProblem) as expired:
                await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                      fields=["quotient_familial"], access_token=token2.access_token)
        assert expired.value.type == PROBLEM + "legal-basis-refused"
        # the housekeeping sweep then makes the record say so, with the event's timestamp
        from consent import records

        await records.expire_due(stack.app[STATE].pool, datetime.now(UTC))
        rows = await stack.sql("SELECT c.state, e.event FROM consents c JOIN consent_events e ON e.consent_id = c.id "
                               "WHERE e.event = 'expired'")
        assert [(r["state"], r["event"]) for r in rows] == [("expired", "expired")]


async def _csrf(stack: ConsentStack, browser: aiohttp.ClientSession) -> str:
    """The session's CSRF token, as a page of the broker gives it (the account page's logout form)."""
    from tests.adapters.test_franceconnect_sandbox import parse_forms

    async with browser.get(stack.broker + "/citizen/") as resp:
        forms = parse_forms(await resp.text())
    return next(f.fields["csrf"] for f in forms if "csrf" in f.fields)


async def test_receipt_verifies_with_the_public_jwks_and_citizens_are_kept_apart(stack: ConsentStack) -> None:
    async with stack.browser() as marie, stack.browser() as jean:
        await consent_and_token(stack, marie, frequency="periodic")
        async with marie.get(stack.broker + "/citizen/api/consents") as resp:
            [mine] = (await resp.json())["consents"]
        async with marie.get(f"{stack.broker}/citizen/api/consents/{mine['id']}/receipt") as resp:
            receipt = await resp.text()
        async with marie.get(stack.broker + "/.well-known/jwks.json") as resp:
            keys = {k.kid: k for k in public_keys_from_jwks(await resp.json(), owner="broker")}
        claims = receipts.verify_receipt(receipt, keys)
        assert claims["record_id"] == mine["id"] and claims["dpv:hasLegalBasis"]["type"] == "dpv:Consent"
        assert claims["dpv:hasPersonalData"] == list(QF_FIELDS)
        tampered = receipt[:-4] + ("AAAA" if not receipt.endswith("AAAA") else "BBBB")
        with pytest.raises(Exception):  # noqa: B017 - any verification failure
            receipts.verify_receipt(tampered, keys)

        # Jean-Baptiste logs in and tries Marie Claire's consent: unknown to him
        await consent_and_token(stack, jean, citizen="rousseau-jean-baptiste")
        async with jean.get(stack.broker + "/citizen/api/consents") as resp:
            theirs = (await resp.json())["consents"]
        assert [c["id"] for c in theirs] != [mine["id"]] and all(c["id"] != mine["id"] for c in theirs)
        for path in (f"/citizen/api/consents/{mine['id']}", f"/citizen/api/consents/{mine['id']}/receipt"):
            async with jean.get(stack.broker + path) as resp:
                assert resp.status == 404
        csrf = await _csrf(stack, jean)
        async with jean.post(f"{stack.broker}/citizen/api/consents/{mine['id']}/revoke",
                             headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 404
        [row] = await stack.sql("SELECT state FROM consents WHERE id = $1::uuid", mine["id"])
        assert row["state"] == "active"


async def test_citizen_api_needs_login_and_csrf(stack: ConsentStack) -> None:
    async with stack.browser() as anonymous, anonymous.get(stack.broker + "/citizen/api/consents") as resp:
        assert resp.status == 401
        assert (await resp.json())["type"] == PROBLEM + "citizen-login-required"
    async with stack.browser() as browser:
        await consent_and_token(stack, browser, frequency="periodic")
        async with browser.get(stack.broker + "/citizen/api/consents") as resp:
            [mine] = (await resp.json())["consents"]
        async with browser.post(f"{stack.broker}/citizen/api/consents/{mine['id']}/revoke") as resp:
            assert resp.status == 403
            assert (await resp.json())["type"] == PROBLEM + "csrf-failed"


async def test_objections_through_the_citizen_api(stack: ConsentStack) -> None:
    async with stack.browser() as browser:
        await consent_and_token(stack, browser)
        csrf = await _csrf(stack, browser)
        async with browser.post(stack.broker + "/citizen/api/objections", json={"consumer": LYON},
                                headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 201
        async with browser.get(stack.broker + "/citizen/api/objections") as resp:
            body = await resp.json()
        [objection] = body["objections"]
        assert objection["consumer"] == LYON
        async with browser.delete(f"{stack.broker}/citizen/api/objections/{objection['id']}",
                                  headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 200
        async with browser.get(stack.broker + "/citizen/api/objections") as resp:
            assert (await resp.json())["objections"] == []
