"""Legal bases (CRPA L114-8) and what each requires before an exchange may happen.

- information (L114-8 I): mandatory exchange; the citizen is informed through their access log. Nothing to check.
- proactive (L114-8 II): exchange to detect entitlements; refused when the citizen objected.
- consent: needs a live consent of this citizen for this consumer, dataset, purpose and fields.

`verify_basis` returns None or raises a `BasisRefused` leaf whose message is for logs only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class BasisRefused(Exception):
    """The legal basis does not allow this exchange now."""


class ObjectionOnFile(BasisRefused):
    pass


class ConsentMissing(BasisRefused):
    pass


ObjectionLookup = Callable[[str, str, str], Awaitable[bool]]
"""(subject_key, consumer, dataset) -> True when the citizen objected to this consumer or this dataset."""


async def verify_basis(basis: str, *, subject_key: str, consumer: str, dataset: str,
                       has_objection: ObjectionLookup, consent_present: bool) -> None:
    if basis == "information":
        return
    if basis == "proactive":
        if await has_objection(subject_key, consumer, dataset):
            raise ObjectionOnFile(f"objection on file for {consumer} x {dataset}")
        return
    if basis == "consent":
        # the consent itself (live, bound, covering the request) is verified by the caller, who has the records
        if not consent_present:
            raise ConsentMissing("no consent presented")
        return
    raise BasisRefused(f"unknown legal basis {basis!r}")
