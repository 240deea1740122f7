"""The mails themselves, in French, plain text: an access, a weekly digest, an address to confirm.

What a mail may say about the citizen's data is deliberately little: which administration, which dataset (by its
title), on which day, and links (the journal, unsubscribe, the settings). Never the values, never the fields, never
the citizen's name: a mailbox is read on shared screens and kept for years. Each notification carries
`List-Unsubscribe` with RFC 8058's one-click POST, so mail software offers « Se désabonner » by itself, and
`Auto-Submitted: auto-generated` (RFC 3834), so auto-responders stay quiet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from broker.notify.links import SETTINGS_PATH

PARIS = ZoneInfo("Europe/Paris")
MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
          "novembre", "décembre")
DIGEST_LINES = 50


@dataclass(frozen=True, slots=True)
class Access:
    """An access as a mail names it."""

    logged_at: datetime
    consumer_name: str
    dataset_title: str


@dataclass(frozen=True, slots=True)
class Links:
    """Where a mail's links lead, absolute: mails leave the request's context."""

    base: str
    unsubscribe: str | None = None
    """The subscription's one-click unsubscribe URL (None for a confirmation mail, which subscribes nobody yet)."""

    @property
    def settings(self) -> str:
        return self.base + SETTINGS_PATH

    def journal(self, first: date | None = None, last: date | None = None) -> str:
        query = urlencode({k: v.isoformat() for k, v in (("du", first), ("au", last)) if v is not None})
        return self.base + "/citizen/journal" + ("?" + query if query else "")


def _day(moment: datetime | date) -> str:
    d = moment.astimezone(PARIS).date() if isinstance(moment, datetime) else moment
    return f"{'1er' if d.day == 1 else d.day} {MONTHS[d.month - 1]} {d.year}"


def _message(*, sender: str, to: str, subject: str, body: str, now: datetime,
             unsubscribe: str | None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = "fr"
    if unsubscribe is not None:
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(body, charset="utf-8")
    return message


def _footer(links: Links, why: str) -> str:
    assert links.unsubscribe is not None
    return (f"\n-- \nVous recevez ce message parce que vous avez demandé à être prévenu·e {why}.\n"
            f"Changer de rythme ou d'adresse : {links.settings}\n"
            f"Ne plus recevoir ces messages, sans vous connecter : {links.unsubscribe}\n")


def access_mail(*, sender: str, to: str, access: Access, links: Links, now: datetime) -> EmailMessage:
    day = access.logged_at.astimezone(PARIS).date()
    body = (
        "Bonjour,\n\n"
        f"Le {_day(day)}, {access.consumer_name} a obtenu vos données « {access.dataset_title} » auprès de "
        "l'administration qui les détient, par le service « Mes données ».\n\n"
        "Ce qui a été transmis, pourquoi et sur quelle base, et la preuve que cet accès figure dans le journal "
        "public : connectez-vous à votre journal avec FranceConnect.\n"
        f"{links.journal(day, day)}\n\n"
        "Si cet accès vous paraît anormal, écrivez à l'administration concernée ; vous trouverez les contacts utiles "
        f"dans « Mes données ».\n{_footer(links, 'de chaque accès à vos données')}"
    )
    return _message(sender=sender, to=to, now=now, unsubscribe=links.unsubscribe, body=body,
                    subject=f"{access.consumer_name} a obtenu vos données « {access.dataset_title} »")


def digest_mail(*, sender: str, to: str, accesses: Sequence[Access], start: datetime, end: datetime, links: Links,
                now: datetime) -> EmailMessage:
    first, last = start.astimezone(PARIS).date(), end.astimezone(PARIS).date()
    count = len(accesses)
    lines = [f"- le {_day(a.logged_at)} : {a.consumer_name}, « {a.dataset_title} »"
             for a in accesses[:DIGEST_LINES]]
    if count > DIGEST_LINES:
        lines.append(f"- et {count - DIGEST_LINES} autres accès, dans votre journal.")
    body = (
        "Bonjour,\n\n"
        f"Du {_day(first)} au {_day(last)}, {count} accès à vos données "
        f"{'a eu lieu' if count == 1 else 'ont eu lieu'} par le service « Mes données » :\n\n"
        + "\n".join(lines) + "\n\n"
        "Le détail de chaque accès, et la preuve qu'il figure dans le journal public : connectez-vous à votre journal "
        f"avec FranceConnect.\n{links.journal(first, last)}\n"
        f"{_footer(links, 'chaque semaine des accès à vos données')}"
    )
    return _message(sender=sender, to=to, now=now, unsubscribe=links.unsubscribe, body=body,
                    subject=f"Vos données cette semaine : {count} accès")


def confirmation_mail(*, sender: str, to: str, confirm_url: str, before: datetime, links: Links,
                      now: datetime) -> EmailMessage:
    until = before.astimezone(PARIS)
    body = (
        "Bonjour,\n\n"
        "Quelqu'un, sans doute vous, a demandé dans « Mes données » à être prévenu à cette adresse des accès des "
        "administrations à ses données.\n\n"
        f"Pour le confirmer, ouvrez ce lien avant le {_day(until)} à {until.hour} h {until.minute:02d} :\n"
        f"{confirm_url}\n\n"
        "Si vous n'êtes pas à l'origine de cette demande, ignorez ce message : aucun autre ne vous sera envoyé.\n"
        f"\n-- \nLe service « Mes données » : {links.base}/citizen/\n"
    )
    return _message(sender=sender, to=to, now=now, unsubscribe=None, body=body,
                    subject="Confirmez votre adresse pour être prévenu·e des accès à vos données")
