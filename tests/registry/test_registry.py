"""The declarative registry: validation with line numbers, idempotent apply, change reports, reload."""

from __future__ import annotations

import pytest

from broker import registry
from broker.storage import db
from tests.factories import CONSUMER, PROVIDER, PURPOSE, PURPOSE_LABEL, consumer, registry_toml


def test_valid_registry_parses() -> None:
    c = consumer()
    reg = registry.parse_registry(registry_toml([c]))
    assert {o.siret for o in reg.organisations} == {CONSUMER, PROVIDER}
    assert reg.key(c.key.kid) is not None
    hab = reg.habilitation(CONSUMER, "quotient_familial")
    assert hab is not None and hab.legal_basis.type == "information"
    assert reg.adapter_for("quotient_familial") is not None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.replace('siret = "21750001600019"', 'siret = "2175"', 1), "siret"),
        (lambda t: t.replace('kind = "api_particulier"', 'kind = "telepathy"'), "adapter 'api-particulier'"),
        (lambda t: t.replace('"adresse"]', '"adresse", "pointure"]'), "field 'pointure'"),
        (lambda t: t.replace('type = "information"', 'type = "whim"'), "legal_basis.type"),
        (lambda t: t.replace('retention = "P1Y"', 'retention = "forever"'), "retention"),
        (lambda t: t.replace('dataset = "quotient_familial"', 'dataset = "horoscope"'), "catalogue"),
        (lambda t: t.replace('crv = "Ed25519"', 'crv = "X25519"'), "key"),
        (lambda t: t + "\n[[habilitations]]\nid = 'x'\n", "'consumer' is missing"),
        (lambda t: t.replace("[[adapters]]", "[[adapters]]\ncolour = 'blue'"), "unknown key(s): colour"),
        (lambda t: t + "\n[nonsense]\n", "unknown top-level"),
        (lambda t: t + "\n[[[", "not valid TOML"),
    ],
)
def test_invalid_registry_is_refused_with_a_clear_message(mutate: object, message: str) -> None:
    text = mutate(registry_toml([consumer()]))  # type: ignore[operator]
    with pytest.raises(registry.RegistryError, match=r".*") as info:
        registry.parse_registry(text, "reg.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("reg.toml")


def test_invalid_adapter_error_names_its_line() -> None:
    text = registry_toml([consumer()]).replace('kind = "api_particulier"', 'kind = "telepathy"')
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "[[adapters]]")
    with pytest.raises(registry.RegistryError, match=rf"^reg.toml:{line}: \[\[adapters\]\] #1"):
        registry.parse_registry(text, "reg.toml")


def test_private_key_in_registry_is_refused() -> None:
    c = consumer()
    text = registry_toml([c]).replace("jwk = { ", f'jwk = {{ d = "{c.key.to_jwk()["d"]}", ', 1)
    with pytest.raises(registry.RegistryError, match="private key"):
        registry.parse_registry(text)


async def test_apply_is_idempotent_and_reports_changes(database_url: str) -> None:
    a, b = consumer(), consumer("21690123100011")
    conn = await db.connect(database_url)
    try:
        first = await registry.apply(conn, registry.parse_registry(registry_toml([a])))
        assert first.changed and first.version == 1
        assert "+21750001600019" in str(first)

        again = await registry.apply(conn, registry.parse_registry(registry_toml([a])))
        assert not again.changed and again.version == 1
        assert "nothing changed" in str(again)

        second = await registry.apply(conn, registry.parse_registry(registry_toml([b])), prune=True)
        assert second.version == 2
        orgs = next(c for c in second.changes if c.table == "organisations")
        assert orgs.added == ("21690123100011",) and orgs.removed == (CONSUMER,)

        loaded = await registry.load(conn)
        assert loaded.habilitation("21690123100011", "quotient_familial") is not None
        assert loaded.habilitation(CONSUMER, "quotient_familial") is None
        assert loaded.version == 2
        assert loaded.digest() == registry.parse_registry(registry_toml([b])).digest()
    finally:
        await conn.close()


def test_purposes_carry_the_label_citizens_read() -> None:
    reg = registry.parse_registry(registry_toml([consumer()]))
    purpose = reg.purpose(PURPOSE)
    assert purpose is not None and purpose.label == PURPOSE_LABEL
    # a registry that labels its purposes labels them all
    text = registry_toml([consumer()], purposes={"autre-finalite": "Une autre finalité"})
    with pytest.raises(registry.RegistryError, match=f"purpose '{PURPOSE}' has no \\[\\[purposes\\]\\] entry"):
        registry.parse_registry(text, "reg.toml")
    # one without any label is still valid (and citizens then read the id made readable)
    assert registry.parse_registry(registry_toml([consumer()], purposes={})).purpose(PURPOSE) is None
    twice = registry_toml([consumer()]) + f'\n[[purposes]]\nid = "{PURPOSE}"\nlabel = "encore"\n'
    with pytest.raises(registry.RegistryError, match="appears twice"):
        registry.parse_registry(twice)


async def test_purpose_labels_are_applied_and_reloaded(database_url: str) -> None:
    conn = await db.connect(database_url)
    try:
        await registry.apply(conn, registry.parse_registry(registry_toml([consumer()])))
        assert (await registry.load(conn)).purpose(PURPOSE) == registry.Purpose(PURPOSE, PURPOSE_LABEL)
        relabelled = await registry.apply(conn, registry.parse_registry(
            registry_toml([consumer()], purposes={PURPOSE: "Tarif de la cantine"})))
        assert next(c for c in relabelled.changes if c.table == "purposes").changed == (PURPOSE,)
        assert (await registry.load(conn)).purpose(PURPOSE) == registry.Purpose(PURPOSE, "Tarif de la cantine")
        with pytest.raises(registry.RemovalRefused):  # a removal, as any other: only when asked for
            await registry.apply(conn, registry.parse_registry(registry_toml([consumer()], purposes={})))
        removed = await registry.apply(conn, registry.parse_registry(registry_toml([consumer()], purposes={})),
                                       prune=True)
        assert next(c for c in removed.changes if c.table == "purposes").removed == (PURPOSE,)
        assert (await registry.load(conn)).purposes == ()
    finally:
        await conn.close()
