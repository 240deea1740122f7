"""The journal as a spreadsheet a French citizen opens with a double click: UTF-8 with a BOM (so that Excel reads the
accents), `;` between columns (the comma is the French decimal separator), French headers, Paris times in the
dd/mm/yyyy hh:mm:ss form spreadsheets read as dates, and labels rather than codes. The JSON export stays the machine
format, with the raw entries and their proofs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from broker.citizen.formatting import PARIS
from broker.citizen.portal.entries import EntryView

BOM = "\ufeff"
DELIMITER = ";"
DATE_FORMAT = "%d/%m/%Y %H:%M:%S"
COLUMNS = (
    "Date et heure (Paris)", "Administration", "SIRET de l'administration", "Destinataire", "Type", "Données",
    "Détail des données", "Finalité", "Base légale", "Texte de référence", "Motif", "Identifiant de l'entrée",
    "Position dans le journal public",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # a spreadsheet runs a cell that starts like a formula: never let a value do that
    return "'" + text if text.startswith(_FORMULA_START) else text


def journal_spreadsheet(entries: Iterable[tuple[EntryView, int | None]]) -> str:
    """One line per entry (with its position in the public log, when integrated), header first, BOM included."""
    out = io.StringIO()
    out.write(BOM)
    writer = csv.writer(out, delimiter=DELIMITER, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for e, index in entries:
        detail = f"{e.fields_verb} : {', '.join(e.fields)}" if e.fields else ""
        writer.writerow([_cell(v) for v in (
            e.logged_at.astimezone(PARIS).strftime(DATE_FORMAT), e.consumer_name, e.consumer, e.recipient,
            e.kind_label, e.dataset_title, detail, e.purpose, e.basis, e.basis_title,
            f"{e.reason} : {e.reason_detail}" if e.reason else "", e.id, index,
        )])
    return out.getvalue()
