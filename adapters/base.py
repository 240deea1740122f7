"""The adapter contract: a verified query in, a dataset document (or an `AdapterError`) out.

Invariant: `ProviderAdapter.fetch()` lets only `AdapterError` escape, whatever the provider does (hangs, resets,
answers HTML, answers JSON of the wrong shape). Subclasses write `_fetch`; the base applies the timeout and maps
transport failures. The broker validates the returned document against the dataset schema afterwards; an adapter
does not need to, but it must never invent values the provider did not send.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from adapters.identity import Subject


class AdapterError(Exception):
    """Base of every failure an adapter may report. `slug` names the problem type; messages go to server logs."""

    slug: ClassVar[str] = "provider-error"


class ProviderUnavailable(AdapterError):
    """Connection refused or reset, 5xx, or the circuit breaker is open."""

    slug = "provider-unavailable"


class ProviderTimeout(AdapterError):
    slug = "provider-timeout"


class SubjectNotFound(AdapterError):
    """The provider does not know this person."""

    slug = "subject-not-found"


class IdentityAmbiguous(AdapterError):
    """The provider matched several people to this identity."""

    slug = "identity-ambiguous"


class ProviderAnswerMalformed(AdapterError):
    """Not JSON, or JSON the adapter cannot map."""

    slug = "provider-answer-malformed"


class ProviderRejectedQuery(AdapterError):
    """The provider cannot take this query as asked, and asking again will not help.

    Either the adapter knows beforehand (a pivot identity sent to an identifier-only endpoint, an unknown birth
    day where the provider requires a full date, no recipient SIRET) or the provider refused the parameters
    (HTTP 400 or 422 other than an ambiguity). Distinct from `ProviderUnavailable` so nobody retries it.
    """

    slug = "provider-rejected-query"


@dataclass(frozen=True, slots=True)
class AdapterQuery:
    """What the broker asks an adapter, after signature, habilitation and legal basis are checked."""

    dataset: str
    version: int
    subject: Subject
    fields: frozenset[str]
    request_id: str
    # SIRET of the administration the data is for; API Particulier requires it on every call.
    recipient: str = ""


# Generous for the largest dataset answer (a household with many children), small enough not to buffer a runaway.
MAX_ANSWER_BYTES = 1 << 20


async def read_body(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The response body, or `ProviderAnswerMalformed` as soon as it exceeds `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ProviderAnswerMalformed(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class ProviderAdapter(ABC):
    """One provider endpoint family. Built once per app with the app's shared `ClientSession`."""

    def __init__(self, *, name: str, datasets: Mapping[str, int], session: aiohttp.ClientSession,
                 timeout: float = 5.0) -> None:
        self.name = name
        # dataset id -> the schema version this adapter produces
        self.datasets = dict(datasets)
        self.session = session
        self.timeout = timeout

    async def fetch(self, query: AdapterQuery) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(query)
        except AdapterError:
            raise
        except TimeoutError as exc:
            raise ProviderTimeout(f"{self.name}: no answer within {self.timeout}s") from exc
        except aiohttp.ClientResponseError as exc:
            raise ProviderUnavailable(f"{self.name}: HTTP {exc.status}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderAnswerMalformed(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    @abstractmethod
    async def _fetch(self, query: AdapterQuery) -> dict[str, Any]:
        """Call the provider and map its answer to the dataset document."""
