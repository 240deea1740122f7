"""Cost per validation of provider answers, by JSON Schema library, side by side in one run.

    .venv/bin/python benchmarks/validation.py            # about 40 s
    .venv/bin/python benchmarks/validation.py --quick    # a few seconds, noisier

Validates the quotient_familial and statut_demandeur_emploi examples of schemas/ (valid) and one schema-violating
variant of each (the broker's refusal path: find the first error and its path) with:

* ``jsonschema``       Draft202012Validator, as the broker used it before, without and with format checking;
* ``fastjsonschema``   compiled to Python code (implements drafts 4, 6 and 7 only, not 2020-12);
* ``jsonschema-rs``    Draft202012Validator (Rust), without and with format validation.

Before timing, it checks that every library agrees with the broker's expectations on the repository's cases:
every schema example is valid, every document of tests/schemas/test_schemas.py's INVALID list is rejected, plus a few
edge cases; disagreements are printed, because a fast validator that accepts a bad document is no candidate.
Needs the optional libraries (`.venv/bin/pip install fastjsonschema jsonschema-rs`); a missing one is skipped.
Prints median ns per validation; no assertion on time anywhere.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jsonschema

import schemas
from schemas.validation import InvalidDocument, Validators
from tests.schemas.test_schemas import _DELETE, INVALID, _set

DOCUMENTS = ("quotient_familial", "statut_demandeur_emploi")
BAD = {"quotient_familial": ("quotient_familial.valeur", "1045"),
       "statut_demandeur_emploi": ("inscription.date_fin", "2024")}

# A library under test: schema -> (is_valid(document) -> bool, first_error_path(document) -> str | None).
Check = Callable[[Any], bool]
ErrorPath = Callable[[Any], "str | None"]
Factory = Callable[[dict[str, Any]], tuple[Check, ErrorPath]]


def _jsonschema(formats: bool) -> Factory:
    def make(schema: dict[str, Any]) -> tuple[Check, ErrorPath]:
        cls = jsonschema.Draft202012Validator
        v = cls(schema, format_checker=cls.FORMAT_CHECKER if formats else None)

        def first(doc: Any) -> str | None:
            error = jsonschema.exceptions.best_match(v.iter_errors(doc))
            return None if error is None else "/" + "/".join(str(p) for p in error.absolute_path)

        return v.is_valid, first

    return make


def _fastjsonschema() -> Factory:
    import fastjsonschema

    def make(schema: dict[str, Any]) -> tuple[Check, ErrorPath]:
        validate = fastjsonschema.compile(schema)

        def ok(doc: Any) -> bool:
            try:
                validate(doc)
            except fastjsonschema.JsonSchemaValueException:
                return False
            return True

        def first(doc: Any) -> str | None:
            try:
                validate(doc)
            except fastjsonschema.JsonSchemaValueException as exc:
                return "/" + "/".join(str(p) for p in exc.path[1:])
            return None

        return ok, first

    return make


def _jsonschema_rs(formats: bool) -> Factory:
    import jsonschema_rs

    def make(schema: dict[str, Any]) -> tuple[Check, ErrorPath]:
        v = jsonschema_rs.Draft202012Validator(schema, validate_formats=formats)

        def first(doc: Any) -> str | None:
            for error in v.iter_errors(doc):
                return "/" + "/".join(str(p) for p in error.instance_path)
            return None

        return v.is_valid, first

    return make


def libraries() -> dict[str, Factory]:
    found: dict[str, Factory] = {"jsonschema": _jsonschema(False), "jsonschema+formats": _jsonschema(True)}
    if importlib.util.find_spec("fastjsonschema"):
        found["fastjsonschema"] = _fastjsonschema()
    if importlib.util.find_spec("jsonschema_rs"):
        found["jsonschema-rs"] = _jsonschema_rs(False)
        found["jsonschema-rs+formats"] = _jsonschema_rs(True)
    missing = {"fastjsonschema", "jsonschema-rs"} - {n.split("+")[0] for n in found}
    if missing:
        print(f"skipped (not installed): {', '.join(sorted(missing))}", file=sys.stderr)
    return found


def _example(dataset: str) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(schemas.load(dataset, 1)["examples"][0])
    return doc


def agreement(libs: dict[str, Factory]) -> dict[str, list[str]]:
    """Per library, the cases where it disagrees with what the broker expects."""
    cases: list[tuple[str, str, Any, bool]] = []
    for dataset, versions in schemas.catalogue().items():
        for version in versions:
            cases += [(dataset, f"{dataset} example {i}", ex, True)
                      for i, ex in enumerate(schemas.load(dataset, version)["examples"])]
    for dataset, path, value in INVALID:
        shown = "<deleted>" if value is _DELETE else repr(value)
        cases.append((dataset, f"{dataset} {path} = {shown}", _set(_example(dataset), path, value), False))
    pivot = _example("identite_pivot")
    cases += [
        ("identite_pivot", "born abroad, no commune", {**pivot, "birthcountry": "99350", "birthplace": ""}, True),
        ("identite_pivot", "born abroad with a commune", {**pivot, "birthcountry": "99350", "birthplace": "69383"},
         False),
        ("identite_pivot", "unknown day", {**pivot, "birthdate": "1970-04-00"}, True),
        ("identite_pivot", "unknown month, known day", {**pivot, "birthdate": "1970-00-04"}, False),
        # ECMA-262 `$` (what JSON Schema patterns use) does not match before a final newline; Python's re does.
        ("identite_pivot", "birthdate with a trailing newline", {**pivot, "birthdate": "1979-07-02\n"}, False),
    ]
    out: dict[str, list[str]] = {}
    for name, make in libs.items():
        compiled = {d: make(schemas.load(d, 1)) for d in schemas.catalogue()}
        out[name] = [f"{label}: expected {'valid' if expected else 'invalid'}"
                     for dataset, label, doc, expected in cases if compiled[dataset][0](doc) != expected]
    return out


def median_ns(fn: Callable[[], object], *, rounds: int, min_time: float) -> float:
    """Median over `rounds` of the mean time per call, each round at least `min_time` seconds."""
    n = 1
    while True:  # calibrate the number of calls per round
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        if (time.perf_counter_ns() - start) / 1e9 >= min_time / 4:
            break
        n *= 2
    n *= 4
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter_ns() - start) / n)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    rounds, min_time = (5, 0.02) if args.quick else (11, 0.1)
    libs = libraries()

    print("Agreement with the repository's cases (examples valid, INVALID rejected, edge cases):")
    for name, problems in agreement(libs).items():
        print(f"  {name:24} {'all agree' if not problems else f'{len(problems)} disagreement(s)'}")
        for problem in problems:
            print(f"      {problem}")

    rows: list[tuple[str, dict[str, float]]] = []
    for dataset in DOCUMENTS:
        schema, good = schemas.load(dataset, 1), _example(dataset)
        bad = _set(_example(dataset), *BAD[dataset])
        valid_row: dict[str, float] = {}
        invalid_row: dict[str, float] = {}
        for name, make in libs.items():
            check, first = make(schema)
            assert check(good) and first(bad) == "/" + BAD[dataset][0].replace(".", "/"), name
            valid_row[name] = median_ns(lambda c=check, d=good: c(d), rounds=rounds, min_time=min_time)
            invalid_row[name] = median_ns(lambda f=first, d=bad: f(d), rounds=rounds, min_time=min_time)
        rows += [(f"{dataset} valid", valid_row), (f"{dataset} invalid + path", invalid_row)]

    names = list(libs)
    width = max(len(n) for n in names) + 2
    print(f"\nMedian ns per validation (Python {sys.version.split()[0]}, {rounds} rounds):")
    print(f"  {'document':40}" + "".join(f"{n:>{width}}" for n in names))
    for label, row in rows:
        print(f"  {label:40}" + "".join(f"{row[n]:>{width},.0f}" for n in names))
    broker = Validators()

    def refused(dataset: str, doc: Any) -> None:
        try:
            broker.verify(dataset, 1, doc)
        except InvalidDocument:
            return
        raise AssertionError("accepted")

    print("  broker.validation.Validators().verify, the broker's hot path as it is now:")
    for dataset in DOCUMENTS:
        good, bad = _example(dataset), _set(_example(dataset), *BAD[dataset])
        ok = median_ns(lambda d=dataset, g=good: broker.verify(d, 1, g), rounds=rounds, min_time=min_time)
        ko = median_ns(lambda d=dataset, b=bad: refused(d, b), rounds=rounds, min_time=min_time)
        print(f"    {dataset:38}valid {ok:,.0f} ns, invalid (reason built, exception raised) {ko:,.0f} ns")
    base = "jsonschema+formats"
    print(f"\nSpeed-up over {base} (the broker's validator before):")
    for label, row in rows:
        print(f"  {label:40}" + "".join(f"{row[base] / row[n]:>{width}.1f}" for n in names))


if __name__ == "__main__":
    main()
