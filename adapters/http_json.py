"""Declarative adapter for JSON-over-HTTP providers: everything it does is in the registry's options.

A provider with a plain JSON API needs no code: its adapter entry says where each dataset lives, whether a lookup
is a GET with query parameters or a POST with a JSON body, which parameter or body member carries which part of
the subject, which JSON pointer holds each dataset member, and what its error statuses mean. `parse_endpoints`
turns the ``endpoints`` option into `Endpoint`s (raising `ValueError` with the option path of the bad key),
`check_tls_files` and `tls_context` turn the mutual-TLS options into one `ssl.SSLContext`, `HttpJsonAdapter`
runs them.

Invariants: a parameter or body member whose source is unknown for this subject (an unknown birth day, no usage
name) is omitted, never filled in; an upstream value missing from a ``values`` table is
`ProviderAnswerMalformed`, never passed on; the document is projected onto the dataset schema, so nothing the
schema does not declare leaves. A POST lookup is not repeated after a failure unless the entry says it is
``idempotent`` (see `unsafe_routes`); TLS verification failures are `ProviderUnavailable` and never repeated.

Example, for the DGFiP sandbox (`adapters.sandbox.dgfip`)::

    [adapters.options]
    base_url = "http://127.0.0.1:8090/dgfip"
    token_env = "DLNUF_DGFIP_KEY"
    auth_header = "X-Api-Key"
    [adapters.options.endpoints.revenu_fiscal_reference]
    pivot = { path = "/v1/revenu-fiscal", query = { nomNaissance = "family_name", prenoms = "given_name",
              dateNaissance = "birthdate", sexe = "sex", codeLieuNaissance = "birthplace_or_country" } }
    identifiers = { spi = { path = "/v1/revenu-fiscal/spi/{identifier}" } }
    statuses = { "409" = "ambiguous" }
    [adapters.options.endpoints.revenu_fiscal_reference.fields]
    annee_revenus = "/anneeRevenus"
    revenu_fiscal_reference = "/revenuFiscalReference"
    nombre_parts = "/nombreParts"
    situation_famille = { pointer = "/situationFamille", values = { C = "celibataire", M = "marie",
                          O = "pacse", D = "divorce", V = "veuf" } }

The same lookup as a POST with a JSON body, over mutual TLS (``client_cert_file`` and ``client_key_file`` are PEM
files on the broker's disk; ``ca_file``, optional, replaces the system's trust store for this provider)::

    [adapters.options]
    base_url = "https://impots.example/api"
    client_cert_file = "/etc/dlnuf/tls/dgfip-client.pem"
    client_key_file = "/etc/dlnuf/tls/dgfip-client.key"
    ca_file = "/etc/dlnuf/tls/dgfip-ca.pem"
    [adapters.options.endpoints.revenu_fiscal_reference.pivot]
    method = "POST"
    path = "/v1/revenu-fiscal/recherche"
    idempotent = true
    body = { contribuable = { nomNaissance = "family_name", prenoms = "given_names", sexe = "sex",
             dateNaissance = "birthdate", codeLieuNaissance = "birthplace_or_country" } }

A body is a table whose leaves are sources and whose sub-tables are nested JSON objects (TOML's dotted keys,
``contribuable.nomNaissance = "family_name"``, say the same); every value is a JSON string, except for
``given_names``, a JSON array of strings. A member without a value is omitted, and so is an object left empty.

Parameter sources for a pivot identity: family_name, given_name (space-separated, as FranceConnect sends it),
given_names (the parameter repeated once per first name), first_given_name, preferred_name, birthdate
(YYYY-MM-DD with 00 for unknown parts), birth_year, birth_month, birth_day (omitted when unknown), gender
(male/female), sex (M/F), birthplace (omitted when born abroad), birthcountry, birthplace_or_country; for an
identifier (an identifier's value, or the SIREN, SIRET or RNA number: `identifiers` are keyed by subject kind, an
identifier's scheme or ``siren``, ``siret``, ``rna``). Always: recipient (omitted when empty) and ``const:<text>``;
``parameter:<name>``, a dataset parameter of the request (omitted when not given; the schema's ``x-parameters``
declares and checks them). Status outcomes: not_found, ambiguous, rejected, unavailable, timeout,
rate_limited (Retry-After passed on); unlisted statuses default to 404 not_found, 400 and 422 rejected, 429
rate_limited, 504 timeout, anything else but 200 unavailable.
"""

from __future__ import annotations

import json
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

import schemas
from adapters.base import (
    AdapterError,
    AdapterQuery,
    IdentityAmbiguous,
    ProviderAdapter,
    ProviderAnswerMalformed,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRejectedQuery,
    ProviderTimeout,
    ProviderUnavailable,
    SubjectNotFound,
    parse_retry_after,
    read_body,
)
from adapters.identity import FRANCE, PivotIdentity
from adapters.subjects import identifier_value


def _part(index: int) -> Callable[[PivotIdentity], list[str]]:
    def get(p: PivotIdentity) -> list[str]:
        value = p.birthdate.split("-")[index]
        return [] if value == "00" else [str(int(value))]

    return get


PIVOT_SOURCES: Mapping[str, Callable[[PivotIdentity], list[str]]] = {
    "family_name": lambda p: [p.family_name],
    "given_name": lambda p: [p.given_name],
    "given_names": lambda p: list(p.given_names),
    "first_given_name": lambda p: [p.given_names[0]],
    "preferred_name": lambda p: [p.preferred_name] if p.preferred_name else [],
    "birthdate": lambda p: [p.birthdate],
    "birth_year": _part(0),
    "birth_month": _part(1),
    "birth_day": lambda p: _part(2)(p) if _part(1)(p) else [],
    "gender": lambda p: [p.gender],
    "sex": lambda p: ["M" if p.gender == "male" else "F"],
    "birthplace": lambda p: [p.birthplace] if p.birthplace else [],
    "birthcountry": lambda p: [p.birthcountry],
    "birthplace_or_country": lambda p: [p.birthplace if p.birthcountry == FRANCE else p.birthcountry],
}
OUTCOMES: Mapping[str, type[AdapterError]] = {
    "not_found": SubjectNotFound,
    "ambiguous": IdentityAmbiguous,
    "rejected": ProviderRejectedQuery,
    "unavailable": ProviderUnavailable,
    "timeout": ProviderTimeout,
    "rate_limited": ProviderRateLimited,
}
# Sources with several values: a query parameter repeated, a JSON array in a body. The others have one or none.
MULTI_SOURCES = frozenset({"given_names"})
DEFAULT_STATUSES: Mapping[int, str] = {404: "not_found", 400: "rejected", 422: "rejected", 429: "rate_limited",
                                       504: "timeout"}
METHODS = ("GET", "POST")
_POINTER = re.compile(r"(/([^~/]|~[01])*)*")


@dataclass(frozen=True, slots=True)
class Lookup:
    path: str
    # (query parameter, source), in the order they are sent
    query: tuple[tuple[str, str], ...] = ()
    # Providers that cannot search on a partial birth date: refuse before calling rather than send a guess.
    full_birthdate: bool = False
    method: str = "GET"
    # (member path, source) of a POST's JSON object body, in the order written; None: no body at all.
    body: tuple[tuple[tuple[str, ...], str], ...] | None = None
    # May a failed POST be repeated? Only when the entry says so. A GET always may.
    idempotent: bool = False


@dataclass(frozen=True, slots=True)
class Field:
    pointer: str
    values: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    fields: Mapping[str, Field]
    pivot: Lookup | None = None
    identifiers: Mapping[str, Lookup] = field(default_factory=dict)
    statuses: Mapping[int, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- configuration


def _table(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table")
    return raw


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in sorted(set(raw) - allowed):
        raise ValueError(f"{where}.{key}: unknown key")


def _source(source: Any, where: str, *, identifier: bool) -> str:
    if not isinstance(source, str):
        raise ValueError(f"{where}: must be a source name")
    known = source.startswith(("const:", "parameter:")) or source == "recipient" or (
        source == "identifier" if identifier else source in PIVOT_SOURCES)
    if not known:
        raise ValueError(f"{where}: unknown source {source!r}")
    return source


def _body(raw: Any, where: str, *, identifier: bool) -> list[tuple[tuple[str, ...], str]]:
    """A body table flattened to (member path, source): sub-tables are nested objects."""
    members: list[tuple[tuple[str, ...], str]] = []
    for member, spec in _table(raw, where).items():
        if isinstance(spec, Mapping):
            members += [((member, *path), source) for path, source in _body(spec, f"{where}.{member}",
                                                                            identifier=identifier)]
        else:
            members.append(((member,), _source(spec, f"{where}.{member}", identifier=identifier)))
    return members


def _lookup(raw: Any, where: str, *, identifier: bool) -> Lookup:
    raw = _table(raw, where)
    _only(raw, {"path", "query", "full_birthdate", "method", "body", "idempotent"}, where)
    path = raw.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{where}.path: must be a string starting with /")
    placeholders = re.findall(r"{([^}]*)}", path)
    if placeholders not in ([], ["identifier"]) or (placeholders and not identifier):
        raise ValueError(f"{where}.path: the only placeholder is {{identifier}}, in identifier lookups")
    query = [(param, _source(source, f"{where}.query.{param}", identifier=identifier))
             for param, source in _table(raw.get("query", {}), f"{where}.query").items()]
    full = raw.get("full_birthdate", False)
    if not isinstance(full, bool):
        raise ValueError(f"{where}.full_birthdate: must be true or false")
    method = raw.get("method", "GET")
    if method not in METHODS:
        raise ValueError(f"{where}.method: must be {' or '.join(METHODS)}, in capitals")
    body = None
    if "body" in raw:
        if method != "POST":
            raise ValueError(f"{where}.body: only a POST lookup sends a body")
        body = tuple(_body(raw["body"], f"{where}.body", identifier=identifier))
    idempotent = raw.get("idempotent", False)
    if "idempotent" in raw and method == "GET":
        raise ValueError(f"{where}.idempotent: a GET lookup is always idempotent; the key is for POST ones")
    if not isinstance(idempotent, bool):
        raise ValueError(f"{where}.idempotent: must be true or false")
    return Lookup(path, tuple(query), full, method, body, idempotent)


def _field(raw: Any, where: str) -> Field:
    if isinstance(raw, str):
        raw = {"pointer": raw}
    raw = _table(raw, where)
    _only(raw, {"pointer", "values"}, where)
    pointer = raw.get("pointer")
    if not isinstance(pointer, str) or not _POINTER.fullmatch(pointer):
        raise ValueError(f"{where}.pointer: must be a JSON pointer (RFC 6901) such as /a/b")
    values = raw.get("values")
    if values is not None:
        values = dict(_table(values, f"{where}.values"))
    return Field(pointer, values)


def parse_endpoints(raw: Any, datasets: Mapping[str, int], where: str = "endpoints") -> dict[str, Endpoint]:
    """The ``endpoints`` option, checked: one entry per served dataset, fields that are schema members."""
    raw = _table(raw, where)
    for dataset in sorted(set(datasets) ^ set(raw)):
        raise ValueError(f"{where}.{dataset}: every served dataset needs exactly one endpoint entry")
    out = {}
    for dataset, entry in raw.items():
        at = f"{where}.{dataset}"
        entry = _table(entry, at)
        _only(entry, {"pivot", "identifiers", "fields", "statuses"}, at)
        pivot = _lookup(entry["pivot"], f"{at}.pivot", identifier=False) if "pivot" in entry else None
        identifiers = {scheme: _lookup(v, f"{at}.identifiers.{scheme}", identifier=True)
                       for scheme, v in _table(entry.get("identifiers", {}), f"{at}.identifiers").items()}
        if pivot is None and not identifiers:
            raise ValueError(f"{at}: needs a pivot lookup, identifier lookups, or both")
        members = schemas.load(dataset, datasets[dataset])["properties"]
        fields = {}
        for name, spec in _table(entry.get("fields"), f"{at}.fields").items():
            if name not in members:
                raise ValueError(f"{at}.fields.{name}: not a member of {dataset} v{datasets[dataset]}")
            fields[name] = _field(spec, f"{at}.fields.{name}")
        statuses = {}
        for status, outcome in _table(entry.get("statuses", {}), f"{at}.statuses").items():
            if not str(status).isdigit() or not 100 <= int(status) <= 599 or int(status) == 200:
                raise ValueError(f"{at}.statuses.{status}: must be an HTTP status other than 200")
            if outcome not in OUTCOMES:
                raise ValueError(f"{at}.statuses.{status}: outcome must be one of {', '.join(OUTCOMES)}")
            statuses[int(status)] = outcome
        out[dataset] = Endpoint(fields, pivot, identifiers, statuses)
    return out


def unsafe_routes(endpoints: Mapping[str, Endpoint], where: str = "endpoints") -> list[str]:
    """The option paths of the lookups that must not be repeated: POSTs not marked idempotent."""
    routes = []
    for dataset, endpoint in endpoints.items():
        lookups = [("pivot", endpoint.pivot)] + [(f"identifiers.{s}", lk) for s, lk in endpoint.identifiers.items()]
        routes += [f"{where}.{dataset}.{name}" for name, lookup in lookups
                   if lookup is not None and lookup.method != "GET" and not lookup.idempotent]
    return routes


# ------------------------------------------------------------------------------------------- mutual TLS

# Option -> what the PEM file holds. The key is a secret on disk: the registry names the file, never its content.
TLS_FILES: Mapping[str, str] = {
    "client_cert_file": "certificate",
    "client_key_file": "private key",
    "ca_file": "certificate",
}
# A PEM certificate chain or key is a few kilobytes; a CA bundle a few hundred.
_MAX_PEM_BYTES = 1 << 20


def _read_pem(option: str, path: Any) -> bytes:
    if not isinstance(path, str) or not os.path.isabs(path):
        # A relative path would depend on the directory each broker process happens to start in.
        raise ValueError(f"{option}: must be an absolute file path")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise ValueError(f"{option}: {path} is larger than {_MAX_PEM_BYTES} bytes, not a PEM file")
    return data


def check_tls_files(base_url: str, files: Mapping[str, Any]) -> None:
    """The TLS options (`TLS_FILES` keys present in the registry entry) name readable PEM files of the right
    kind, for an https provider; `ValueError` naming the option otherwise. Whether the key matches the
    certificate is for `tls_context` to find out."""
    if not files:
        return
    first = next(iter(files))
    if urlsplit(base_url).scheme != "https":
        raise ValueError(f"{first}: client certificates and a provider CA need an https base_url")
    for option, other in (("client_cert_file", "client_key_file"), ("client_key_file", "client_cert_file")):
        if option in files and other not in files:
            raise ValueError(f"{other}: required with {option}")
    for option, path in files.items():
        data = _read_pem(option, path)
        try:
            if TLS_FILES[option] == "certificate":
                x509.load_pem_x509_certificates(data)
            else:
                serialization.load_pem_private_key(data, password=None)
        except TypeError:
            # The broker starts unattended: nobody could type a passphrase. The file's permissions protect it.
            raise ValueError(f"{option}: {path} holds an encrypted key; give the broker an unencrypted PEM key "
                             "readable only by its user") from None
        except UnsupportedAlgorithm:
            raise ValueError(f"{option}: {path} holds a key of a type the broker cannot use") from None
        except ValueError:
            # cryptography's message may quote the file; ours names only the file.
            raise ValueError(f"{option}: {path} holds no PEM {TLS_FILES[option]}") from None


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, and a broker would hang at start-up.
    raise ValueError("client_key_file: the key is encrypted")


def tls_context(files: Mapping[str, str]) -> ssl.SSLContext:
    """One client context for one provider, from checked `TLS_FILES` options: the provider's CA (``ca_file``)
    instead of the system's trust store when given, our certificate and key when given. `ValueError` naming
    the option when OpenSSL refuses them, a key that does not match the certificate above all."""
    try:
        context = ssl.create_default_context(cafile=files.get("ca_file"))
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"ca_file: {files.get('ca_file')}: OpenSSL refused it ({exc})") from None
    if "client_cert_file" in files:
        try:
            context.load_cert_chain(files["client_cert_file"], files["client_key_file"], password=_no_passphrase)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise ValueError(f"client_key_file: {files['client_key_file']} is not the key of the certificate "
                                 f"in client_cert_file {files['client_cert_file']}") from None
            raise ValueError(f"client_cert_file: OpenSSL refused the certificate and key ({exc})") from None
        except OSError as exc:
            raise ValueError(f"client_cert_file: cannot load the certificate and key ({exc})") from None
    return context


# ------------------------------------------------------------------------------------------- runtime


def _values(source: str, query: AdapterQuery) -> list[str]:
    if source.startswith("const:"):
        return [source.removeprefix("const:")]
    if source == "recipient":
        return [query.recipient] if query.recipient else []
    if source.startswith("parameter:"):
        value = query.parameters.get(source.removeprefix("parameter:"))
        return [] if value is None else [str(value)]
    if source == "identifier":
        value = identifier_value(query.subject)
        assert value is not None
        return [value]
    assert isinstance(query.subject, PivotIdentity)
    return PIVOT_SOURCES[source](query.subject)


def body_for(lookup: Lookup, query: AdapterQuery) -> dict[str, Any] | None:
    """The JSON body the lookup sends for this query; None when it sends none."""
    if lookup.body is None:
        return None
    document: dict[str, Any] = {}
    for path, source in lookup.body:
        values = _values(source, query)
        if not values:
            continue
        target = document
        for member in path[:-1]:
            target = target.setdefault(member, {})
        target[path[-1]] = values if source in MULTI_SOURCES else values[0]
    return document


def request_for(endpoint: Endpoint, query: AdapterQuery) -> tuple[Lookup, str, list[tuple[str, str]]]:
    """The lookup used, the path and the query parameters; `ProviderRejectedQuery` if the subject does not fit."""
    subject = query.subject
    if isinstance(subject, PivotIdentity):
        lookup = endpoint.pivot
        if lookup is None:
            raise ProviderRejectedQuery(f"{query.dataset} cannot be looked up by pivot identity")
        if lookup.full_birthdate and "00" in subject.birthdate.split("-")[1:]:
            raise ProviderRejectedQuery("this endpoint requires a full birth date; the identity's is partial")
        path = lookup.path
    else:
        # identifier lookups are keyed by subject kind: an identifier's scheme, or siren, siret, rna
        found = endpoint.identifiers.get(subject.kind)
        value = identifier_value(subject)
        if found is None or value is None:
            raise ProviderRejectedQuery(f"{query.dataset} cannot be looked up by {subject.kind!r}")
        lookup = found
        path = lookup.path.replace("{identifier}", quote(value, safe=""))
    return lookup, path, [(param, v) for param, source in lookup.query for v in _values(source, query)]


def _resolve(document: Any, pointer: str) -> tuple[bool, Any]:
    target = document
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and token in target:
            target = target[token]
        elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
            target = target[int(token)]
        else:
            return False, None
    return True, target


def to_dataset(endpoint: Endpoint, dataset: str, version: int, answer: Any) -> dict[str, Any]:
    """The dataset document: each member read at its pointer (absent when upstream omits it), values translated."""
    document: dict[str, Any] = {}
    for name, rule in endpoint.fields.items():
        present, value = _resolve(answer, rule.pointer)
        if not present:
            continue
        if rule.values is not None:
            key = value if isinstance(value, str) else json.dumps(value)
            if key not in rule.values:
                raise ProviderAnswerMalformed(f"{name}: upstream value {key[:40]!r} has no translation")
            value = rule.values[key]
        document[name] = value
    projected: dict[str, Any] = schemas.project(document, schemas.load(dataset, version))
    return projected


def raise_for_status(endpoint: Endpoint, where: str, status: int, body: bytes = b"", *,
                     retry_after: str | None = None) -> None:
    if status == 200:
        return
    outcome = endpoint.statuses.get(status) or DEFAULT_STATUSES.get(status, "unavailable")
    if outcome == "not_found" and not _is_json(body):
        # a provider says "not found" in JSON; an HTML 404 page is another server (a wrong base_url or path)
        raise ProviderMisconfigured(f"{where}: HTTP {status} that is not JSON: not the provider's answer")
    if outcome == "rate_limited":
        wait = parse_retry_after(retry_after)
        raise ProviderRateLimited(f"the provider limits calls: try again "
                                  f"{f'in {wait:.0f} s' if wait is not None else 'later'}", retry_after=wait)
    raise OUTCOMES[outcome](f"{where}: HTTP {status}")


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


class HttpJsonAdapter(ProviderAdapter):
    """A provider described by `Endpoint`s. `token` goes in `auth_header`: as ``Bearer <token>`` when that
    header is Authorization, verbatim otherwise (API-key headers); no token, no header. `ssl_context` (from
    `tls_context`) replaces the default verification on every request to this provider, on the shared session:
    aiohttp pools connections per context, so another adapter never reuses a connection made with ours."""

    def __init__(self, *, name: str, datasets: Mapping[str, int], session: aiohttp.ClientSession, base_url: str,
                 endpoints: Mapping[str, Endpoint], token: str = "", auth_header: str = "Authorization",
                 timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> None:
        if set(endpoints) != set(datasets):
            raise ValueError("every served dataset needs exactly one endpoint")
        if ssl_context is not None and urlsplit(base_url).scheme != "https":
            raise ValueError("a TLS context is for an https base_url")
        super().__init__(name=name, datasets=datasets, session=session, timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self.endpoints = dict(endpoints)
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers[auth_header] = f"Bearer {token}" if auth_header.lower() == "authorization" else token

    async def _fetch(self, query: AdapterQuery) -> dict[str, Any]:
        if self.datasets.get(query.dataset) != query.version:
            raise ProviderRejectedQuery(f"{self.name} does not serve {query.dataset} v{query.version}")
        endpoint = self.endpoints[query.dataset]
        lookup, path, params = request_for(endpoint, query)
        # An identifier lookup's path holds the identifier: messages name the template, never the URL.
        where = f"{self.name} {lookup.method} {lookup.path}"
        try:
            async with self.session.request(lookup.method, self.base_url + path, params=params,
                                            json=body_for(lookup, query), headers=self._headers,
                                            allow_redirects=False, ssl=self._ssl) as response:
                body = await read_body(response)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientSSLError as exc:
            # The provider's certificate does not verify, or the handshake failed: asking again will not help,
            # so this is raised as an answer (never retried), not left to the base as a transport failure.
            raise ProviderUnavailable(f"{where}: TLS handshake failed: {exc.__cause__ or exc}") from exc
        raise_for_status(endpoint, where, status, body, retry_after=retry_after)
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise ProviderAnswerMalformed(f"{where}: answer is not JSON") from exc
        return to_dataset(endpoint, query.dataset, query.version, answer)
