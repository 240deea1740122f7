"""How the broker builds adapters from the registry's declarative configuration.

An adapter entry in the registry names a `kind` and a table of options. `check_options` validates them when
the registry is loaded (so a bad file fails before anything starts), `build_adapter` builds the adapter at
startup. Secrets never live in the registry file: options name the environment variable that holds them, and
only `build_adapter` reads the environment.

Kind ``api_particulier`` (`adapters.api_particulier.ApiParticulierAdapter`):

``base_url``   (string, required) ``https://particulier.api.gouv.fr`` in production,
               ``https://staging.particulier.api.gouv.fr`` for upstream's staging, or a sandbox's URL.
``token_env``  (string, required) name of the environment variable holding the bearer token,
               e.g. ``DLNUF_API_PARTICULIER_TOKEN``.
``timeout``    (number of seconds, optional, default 5, at most 60) whole-call budget per query.
``datasets``   (list of dataset ids, required, non-empty) the datasets this adapter serves, among
               quotient_familial, complementaire_sante_solidaire, revenu_solidarite_active, prime_activite,
               statut_etudiant, etudiant_boursier, statut_demandeur_emploi. Each is served at the latest
               version in the schema catalogue.

Kind ``api_entreprise`` (`adapters.api_entreprise.ApiEntrepriseAdapter`): ``base_url``
(``https://entreprise.api.gouv.fr``, ``https://staging.entreprise.api.gouv.fr`` or a sandbox's URL), ``token_env``,
``timeout`` and ``datasets`` as above, ``datasets`` among the business datasets of
`adapters.api_entreprise.ENDPOINTS` (unite_legale, etablissement, attestation_vigilance, extrait_kbis, ...).

Kind ``http_json`` (`adapters.http_json.HttpJsonAdapter`, a provider described without code):

``base_url``, ``timeout``, ``datasets``  as above; ``datasets`` may name any dataset of the catalogue.
``token_env``  (string, optional) environment variable holding the provider's key; no key, no auth header.
``auth_header`` (string, optional, default ``Authorization``) header carrying the key: ``Bearer <key>`` in
               Authorization, the key verbatim in any other header (``X-Api-Key``...).
``endpoints``  (table, required) one entry per dataset: ``pivot`` and/or ``identifiers`` lookups (each a GET
               with query parameters, or a POST with a JSON ``body``), ``fields`` (dataset member -> JSON
               pointer), ``statuses``; see `adapters.http_json` for the vocabulary and complete examples.
``client_cert_file``, ``client_key_file`` (absolute paths, optional, together) the PEM certificate and the
               unencrypted PEM private key the broker presents to the provider (mutual TLS). The registry names
               the files, never their content; they are read by ``registry apply`` (which refuses a missing,
               unreadable or non-PEM file) and by each broker when it builds the adapter (which refuses a key
               that does not match the certificate). https ``base_url`` only.
``ca_file``    (absolute path, optional) PEM certificate(s) of the provider's CA, trusted instead of the system's
               store for this provider only. https ``base_url`` only.

An ``http_json`` entry with a POST lookup not marked ``idempotent = true`` is never retried: its ``retries``
defaults to 0, and any other value is refused naming the lookup.

Every kind also takes these options, how it treats a failing provider (`adapters.resilience`):

``retries``          (integer, optional, default 2, at most 5) repeats of one call after a transport failure or a
                     5xx; never after a 4xx. All repeats share the one ``timeout``, and together they may add at
                     most a fifth of the calls of the last 30 s (plus 10), so a dying provider is not hammered.
                     0 disables retries.
``breaker_failures`` (integer, optional, default 5, 1 to 1000) consecutive failed attempts (transport failure,
                     timeout, 5xx, 401/403/429, malformed answer) that open the circuit breaker; it also opens
                     when half of at least 20 attempts in the last 30 s failed. While open, calls fail at once
                     with ``provider-unavailable`` and the provider is not called.
``breaker_cooldown`` (number of seconds, optional, default 2, at most 3600) the longest wait of an open breaker
                     before it lets one probe call through: the first wait is 0.25 s, each failed probe doubles
                     it up to this; the probe's success closes the breaker. A provider that comes back is called
                     again within this many seconds.
``breaker_probe_delay`` (number of seconds, optional, default 0.25, at most 3600) the first of those waits.

Every error is an `AdapterConfigError` whose message starts with the offending key (a dotted path inside
``endpoints``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

import schemas
from adapters import api_entreprise, api_particulier, http_json
from adapters.base import ProviderAdapter
from adapters.resilience import CallPolicy


class AdapterConfigError(ValueError):
    """An adapter's registry options are wrong. The message names the key."""


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
MAX_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES, MAX_RETRIES = 2, 5
DEFAULT_BREAKER_FAILURES, MAX_BREAKER_FAILURES = 5, 1000
DEFAULT_BREAKER_COOLDOWN, MAX_BREAKER_COOLDOWN = 2.0, 3600.0
DEFAULT_PROBE_DELAY = 0.25
# Options every kind takes, on top of its own.
COMMON_OPTIONS = frozenset({"timeout", "retries", "breaker_failures", "breaker_cooldown", "breaker_probe_delay"})


@dataclass(frozen=True, slots=True)
class _Kind:
    required: frozenset[str]
    optional: frozenset[str]
    # None: any dataset of the catalogue.
    datasets: frozenset[str] | None
    build: Callable[[str, Mapping[str, Any], aiohttp.ClientSession, Mapping[str, str]], ProviderAdapter]
    check: Callable[[Mapping[str, Any]], None] | None = None
    # Only kinds whose every request is idempotent (GET) may retry; a kind that POSTs must say False...
    idempotent: bool = False
    # ...or, when an entry's options choose its methods, name the option path of a call that must not be repeated.
    unsafe_route: Callable[[Mapping[str, Any]], str | None] | None = None


def _build_api_particulier(name: str, options: Mapping[str, Any], session: aiohttp.ClientSession,
                           environ: Mapping[str, str]) -> ProviderAdapter:
    return api_particulier.ApiParticulierAdapter(
        name=name,
        datasets=_served(options),
        session=session,
        base_url=options["base_url"],
        token=_secret(options["token_env"], environ),
        timeout=float(options.get("timeout", DEFAULT_TIMEOUT)),
    )


def _build_api_entreprise(name: str, options: Mapping[str, Any], session: aiohttp.ClientSession,
                          environ: Mapping[str, str]) -> ProviderAdapter:
    return api_entreprise.ApiEntrepriseAdapter(
        name=name,
        datasets=_served(options),
        session=session,
        base_url=options["base_url"],
        token=_secret(options["token_env"], environ),
        timeout=float(options.get("timeout", DEFAULT_TIMEOUT)),
    )


def _served(options: Mapping[str, Any]) -> dict[str, int]:
    return {d: schemas.latest(d) for d in options["datasets"]}


def _tls_files(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: options[key] for key in http_json.TLS_FILES if key in options}


def _check_http_json(options: Mapping[str, Any]) -> None:
    header = options.get("auth_header", "Authorization")
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        raise AdapterConfigError("auth_header: must be an HTTP header name")
    try:
        http_json.parse_endpoints(options["endpoints"], _served(options))
        http_json.check_tls_files(options["base_url"], _tls_files(options))
    except ValueError as exc:
        raise AdapterConfigError(str(exc)) from None


def _http_json_unsafe_route(options: Mapping[str, Any]) -> str | None:
    routes = http_json.unsafe_routes(http_json.parse_endpoints(options["endpoints"], _served(options)))
    return routes[0] if routes else None


def _build_http_json(name: str, options: Mapping[str, Any], session: aiohttp.ClientSession,
                     environ: Mapping[str, str]) -> ProviderAdapter:
    datasets = _served(options)
    files = _tls_files(options)
    try:
        # Built once here, for every request of this adapter: a key that does not match its certificate is
        # found now, not at the first citizen's request.
        context = http_json.tls_context(files) if files else None
    except ValueError as exc:
        raise AdapterConfigError(str(exc)) from None
    return http_json.HttpJsonAdapter(
        name=name,
        datasets=datasets,
        session=session,
        base_url=options["base_url"],
        endpoints=http_json.parse_endpoints(options["endpoints"], datasets),
        token=_secret(options["token_env"], environ) if "token_env" in options else "",
        auth_header=options.get("auth_header", "Authorization"),
        timeout=float(options.get("timeout", DEFAULT_TIMEOUT)),
        ssl_context=context,
    )


KINDS: Mapping[str, _Kind] = {
    "api_particulier": _Kind(
        required=frozenset({"base_url", "token_env", "datasets"}),
        optional=COMMON_OPTIONS,
        datasets=api_particulier.SUPPORTED_DATASETS,
        build=_build_api_particulier,
        idempotent=True,
    ),
    "api_entreprise": _Kind(
        required=frozenset({"base_url", "token_env", "datasets"}),
        optional=COMMON_OPTIONS,
        datasets=api_entreprise.SUPPORTED_DATASETS,
        build=_build_api_entreprise,
        idempotent=True,
    ),
    "http_json": _Kind(
        required=frozenset({"base_url", "datasets", "endpoints"}),
        optional=COMMON_OPTIONS | {"token_env", "auth_header"} | set(http_json.TLS_FILES),
        datasets=None,
        build=_build_http_json,
        check=_check_http_json,
        idempotent=True,
        unsafe_route=_http_json_unsafe_route,
    ),
}


def _secret(var: str, environ: Mapping[str, str]) -> str:
    value = environ.get(var, "")
    if not value:
        raise AdapterConfigError(f"token_env: environment variable {var} is not set or empty")
    return value


def _check_url(value: Any) -> None:
    if not isinstance(value, str):
        raise AdapterConfigError("base_url: must be a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdapterConfigError(f"base_url: {value!r} is not an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise AdapterConfigError("base_url: must not carry a query, a fragment or credentials")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _not_idempotent(kind: str, options: Mapping[str, Any]) -> str | None:
    """Why this adapter's calls must never be repeated; None when every one of them may be."""
    spec = KINDS[kind]
    if not spec.idempotent:
        return f"kind {kind!r} makes non-idempotent calls, which are never retried"
    route = spec.unsafe_route(options) if spec.unsafe_route is not None else None
    if route is not None:
        return f"{route} is a POST without idempotent = true, and such calls are never retried"
    return None


def _check_policy(kind: str, options: Mapping[str, Any]) -> None:
    reason = _not_idempotent(kind, options)
    retries = options.get("retries", DEFAULT_RETRIES if reason is None else 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        raise AdapterConfigError(f"retries: must be an integer from 0 to {MAX_RETRIES}")
    if retries and reason is not None:
        raise AdapterConfigError(f"retries: {reason}")
    failures = options.get("breaker_failures", DEFAULT_BREAKER_FAILURES)
    if not isinstance(failures, int) or isinstance(failures, bool) or not 1 <= failures <= MAX_BREAKER_FAILURES:
        raise AdapterConfigError(f"breaker_failures: must be an integer from 1 to {MAX_BREAKER_FAILURES}")
    cooldown = options.get("breaker_cooldown", DEFAULT_BREAKER_COOLDOWN)
    if not _is_number(cooldown) or not 0 < cooldown <= MAX_BREAKER_COOLDOWN:
        raise AdapterConfigError(f"breaker_cooldown: must be a number of seconds in ]0, {MAX_BREAKER_COOLDOWN:g}]")
    delay = options.get("breaker_probe_delay", DEFAULT_PROBE_DELAY)
    if not _is_number(delay) or not 0 < delay <= MAX_BREAKER_COOLDOWN:
        raise AdapterConfigError(f"breaker_probe_delay: must be a number of seconds in ]0, {MAX_BREAKER_COOLDOWN:g}]")


def call_policy(kind: str, options: Mapping[str, Any]) -> CallPolicy:
    """The retry and breaker policy the (checked) options ask for."""
    return CallPolicy(
        retries=int(options.get("retries", DEFAULT_RETRIES)) if _not_idempotent(kind, options) is None else 0,
        breaker_failures=int(options.get("breaker_failures", DEFAULT_BREAKER_FAILURES)),
        breaker_cooldown=float(options.get("breaker_cooldown", DEFAULT_BREAKER_COOLDOWN)),
        probe_delay=float(options.get("breaker_probe_delay", DEFAULT_PROBE_DELAY)),
    )


def check_options(kind: str, options: Mapping[str, Any]) -> None:
    """Raise `AdapterConfigError` naming the first bad key; return None when the options are usable."""
    spec = KINDS.get(kind)
    if spec is None:
        raise AdapterConfigError(f"kind: unknown adapter kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    for key in sorted(options):
        if key in ("token", "secret", "password", "api_key"):
            raise AdapterConfigError(f"{key}: secrets never live in the registry; name an environment "
                                     "variable with token_env")
        if key not in spec.required | spec.optional:
            raise AdapterConfigError(f"{key}: unknown option for kind {kind!r}")
    for key in sorted(spec.required - set(options)):
        raise AdapterConfigError(f"{key}: required for kind {kind!r}")

    _check_url(options["base_url"])
    token_env = options.get("token_env", "TOKEN")
    if not isinstance(token_env, str) or not _ENV_NAME.fullmatch(token_env):
        raise AdapterConfigError("token_env: must be an environment variable name (A-Z, 0-9, _)")
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise AdapterConfigError(f"timeout: must be a number of seconds in ]0, {MAX_TIMEOUT:g}]")
    datasets = options["datasets"]
    if not isinstance(datasets, list | tuple) or not datasets or not all(isinstance(d, str) for d in datasets):
        raise AdapterConfigError("datasets: must be a non-empty list of dataset ids")
    if len(set(datasets)) != len(datasets):
        raise AdapterConfigError("datasets: lists a dataset twice")
    catalogue = schemas.catalogue()
    for d in datasets:
        if spec.datasets is not None and d not in spec.datasets:
            raise AdapterConfigError(f"datasets: kind {kind!r} cannot serve {d!r} "
                                     f"(it serves {', '.join(sorted(spec.datasets))})")
        if d not in catalogue:
            raise AdapterConfigError(f"datasets: {d!r} is not in the schema catalogue")
    if spec.check is not None:
        spec.check(options)
    # After the kind's own checks: whether a retry is allowed may depend on options they have just validated.
    _check_policy(kind, options)


def build_adapter(kind: str, name: str, options: Mapping[str, Any], session: aiohttp.ClientSession, *,
                  environ: Mapping[str, str] | None = None) -> ProviderAdapter:
    """Check the options, read the secret from the environment (`environ`, default `os.environ`), build."""
    check_options(kind, options)
    adapter = KINDS[kind].build(name, options, session, os.environ if environ is None else environ)
    adapter.use_policy(call_policy(kind, options))
    return adapter
