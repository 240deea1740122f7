""""Mes données", the citizen portal: server-rendered pages (French, DSFR) over the citizen's own records.

* ``/citizen/``: home, who is logged in, until when, and where to go;
* ``/citizen/journal`` (+ ``.csv``, ``.json``): every access to their data, newest first, filtered, with what the
  browser needs to verify each entry against the signed log (`broker/citizen/static/verify.js`);
* ``/citizen/consentements``: their consents by state, the signed receipts, revocation with a confirmation page;
* ``/citizen/oppositions``: the proactive exchanges they may object to, objections and their withdrawal.

Invariants: every handler is `citizen_required` (login redirect, and the session's CSRF token on every POST), and
reads or changes only rows of the logged-in citizen's subject key, so another citizen's consent or objection id is
answered as an unknown one (404). Pages work without JavaScript and without the DSFR assets; the only script is
the verification, from a file (the Content-Security-Policy forbids inline scripts).
"""

from __future__ import annotations

from aiohttp import web

from broker.citizen.portal import consents, home, journal, objections

HOME = "/citizen/"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(HOME, home.home)
    journal.add_routes(router)
    consents.add_routes(router)
    objections.add_routes(router)
