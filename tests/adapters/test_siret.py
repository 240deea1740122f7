"""SIREN and SIRET check digits, against python-stdnum (an independent implementation of INSEE's rules, La Poste's
exception included) and against published numbers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.fr import siren as stdnum_siren
from stdnum.fr import siret as stdnum_siret

from adapters.identity import valid_siren, valid_siret

digits = st.text(alphabet="0123456789", min_size=14, max_size=14)


@pytest.mark.parametrize(("number", "valid"), [
    ("13002526500013", True),  # DINUM
    ("21750001600019", True),  # Ville de Paris
    ("21690123100011", True),  # Ville de Lyon
    ("35600000000048", True),  # La Poste, head office: the Luhn rule
    ("35600000049837", True),  # a La Poste establishment: digits sum to a multiple of 5, not Luhn
    ("35600000000049", False),
    ("21750001600018", False),  # one digit off
    ("99999999900018", False),
    ("2175000160001", False), ("217500016000190", False), ("2175000160001a", False),
    ("２１７５０００１６０００１９", False),  # fullwidth digits are digits to str.isdigit, not to INSEE
])
def test_known_numbers(number: str, valid: bool) -> None:
    assert valid_siret(number) is valid
    if number.isascii() and number.isdigit():
        assert stdnum_siret.is_valid(number) is valid  # the independent implementation agrees


@settings(max_examples=3000)
@given(digits)
def test_agrees_with_stdnum_on_any_fourteen_digits(number: str) -> None:
    assert valid_siret(number) == stdnum_siret.is_valid(number)


@settings(max_examples=2000)
@given(st.text(alphabet="0123456789", min_size=5, max_size=5))
def test_agrees_with_stdnum_on_la_poste(nic: str) -> None:
    number = "356000000" + nic
    assert valid_siret(number) == stdnum_siret.is_valid(number)


@settings(max_examples=2000)
@given(st.text(alphabet="0123456789", min_size=9, max_size=9))
def test_siren_agrees_with_stdnum(number: str) -> None:
    assert valid_siren(number) == stdnum_siren.is_valid(number)
