"""The consent flow's OAuth 2.0 endpoints: authorization code with PKCE (S256 only), RFC 9396 rich authorization
requests of type `dlnuf_exchange`, the consent screen, and the token endpoint with RFC 7523 private_key_jwt.

1. `GET /oauth/authorize`: the consumer sends the citizen here, with the request's parameters or with the
   ``request_uri`` of a pushed request (RFC 9126, `broker.citizen.par`; only those when
   ``DLNUF_OAUTH_REQUIRE_PAR``). Unknown client or unregistered redirect URI: an error page (never a redirect to an
   unverified URI). Anything else wrong: back to the client with an OAuth error, its state and our ``iss``.
2. `GET /oauth/consent/{id}`: after citizen login, the consent screen, with a preview of the actual values.
3. `POST /oauth/consent/{id}`: the decision (CSRF-protected); accept or refuse, both recorded; back to the client.
4. `POST /oauth/token`: code (single use, 60 s, PKCE) or refresh token -> a key-bound access token (RFC 9068);
   the client authenticates with private_key_jwt (`consent.client_auth`, `broker.citizen.client_auth`).

The server's RFC 8414 metadata, which standard clients discover these endpoints from, is `broker.citizen.metadata`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import structlog
from aiohttp import web

import schemas
from adapters.base import AdapterError, AdapterQuery
from broker.citizen import binding, consent_screen, metadata, oauth_request, pages, par
from broker.citizen.client_auth import NO_STORE, PAR_PATH, TOKEN_PATH, authenticate, oauth_error, read_form
from broker.citizen.login import LOGIN_DENIED, citizen_required
from broker.exchange import authz
from broker.registry import Habilitation, Organisation
from broker.service.problems import REQUEST_ID
from broker.service.state import STATE, BrokerState
from broker.service.urls import issuer
from broker.storage import db
from broker.tlog import accesslog
from broker.tlog.jcs import canonicalize
from consent import rar, records, tokens
from consent.sealing import CONSENT_SEAL
from consent.sessions import CITIZEN_SESSIONS, CitizenSession, current_citizen, login_url
from schemas.validation import InvalidDocument

log = structlog.get_logger(__name__)

REQUEST_TTL = timedelta(minutes=10)
CODE_TTL = timedelta(seconds=60)
REFRESH_TTL_MAX = timedelta(days=rar.MAX_DAYS)
_CONSENT_QUERIES = ("consent", "consents.sql")


def _q() -> dict[str, str]:
    return db.queries(*_CONSENT_QUERIES)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _location(uri: str, **params: str | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return uri + ("&" if urlsplit(uri).query else "?") + query


def _redirect(uri: str, **params: str | None) -> web.HTTPFound:
    return web.HTTPFound(_location(uri, **params))


def _error_page(title: str, message: str, status: int = 400) -> web.Response:
    return pages.render("error.html", status=status, title=title, message=message)


# -- 1. authorization endpoint --------------------------------------------------------------------------------------


async def authorize(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    now = datetime.now(UTC)
    params: Mapping[str, str] = request.query
    pushed = "request_uri" in params
    try:
        if pushed:  # RFC 9126: the parameters were pushed by the authenticated client; only client_id comes along
            params = await par.consume(state, request.query, now)
        parsed = oauth_request.parse(state.registry.current, params, pushed=pushed,
                                     require_pushed=state.config.oauth_require_par)
    except par.RequestUriUnusable as exc:
        log.warning("authorize refused", reason=str(exc))
        return _error_page("Demande expirée", "Cette demande a déjà servi ou a expiré. Retournez sur le site du "
                           "service pour recommencer.")
    except oauth_request.NoRedirect as exc:
        log.warning("authorize refused", reason=str(exc))
        if "redirect_uri" in str(exc):
            return _error_page("Demande invalide", "L'adresse de retour de ce service n'est pas enregistrée.")
        return _error_page("Demande invalide", "Le service qui vous a envoyé ici n'est pas connu de DLNUF.")
    except oauth_request.Refused as exc:
        log.warning("authorize refused", reason=exc.description, error=exc.error)
        raise _redirect(exc.redirect_uri, error=exc.error, error_description=exc.description, state=exc.state,
                        iss=issuer(request, state.config.public_url)) from None
    request_id = uuid.uuid4()
    value, browser_sha256 = binding.new_binding()
    await state.pool.execute(_q()["authorization_request_insert"], request_id, parsed.client_id, parsed.redirect_uri,
                             parsed.state, parsed.code_challenge, [d.to_json() for d in parsed.details],
                             parsed.habilitations[0].id, now + REQUEST_TTL, browser_sha256)
    response = web.HTTPFound(f"/oauth/consent/{request_id}")
    binding.set_cookie(response, request_id, value, lifetime=REQUEST_TTL, secure=_cookie_secure(request))
    raise response


def _cookie_secure(request: web.Request) -> bool:
    return request.config_dict[CITIZEN_SESSIONS].cookie_secure


# -- 2. and 3. the consent screen ---------------------------------------------------------------------------------


async def _pending(state: BrokerState, request: web.Request) -> dict[str, Any] | None:
    try:
        request_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        return None
    row = await state.pool.fetchrow(_q()["authorization_request_get"], request_id)
    if row is None or row["decided_at"] is not None or row["expires_at"] <= datetime.now(UTC):
        return None
    return dict(row)


async def _preview(state: BrokerState, request: web.Request, hab: Habilitation, details: rar.ExchangeAuthorization,
                   citizen: CitizenSession) -> tuple[dict[str, Any] | None, str | None]:
    """Fetch the citizen's actual values so they see what they would share. The fetch is logged like any access,
    as released to the citizen themselves."""
    # logged under the administration that asked (so the citizen's journal and its filter find it), released to
    # the citizen alone
    entry = accesslog.LogEntry(request_id=request[REQUEST_ID], consumer=hab.consumer, dataset=details.dataset,
                               purpose=accesslog.PREVIEW_PURPOSE, recipient=accesslog.CITIZEN_RECIPIENT,
                               fields_requested=details.fields, habilitation=hab, subject_key=citizen.subject_key)
    version = schemas.latest(details.dataset)
    entry.dataset_version = version
    try:
        adapter = state.adapters.for_dataset(details.dataset)
        document = await adapter.fetch(AdapterQuery(dataset=details.dataset, version=version,
                                                    subject=citizen.identity,
                                                    fields=frozenset(details.fields), request_id=entry.request_id,
                                                    recipient=details.recipient))
        state.validators.verify(details.dataset, version, document)
    except (AdapterError, InvalidDocument) as exc:
        entry.outcome, entry.http_status, entry.problem_type = "failed", 502, getattr(exc, "slug", "provider-error")
        await accesslog.commit(state.pool, entry)
        return None, "Le fournisseur de ces données n'a pas pu répondre. Vous pouvez tout de même décider."
    data = authz.release(hab, document, details.fields)
    entry.outcome, entry.http_status = "released", 200
    entry.fields_released = tuple(f for f in details.fields if f.split(".")[0] in data)
    entry.record_payload(canonicalize(data))
    await accesslog.commit(state.pool, entry)
    return data, None


@dataclass(frozen=True, slots=True)
class _Asked:
    """One object of a pending request, with what the registry says of it now."""

    details: rar.ExchangeAuthorization
    habilitation: Habilitation
    provider: str
    provider_name: str


def _asked(state: BrokerState, pending: Mapping[str, Any]) -> tuple[Organisation, list[_Asked]] | None:
    """The client and each object of its request, as long as the registry still allows every one of them."""
    registry = state.registry.current
    org = registry.organisation(pending["client_id"])
    if org is None:
        return None
    asked = []
    for details in rar.parse(pending["authorization_details"], default_recipient=pending["client_id"]):
        hab = registry.habilitation(pending["client_id"], details.dataset)
        adapter_entry = registry.adapter_for(details.dataset)
        if hab is None or adapter_entry is None:
            return None
        provider = registry.organisation(adapter_entry.provider)
        asked.append(_Asked(details, hab, adapter_entry.provider,
                            provider.name if provider else adapter_entry.provider))
    return org, asked


_OTHER_BROWSER = ("Demande ouverte ailleurs", "Cette demande de partage a été commencée dans un autre navigateur ou "
                  "par une autre personne connectée. Retournez sur le site du service pour recommencer.")


async def consent_page(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    pending = await _pending(state, request)
    if pending is None:
        return _error_page("Demande expirée", "Cette demande n'existe pas, a déjà reçu une réponse ou a expiré. "
                           "Retournez sur le site du service pour recommencer.", 404)
    try:
        binding.verify_browser(request, pending)  # before the login: another browser is not sent to log in
        citizen = await current_citizen(request)
        if citizen is None:
            raise web.HTTPFound(login_url(request.path_qs))
        await binding.claim(state.pool, pending["id"], citizen.id)
    except binding.NotThisBrowser as exc:
        log.warning("consent screen refused", reason=str(exc), request=str(pending["id"]))
        return _error_page(*_OTHER_BROWSER, 403)
    found = _asked(state, pending)
    if found is None:
        return _error_page("Demande invalide", "Ce service n'est plus habilité à cette demande.", 403)
    org, asked = found
    registry, now = state.registry.current, datetime.now(UTC)
    requests = []
    for index, one in enumerate(asked):
        details = one.details
        schema = schemas.load(details.dataset, schemas.latest(details.dataset))
        data, preview_error = await _preview(state, request, one.habilitation, details, citizen)
        requests.append(consent_screen.request_view(
            schema=schema, data=data, fields=details.fields, hab=one.habilitation, registry=registry,
            controller=org.siret, recipient=details.recipient, provider=one.provider,
            provider_name=one.provider_name, purpose=details.purpose, frequency=details.frequency,
            duration_days=details.duration_days, now=now, preview_error=preview_error, prefix=f"{index}:"))
    redirect_origin = "{0.scheme}://{0.netloc}".format(urlsplit(pending["redirect_uri"]))
    return pages.render(
        "consent.html", form_targets=[redirect_origin], request_id=str(pending["id"]), csrf=citizen.csrf_token,
        **consent_screen.context(controller=org.siret, controller_name=org.name, requests=requests))


@citizen_required(html_page=True)  # and CSRF-checked (form field "csrf")
async def consent_decision(request: web.Request, citizen: CitizenSession) -> web.StreamResponse:
    state = request.app[STATE]
    form = await request.post()
    now = datetime.now(UTC)
    pending = await _pending(state, request)
    if pending is None:
        return _error_page("Demande expirée", "Cette demande a déjà reçu une réponse ou a expiré.", 404)
    try:
        binding.verify_browser(request, pending)
    except binding.NotThisBrowser as exc:
        log.warning("consent decision refused", reason=str(exc), request=str(pending["id"]))
        return _error_page(*_OTHER_BROWSER, 403)
    # decided once, and only by the session that opened the screen
    decided = await state.pool.fetchrow(_q()["authorization_request_decide"], pending["id"], now, citizen.id)
    if decided is None:
        if pending["session_id"] not in (None, citizen.id):
            log.warning("consent decision refused", reason="another session claimed it", request=str(pending["id"]))
            return _error_page(*_OTHER_BROWSER, 403)
        # a double submit lost the race (the first decision stands), or the screen was never opened
        return _error_page("Demande expirée", "Cette demande a déjà reçu une réponse.", 409)
    iss = issuer(request, state.config.public_url)
    found = _asked(state, pending)
    if found is None:
        return _back(request, pending, error="access_denied", error_description="habilitation withdrawn", iss=iss)
    org, asked = found
    ticked = {str(v) for v in form.getall("fields", [])}
    accept = form.get("decision") == "accept"
    consents = []
    async with state.pool.acquire() as conn, conn.transaction():  # every record and its first event, together
        for index, one in enumerate(asked):
            details, hab = one.details, one.habilitation
            granted = tuple(f for f in details.fields if f"{index}:{f}" in ticked) if accept else ()
            refused = tuple(f for f in details.fields if f not in granted)
            consents.append(await records.create(
                conn, subject_key=citizen.subject_key,
                identity_ciphertext=state.sealer.seal_identity(
                    citizen.identity, CONSENT_SEAL, france_connect_token=citizen.france_connect_token),
                controller=org.siret, controller_name=org.name, recipient=details.recipient, habilitation_id=hab.id,
                dataset=details.dataset, dataset_version=schemas.latest(details.dataset), provider=one.provider,
                purpose=details.purpose, fields=granted, fields_refused=refused,
                legal_basis_title=hab.legal_basis.title, legal_basis_url=hab.legal_basis.url,
                accepted=bool(granted), frequency=details.frequency, now=now,
                expires_at=now + timedelta(days=details.duration_days),
            ))
    accepted = [c for c in consents if c.state == "active"]
    log.info("consent decided", consent_ids=[str(c.id) for c in consents], accepted=len(accepted),
             client_id=org.siret, datasets=[c.dataset for c in consents])
    if not accepted:
        return _back(request, pending, error="access_denied", error_description="the citizen refused", iss=iss)
    code = secrets.token_urlsafe(32)
    await state.pool.execute(_q()["code_insert"], _sha256(code), [c.id for c in accepted], org.siret,
                             pending["redirect_uri"], pending["code_challenge"], now + CODE_TTL)
    return _back(request, pending, code=code, iss=iss)


def _back(request: web.Request, pending: Mapping[str, Any], **params: str) -> web.Response:
    """The redirect to the client with the request's own state (RFC 6749 §4.1.2), the request's cookie cleared."""
    location = _location(pending["redirect_uri"], **params, state=pending["state"])
    response = web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})
    binding.clear_cookie(response, pending["id"], secure=_cookie_secure(request))
    return response


async def login_denied(request: web.Request, next_path: str, error: str) -> web.StreamResponse | None:
    """The citizen cancelled at the OP while logging in for a consent screen: back to the client with
    ``access_denied`` and its state (RFC 6749 §4.1.2.1), if this browser opened that request and no session has
    claimed it. None otherwise: the login's own page says the login was cancelled."""
    match = _CONSENT_PATH.fullmatch(next_path)
    if match is None or error != "access_denied":
        return None
    state = request.app[STATE]
    now = datetime.now(UTC)
    row = await state.pool.fetchrow(_q()["authorization_request_get"], uuid.UUID(match[1]))
    if row is None:
        return None
    try:
        binding.verify_browser(request, row)
    except binding.NotThisBrowser as exc:
        log.warning("cancel not forwarded to the client", reason=str(exc), request=str(row["id"]))
        return None
    if await state.pool.fetchrow(_q()["authorization_request_decide"], row["id"], now, None) is None:
        return None
    log.info("consent request cancelled at the OP", request=str(row["id"]), client_id=row["client_id"])
    return _back(request, row, error="access_denied", error_description="the citizen cancelled the login",
                 iss=issuer(request, state.config.public_url))


_CONSENT_PATH = re.compile(r"/oauth/consent/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


# -- 4. token endpoint --------------------------------------------------------------------------------------------


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now = datetime.now(UTC)
    iss = issuer(request, state.config.public_url)
    try:
        form = await read_form(request)
        client_id, key = await authenticate(request, form, endpoint=TOKEN_PATH)
        grant = form.get("grant_type", "")
        if grant == "authorization_code":
            consents = await _redeem_code(state, form, client_id, now)
        elif grant == "refresh_token":
            consents = await _redeem_refresh(state, form, client_id, now)
        else:
            raise tokens.OAuthError("unsupported_grant_type", "authorization_code or refresh_token")
    except tokens.OAuthError as exc:
        return oauth_error(request, exc, where="token")
    details = [_details_of(c) for c in consents]
    access_token, expires_in = tokens.issue_access_token(
        signing_key=state.signing_key, issuer=iss, consent_ids=[c.id for c in consents], client_id=client_id,
        jkt=tokens.thumbprint(key), authorization_details=details, now=now)
    body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
                            "authorization_details": details}
    periodic = [c for c in consents if c.frequency == "periodic"]
    if grant == "authorization_code" and periodic:
        refresh = secrets.token_urlsafe(32)
        await state.pool.execute(_q()["refresh_insert"], _sha256(refresh), [c.id for c in periodic], client_id,
                                 max(c.expires_at for c in periodic))
        body["refresh_token"] = refresh
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=NO_STORE)


async def _consents(state: BrokerState, ids: list[uuid.UUID]) -> list[records.Consent]:
    found = [await records.get(state.pool, consent_id) for consent_id in ids]
    return [c for c in found if c is not None]


async def _redeem_code(state: BrokerState, form: Mapping[str, str], client_id: str, now: datetime,
                       ) -> list[records.Consent]:
    code = form.get("code", "")
    row = await state.pool.fetchrow(_q()["code_redeem"], _sha256(code), now)
    if row is None:
        raise tokens.OAuthError("invalid_grant", "unknown or already used code")
    if not row["fresh"]:
        raise tokens.OAuthError("invalid_grant", "code expired")
    if row["client_id"] != client_id:
        raise tokens.OAuthError("invalid_grant", "code issued to another client")
    if form.get("redirect_uri") != row["redirect_uri"]:
        raise tokens.OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
    verifier = form.get("code_verifier", "")
    if not 43 <= len(verifier) <= 128 or not secrets.compare_digest(_s256(verifier), row["code_challenge"]):
        raise tokens.OAuthError("invalid_grant", "PKCE verification failed")
    consents = await _consents(state, list(row["consent_ids"]))
    # the code stands for one decision: every consent of it, or none (a revocation within the code's minute)
    if len(consents) != len(row["consent_ids"]) or any(c.state_at(now) != "active" for c in consents):
        raise tokens.OAuthError("invalid_grant", "consent no longer active")
    return consents


async def _redeem_refresh(state: BrokerState, form: Mapping[str, str], client_id: str, now: datetime,
                          ) -> list[records.Consent]:
    row = await state.pool.fetchrow(_q()["refresh_get"], _sha256(form.get("refresh_token", "")), now)
    if row is None or row["client_id"] != client_id:
        raise tokens.OAuthError("invalid_grant", "unknown, expired or revoked refresh token")
    # what is still in force: a consent the citizen revoked drops out of the refreshed token
    consents = [c for c in await _consents(state, list(row["consent_ids"])) if c.state_at(now) == "active"]
    if not consents:
        raise tokens.OAuthError("invalid_grant", "consent no longer active")
    return consents


def _details_of(consent: records.Consent) -> dict[str, Any]:
    """What the citizen actually granted (after opt-outs), echoed in the token response and the token; the
    consent's id tells the exchange which consent a request stands on."""
    return {"type": rar.TYPE, "dataset": consent.dataset, "purpose": consent.purpose, "fields": list(consent.fields),
            "frequency": consent.frequency, "recipient": consent.recipient,
            "expires_at": consent.expires_at.isoformat(), "consent_id": str(consent.id)}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/oauth/authorize", authorize)
    app.router.add_get("/oauth/consent/{id}", consent_page)
    app.router.add_post("/oauth/consent/{id}", consent_decision)
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_post(PAR_PATH, par.push)
    metadata.add_routes(app.router)
    app[LOGIN_DENIED] = login_denied
