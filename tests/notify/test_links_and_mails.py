"""The pieces of citizens' notifications: signed link tokens, the mails' headers and words, the relay settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from broker.config import ConfigError, load_config
from broker.notify import links, mails, subscriptions

KEY = links.link_key(b"s" * 32)
NOW = datetime(2026, 12, 2, 7, 30, tzinfo=UTC)
SENDER = "Mes données <ne-pas-repondre@dlnuf.test>"


def test_a_link_names_one_subscription_for_one_action() -> None:
    sub = uuid.uuid4()
    token = links.sign(KEY, links.UNSUBSCRIBE, sub)
    assert links.verify(KEY, links.UNSUBSCRIBE, token) == sub
    with pytest.raises(links.InvalidLink):
        links.verify(KEY, links.CONFIRM, token)  # an unsubscribe link does not confirm
    with pytest.raises(links.InvalidLink):
        links.verify(links.link_key(b"t" * 32), links.UNSUBSCRIBE, token)  # another broker's key
    other = links.sign(KEY, links.UNSUBSCRIBE, uuid.uuid4())
    with pytest.raises(links.InvalidLink):
        links.verify(KEY, links.UNSUBSCRIBE, other[:22] + token[22:])  # a valid MAC moved to another id
    # the same bytes spelled otherwise: the last character's spare bits set, or a character the decoder would drop
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    respelled = [token[:-1] + alphabet[last ^ bits] for bits in (1, 2, 3)] + [token[:20] + "." + token[20:]]
    for bad in ("", "x" * 43, token + "A", "é" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), *respelled):
        with pytest.raises(links.InvalidLink):
            links.verify(KEY, links.UNSUBSCRIBE, bad)


def test_an_access_mail_says_who_and_what_and_nothing_personal() -> None:
    access = mails.Access(logged_at=NOW, consumer_name="Ville de Paris", dataset_title="Quotient familial CAF ou MSA")
    link = mails.Links("https://mes-donnees.example.gouv.fr", "https://mes-donnees.example.gouv.fr/u/T")
    message = mails.access_mail(sender=SENDER, to="marie@example.fr", access=access, links=link, now=NOW)
    assert message["Subject"] == "Ville de Paris a obtenu vos données « Quotient familial CAF ou MSA »"
    assert message["List-Unsubscribe"] == "<https://mes-donnees.example.gouv.fr/u/T>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"].endswith("@dlnuf.test>")
    body = message.get_content()
    assert "Le 2 décembre 2026, Ville de Paris a obtenu vos données « Quotient familial CAF ou MSA »" in body
    assert "https://mes-donnees.example.gouv.fr/citizen/journal?du=2026-12-02&au=2026-12-02" in body
    assert "https://mes-donnees.example.gouv.fr/u/T" in body
    assert message.get_content_charset() == "utf-8"


def test_a_digest_counts_and_lists() -> None:
    accesses = [mails.Access(NOW, "Ville de Paris", "Quotient familial")] * 60
    link = mails.Links("https://x.example", "https://x.example/u/T")
    message = mails.digest_mail(sender=SENDER, to="m@example.fr", accesses=accesses, start=NOW, end=NOW, links=link,
                                now=NOW)
    body = message.get_content()
    assert message["Subject"] == "Vos données cette semaine : 60 accès"
    assert body.count("- le 2 décembre 2026 : Ville de Paris, « Quotient familial »") == mails.DIGEST_LINES
    assert "et 10 autres accès" in body


@pytest.mark.parametrize(("raw", "ok"), [
    ("marie@example.fr", True), ("  marie.dupont+dlnuf@sous.example.fr ", True), ("marie", False),
    ("marie@localhost", False), ("Marie <marie@example.fr>", False), ("a@b.fr, c@d.fr", False),
    ("marie@example.fr\r\nBcc: x@y.fr", False), ("@example.fr", False), ("marie@.fr", False),
])
def test_addresses(raw: str, ok: bool) -> None:
    if ok:
        assert subscriptions.normalise_address(raw) == raw.strip()
    else:
        with pytest.raises(subscriptions.InvalidAddress):
            subscriptions.normalise_address(raw)


BASE = {"DLNUF_PUBLIC_URL": "https://mes-donnees.example.gouv.fr", "DLNUF_SMTP_HOST": "smtp.example.gouv.fr",
        "DLNUF_MAIL_FROM": SENDER}


def test_mail_settings() -> None:
    mail = load_config(env=BASE).mail
    assert mail is not None and (mail.security, mail.port, mail.username) == ("starttls", 587, None)
    assert mail.public_url == "https://mes-donnees.example.gouv.fr"
    assert load_config(env={**BASE, "DLNUF_SMTP_SECURITY": "tls"}).mail.port == 465  # type: ignore[union-attr]
    assert load_config(env={}).mail is None


@pytest.mark.parametrize(("change", "message"), [
    ({"DLNUF_PUBLIC_URL": None}, "DLNUF_PUBLIC_URL"),
    ({"DLNUF_MAIL_FROM": None}, "DLNUF_MAIL_FROM"),
    ({"DLNUF_MAIL_FROM": "personne"}, "DLNUF_MAIL_FROM"),
    ({"DLNUF_SMTP_SECURITY": "maybe"}, "DLNUF_SMTP_SECURITY"),
    ({"DLNUF_SMTP_SECURITY": "none"}, "only for a relay on the loopback"),
    ({"DLNUF_SMTP_USER": "dlnuf"}, "DLNUF_SMTP_PASSWORD"),
    ({"DLNUF_SMTP_HOST": None}, "half-configured"),
    ({"DLNUF_SMTP_PORT": "0"}, "DLNUF_SMTP_PORT"),
])
def test_wrong_mail_settings_stop_the_broker(change: dict[str, str | None], message: str) -> None:
    env = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


@pytest.mark.parametrize(("name", "value"), [("DLNUF_OPERATOR_CONTACT", "pas un contact"),
                                             ("DLNUF_DPO_CONTACT", "http://en-clair.example")])
def test_site_contacts_are_addresses_or_https(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(env={name: value})
    site = load_config(env={"DLNUF_OPERATOR_CONTACT": "https://example.gouv.fr/contact",
                            "DLNUF_DPO_CONTACT": "dpd@example.gouv.fr", "DLNUF_OPERATOR_NAME": "Ville"}).site
    assert (site.operator, site.contact, site.dpo) == ("Ville", "https://example.gouv.fr/contact",
                                                       "dpd@example.gouv.fr")
