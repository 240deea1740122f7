"""The citizen's journal: every access to their data, newest first, filtered by period, administration and dataset;
exported as a spreadsheet (French CSV) or JSON; each entry with the raw materials of its verification in the browser,
and a page that explains that verification in plain French.

What each entry means (a preview shown to the citizen alone, a transfer, a refusal and why) is `entries.EntryView`.
The page never says whether an entry is in the log: it gives the entry as the server canonicalised it (RFC 8785),
its index and inclusion proof, the signed checkpoint they are relative to, and the log's verifier key, and
`broker/citizen/static/verify.js` draws the conclusion. The JSON export carries the same materials, for
verification elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from broker.citizen.login import citizen_required
from broker.citizen.portal import entries
from broker.citizen.portal.common import PARIS, dataset_title, render
from broker.citizen.portal.spreadsheet import journal_spreadsheet
from broker.registry import Registry
from broker.service.state import STATE
from broker.tlog.jcs import canonicalize
from broker.tlog.log import TLOG, BeyondTree, Journal, JournalEntry, JournalFilter, b64
from broker.tlog.routes import MAX_JOURNAL, journal_document
from consent.sessions import CitizenSession

PAGE_LIMIT = 500
"""Entries shown on the page; the exports go up to `MAX_JOURNAL`."""
VERIFICATION = "/citizen/journal/verification"
_SIRET = re.compile(r"^[0-9]{14}$")
_DATASET = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class Filters:
    """The journal's filters as the citizen typed them (query parameters `du`, `au`, `administration`,
    `donnees`), and what was wrong with them: a wrong filter is shown with its error and not applied."""

    du: str = ""
    au: str = ""
    administration: str = ""
    donnees: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        raw = {k: query.get(k, "").strip()[:64] for k in ("du", "au", "administration", "donnees")}
        errors: dict[str, str] = {}
        for name in ("du", "au"):
            if raw[name] and _day(raw[name]) is None:
                errors[name] = "Indiquez une date au format JJ/MM/AAAA."
        first, last = _day(raw["du"]), _day(raw["au"])
        if first and last and first > last:
            errors["au"] = "La fin de la période doit suivre son début."
        if raw["administration"] and not _SIRET.match(raw["administration"]):
            errors["administration"] = "Choisissez une administration de la liste."
        if raw["donnees"] and not _DATASET.match(raw["donnees"]):
            errors["donnees"] = "Choisissez des données de la liste."
        return cls(errors=errors, **raw)

    def _valid(self, name: str) -> str | None:
        value: str = getattr(self, name)
        return value if value and name not in self.errors else None

    def journal_filter(self, limit: int) -> JournalFilter:
        first, last = _day(self._valid("du")), _day(self._valid("au"))
        return JournalFilter(
            # days are French days: from midnight in Paris, to the midnight after the last day
            since=_midnight(first) if first else None,
            until=_midnight(last + timedelta(days=1)) if last else None,
            consumer=self._valid("administration"), dataset=self._valid("donnees"), limit=limit)

    def query(self) -> str:
        """The valid filters as a query string, for the export links."""
        values = {k: self._valid(k) for k in ("du", "au", "administration", "donnees")}
        return urlencode({k: v for k, v in values.items() if v})


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text and len(text) == 10 else None
    except ValueError:
        return None


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time.min, PARIS)


async def _journal(request: web.Request, citizen: CitizenSession,
                   limit: int) -> tuple[Filters, JournalFilter, Journal | None]:
    filters = Filters.parse(request.query)
    wanted = filters.journal_filter(limit)
    try:
        found = await request.app[TLOG].journal(citizen.subject_key, wanted)
    except BeyondTree:  # no checkpoint signed yet: a broker's first second
        found = None
    return filters, wanted, found


def _names(registry: Registry) -> dict[str, str]:
    return {o.siret: o.name for o in registry.organisations}


def _row(e: JournalEntry, registry: Registry) -> dict[str, Any]:
    return {
        "entry": entries.view(e.entry, registry),
        "iso": str(e.entry["logged_at"]),
        # the raw materials of "Vérifier"
        "canonical": canonicalize(e.entry).decode("utf-8"),
        "index": "" if e.index is None else str(e.index),
        "proof": " ".join(b64(h) for h in e.proof or ()),
    }


def _choices(registry: Registry) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    consumers = sorted(((o.siret, o.name) for o in registry.organisations if "consumer" in o.roles),
                       key=lambda c: c[1])
    datasets = sorted({h.dataset for h in registry.habilitations})
    return consumers, sorted(((d, dataset_title(d)) for d in datasets), key=lambda d: d[1])


@citizen_required(html_page=True)
async def journal_page(request: web.Request, citizen: CitizenSession) -> web.Response:
    registry = request.app[STATE].registry.current
    tlog = request.app[TLOG]
    filters, _, found = await _journal(request, citizen, PAGE_LIMIT)
    consumers, datasets = _choices(registry)
    query = filters.query()
    return render(
        request, citizen, "portal_journal.html", active="journal", title="Journal des accès à vos données",
        filters=filters, consumers=consumers, datasets=datasets,
        entries=[_row(e, registry) for e in found.entries] if found else [],
        available=found is not None, truncated=found.truncated if found else False, limit=PAGE_LIMIT,
        checkpoint=found.checkpoint.note if found else "", tree_size=found.checkpoint.size if found else 0,
        origin=tlog.origin, verifier_key=tlog.signer.verifier.vkey(),
        witnesses=" ".join(vkey for vkey, _ in request.app[STATE].config.log_witnesses),
        witness_quorum=tlog.witness_quorum,
        csv_url="/citizen/journal.csv" + ("?" + query if query else ""),
        json_url="/citizen/journal.json" + ("?" + query if query else ""),
        filtered=bool(query), verification_url=VERIFICATION)


@citizen_required(html_page=True)
async def verification_page(request: web.Request, citizen: CitizenSession) -> web.Response:
    """What « Vérifier » proves and does not, in plain French, with the log's key to compare."""
    tlog = request.app[TLOG]
    return render(request, citizen, "portal_verification.html", active="journal",
                  title="Comment vérifier le journal public", origin=tlog.origin,
                  verifier_key=tlog.signer.verifier.vkey(),
                  witnesses=[vkey for vkey, _ in request.app[STATE].config.log_witnesses],
                  witness_quorum=tlog.witness_quorum)


def _download(body: bytes | str, content_type: str, extension: str) -> web.Response:
    name = f"journal-mes-donnees-{datetime.now(UTC).strftime('%Y-%m-%d')}.{extension}"
    response = web.Response(body=body.encode("utf-8") if isinstance(body, str) else body,
                            content_type=content_type, charset="utf-8" if extension == "csv" else None)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _export(request: web.Request, citizen: CitizenSession, fmt: str) -> web.Response:
    registry = request.app[STATE].registry.current
    tlog = request.app[TLOG]
    _, wanted, found = await _journal(request, citizen, MAX_JOURNAL)
    if found is None:
        raise web.HTTPServiceUnavailable(text="Le journal public n'a pas encore de point de contrôle.")
    if fmt == "csv":
        rows = ((entries.view(e.entry, registry), e.index) for e in found.entries)
        return _download(journal_spreadsheet(rows), "text/csv", "csv")
    document = journal_document(found, _names(registry), tlog.origin)
    # the key too, so that the export verifies on its own; pin it rather than trusting this copy (docs/portal.md)
    document["verifier_key"] = tlog.signer.verifier.vkey()
    document["filters"] = {"since": wanted.since and wanted.since.isoformat(),
                           "until": wanted.until and wanted.until.isoformat(),
                           "consumer": wanted.consumer, "dataset": wanted.dataset}
    return _download(orjson.dumps(document, option=orjson.OPT_INDENT_2), "application/json", "json")


@citizen_required(html_page=True)
async def journal_csv_export(request: web.Request, citizen: CitizenSession) -> web.Response:
    return await _export(request, citizen, "csv")


@citizen_required(html_page=True)
async def journal_json_export(request: web.Request, citizen: CitizenSession) -> web.Response:
    return await _export(request, citizen, "json")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/citizen/journal", journal_page)
    router.add_get(VERIFICATION, verification_page)
    router.add_get("/citizen/journal.csv", journal_csv_export)
    router.add_get("/citizen/journal.json", journal_json_export)
