"""The SMTP relay: Python's smtplib, in a worker thread, one connection per batch of mails.

STARTTLS (the default) and implicit TLS verify the relay's certificate against the system's trust store; "none" is
allowed by the configuration for a relay on the loopback only. A relay that cannot be reached fails the whole batch
(each mail is retried later); a recipient the relay refuses for good (5xx) fails that mail only, for good.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from broker.config import MailConfig


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one mail: sent (error None), or why not, and whether retrying can help."""

    error: str | None = None
    permanent: bool = False


class Relay:
    def __init__(self, config: MailConfig) -> None:
        self.config = config
        self._password = os.environ.get(config.password_env) if config.username else None

    async def send(self, messages: Sequence[EmailMessage]) -> list[Outcome]:
        if not messages:
            return []
        return await asyncio.to_thread(self._send, list(messages))

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        if c.security == "tls":
            return smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=ssl.create_default_context())
        smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        try:
            smtp.ehlo()
            if c.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _send(self, messages: list[EmailMessage]) -> list[Outcome]:
        try:
            smtp = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            return [Outcome(f"relay unreachable: {type(exc).__name__}: {exc}")] * len(messages)
        try:
            if self.config.username:
                smtp.login(self.config.username, self._password or "")
            # each mail's own outcome: one sent before the connection broke is not sent twice
            outcomes = [self._one(smtp, m) for m in messages]
        except (OSError, smtplib.SMTPException) as exc:
            return [Outcome(f"relay refused the session: {type(exc).__name__}: {exc}")] * len(messages)
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()
        return outcomes

    @staticmethod
    def _one(smtp: smtplib.SMTP, message: EmailMessage) -> Outcome:
        try:
            refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            return Outcome(f"recipient refused ({', '.join(map(str, codes))})", permanent=all(c >= 500 for c in codes))
        except smtplib.SMTPResponseException as exc:
            # a message refused (5xx) stays refused; 4xx is the relay saying "later"
            return Outcome(f"relay answered {exc.smtp_code}", permanent=exc.smtp_code >= 500)
        except (OSError, smtplib.SMTPException) as exc:
            return Outcome(f"relay failed: {type(exc).__name__}: {exc}")
        if refused:
            return Outcome(f"recipient refused ({len(refused)})", permanent=True)
        return Outcome()
