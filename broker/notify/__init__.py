"""E-mail notifications of citizens: each access to their data, or a weekly digest, through an SMTP relay.

- `subscriptions`: the citizen's choice (each access, weekly, nothing) and address, sealed at rest; an address the
  identity provider gave is used at once, any other one after the link of a confirmation mail;
- `links`: the signed tokens of the links in mails (confirm, unsubscribe without logging in);
- `mails`: the French messages, with no personal data beyond what is needed: the administration, the dataset, when,
  and links;
- `smtp`: the relay;
- `worker`: the delivery queue, built on the notification outbox the webhook uses: every released entry's outbox row
  is fanned out once to the subscribers, mails are leased, retried with back-off and never lost on a restart.

Nothing here is on the exchange path: a relay that is down delays mails, never an exchange.
"""
