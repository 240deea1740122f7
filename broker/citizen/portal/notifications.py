"""Être prévenu·e: the citizen chooses e-mails for each access, a weekly digest, or nothing, and the address; and the
pages the links in mails lead to, which need no login (`broker.notify.links`).

- ``GET|POST /citizen/notifications``: the choice (citizen session; CSRF on the POST);
- ``GET|POST /citizen/notifications/confirmer/{token}``: confirm an address typed in the portal (the GET only shows a
  button: mail scanners that fetch links must not confirm by themselves);
- ``GET|POST /citizen/notifications/desabonnement/{token}``: unsubscribe, without logging in; the POST is also RFC
  8058's one-click unsubscribe that mail software sends (`List-Unsubscribe-Post`).

A link's token is its whole authority: it names one subscription and one action, signed by the broker. These routes
exist only when an SMTP relay is configured.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from broker.citizen import formatting, pages
from broker.citizen.login import citizen_required
from broker.citizen.portal.common import render
from broker.notify import links, subscriptions
from broker.service.state import STATE
from consent.sessions import CitizenSession

_NOTICES = {
    "enregistre": "Votre choix est enregistré.",
    "confirmation": "Un courriel vient de partir : ouvrez le lien qu'il contient pour confirmer votre adresse.",
    "desabonne": "Vous ne recevrez plus de courriel. Votre adresse est effacée.",
}


def _view(request: web.Request, citizen: CitizenSession, sub: subscriptions.Subscription | None, *,
          status: int = 200, error: str | None = None, mode: str | None = None,
          address: str | None = None) -> web.Response:
    return render(
        request, citizen, "portal_notifications.html", active="notifications",
        title="Être prévenu·e des accès à vos données", status=status, error=error,
        mode=mode or (sub.mode if sub else "none"),
        address=address if address is not None else (sub.address if sub else citizen.email or ""),
        verified_address=citizen.email, subscription=sub,
        confirm_before=formatting.moment_fr(sub.confirm_before) if sub and sub.confirm_before else None,
        notice=_NOTICES.get(request.query.get("fait", "")), action=links.SETTINGS_PATH)


@citizen_required(html_page=True)
async def settings_page(request: web.Request, citizen: CitizenSession) -> web.Response:
    state = request.app[STATE]
    return _view(request, citizen, await subscriptions.of_subject(state.pool, state.sealer, citizen.subject_key))


@citizen_required(html_page=True)  # and CSRF-checked: form field "csrf"
async def choose(request: web.Request, citizen: CitizenSession) -> web.StreamResponse:
    state = request.app[STATE]
    form = await request.post()
    mode, address = str(form.get("mode", "")), str(form.get("adresse", ""))
    if mode not in (*subscriptions.MODES, "none"):
        mode = ""
    try:
        if not mode:
            raise subscriptions.InvalidAddress("Choisissez quand vous prévenir.")
        sub = await subscriptions.choose(state.pool, state.sealer, subject_key=citizen.subject_key, mode=mode,
                                         address=address or None, verified_address=citizen.email,
                                         now=datetime.now(UTC))
    except subscriptions.InvalidAddress as exc:
        current = await subscriptions.of_subject(state.pool, state.sealer, citizen.subject_key)
        return _view(request, citizen, current, status=400, error=str(exc), mode=mode, address=address)
    done = "desabonne" if sub is None else "enregistre" if sub.confirmed else "confirmation"
    return web.Response(status=303, headers={"Location": f"{links.SETTINGS_PATH}?fait={done}",
                                             "Cache-Control": "no-store"})


def _subscription_id(request: web.Request, action: str) -> uuid.UUID | None:
    try:
        return links.verify(links.link_key(request.app[STATE].subject_secret), action, request.match_info["token"])
    except links.InvalidLink:
        return None


def _gone() -> web.Response:
    return pages.render("message.html", status=404, title="Lien invalide ou expiré",
                        message="Ce lien ne correspond à aucune demande en cours : il a peut-être déjà servi, ou "
                                "l'adresse a été changée ou retirée depuis.",
                        links=[(links.SETTINGS_PATH, "Gérer mes notifications dans « Mes données »")])


async def confirm_page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    subscription_id = _subscription_id(request, links.CONFIRM)
    sub = await subscriptions.get(state.pool, state.sealer, subscription_id) if subscription_id else None
    if sub is None or sub.confirmed or sub.confirm_before is None or sub.confirm_before <= datetime.now(UTC):
        return _gone()
    return pages.render("mail_link.html", title="Confirmer votre adresse", action=request.path,
                        lead=f"Confirmez-vous vouloir être prévenu·e à l'adresse {sub.address} des accès des "
                             "administrations à vos données ?",
                        button="Oui, confirmer mon adresse")


async def confirm(request: web.Request) -> web.Response:
    state = request.app[STATE]
    subscription_id = _subscription_id(request, links.CONFIRM)
    sub = await subscriptions.confirm(state.pool, state.sealer, subscription_id, datetime.now(UTC)) \
        if subscription_id else None
    if sub is None:
        return _gone()
    rhythm = "à chaque accès à vos données" if sub.mode == "each" else "chaque semaine, s'il y a eu des accès"
    return pages.render("message.html", title="Adresse confirmée",
                        message=f"Vous serez prévenu·e à l'adresse {sub.address}, {rhythm}.",
                        links=[(links.SETTINGS_PATH, "Gérer mes notifications")])


async def unsubscribe_page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    subscription_id = _subscription_id(request, links.UNSUBSCRIBE)
    sub = await subscriptions.get(state.pool, state.sealer, subscription_id) if subscription_id else None
    if sub is None:
        return _gone()
    return pages.render("mail_link.html", title="Ne plus être prévenu·e", action=request.path,
                        lead="Vous ne recevrez plus de courriel sur les accès à vos données, et votre adresse sera "
                             "effacée. Votre journal reste consultable dans « Mes données ».",
                        button="Me désabonner")


async def unsubscribe(request: web.Request) -> web.Response:
    """The confirmation page's button, or a mail client's RFC 8058 one-click POST: no login, the token suffices."""
    subscription_id = _subscription_id(request, links.UNSUBSCRIBE)
    if subscription_id is None:
        return _gone()
    await subscriptions.unsubscribe(request.app[STATE].pool, subscription_id)  # again: already done, same answer
    return pages.render("message.html", title="Vous êtes désabonné·e",
                        message="Vous ne recevrez plus de courriel sur les accès à vos données. Votre adresse est "
                                "effacée.",
                        links=[("/citizen/", "Aller à « Mes données »")])


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(links.SETTINGS_PATH, settings_page)
    router.add_post(links.SETTINGS_PATH, choose)
    router.add_get(links.CONFIRM_PATH + "{token}", confirm_page)
    router.add_post(links.CONFIRM_PATH + "{token}", confirm)
    router.add_get(links.UNSUBSCRIBE_PATH + "{token}", unsubscribe_page)
    router.add_post(links.UNSUBSCRIBE_PATH + "{token}", unsubscribe)
