"""A pending consent request: several authorization_details (RFC 9396) decided at once, bound to the browser (and
the citizen session) that opened it, and a cancel at the OP that reaches the client as access_denied with its
state (RFC 6749 §4.1.2.1)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from yarl import URL

from broker.consumer.client import BrokerClient, BrokerProblem
from tests.adapters.test_franceconnect_sandbox import parse_forms, pick_citizen
from tests.consent_harness import CALLBACK, LYON, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE, QF_FIELDS

PROBLEM = "https://dlnuf.org/problems/"
CSS = "complementaire_sante_solidaire"
CSS_FIELDS = ("est_beneficiaire", "avec_participation", "date_debut_droit")


@pytest.fixture
async def stack(start_consent_stack: StartConsentStack) -> ConsentStack:  # noqa: F811
    return await start_consent_stack(extra_datasets={CSS: CSS_FIELDS})


def two_objects(client: BrokerClient, **first: Any) -> tuple[str, str, str]:
    """An authorization URL asking two datasets at once; (url, state, code verifier)."""
    auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                        fields=QF_FIELDS)
    params = dict(parse_qsl(urlsplit(auth.url).query))
    details = json.loads(params["authorization_details"])
    details[0].update(first)
    details.append({"type": "dlnuf_exchange", "dataset": CSS, "purpose": PURPOSE, "fields": list(CSS_FIELDS),
                    "frequency": "periodic", "duration_days": 90})
    params["authorization_details"] = json.dumps(details)
    return client.base_url + "/oauth/authorize?" + urlencode(params), auth.state, auth.code_verifier


async def open_screen(stack: ConsentStack, browser: aiohttp.ClientSession, url: str,
                      citizen: str = "dupont-marie-claire") -> tuple[URL, str]:
    """Follow the authorization request through the OP's picker to the consent screen; (its URL, its page)."""
    async with browser.get(url) as resp:
        action, form = pick_citizen(await resp.text(), citizen)
        picker = resp.url
    async with browser.post(picker.join(URL(action)), data=form) as resp:
        assert resp.status == 200 and "/oauth/consent/" in resp.url.path, await resp.text()
        return resp.url, await resp.text()


async def login_as(stack: ConsentStack, browser: aiohttp.ClientSession, citizen: str) -> None:
    async with browser.get(stack.broker + "/citizen/login") as resp:
        action, form = pick_citizen(await resp.text(), citizen)
        picker = resp.url
    async with browser.post(picker.join(URL(action)), data=form) as resp:
        assert resp.status == 200 and resp.url == URL(stack.broker + "/citizen/")


# ------------------------------------------------------------------------------------------ several objects


async def test_several_authorization_details_one_decision_one_consent_each(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        url, state, verifier = two_objects(client)
        screen, page = await open_screen(stack, browser, url)
        assert "Demande 1 sur 2" in page and "Demande 2 sur 2" in page
        # she shares her QF without the address, and her C2S status only
        [form] = [f for f in parse_forms(page) if f.method == "post"]
        kept = [v for v in form.choices["fields"] if v not in ("0:adresse", "1:avec_participation",
                                                               "1:date_debut_droit")]
        data = [("csrf", form.fields["csrf"]), ("decision", "accept"), *[("fields", v) for v in kept]]
        async with browser.post(screen.join(URL(form.action)), data=data, allow_redirects=False) as resp:
            back = dict(parse_qsl(urlsplit(resp.headers["Location"]).query))
        assert back["state"] == state and back["iss"] == stack.broker
        token = await client.exchange_code(code=back["code"], code_verifier=verifier, redirect_uri=CALLBACK)
        granted = {d["dataset"]: d for d in token.authorization_details}
        assert granted["quotient_familial"]["fields"] == ["quotient_familial", "allocataires", "enfants"]
        assert granted[CSS]["fields"] == ["est_beneficiaire"] and granted[CSS]["frequency"] == "periodic"
        assert token.refresh_token  # for the periodic one

        # one token, two consents: each exchange stands on its own
        qf = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                   fields=["quotient_familial"], access_token=token.access_token)
        css = await client.exchange(dataset=CSS, purpose=PURPOSE, recipient=LYON, fields=["est_beneficiaire"],
                                    access_token=token.access_token)
        assert qf.data["quotient_familial"]["valeur"] == 582 and css.data == {"est_beneficiaire": True}
        with pytest.raises(BrokerProblem) as refused:  # unticked
            await client.exchange(dataset=CSS, purpose=PURPOSE, recipient=LYON, fields=["avec_participation"],
                                  access_token=token.access_token)
        assert refused.value.type == PROBLEM + "legal-basis-refused"
        # the refresh token carries on with what is still in force: the periodic one (the one-time one is used)
        refreshed = await client.refresh(token.refresh_token)
        assert [d["dataset"] for d in refreshed.authorization_details] == [CSS]
    rows = await stack.sql("SELECT dataset, state, fields, fields_refused FROM consents ORDER BY dataset")
    assert [(r["dataset"], r["state"]) for r in rows] == [(CSS, "active"), ("quotient_familial", "used_up")]


async def test_an_object_with_nothing_ticked_is_a_refused_consent(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        url, _, verifier = two_objects(client)
        arrival = await stack.walk(browser, url, untick=CSS_FIELDS)
        token = await client.exchange_code(code=arrival.params["code"], code_verifier=verifier, redirect_uri=CALLBACK)
    assert [d["dataset"] for d in token.authorization_details] == ["quotient_familial"]
    assert token.refresh_token is None
    rows = await stack.sql("SELECT dataset, state FROM consents ORDER BY dataset")
    assert [(r["dataset"], r["state"]) for r in rows] == [(CSS, "refused"), ("quotient_familial", "active")]


async def test_two_objects_for_the_same_dataset_purpose_and_recipient_are_refused(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        url, state, _ = two_objects(client)
        params = dict(parse_qsl(urlsplit(url).query))
        details = json.loads(params["authorization_details"])
        params["authorization_details"] = json.dumps([details[0], details[0]])
        async with browser.get(stack.broker + "/oauth/authorize?" + urlencode(params), allow_redirects=False) as resp:
            back = dict(parse_qsl(urlsplit(resp.headers["Location"]).query))
    assert back["error"] == "invalid_authorization_details" and back["state"] == state


# ------------------------------------------------------------------------------------------ bound to the browser


async def test_another_browser_gets_a_page_never_a_code(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as marie, stack.browser() as jean:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        async with marie.get(auth.url, allow_redirects=False) as resp:
            consent_url = str(URL(stack.broker).join(URL(resp.headers["Location"])))
        # Jean, logged in on his own browser, learnt the consent URL: no screen, no login detour
        await login_as(stack, jean, "rousseau-jean-baptiste")
        async with jean.get(consent_url, allow_redirects=False) as resp:
            assert resp.status == 403 and "Location" not in resp.headers
            assert "Demande ouverte ailleurs" in await resp.text()
        # nor can he decide it with his own session's CSRF token
        async with jean.get(stack.broker + "/citizen/") as resp:
            csrf = next(f.fields["csrf"] for f in parse_forms(await resp.text()) if "csrf" in f.fields)
        async with jean.post(consent_url, data={"csrf": csrf, "decision": "accept", "fields": "0:quotient_familial"},
                             allow_redirects=False) as resp:
            assert resp.status == 403 and "Location" not in resp.headers
        assert await stack.sql("SELECT * FROM consents") == []
        # Marie's own browser still goes through, and the code is hers
        arrival = await stack.walk(marie, consent_url)
        token = await client.exchange_code(code=arrival.params["code"], code_verifier=auth.code_verifier,
                                           redirect_uri=CALLBACK)
        answer = await client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                       fields=["quotient_familial"], access_token=token.access_token)
        assert answer.data["quotient_familial"]["valeur"] == 582


async def test_a_later_session_in_the_same_browser_is_refused(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        screen, _ = await open_screen(stack, browser, auth.url)  # Marie's session claims it
        # she logs out; Jean-Baptiste logs in on the same browser and reopens the screen
        async with browser.get(stack.broker + "/citizen/") as resp:
            logout = next(f for f in parse_forms(await resp.text()) if f.action == "/citizen/logout")
        async with browser.post(stack.broker + logout.action, data=logout.fields) as resp:
            assert resp.status == 200
        await login_as(stack, browser, "rousseau-jean-baptiste")
        async with browser.get(screen, allow_redirects=False) as resp:
            assert resp.status == 403 and "Demande ouverte ailleurs" in await resp.text()
    assert await stack.sql("SELECT * FROM consents") == []


# ------------------------------------------------------------------------------------------ cancel


async def test_cancel_at_the_op_reaches_the_client_with_its_state(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        arrival = await stack.walk(browser, auth.url, at_the_op="cancel")
        assert arrival.params == {"error": "access_denied", "error_description": "the citizen cancelled the login",
                                  "state": auth.state, "iss": stack.broker}
        # the request is over: the same consent URL now says so
        [row] = await stack.sql("SELECT id, decided_at FROM authorization_requests")
        assert row["decided_at"] is not None
        async with browser.get(f"{stack.broker}/oauth/consent/{row['id']}", allow_redirects=False) as resp:
            assert resp.status == 404
    assert await stack.sql("SELECT * FROM consents") == []


async def test_a_cancel_from_another_browser_does_not_reach_the_client(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as victim, stack.browser() as attacker:
        auth = client.authorization_request(redirect_uri=CALLBACK, dataset="quotient_familial", purpose=PURPOSE,
                                            fields=QF_FIELDS)
        async with victim.get(auth.url, allow_redirects=False) as resp:
            consent_path = resp.headers["Location"]
        # the attacker starts a login that would come back to the victim's request, and cancels at the OP
        async with attacker.get(stack.broker + "/citizen/login", params={"next": consent_path}) as resp:
            action, form = pick_citizen(await resp.text(), "rousseau-jean-baptiste", "cancel")
            picker = resp.url
        async with attacker.post(picker.join(URL(action)), data=form) as resp:
            assert resp.status == 400 and "Connexion annulée" in await resp.text()
            assert all(auth.state not in str(r.headers.get("Location", "")) for r in resp.history)
        # the victim's request is untouched
        [row] = await stack.sql("SELECT decided_at FROM authorization_requests")
        assert row["decided_at"] is None


async def test_refusing_on_the_screen_reaches_the_client_with_its_state(stack: ConsentStack) -> None:
    async with stack.client() as client, stack.browser() as browser:
        url, state, _ = two_objects(client)
        arrival = await stack.walk(browser, url, decision="refuse")
    assert arrival.params["error"] == "access_denied" and arrival.params["state"] == state
    rows = await stack.sql("SELECT state FROM consents")
    assert [r["state"] for r in rows] == ["refused", "refused"]
