"""Citizens' e-mail notifications, end to end on a real SMTP server (aiosmtpd): a citizen chooses them in the portal,
an exchange about them arrives in their mailbox, the preview of the consent screen does not, unsubscribing works
from the mail without logging in, and nothing is lost while the relay is down."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import aiohttp
import pytest
from yarl import URL

from adapters.sandbox.mailbox import MailCatcher
from broker.app import MAIL_WORKER
from broker.consumer.client import BrokerClient, BrokerProblem
from broker.notify import links
from broker.notify.worker import Mailer, from_config
from broker.service.state import STATE
from tests.adapters.test_franceconnect_sandbox import parse_forms, pick_citizen
from tests.broker_harness import pivot
from tests.consent_harness import LYON, MAIL_FROM, PARIS, ConsentStack, StartConsentStack, start_consent_stack  # noqa: F401
from tests.factories import PURPOSE

MARIE = "dupont-marie-claire"
MARIE_MAIL = f"{MARIE}@fictif.invalid"  # the sandbox OP's email claim
NAMES = {LYON: "Ville de Lyon", PARIS: "Ville de Paris"}


@pytest.fixture
async def catcher() -> AsyncIterator[MailCatcher]:
    mailbox = MailCatcher()
    await mailbox.start()
    yield mailbox
    await mailbox.stop()


async def _stack(start: StartConsentStack, catcher: MailCatcher) -> ConsentStack:
    # retries come quickly here, so a relay down for a few seconds sees several attempts
    return await start(bases={LYON: "consent", PARIS: "proactive"}, names=NAMES, smtp_port=catcher.port,
                       outbox_backoff=0.2, outbox_max_backoff=1.0)


async def _logged_in(stack: ConsentStack, citizen: str = MARIE) -> aiohttp.ClientSession:
    browser = stack.browser()
    async with browser.get(stack.broker + "/citizen/login?next=/citizen/notifications") as resp:
        page, url = await resp.text(), resp.url
    action, form = pick_citizen(page, citizen)
    async with browser.post(url.join(URL(action)), data=form) as resp:
        assert resp.status == 200 and resp.url == URL(stack.broker + "/citizen/notifications")
    return browser


async def _choose(stack: ConsentStack, browser: aiohttp.ClientSession, mode: str, address: str) -> str:
    async with browser.get(stack.broker + links.SETTINGS_PATH) as resp:
        [form] = [f for f in parse_forms(await resp.text()) if f.action == links.SETTINGS_PATH]
    async with browser.post(stack.broker + links.SETTINGS_PATH,
                            data={"csrf": form.fields["csrf"], "mode": mode, "adresse": address}) as resp:
        assert resp.status == 200
        return await resp.text()


async def _paris_exchange(stack: ConsentStack, citizen: str = MARIE) -> None:
    async with BrokerClient(stack.broker, key=stack.paris.key, client_id=PARIS) as paris:
        await paris.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=PARIS,
                             fields=["quotient_familial"], subject=pivot(citizen))


async def _until(stack: ConsentStack, query: str, *, rows: int = 1) -> None:
    """Wait (20 s at most) until `query` returns at least `rows` rows, or none when `rows` is 0."""
    async with asyncio.timeout(20):
        while True:
            found = len(await stack.sql(query))
            if (found >= rows) if rows else not found:
                return
            await asyncio.sleep(0.1)


async def _settled(stack: ConsentStack) -> None:
    """Every released entry fanned out and every queued mail done (sent or given up)."""
    await _until(stack, "SELECT 1 FROM notification_outbox WHERE mail_fanned_out_at IS NULL UNION ALL "
                        "SELECT 1 FROM mail_outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL", rows=0)


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_each_access_is_mailed_and_unsubscribing_needs_no_login(
        start_consent_stack: StartConsentStack, catcher: MailCatcher) -> None:  # noqa: F811
    stack = await _stack(start_consent_stack, catcher)
    async with await _logged_in(stack) as marie:
        page = await _choose(stack, marie, "each", MARIE_MAIL)
        # the address FranceConnect gave needs no confirmation
        assert "Votre choix est enregistré" in page and f"prévenu·e à l'adresse <strong>{MARIE_MAIL}" in page

    await _paris_exchange(stack)
    async with asyncio.timeout(15):
        [mail] = await catcher.wait_for(1)
    assert mail["To"] == MARIE_MAIL and mail["From"] == MAIL_FROM
    assert mail["Subject"] == "Ville de Paris a obtenu vos données « Quotient familial CAF ou MSA »"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    body = _body(mail)
    today = datetime.now(UTC).astimezone().date()
    assert f"{stack.broker}/citizen/journal?du=" in body
    # nothing about her beyond the administration and the dataset: no value, no field, no name (checked outside
    # the broker's own address, whose random port may hold the digits of her quotient, e.g. 127.0.0.1:55829)
    text = body.replace(stack.broker, "")
    for personal in ("582", "DUPONT", "Marie", "Valeur du quotient familial", "quotient_familial"):
        assert personal not in text, personal
    assert str(today.year) in body

    # the consent screen's preview is shown to her, not told to her; Lyon's exchange under her consent is
    async with stack.client(stack.lyon) as lyon, stack.browser() as browser:
        auth = lyon.authorization_request(redirect_uri=stack.callback, dataset="quotient_familial", purpose=PURPOSE,
                                          fields=["quotient_familial"], frequency="one_time", duration_days=1)
        arrival = await stack.walk(browser, auth.url, citizen=MARIE)
        token = await lyon.exchange_code(code=arrival.params["code"], code_verifier=auth.code_verifier,
                                         redirect_uri=stack.callback)
        await lyon.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                            fields=["quotient_familial"], access_token=token.access_token)
    await _settled(stack)
    assert [m["Subject"] for m in catcher.messages][1:] == [
        "Ville de Lyon a obtenu vos données « Quotient familial CAF ou MSA »"]
    previews = await stack.sql("SELECT count(*) AS n FROM access_log WHERE purpose = 'apercu-consentement'")
    assert previews[0]["n"] == 1  # the preview was logged, and not mailed

    # a refusal is not an access that released anything: no mail either
    async with BrokerClient(stack.broker, key=stack.lyon.key, client_id=LYON) as lyon_client:
        with pytest.raises(BrokerProblem) as refused:
            await lyon_client.exchange(dataset="quotient_familial", purpose=PURPOSE, recipient=LYON,
                                       fields=["quotient_familial"], subject=pivot(MARIE))
        assert refused.value.type.endswith("/legal-basis-refused")
    await _settled(stack)
    assert len(catcher.messages) == 2

    # « Se désabonner » from the mail, in a browser that never logged in: the page, then the button
    unsubscribe = re.search(r"<(.+)>", str(mail["List-Unsubscribe"]))
    assert unsubscribe is not None and unsubscribe[1] in body
    async with stack.browser() as stranger:
        async with stranger.get(unsubscribe[1]) as resp:
            assert resp.status == 200 and "Me désabonner" in await resp.text()
        assert await stack.sql("SELECT id FROM mail_subscriptions")  # looking at the page changed nothing
        # what mail software does (RFC 8058): a POST with List-Unsubscribe=One-Click
        async with stranger.post(unsubscribe[1], data={"List-Unsubscribe": "One-Click"}) as resp:
            assert resp.status == 200 and "Vous êtes désabonné·e" in await resp.text()
        async with stranger.post(unsubscribe[1]) as resp:  # again: already done, same answer
            assert resp.status == 200
        forged = unsubscribe[1][:-3] + ("AAA" if not unsubscribe[1].endswith("AAA") else "BBB")
        async with stranger.post(forged) as resp:
            assert resp.status == 404
    assert await stack.sql("SELECT id FROM mail_subscriptions") == []  # her address is gone with it
    await _paris_exchange(stack)
    await _settled(stack)
    assert len(catcher.messages) == 2


async def test_nothing_is_lost_while_the_relay_is_down(start_consent_stack: StartConsentStack,  # noqa: F811
                                                        catcher: MailCatcher) -> None:
    stack = await _stack(start_consent_stack, catcher)
    async with await _logged_in(stack) as marie:
        await _choose(stack, marie, "each", MARIE_MAIL)
    await catcher.stop()
    for _ in range(3):
        await _paris_exchange(stack)
    # the relay refuses connections: each mail is attempted, fails, and waits for its next attempt
    await _until(stack, "SELECT id FROM mail_outbox WHERE attempts >= 2 AND last_error IS NOT NULL", rows=3)
    assert catcher.messages == []
    [errors] = await stack.sql("SELECT array_agg(DISTINCT split_part(last_error, ':', 1)) AS e FROM mail_outbox")
    assert errors["e"] == ["relay unreachable"]

    await catcher.start()  # back, on the same port
    async with asyncio.timeout(20):
        await catcher.wait_for(3)
    await _settled(stack)
    assert len(catcher.messages) == 3  # each exchange once, none twice
    assert len({m["Message-ID"] for m in catcher.messages}) == 3
    sent = await stack.sql("SELECT attempts FROM mail_outbox WHERE delivered_at IS NOT NULL")
    assert len(sent) == 3 and all(r["attempts"] >= 2 for r in sent)


async def test_a_queued_mail_survives_a_restart(start_consent_stack: StartConsentStack,  # noqa: F811
                                                catcher: MailCatcher) -> None:
    stack = await _stack(start_consent_stack, catcher)
    async with await _logged_in(stack) as marie:
        await _choose(stack, marie, "each", MARIE_MAIL)
    await catcher.stop()
    await _paris_exchange(stack)
    await _until(stack, "SELECT id FROM mail_outbox WHERE last_error IS NOT NULL")
    # the broker's mail worker dies; another process (or this one, restarted) finds the mail in PostgreSQL
    worker = stack.app[MAIL_WORKER]
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await catcher.start()
    state = stack.app[STATE]
    other = from_config(state.config, state.pool, sealer=state.sealer, subject_secret=state.subject_secret,
                        registry=lambda: state.registry.current, metrics=None)
    assert isinstance(other, Mailer)
    await stack.sql("UPDATE mail_outbox SET next_attempt_at = now()")  # its retry is due, rather than waiting
    assert await other.run_once() == 1
    assert len(catcher.messages) == 1 and catcher.messages[0]["To"] == MARIE_MAIL
    assert await stack.sql("SELECT id FROM mail_outbox WHERE delivered_at IS NULL") == []


async def test_a_typed_address_is_used_once_confirmed(start_consent_stack: StartConsentStack,  # noqa: F811
                                                      catcher: MailCatcher) -> None:
    stack = await _stack(start_consent_stack, catcher)
    async with await _logged_in(stack) as marie:
        page = await _choose(stack, marie, "each", "autre.adresse@exemple.fr")
        assert "Adresse à confirmer" in page and "autre.adresse@exemple.fr" in page
    async with asyncio.timeout(15):
        [confirmation] = await catcher.wait_for(1)
    assert confirmation["To"] == "autre.adresse@exemple.fr" and confirmation["List-Unsubscribe"] is None
    await _paris_exchange(stack)  # before the confirmation: nothing for that address
    await _settled(stack)
    assert len(catcher.messages) == 1

    confirm = re.search(r"(http://\S+/confirmer/\S+)", _body(confirmation))
    assert confirm is not None
    async with stack.browser() as mailbox_owner:  # the link works from any browser, without logging in
        async with mailbox_owner.get(confirm[1]) as resp:
            page = await resp.text()
            assert resp.status == 200 and "Oui, confirmer mon adresse" in page
        assert (await stack.sql("SELECT confirmed_at FROM mail_subscriptions"))[0]["confirmed_at"] is None
        async with mailbox_owner.post(confirm[1]) as resp:
            assert resp.status == 200 and "Adresse confirmée" in await resp.text()
        async with mailbox_owner.post(confirm[1]) as resp:  # a link serves once
            assert resp.status == 404
        wrong = confirm[1].replace("/confirmer/", "/desabonnement/")  # a confirm token is not an unsubscribe one
        async with mailbox_owner.post(wrong) as resp:
            assert resp.status == 404
    await _paris_exchange(stack)
    async with asyncio.timeout(15):
        mails = await catcher.wait_for(2)
    assert mails[1]["To"] == "autre.adresse@exemple.fr"
    assert "Ville de Paris a obtenu vos données" in str(mails[1]["Subject"])
    # the address is sealed at rest
    [row] = await stack.sql("SELECT address_sealed FROM mail_subscriptions")
    assert b"autre.adresse" not in bytes(row["address_sealed"])


async def test_a_wrong_address_is_pointed_out(start_consent_stack: StartConsentStack,  # noqa: F811
                                              catcher: MailCatcher) -> None:
    stack = await _stack(start_consent_stack, catcher)
    async with await _logged_in(stack) as marie:
        async with marie.get(stack.broker + links.SETTINGS_PATH) as resp:
            [form] = [f for f in parse_forms(await resp.text()) if f.action == links.SETTINGS_PATH]
        async with marie.post(stack.broker + links.SETTINGS_PATH,
                              data={"csrf": form.fields["csrf"], "mode": "each", "adresse": "pas une adresse"}) as r:
            assert r.status == 400
            assert 'aria-invalid="true"' in await r.text()
        async with marie.post(stack.broker + links.SETTINGS_PATH,
                              data={"csrf": "x" * 43, "mode": "each", "adresse": MARIE_MAIL},
                              allow_redirects=False) as r:
            assert r.status == 403
    assert await stack.sql("SELECT id FROM mail_subscriptions") == []


async def test_weekly_digest(start_consent_stack: StartConsentStack, catcher: MailCatcher) -> None:  # noqa: F811
    stack = await _stack(start_consent_stack, catcher)
    async with await _logged_in(stack) as marie:
        await _choose(stack, marie, "weekly", MARIE_MAIL)
    await _paris_exchange(stack)
    await _paris_exchange(stack)
    await _settled(stack)
    assert catcher.messages == []  # no mail per access
    state = stack.app[STATE]
    mailer = from_config(state.config, state.pool, sealer=state.sealer, subject_secret=state.subject_secret,
                         registry=lambda: state.registry.current, metrics=None)
    assert mailer is not None
    week_later = datetime.now(UTC) + timedelta(days=7, minutes=1)
    assert await mailer.schedule_digests(week_later) == 1
    assert await mailer.schedule_digests(week_later) == 0  # its next week has only begun
    await _settled(stack)
    [digest] = catcher.messages
    assert digest["Subject"] == "Vos données cette semaine : 2 accès"
    body = _body(digest)
    assert body.count("Ville de Paris, « Quotient familial CAF ou MSA »") == 2
    assert "582" not in body.replace(stack.broker, "")  # her quotient, not the digits of a random port
    # a week without access sends nothing
    assert await mailer.schedule_digests(week_later + timedelta(days=7, minutes=1)) == 1
    await _settled(stack)
    assert len(catcher.messages) == 1
