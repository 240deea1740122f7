"""The subject union: each kind checked at construction, parsed from its one JSON member, and keyed by a keyed hash
that is stable (stored keys must keep naming the same subject) and separates kinds."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import pytest
from stdnum.fr import siren as stdnum_siren

import schemas
from adapters.identity import PivotIdentity, SubjectError
from adapters.sandbox import directory
from adapters.subjects import (
    BUSINESS_KINDS,
    FranceConnectOutsideConsent,
    FranceConnectSubject,
    ProviderIdentifier,
    Rna,
    Siren,
    Siret,
    identifier_value,
    parse_subject,
    subject_key,
)

SECRET = b"k" * 32
PIVOT = directory().citizen("dupont-marie-claire").pivot


@pytest.mark.parametrize(("raw", "kind"), [
    ({"pivot_identity": PIVOT.to_json()}, "pivot_identity"),
    ({"identifier": {"scheme": "ine", "value": "0000000503A"}}, "ine"),
    ({"identifier": {"scheme": "ine", "value": "123456789AB"}}, "ine"),  # since 2018: 9 digits and 2 letters
    ({"identifier": {"scheme": "france_travail", "value": "marie.dupont"}}, "france_travail"),
    ({"identifier": {"scheme": "spi", "value": "3123456789012"}}, "spi"),
    ({"siren": "130025265"}, "siren"),  # DINUM
    ({"siret": "13002526500013"}, "siret"),
    ({"siret": "35600000049837"}, "siret"),  # a La Poste establishment: digit sum a multiple of 5, not Luhn
    ({"rna": "W751234567"}, "rna"),
    ({"rna": "W2A1000123"}, "rna"),  # Corse-du-Sud
])
def test_each_kind_parses_from_its_member_and_round_trips(raw: dict[str, Any], kind: str) -> None:
    subject = parse_subject(raw)
    assert subject.kind == kind
    assert subject.to_subject_json() == raw
    assert parse_subject(subject.to_subject_json()) == subject


@pytest.mark.parametrize(("raw", "message"), [
    ({"siret": "21750001600018"}, "check digits"),  # one digit off
    ({"siret": "35600000000049"}, "check digits"),  # La Poste's number space, neither rule
    ({"siren": "130025266"}, "check digit"),
    ({"siren": "13002526"}, "nine digits"),
    ({"siren": 130025265}, "must be a string"),
    ({"siren": "１３００２５２６５"}, "nine digits"),  # fullwidth digits
    ({"rna": "W75123456"}, "nine digits"),
    ({"rna": "w751234567"}, "nine digits"),
    ({"rna": "X751234567"}, "nine digits"),
    ({"identifier": {"scheme": "ine", "value": "0000000503"}}, "INE"),
    ({"identifier": {"scheme": "ine", "value": "0000000503-"}}, "INE"),
    ({"identifier": {"scheme": "siren", "value": "130025265"}}, "kind of its own"),
    ({"identifier": {"scheme": "France", "value": "x"}}, "lower-case"),
    ({"identifier": {"scheme": "spi"}}, "{scheme, value}"),
    ({"siren": "130025265", "rna": "W751234567"}, "exactly one"),
    ({}, "exactly one"),
    ({"nir": "1850275123456"}, "unknown members"),
    ([], "must be an object"),
])
def test_malformed_subjects_are_refused_at_construction(raw: Any, message: str) -> None:
    with pytest.raises(SubjectError, match=message):
        parse_subject(raw)


def test_siren_agrees_with_an_independent_implementation() -> None:
    for number in ("130025265", "217500016", "356000000", "130025266", "000000000", "999999999"):
        accepted = True
        try:
            Siren(number)
        except SubjectError:
            accepted = False
        assert accepted is stdnum_siren.is_valid(number), number


def test_a_siret_knows_its_siren() -> None:
    assert Siret("13002526500013").siren == Siren("130025265")


def test_france_connect_is_refused_from_a_request_body() -> None:
    """Only the broker's own citizen login holds a FranceConnect token: a consumer can never send one."""
    with pytest.raises(FranceConnectOutsideConsent):
        parse_subject({"france_connect": {}})
    with pytest.raises(FranceConnectOutsideConsent):
        parse_subject({"france_connect": {"access_token": "stolen"}})


def test_a_france_connect_subject_has_its_pivot_identity_key_and_hides_its_token() -> None:
    fc = FranceConnectSubject(PIVOT, "eyJhbGciOi.abc.def")
    assert subject_key(SECRET, fc) == subject_key(SECRET, PIVOT)  # same person, same journal
    assert "eyJ" not in repr(fc) and "eyJ" not in str(fc.to_subject_json())
    with pytest.raises(SubjectError):
        FranceConnectSubject(PIVOT, "two words")
    with pytest.raises(SubjectError):
        FranceConnectSubject(PIVOT, "")


def test_keys_are_hmacs_of_stable_canonical_forms() -> None:
    """The canonical forms are pinned: a stored key (access log, consents, journals) must keep naming its subject."""
    def expected(text: str) -> str:
        return hmac.new(SECRET, text.encode(), hashlib.sha256).hexdigest()

    assert subject_key(SECRET, PIVOT) == expected("pivot\x1f" + "\x1f".join(PIVOT.normalised()))
    assert subject_key(SECRET, ProviderIdentifier("spi", "3123456789012")) == expected("id\x1fspi\x1f3123456789012")
    assert subject_key(SECRET, Siren("130025265")) == expected("siren\x1f130025265")
    assert subject_key(SECRET, Siret("13002526500013")) == expected("siret\x1f13002526500013")
    assert subject_key(SECRET, Rna("W751234567")) == expected("rna\x1fW751234567")


def test_keys_separate_kinds_and_fold_only_what_is_the_same_subject() -> None:
    keys = {subject_key(SECRET, s) for s in (Siren("130025265"), ProviderIdentifier("spi", "130025265"),
                                             ProviderIdentifier("france_travail", "130025265"))}
    assert len(keys) == 3
    # an INE is printed in either case: the same student
    assert subject_key(SECRET, ProviderIdentifier("ine", "123456789ab")) == \
        subject_key(SECRET, ProviderIdentifier("ine", "123456789AB"))
    # a France Travail identifier is chosen by the person, case and all
    assert subject_key(SECRET, ProviderIdentifier("france_travail", "Marie")) != \
        subject_key(SECRET, ProviderIdentifier("france_travail", "marie"))
    assert subject_key(b"x" * 32, Siren("130025265")) != subject_key(SECRET, Siren("130025265"))


def test_identifier_value_is_what_a_provider_looks_up() -> None:
    assert identifier_value(Siret("13002526500013")) == "13002526500013"
    assert identifier_value(ProviderIdentifier("ine", "0000000503A")) == "0000000503A"
    assert identifier_value(PIVOT) is None
    assert identifier_value(FranceConnectSubject(PIVOT, "t")) is None


def test_every_dataset_declares_the_subject_kinds_it_accepts() -> None:
    for dataset, versions in schemas.catalogue().items():
        for version in versions:
            kinds = schemas.subject_kinds(dataset, version)
            assert kinds, f"{dataset} v{version} declares no x-subjects"
            for kind in kinds:
                assert kind in {"pivot_identity", "france_connect", *BUSINESS_KINDS} or \
                    re.fullmatch(r"[a-z][a-z0-9_]{0,31}", kind), (dataset, kind)


def test_given_name_array_keeps_a_first_name_whole_without_changing_the_key() -> None:
    raw = {**PIVOT.to_json(), "given_name": "Marie Davida Awa"}
    split = PivotIdentity.from_json(raw)
    whole = PivotIdentity.from_json({**raw, "given_name_array": ["Marie Davida", "Awa"]})
    assert split.given_names == ("Marie", "Davida", "Awa") and whole.given_names == ("Marie Davida", "Awa")
    assert subject_key(SECRET, whole) == subject_key(SECRET, split)  # the same person
    assert PivotIdentity.from_json(whole.to_json()) == whole
    for wrong in (["Marie", "Awa"], ["Awa", "Marie Davida"], ["Marie Davida", " "], "Marie Davida Awa"):
        with pytest.raises(SubjectError):
            PivotIdentity.from_json({**raw, "given_name_array": wrong})


@pytest.mark.parametrize("raw", [
    {"identifier": {"scheme": "ine", "value": "0000000503A\n"}},
    {"identifier": {"scheme": "spi\n", "value": "3123456789012"}},
    {"rna": "W751234567\n"},
    {"pivot_identity": {**PIVOT.to_json(), "birthplace": PIVOT.birthplace + "\n"}},
    {"pivot_identity": {**PIVOT.to_json(), "birthcountry": PIVOT.birthcountry + "\n"}},
])
def test_a_value_ending_in_a_newline_is_not_well_formed(raw: dict[str, Any]) -> None:
    # Python's `$` matches before a final newline: every format is checked whole (fullmatch), so the domain types
    # hold their invariant without relying on the HTTP contract that refuses such values first
    with pytest.raises(SubjectError):
        parse_subject(raw)
