"""The consent flow's authorization request, as the authorization endpoint (RFC 6749 §4.1.1) or the pushed
authorization request endpoint (RFC 9126) receives it, checked against the registry.

Two kinds of refusal, because where the answer may go differs:

- `NoRedirect`: the client is unknown or the redirect URI is not one it registered. Nobody may be sent to an
  unverified URI, so the authorization endpoint shows a page and the PAR endpoint answers JSON.
- `Refused`: anything else. The authorization endpoint sends the browser back to the (verified) redirect URI with
  ``error``, ``state`` and ``iss`` (RFC 6749 §4.1.2.1, RFC 9207); the PAR endpoint answers JSON.

Unknown parameters are ignored, as RFC 6749 §3.1 requires (a library may add ``scope`` or ``nonce``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.registry import Habilitation, Registry
from consent import rar

RESPONSE_TYPE = "code"
PKCE_METHOD = "S256"
# What a pushed request stores: everything an authorization request means; client authentication is not in it.
PARAMETERS = ("response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method",
              "authorization_details")


class NoRedirect(Exception):
    """Unknown client, or a redirect URI it did not register: never redirect. The message is for the log."""


class Refused(Exception):
    """An OAuth error for the client, at its verified redirect URI (or in the PAR answer)."""

    def __init__(self, error: str, description: str, *, redirect_uri: str, state: str | None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    details: tuple[rar.ExchangeAuthorization, ...]
    habilitations: tuple[Habilitation, ...]
    """One per object of `details`, in the same order."""


def parse(registry: Registry, params: Mapping[str, str], *, pushed: bool, require_pushed: bool,
          ) -> AuthorizationRequest:
    """Check an authorization request's parameters; raise `NoRedirect` or `Refused`.

    `pushed` says the parameters come from a pushed request; with `require_pushed`, any other is refused."""
    # 1. who asks, and where the answer may go: checked first, since every later refusal is sent there
    client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
    org = registry.organisation(client_id)
    if org is None or "consumer" not in org.roles:
        raise NoRedirect(f"unknown client {client_id[:64]!r}")
    if redirect_uri not in org.redirect_uris:
        raise NoRedirect(f"redirect_uri not registered for {client_id}")
    state = params.get("state") or None

    def refuse(error: str, description: str) -> Refused:
        return Refused(error, description, redirect_uri=redirect_uri, state=state)

    # 2. the profile: pushed when required (FAPI 2.0), code flow, PKCE S256, no request objects
    if require_pushed and not pushed:
        raise refuse("invalid_request", "this authorization server takes pushed authorization requests only "
                                        "(RFC 9126): POST them to the pushed_authorization_request_endpoint")
    if "request" in params:
        raise refuse("request_not_supported", "request objects are not supported; push the parameters instead")
    if params.get("response_type") != RESPONSE_TYPE:
        raise refuse("unsupported_response_type", "response_type must be code")
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != PKCE_METHOD or not 43 <= len(challenge) <= 128:
        raise refuse("invalid_request", "PKCE with code_challenge_method=S256 is required")
    # 3. what the citizen is asked, each object inside one of the client's habilitations
    habilitations = []
    try:
        details = rar.parse(params.get("authorization_details", ""), default_recipient=client_id)
        for asked in details:
            hab = registry.habilitation(client_id, asked.dataset)
            if hab is None:
                raise rar.InvalidAuthorizationDetails(f"no habilitation for dataset {asked.dataset!r}")
            rar.verify_within(asked, purposes=hab.purposes, allowed_fields=hab.fields, recipients=hab.recipients,
                              basis=hab.legal_basis.type)
            habilitations.append(hab)
    except rar.InvalidAuthorizationDetails as exc:
        raise refuse("invalid_authorization_details", str(exc)) from None
    return AuthorizationRequest(client_id, redirect_uri, state, challenge, details, tuple(habilitations))
