"""Broker configuration, read once from the environment into a frozen dataclass.

Invariant: a `Config` that exists is complete and consistent; anything wrong stops the broker at start with a
message naming the variable, never later in a request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str | None
    """None: start the embedded PostgreSQL under `state_dir`."""
    state_dir: Path
    host: str
    port: int
    public_url: str | None
    """External base URL (scheme://host[:port]) consumers sign, the @target-uri rebuilt on every request; required
    to serve (`verify_servable`): without it the URL would come from the request's Host header."""
    signing_key_file: Path
    subject_key_file: Path
    identity_key_file: Path
    """AES-256 key sealing the pivot identities the broker keeps (behind consents and citizen sessions)."""
    registry_file: Path | None
    """Applied at start when set (the demo uses it); production applies with `registry apply`."""
    max_skew: float
    max_body: int
    log_format: str
    event_loop: str
    """"asyncio" or "uvloop" (the libuv-based loop, when installed)."""
    pool_min: int
    pool_max: int
    registry_poll: float
    """Seconds between registry version checks, in case a NOTIFY was missed during a reconnect."""
    log_origin: str
    """The transparency log's name: first line of its checkpoints, and name of its note key."""
    log_key_file: Path
    """The log's Ed25519 note signer key (Go `note` format), created beside the broker key if absent."""
    log_interval: float
    """Seconds between integration rounds of each broker process: the expected integration lag."""
    log_max_merge_delay: float
    """Seconds within which the broker promises (signed, in every 200 answer) to integrate an entry."""
    log_batch: int
    log_retention: str
    """ISO 8601 duration kept for entries whose habilitation is unknown (refused before) or gone."""
    log_auditors: frozenset[str]
    """SIRETs allowed to read log entries (signed requests); empty: nobody."""
    journal_clients: frozenset[str]
    """SIRETs allowed to read a citizen's journal on their behalf (signed requests); empty: nobody."""
    notify_webhook: str | None
    """Where released exchanges are POSTed for citizen notification; None: the outbox only accumulates."""
    outbox_max_attempts: int
    outbox_backoff: float
    """Seconds before the first retry; doubled at each failure up to `outbox_max_backoff`."""
    outbox_max_backoff: float
    outbox_timeout: float
    citizen_login: CitizenLoginConfig | None = None
    """OpenID Connect login of citizens (FranceConnect); None: not configured, the /citizen/ routes do not exist."""
    oauth_require_par: bool = False
    """The consent flow's authorization endpoint takes only pushed requests (RFC 9126 request_uri), as FAPI 2.0."""
    client_assertion_max_lifetime: float = 3600.0
    """Seconds a client assertion (private_key_jwt) may live: its exp at most this far ahead. Its jti is kept that
    long. 3600 is Authlib's default; openid-client's assertions live 60 s."""
    client_assertion_audience: str = "issuer-or-endpoint"
    """"issuer-or-endpoint": aud may be the issuer, the endpoint called or the token endpoint (RFC 7523, what
    Authlib sends); "issuer": only the issuer identifier, as a string (FAPI 2.0, against audience injection)."""
    quota_default: tuple[int, int] | None = (1200, 60)
    """(exchanges, window seconds) for a consumer whose registry entry gives no quota; None: no default quota."""
    source_limit: tuple[int, int] | None = (100, 60)
    """(refusals, window seconds) an address may cause before any signature verified, then it is answered 429
    until the window ends; None: no limit."""
    attempts_keep: int = 100_000
    """Rows of the unauthenticated-attempts ring (the oldest is overwritten)."""
    registry_prune: bool = False
    """Whether the registry file applied at start may remove entries (the demo's, which it writes itself)."""
    host_from_request: bool = False
    """Tests only, never from the environment: serve without `public_url`, taking the signed URL's host from the
    request's Host header (so a request signed for another host is accepted)."""
    log_witnesses: tuple[tuple[str, str], ...] = ()
    """(verifier key, submission URL prefix) of each C2SP tlog-witness the log submits its checkpoints to."""
    log_witness_quorum: int = 0
    """How many of `log_witnesses` must cosign a checkpoint before the portal and the journal use it."""
    site: SiteInfo = field(default_factory=lambda: SiteInfo())
    """Who runs this service, for the mentions légales, données personnelles and accessibility pages."""
    mail: MailConfig | None = None
    """E-mail notifications of citizens through an SMTP relay; None: not offered."""
    debug_runtime: bool = False
    """`GET /_debug/runtime` (memory, descriptors, pools, tasks, allocations) for soak runs; never on by default."""
    admin_database_url: str | None = None
    """The owner role's URL (DLNUF_ADMIN_DATABASE_URL): migrations and `log prune` use it, `serve` never serves
    with it; None: DATABASE_URL does both (docs/operations.md, « Database roles »)."""
    unsafe_superuser: bool = False
    """`serve` accepts a superuser or the access log's owner as its database role (--unsafe-superuser)."""
    signer_plugin: str | None = None
    """`module:function` giving the response key and/or the log key as `Signer`s (an HSM's):
    broker/signing/plugin.py."""

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def verify_servable(config: Config) -> None:
    """None, or `ConfigError` when this configuration must not serve requests."""
    if config.public_url is None and not config.host_from_request:
        raise ConfigError("DLNUF_PUBLIC_URL is required to serve: the external base URL consumers sign, e.g. "
                          "https://dlnuf.example.gouv.fr (without it the broker would believe the Host header, and "
                          "accept requests signed for another deployment)")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").lower()
    if raw == "":
        return default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw == "true"


def _witnesses(raw: str) -> tuple[tuple[str, str], ...]:
    """DLNUF_LOG_WITNESSES: `<verifier key> <URL prefix>` pairs separated by commas or newlines; the key itself is
    checked when the log starts (broker.tlog.witness)."""
    found = []
    for item in filter(None, (i.strip() for i in raw.replace("\n", ",").split(","))):
        parts = item.split()
        if len(parts) != 2 or parts[0].count("+") < 2 or not parts[1].startswith(("http://", "https://")):
            raise ConfigError("DLNUF_LOG_WITNESSES is a list of '<name>+<key id>+<key> https://<witness URL prefix>', "
                              "separated by commas")
        found.append((parts[0], parts[1].rstrip("/")))
    if len({vkey for vkey, _ in found}) != len(found):
        raise ConfigError("DLNUF_LOG_WITNESSES names a witness key twice")
    return tuple(found)


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


_DURATION = re.compile(r"^P(?=[0-9])(?:[0-9]+Y)?(?:[0-9]+M)?(?:[0-9]+W)?(?:[0-9]+D)?$")
# A signed-note key name: printable ASCII without spaces or plus signs (the log's key is named after its origin).
_ORIGIN = re.compile(r"^[!-*,-~]{1,200}$")
_SIRET = re.compile(r"^[0-9]{14}$")


_RATE = re.compile(r"^([0-9]{1,8})/([0-9]{1,5})$")


def _rate(env: Mapping[str, str], name: str, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """`count/seconds` (e.g. 1200/60), or 0 for none."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if raw == "0":
        return None
    m = _RATE.match(raw)
    if m is None or not 1 <= int(m[1]) <= 10_000_000 or not 1 <= int(m[2]) <= 86_400:
        raise ConfigError(f"{name} must be count/seconds (count 1 to 10000000, seconds 1 to 86400), e.g. 1200/60, "
                          f"or 0 for none; got {raw!r}")
    return int(m[1]), int(m[2])


def _sirets(env: Mapping[str, str], name: str) -> frozenset[str]:
    values = frozenset(v.strip() for v in (env.get(name) or "").split(",") if v.strip())
    bad = sorted(v for v in values if not _SIRET.match(v))
    if bad:
        raise ConfigError(f"{name} must be comma-separated SIRETs, got {', '.join(bad)}")
    return values


CALLBACK_PATH = "/citizen/callback"
LOGGED_OUT_PATH = "/citizen/logged-out"


# The relying party's vocabulary, for validating settings here (consent.oidc.RelyingParty checks them again).
OIDC_PIVOT_CLAIMS = ("given_name", "family_name", "birthdate", "gender", "birthplace", "birthcountry",
                     "preferred_name", "email")
_ASYMMETRIC = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
                         "Ed25519"})
_JWE_ALGS = frozenset({"RSA-OAEP-256", "RSA-OAEP", "ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A256KW"})
_JWE_ENCS = frozenset({"A256GCM", "A128GCM", "A128CBC-HS256", "A256CBC-HS512"})
_TOKEN_AUTH = ("client_secret_basic", "client_secret_post", "private_key_jwt")
_FC_SCOPES = ("openid", *OIDC_PIVOT_CLAIMS)


@dataclass(frozen=True, slots=True)
class OidcPreset:
    """What an OP expects and sends, as defaults every DLNUF_OIDC_* variable below may override."""

    provider_name: str
    scopes: tuple[str, ...]
    acr_values: tuple[str, ...]
    accepted_acr: frozenset[str]
    auth_method: str
    id_token_algs: frozenset[str]
    encryption_algs: frozenset[str] = frozenset()
    encryption_encs: frozenset[str] = frozenset({"A256GCM"})


OIDC_PRESETS: Mapping[str, OidcPreset] = {
    # FranceConnect v2: one scope per claim, eidas1 at least, the identity in a signed userinfo, ES256 or RS256
    "franceconnect": OidcPreset("FranceConnect", _FC_SCOPES, ("eidas1",), frozenset({"eidas1", "eidas2", "eidas3"}),
                                "client_secret_post", frozenset({"ES256", "RS256"})),
    # FranceConnect+: substantial or high assurance, id_token and userinfo signed then encrypted to our keys
    "franceconnect-plus": OidcPreset("FranceConnect+", _FC_SCOPES, ("eidas2",), frozenset({"eidas2", "eidas3"}),
                                     "client_secret_post", frozenset({"ES256", "RS256"}),
                                     frozenset({"RSA-OAEP-256", "ECDH-ES"})),
    # any certified OP: standard scopes, no acr, client_secret_basic (OpenID Connect's default method)
    "generic": OidcPreset("votre fournisseur d'identité", ("openid", "profile", "email"), (), frozenset(),
                          "client_secret_basic", frozenset({"RS256", "PS256", "ES256", "EdDSA", "Ed25519"})),
}


@dataclass(frozen=True, slots=True)
class CitizenLoginConfig:
    """Citizen login through an OpenID Provider (FranceConnect, FranceConnect+, any certified OP, or the sandbox OP).
    A value that exists is complete. The fields after `cookie_secure` default to the FranceConnect preset."""

    issuer: str
    """The OP's issuer URL, exactly as its discovery document names it (a trailing / included)."""
    client_id: str
    client_secret_env: str
    """Name of the environment variable holding the client secret: the secret itself never sits in a `Config`."""
    redirect_uri: str
    """This broker's callback as the browser reaches it (registered at the OP): `https://…/citizen/callback`."""
    post_logout_redirect_uri: str
    """Where the OP sends the browser back after its logout (registered at the OP too)."""
    session_lifetime: float
    """Seconds a citizen session lives after login (absolute, not renewed by activity)."""
    cookie_secure: bool
    """Secure flag of the session cookie: on when the broker is served over TLS."""
    preset: str = "franceconnect"
    provider_name: str = OIDC_PRESETS["franceconnect"].provider_name
    """How the citizen pages name the OP."""
    scopes: tuple[str, ...] = _FC_SCOPES
    acr_values: tuple[str, ...] = OIDC_PRESETS["franceconnect"].acr_values
    """Sent as acr_values; empty: none sent."""
    accepted_acr: frozenset[str] = OIDC_PRESETS["franceconnect"].accepted_acr
    """The id_token's acr must be one of them; empty: acr not checked."""
    claims: Mapping[str, str] = field(default_factory=lambda: {n: n for n in OIDC_PIVOT_CLAIMS})
    """Pivot identity member -> the OP's claim name."""
    userinfo: bool = True
    auth_method: str = OIDC_PRESETS["franceconnect"].auth_method
    client_key_file: Path | None = None
    """The private JWK signing private_key_jwt assertions (created, P-256, when absent); None for client secrets."""
    id_token_algs: frozenset[str] = OIDC_PRESETS["franceconnect"].id_token_algs
    encryption_algs: frozenset[str] = frozenset()
    """JWE algorithms the OP encrypts id_token and userinfo with; empty: it does not encrypt."""
    encryption_encs: frozenset[str] = frozenset({"A256GCM"})
    encryption_key_file: Path | None = None
    """Our private JWK set the OP encrypts to (created, RSA and P-256, when absent); None without encryption."""

    def __post_init__(self) -> None:
        if not self.issuer.startswith(("https://", "http://")):
            raise ConfigError("DLNUF_OIDC_ISSUER must be an http(s) URL")
        if not self.client_id:
            raise ConfigError("DLNUF_OIDC_CLIENT_ID must not be empty")
        for name, uri, path in (("DLNUF_OIDC_REDIRECT_URI", self.redirect_uri, CALLBACK_PATH),
                                ("DLNUF_OIDC_POST_LOGOUT_REDIRECT_URI", self.post_logout_redirect_uri, "")):
            if not uri.startswith(("https://", "http://")) or not uri.endswith(path) or "?" in uri or "#" in uri:
                raise ConfigError(f"{name} must be an http(s) URL ending in {path or 'a path'}, got {uri!r}")
        if not 60 <= self.session_lifetime <= 86400:
            raise ConfigError("DLNUF_CITIZEN_SESSION_LIFETIME must be between 60 and 86400 seconds")
        # a session cookie without Secure on a TLS site would also travel in clear to any http:// URL of the host
        if self.redirect_uri.startswith("https://") and not self.cookie_secure:
            raise ConfigError("DLNUF_COOKIE_SECURE cannot be false when DLNUF_OIDC_REDIRECT_URI is https://")
        if self.preset not in OIDC_PRESETS:
            raise ConfigError(f"DLNUF_OIDC_PRESET must be one of {', '.join(OIDC_PRESETS)}")
        if "openid" not in self.scopes:
            raise ConfigError("DLNUF_OIDC_SCOPES must include openid")
        if self.auth_method not in _TOKEN_AUTH:
            raise ConfigError(f"DLNUF_OIDC_TOKEN_AUTH must be one of {', '.join(_TOKEN_AUTH)}")
        if (self.auth_method == "private_key_jwt") != (self.client_key_file is not None):
            raise ConfigError("DLNUF_OIDC_CLIENT_KEY goes with DLNUF_OIDC_TOKEN_AUTH=private_key_jwt, and only it")
        if not self.id_token_algs or not self.id_token_algs <= _ASYMMETRIC:
            raise ConfigError(f"DLNUF_OIDC_ID_TOKEN_ALGS must be among {' '.join(sorted(_ASYMMETRIC))}")
        if not self.encryption_algs <= _JWE_ALGS or not self.encryption_encs or not self.encryption_encs <= _JWE_ENCS:
            raise ConfigError(f"DLNUF_OIDC_ENCRYPTION_ALGS must be among {' '.join(sorted(_JWE_ALGS))} and "
                              f"DLNUF_OIDC_ENCRYPTION_ENCS among {' '.join(sorted(_JWE_ENCS))}")
        if bool(self.encryption_algs) != (self.encryption_key_file is not None):
            raise ConfigError("DLNUF_OIDC_ENCRYPTION_KEY goes with DLNUF_OIDC_ENCRYPTION_ALGS, and only it")
        if set(self.claims) != set(OIDC_PIVOT_CLAIMS) or not all(self.claims.values()):
            raise ConfigError(f"DLNUF_OIDC_CLAIMS maps each of {', '.join(OIDC_PIVOT_CLAIMS)} to a claim name")


_OIDC_VARS = ("DLNUF_OIDC_ISSUER", "DLNUF_OIDC_CLIENT_ID", "DLNUF_OIDC_CLIENT_SECRET_ENV", "DLNUF_OIDC_REDIRECT_URI",
              "DLNUF_OIDC_POST_LOGOUT_REDIRECT_URI", "DLNUF_CITIZEN_SESSION_LIFETIME", "DLNUF_COOKIE_SECURE",
              "DLNUF_OIDC_PRESET", "DLNUF_OIDC_TOKEN_AUTH")


def _words(env: Mapping[str, str], name: str, default: Collection[str]) -> tuple[str, ...]:
    """A space-separated list; set but empty means an empty list (DLNUF_OIDC_ACR_VALUES= : none)."""
    return tuple(env[name].split()) if name in env else tuple(default)


def _claims(env: Mapping[str, str]) -> dict[str, str]:
    claims = {n: n for n in OIDC_PIVOT_CLAIMS}
    for pair in (env.get("DLNUF_OIDC_CLAIMS") or "").split(","):
        if not pair.strip():
            continue
        pivot, sep, claim = (p.strip() for p in pair.partition("="))
        if not sep or pivot not in claims or not claim:
            raise ConfigError(f"DLNUF_OIDC_CLAIMS takes pivot=claim pairs with a pivot member among "
                              f"{', '.join(OIDC_PIVOT_CLAIMS)}, got {pair.strip()!r}")
        claims[pivot] = claim
    return claims


def _citizen_login(env: Mapping[str, str], public_url: str | None, state_dir: Path) -> CitizenLoginConfig | None:
    """None when no DLNUF_OIDC_* variable is set; a complete configuration, or a ConfigError naming what is missing."""
    if not any(env.get(name) for name in _OIDC_VARS):
        return None
    issuer, client_id = env.get("DLNUF_OIDC_ISSUER") or "", env.get("DLNUF_OIDC_CLIENT_ID") or ""
    for name, value in (("DLNUF_OIDC_ISSUER", issuer), ("DLNUF_OIDC_CLIENT_ID", client_id)):
        if not value:
            raise ConfigError(f"citizen login is half-configured: {name} is missing")
    preset_name = env.get("DLNUF_OIDC_PRESET") or "franceconnect"
    preset = OIDC_PRESETS.get(preset_name)
    if preset is None:
        raise ConfigError(f"DLNUF_OIDC_PRESET must be one of {', '.join(OIDC_PRESETS)}, got {preset_name!r}")
    auth_method = env.get("DLNUF_OIDC_TOKEN_AUTH") or preset.auth_method
    secret_env = env.get("DLNUF_OIDC_CLIENT_SECRET_ENV") or "DLNUF_OIDC_CLIENT_SECRET"
    if auth_method != "private_key_jwt" and not env.get(secret_env):
        raise ConfigError(f"citizen login needs the client secret in {secret_env} (named by "
                          "DLNUF_OIDC_CLIENT_SECRET_ENV), which is not set")
    redirect_uri = env.get("DLNUF_OIDC_REDIRECT_URI") or (public_url + CALLBACK_PATH if public_url else "")
    if not redirect_uri:
        raise ConfigError("citizen login needs DLNUF_OIDC_REDIRECT_URI (or DLNUF_PUBLIC_URL to derive it from)")
    secure = (env.get("DLNUF_COOKIE_SECURE") or ("true" if redirect_uri.startswith("https://") else "false")).lower()
    if secure not in ("true", "false"):
        raise ConfigError("DLNUF_COOKIE_SECURE must be true or false")
    encryption_algs = frozenset(_words(env, "DLNUF_OIDC_ENCRYPTION_ALGS", preset.encryption_algs))
    return CitizenLoginConfig(
        # exactly as given: an issuer with a trailing slash is another issuer (OpenID Connect Discovery §4.3)
        issuer=issuer, client_id=client_id, client_secret_env=secret_env, redirect_uri=redirect_uri,
        post_logout_redirect_uri=(env.get("DLNUF_OIDC_POST_LOGOUT_REDIRECT_URI")
                                  or redirect_uri.removesuffix(CALLBACK_PATH) + LOGGED_OUT_PATH),
        session_lifetime=_float(env, "DLNUF_CITIZEN_SESSION_LIFETIME", 1800.0, 60.0, 86400.0),
        cookie_secure=secure == "true",
        preset=preset_name,
        provider_name=env.get("DLNUF_OIDC_PROVIDER_NAME") or preset.provider_name,
        scopes=_words(env, "DLNUF_OIDC_SCOPES", preset.scopes),
        acr_values=_words(env, "DLNUF_OIDC_ACR_VALUES", preset.acr_values),
        accepted_acr=frozenset(_words(env, "DLNUF_OIDC_ACCEPTED_ACR", preset.accepted_acr)),
        claims=_claims(env),
        userinfo=_bool(env, "DLNUF_OIDC_USERINFO", True),
        auth_method=auth_method,
        client_key_file=(Path(env.get("DLNUF_OIDC_CLIENT_KEY") or state_dir / "oidc-client-key.jwk")
                         if auth_method == "private_key_jwt" else None),
        id_token_algs=frozenset(_words(env, "DLNUF_OIDC_ID_TOKEN_ALGS", preset.id_token_algs)),
        encryption_algs=encryption_algs,
        encryption_encs=frozenset(_words(env, "DLNUF_OIDC_ENCRYPTION_ENCS", preset.encryption_encs)),
        encryption_key_file=(Path(env.get("DLNUF_OIDC_ENCRYPTION_KEY") or state_dir / "oidc-encryption-keys.jwks")
                             if encryption_algs else None),
    )


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """What the public pages every French public service carries say of who runs it. Unset: the pages say so, and
    name the variable to set."""

    operator: str | None = None
    """DLNUF_OPERATOR_NAME: the administration that runs the service (éditeur, controller of the data)."""
    address: str | None = None
    """DLNUF_OPERATOR_ADDRESS: its postal address."""
    contact: str | None = None
    """DLNUF_OPERATOR_CONTACT: an e-mail address or https:// URL where citizens write (accessibility included)."""
    director: str | None = None
    """DLNUF_PUBLICATION_DIRECTOR: the directeur ou directrice de la publication."""
    hosting: str | None = None
    """DLNUF_HOSTING: the host's name and address."""
    dpo: str | None = None
    """DLNUF_DPO_CONTACT: the data protection officer's e-mail address or URL."""


_SITE_VARS = {"operator": "DLNUF_OPERATOR_NAME", "address": "DLNUF_OPERATOR_ADDRESS",
              "contact": "DLNUF_OPERATOR_CONTACT", "director": "DLNUF_PUBLICATION_DIRECTOR",
              "hosting": "DLNUF_HOSTING", "dpo": "DLNUF_DPO_CONTACT"}


def _site(env: Mapping[str, str]) -> SiteInfo:
    values = {k: (env.get(v) or "").strip() or None for k, v in _SITE_VARS.items()}
    for key in ("contact", "dpo"):
        value = values[key]
        if value is not None and not (value.startswith("https://") or _is_address(value)):
            raise ConfigError(f"{_SITE_VARS[key]} must be an e-mail address or an https:// URL, got {value!r}")
    return SiteInfo(**values)


def _is_address(text: str) -> bool:
    _, address = parseaddr(text)
    local, at, domain = address.rpartition("@")
    return bool(local and at and "." in domain and address == text.strip())


@dataclass(frozen=True, slots=True)
class MailConfig:
    """E-mail notifications of citizens, sent through an SMTP relay. A value that exists is complete."""

    host: str
    port: int
    security: str
    """"starttls" (the default), "tls" (implicit TLS, port 465) or "none" (a relay on the loopback only)."""
    username: str | None
    password_env: str
    """Name of the variable holding the relay password: the password itself never sits in a `Config`."""
    sender: str
    """The From of every mail, e.g. « Mes données <ne-pas-repondre@dlnuf.example.gouv.fr> »."""
    public_url: str
    """The base of the links in mails (journal, confirmation, unsubscribe): mails leave the request's context."""
    timeout: float


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _mail(env: Mapping[str, str], public_url: str | None) -> MailConfig | None:
    host = (env.get("DLNUF_SMTP_HOST") or "").strip()
    if not host:
        others = [n for n in ("DLNUF_MAIL_FROM", "DLNUF_SMTP_USER", "DLNUF_SMTP_PORT") if env.get(n)]
        if others:
            raise ConfigError(f"e-mail is half-configured: {others[0]} is set but DLNUF_SMTP_HOST is not")
        return None
    security = env.get("DLNUF_SMTP_SECURITY") or "starttls"
    if security not in ("starttls", "tls", "none"):
        raise ConfigError("DLNUF_SMTP_SECURITY must be starttls, tls or none")
    port = _int(env, "DLNUF_SMTP_PORT", {"starttls": 587, "tls": 465, "none": 25}[security], 1, 65535)
    username = env.get("DLNUF_SMTP_USER") or None
    password_env = env.get("DLNUF_SMTP_PASSWORD_ENV") or "DLNUF_SMTP_PASSWORD"
    if username is not None and not env.get(password_env):
        raise ConfigError(f"DLNUF_SMTP_USER is set but the password variable {password_env} is not")
    if security == "none" and host not in _LOOPBACK:
        raise ConfigError("DLNUF_SMTP_SECURITY=none is only for a relay on the loopback (mails carry links that "
                          "act for the citizen): use starttls or tls")
    sender = (env.get("DLNUF_MAIL_FROM") or "").strip()
    if not _is_address(parseaddr(sender)[1]) or not sender:
        raise ConfigError(f"DLNUF_MAIL_FROM must be an address like 'Mes données <ne-pas-repondre@example.fr>', "
                          f"got {sender!r}")
    if public_url is None:
        raise ConfigError("e-mail notifications need DLNUF_PUBLIC_URL: the links in mails must be absolute")
    return MailConfig(host=host, port=port, security=security, username=username, password_env=password_env,
                      sender=sender, public_url=public_url,
                      timeout=_float(env, "DLNUF_SMTP_TIMEOUT", 10.0, 0.1, 300.0))


def _plugin(spec: str | None) -> str | None:
    if spec is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        raise ConfigError(f"DLNUF_SIGNER_PLUGIN must be module:function, got {spec!r}")
    return spec


def load_config(env: Mapping[str, str] | None = None, **overrides: object) -> Config:
    """Read `DLNUF_*` and `DATABASE_URL`; keyword overrides (from the command line) win."""
    env = os.environ if env is None else env
    state_dir = Path(env.get("DLNUF_STATE_DIR") or platformdirs.user_state_dir("dlnuf"))
    database_url = env.get("DATABASE_URL") or None
    if database_url is not None and not database_url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    admin_database_url = env.get("DLNUF_ADMIN_DATABASE_URL") or None
    if admin_database_url is not None and not admin_database_url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("DLNUF_ADMIN_DATABASE_URL must be a postgresql:// URL")
    if admin_database_url is not None and database_url is None:
        raise ConfigError("DLNUF_ADMIN_DATABASE_URL is set without DATABASE_URL: the embedded PostgreSQL makes its "
                          "own roles; set both, or neither")
    public_url = (env.get("DLNUF_PUBLIC_URL") or "").rstrip("/") or None
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise ConfigError("DLNUF_PUBLIC_URL must start with http:// or https://")
    event_loop = env.get("DLNUF_EVENT_LOOP") or "asyncio"
    if event_loop not in ("asyncio", "uvloop"):
        raise ConfigError("DLNUF_EVENT_LOOP must be 'asyncio' or 'uvloop'")
    log_format = env.get("DLNUF_LOG_FORMAT") or "console"
    if log_format not in ("console", "json"):
        raise ConfigError("DLNUF_LOG_FORMAT must be 'console' or 'json'")
    registry = env.get("DLNUF_REGISTRY_FILE")
    default_origin = f"{urlsplit(public_url).netloc}/log" if public_url else "dlnuf.localhost/log"
    log_origin = env.get("DLNUF_LOG_ORIGIN") or default_origin
    if not _ORIGIN.match(log_origin):
        raise ConfigError("DLNUF_LOG_ORIGIN must be printable ASCII without spaces or '+', e.g. dlnuf.example.fr/log")
    log_retention = env.get("DLNUF_LOG_RETENTION") or "P1Y"
    if not _DURATION.match(log_retention):
        raise ConfigError(f"DLNUF_LOG_RETENTION must be an ISO 8601 duration like P1Y or P6M, got {log_retention!r}")
    log_witnesses = _witnesses(env.get("DLNUF_LOG_WITNESSES") or "")
    log_witness_quorum = _int(env, "DLNUF_LOG_WITNESS_QUORUM", len(log_witnesses), 0, len(log_witnesses))
    notify_webhook = env.get("DLNUF_NOTIFY_WEBHOOK") or None
    if notify_webhook is not None and not notify_webhook.startswith(("http://", "https://")):
        raise ConfigError("DLNUF_NOTIFY_WEBHOOK must start with http:// or https://")
    values: dict[str, object] = dict(
        citizen_login=_citizen_login(env, public_url, state_dir),
        site=_site(env),
        mail=_mail(env, public_url),
        database_url=database_url,
        admin_database_url=admin_database_url,
        unsafe_superuser=_bool(env, "DLNUF_UNSAFE_SUPERUSER", False),
        signer_plugin=_plugin(env.get("DLNUF_SIGNER_PLUGIN") or None),
        state_dir=state_dir,
        host=env.get("DLNUF_HOST") or "127.0.0.1",
        port=_int(env, "DLNUF_PORT", 8080, 0, 65535),
        public_url=public_url,
        signing_key_file=Path(env.get("DLNUF_SIGNING_KEY") or state_dir / "broker-signing-key.jwk"),
        subject_key_file=Path(env.get("DLNUF_SUBJECT_KEY") or state_dir / "subject-key"),
        identity_key_file=Path(env.get("DLNUF_IDENTITY_KEY") or state_dir / "identity-key"),
        registry_file=Path(registry) if registry else None,
        max_skew=_float(env, "DLNUF_MAX_SKEW", 60.0, 1.0, 3600.0),
        max_body=_int(env, "DLNUF_MAX_BODY", 64 * 1024, 1024, 16 * 1024 * 1024),
        log_format=log_format,
        event_loop=event_loop,
        pool_min=_int(env, "DLNUF_POOL_MIN", 2, 1, 100),
        pool_max=_int(env, "DLNUF_POOL_MAX", 10, 1, 200),
        registry_poll=_float(env, "DLNUF_REGISTRY_POLL", 5.0, 0.1, 3600.0),
        log_origin=log_origin,
        log_key_file=Path(env.get("DLNUF_LOG_KEY") or state_dir / "log-note-key"),
        log_interval=_float(env, "DLNUF_LOG_INTERVAL", 1.0, 0.01, 60.0),
        log_max_merge_delay=_float(env, "DLNUF_LOG_MMD", 60.0, 1.0, 86400.0),
        log_batch=_int(env, "DLNUF_LOG_BATCH", 1000, 1, 100_000),
        log_retention=log_retention,
        log_auditors=_sirets(env, "DLNUF_LOG_AUDITORS"),
        log_witnesses=log_witnesses,
        log_witness_quorum=log_witness_quorum,
        journal_clients=_sirets(env, "DLNUF_JOURNAL_CLIENTS"),
        notify_webhook=notify_webhook,
        outbox_max_attempts=_int(env, "DLNUF_OUTBOX_MAX_ATTEMPTS", 20, 1, 1000),
        outbox_backoff=_float(env, "DLNUF_OUTBOX_BACKOFF", 1.0, 0.01, 3600.0),
        outbox_max_backoff=_float(env, "DLNUF_OUTBOX_MAX_BACKOFF", 900.0, 0.01, 86400.0),
        outbox_timeout=_float(env, "DLNUF_OUTBOX_TIMEOUT", 10.0, 0.1, 300.0),
        oauth_require_par=_bool(env, "DLNUF_OAUTH_REQUIRE_PAR", False),
        client_assertion_max_lifetime=_float(env, "DLNUF_CLIENT_ASSERTION_MAX_LIFETIME", 3600.0, 10.0, 86400.0),
        client_assertion_audience=env.get("DLNUF_CLIENT_ASSERTION_AUDIENCE") or "issuer-or-endpoint",
        quota_default=_rate(env, "DLNUF_QUOTA_DEFAULT", (1200, 60)),
        source_limit=_rate(env, "DLNUF_SOURCE_LIMIT", (100, 60)),
        attempts_keep=_int(env, "DLNUF_ATTEMPTS_KEEP", 100_000, 100, 100_000_000),
        debug_runtime=_bool(env, "DLNUF_DEBUG_RUNTIME", False),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(Config.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown configuration: {', '.join(sorted(unknown))}")
    config = Config(**values)  # type: ignore[arg-type]
    if config.pool_min > config.pool_max:
        raise ConfigError("DLNUF_POOL_MIN must not exceed DLNUF_POOL_MAX")
    # The promise must leave room for a few integration rounds, or every slow round would break it.
    if config.log_max_merge_delay < 5 * config.log_interval:
        raise ConfigError("DLNUF_LOG_MMD must be at least 5 times DLNUF_LOG_INTERVAL")
    if config.outbox_max_backoff < config.outbox_backoff:
        raise ConfigError("DLNUF_OUTBOX_MAX_BACKOFF must not be below DLNUF_OUTBOX_BACKOFF")
    if config.client_assertion_audience not in ("issuer-or-endpoint", "issuer"):
        raise ConfigError("DLNUF_CLIENT_ASSERTION_AUDIENCE must be issuer-or-endpoint or issuer")
    return config
