"""The consent screen shows no raw key, no ISO date and no titled code, for any field of any dataset: rendered from
each schema's own examples, for every schema of the catalogue (so datasets added later are covered too)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

import schemas
from broker.citizen import consent_screen, pages
from broker.registry import Habilitation, LegalBasis, Organisation, Purpose, Registry
from broker.registry.derived import DerivedRule

ALL = [(d, v) for d, versions in schemas.catalogue().items() for v in versions]
CONSUMER = "21690123100011"
PROVIDER = "13002526500013"
PURPOSE = "tarification-restauration-scolaire"
NOW = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)


class _Screen(HTMLParser):
    """The visible text, and the texts shown as labels (dt, the checkboxes' labels, the items' titles)."""

    LABELS = ("dt", "label")

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.labels: list[str] = []
        self._stack: list[tuple[str, bool]] = []
        self._label: list[str] | None = None
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        is_label = tag in self.LABELS or "preview-item-title" in classes
        if tag in ("title", "script", "style"):
            self._hidden += 1
        if is_label:
            self._label = []
        self._stack.append((tag, is_label))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, is_label = self._stack.pop()
            if is_label and self._label is not None:
                self.labels.append(" ".join("".join(self._label).split()))
                self._label = None
            if open_tag in ("title", "script", "style"):
                self._hidden -= 1
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        self.text.append(data)
        if self._label is not None:
            self._label.append(data)


def _keys_and_titles(node: Any) -> Iterator[tuple[str | None, str | None]]:
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            yield key, sub.get("title") if isinstance(sub, dict) else None
        if isinstance(node.get("title"), str):
            yield None, node["title"]
        for key, sub in node.items():
            if key not in ("examples", "x-enum-titles"):
                yield from _keys_and_titles(sub)
    elif isinstance(node, list):
        for sub in node:
            yield from _keys_and_titles(sub)


def _screen(dataset: str, version: int, document: dict[str, Any], fields: list[str]) -> _Screen:
    schema = schemas.load(dataset, version)
    hab = Habilitation("h", CONSUMER, dataset, (PURPOSE,), tuple(fields), (CONSUMER,),
                       LegalBasis("consent", "CRPA, article L114-8", "https://www.legifrance.gouv.fr/"), "P1Y")
    registry = Registry(organisations=(Organisation(CONSUMER, "Ville de Lyon", ("consumer",)),),
                        habilitations=(hab,), purposes=(Purpose(PURPOSE, "Calculer le tarif de la cantine"),))
    asked = consent_screen.request_view(
        schema=schema, data=document, fields=fields, hab=hab, registry=registry, controller=CONSUMER,
        recipient=CONSUMER, provider=PROVIDER, provider_name="DINUM", purpose=PURPOSE, frequency="one_time",
        duration_days=1, now=NOW, preview_error=None, prefix="0:")
    context = consent_screen.context(controller=CONSUMER, controller_name="Ville de Lyon", requests=[asked])
    html = pages.environment().get_template("consent.html").render(request_id="r", csrf="c", **context)
    screen = _Screen()
    screen.feed(html)
    return screen


@pytest.mark.parametrize(("dataset", "version"), ALL)
def test_the_consent_screen_shows_no_raw_key_for_any_field(dataset: str, version: int) -> None:
    schema = schemas.load(dataset, version)
    examples = schema.get("examples") or []
    assert examples, f"{dataset} v{version} has no example to render the consent screen from"
    pairs = list(_keys_and_titles(schema))
    keys = {k for k, _ in pairs if k}
    titles = {t for _, t in pairs if t}
    for document in examples:
        screen = _screen(dataset, version, document, list(schema["properties"]))
        text = " ".join(" ".join(screen.text).split())
        # every label on the screen is a schema title (an array's items numbered: « Enfant 2 »)
        value_labels = [lb for lb in screen.labels if lb not in {
            "Qui demande", "Quelles données", "Pourquoi", "Sur quelle base", "Pour combien de temps"}]
        assert value_labels
        for label in value_labels:
            assert re.sub(r" [0-9]+$", "", label) in titles, f"{dataset}: {label!r} is not a schema title"
        # and no key shows anywhere, as written (a key that is also a word of a title, « adresse », « code »,
        # may show as that word)
        words = {w for t in titles for w in re.findall(r"[\w-]+", t.lower())}
        for key in keys - words:
            assert not re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text), \
                f"{dataset}: the raw key {key!r} shows on the consent screen"
        assert not re.search(r"\b[0-9]{4}-[0-9]{2}-[0-9]{2}\b", text), f"{dataset}: an ISO date shows"
        assert "tarification-restauration-scolaire" not in text and "Calculer le tarif de la cantine" in text
        assert "Une seule fois, dans les 24 heures" in text


def test_codes_with_a_title_show_their_title() -> None:
    schema = schemas.load("quotient_familial", 1)
    screen = _screen("quotient_familial", 1, schema["examples"][0], ["allocataires", "quotient_familial"])
    text = " ".join(" ".join(screen.text).split())
    assert "Sexe Homme" in text and "Sexe Femme" in text and "Caisse d'allocations familiales (CAF)" in text
    assert "Date de naissance 2 juillet 1979" in text
    assert "Allocataire ou conjoint 1" in screen.labels and "Allocataire ou conjoint 2" in screen.labels


def test_derived_answers_read_as_their_question() -> None:
    schema = schemas.load("quotient_familial", 1)
    rule = DerivedRule("qf_800", "quotient_familial.valeur", op="<=", value=800,
                       question="Votre quotient familial est-il inférieur ou égal à 800 ?")
    hab = Habilitation("h", CONSUMER, "quotient_familial", (PURPOSE,), (), (CONSUMER,),
                       LegalBasis("consent", "CRPA", "https://www.legifrance.gouv.fr/"), "P1Y", (rule,))
    rows = consent_screen.preview_rows(schema, {"derived": {"qf_800": True}}, ["derived.qf_800"], hab)
    assert [(r.label, r.shown.text) for r in rows] == [
        ("Votre quotient familial est-il inférieur ou égal à 800 ?", "Oui")]


@pytest.mark.parametrize(("frequency", "days", "text"), [
    ("one_time", 1, "Une seule fois, dans les 24 heures"),
    ("one_time", 7, "Une seule fois, d'ici au 9 décembre 2026"),
    ("periodic", 1, "À chaque besoin, pendant 1 jour, jusqu'au 3 décembre 2026"),
    ("periodic", 30, "À chaque besoin, pendant 30 jours, jusqu'au 1er janvier 2027"),
])
def test_durations_read_well(frequency: str, days: int, text: str) -> None:
    from datetime import timedelta

    assert consent_screen.duration(frequency, days, NOW + timedelta(days=days)) == text
