"""RFC 8785 canonical form of a released answer: the general (pure Python) path against `canonicalize`, which takes
the standard library's C encoder when that spells the value exactly as JCS (broker/tlog/jcs.py). Rounds
interleaved, medians; prints figures, asserts nothing.

    .venv/bin/python benchmarks/jcs.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.tlog import jcs

# the shape of a released quotient_familial answer (API Particulier v3: CNAF), with accents
ANSWER: dict[str, Any] = {
    "quotient_familial": {"valeur": 1234, "annee": 2026, "mois": 11, "annee_calcul": 2026, "mois_calcul": 11,
                          "fournisseur": "CNAF"},
    "allocataires": [
        {"nom_naissance": "DUPONT", "nom_usage": None, "prenoms": "JEAN PIERRE", "date_naissance": "1980-06-15",
         "sexe": "M"},
        {"nom_naissance": "MARTIN", "nom_usage": "DUPONT", "prenoms": "MARIE", "date_naissance": "1982-03-02",
         "sexe": "F"}],
    "enfants": [
        {"nom_naissance": "DUPONT", "nom_usage": None, "prenoms": "LÉA", "date_naissance": "2015-09-01", "sexe": "F"},
        {"nom_naissance": "DUPONT", "nom_usage": None, "prenoms": "HUGO", "date_naissance": "2018-01-20", "sexe": "M"}],
    "adresse": {"destinataire": "M. JEAN PIERRE DUPONT", "complement_information": None,
                "numero_libelle_voie": "12 RUE DE LA PAIX", "code_postal_ville": "75002 PARIS", "pays": "FRANCE"},
}


def per_call(fn: Callable[[Any], bytes], n: int = 3000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(ANSWER)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    assert jcs.canonicalize(ANSWER) == jcs._general(ANSWER)
    general: list[float] = []
    fast: list[float] = []
    for _ in range(9):
        general.append(per_call(jcs._general))
        fast.append(per_call(jcs.canonicalize))
    ratios = [g / f for g, f in zip(general, fast, strict=True)]
    print(f"JCS of a released answer ({len(jcs.canonicalize(ANSWER))} bytes), 9 interleaved rounds of 3,000, medians")
    print(f"  general path (pure Python)   {statistics.median(general):7.1f} us")
    print(f"  canonicalize (C encoder)     {statistics.median(fast):7.1f} us")
    print(f"  ratio                        {statistics.median(ratios):7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
