"""Mutual TLS for the declarative adapter: the DGFiP sandbox served over HTTPS, requiring a client certificate.

A throwaway PKI is made with `cryptography` for the session: a provider CA, the server's certificate for 127.0.0.1,
the broker's client certificate, and a client certificate from another CA. The server is a real aiohttp HTTPS
server with `ssl.CERT_REQUIRED`; the adapter is built from registry options, as in production.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters import registry
from adapters.base import AdapterQuery, ProviderAdapter, ProviderUnavailable
from adapters.identity import PivotIdentity
from adapters.sandbox import directory
from adapters.sandbox.dgfip import create_app
from adapters.subjects import ProviderIdentifier
from broker import registry as broker_registry

ROOT = Path(__file__).resolve().parents[2]
KEY = "dgfip-test-key"
KEY_ENV = "DLNUF_DGFIP_KEY"
DATASET = "revenu_fiscal_reference"
ServerFactory = Callable[..., Awaitable[TestServer]]

DOC = (ROOT / "docs" / "adapters.md").read_text("utf-8")
_BLOCK = re.search(r"<!-- mTLS example: registry.toml[^>]*-->\n```toml\n(.*?)```", DOC, re.DOTALL)
assert _BLOCK is not None, "docs/adapters.md lost its mTLS example"
DOC_REGISTRY = _BLOCK.group(1)


# ------------------------------------------------------------------------------------------ a throwaway PKI


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # issued by another CA, which the provider does not trust
    stranger_cert: Path
    stranger_key: Path
    encrypted_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 usage: x509.ObjectIdentifier | None = None, ip: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ip is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _issue(directory: Path, stem: str, subject: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
           **extensions: Any) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(subject, key, ca[0].subject, ca[1], **extensions)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _authority(subject: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _certificate(subject, key, _name(subject), key, ca=True), key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    provider_ca, stranger_ca = _authority("DGFiP test CA"), _authority("Some other CA")
    (d / "ca.pem").write_bytes(provider_ca[0].public_bytes(serialization.Encoding.PEM))
    server = _issue(d, "server", "impots.test", provider_ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1")
    client = _issue(d, "client", "dlnuf-broker", provider_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _issue(d, "stranger", "dlnuf-broker", stranger_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    key = serialization.load_pem_private_key(client[1].read_bytes(), password=None)
    (d / "encrypted.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.BestAvailableEncryption(b"passphrase")))
    return Pki(d / "ca.pem", *server, *client, *stranger, d / "encrypted.key")


# ------------------------------------------------------------------------------------------ the provider


@dataclass
class Provider:
    url: str
    # Common name of the client certificate of every request that reached a handler.
    clients: list[str]


@pytest.fixture
async def provider(aiohttp_server: ServerFactory, pki: Pki) -> Provider:
    """The DGFiP sandbox on HTTPS, refusing any client without a certificate from the provider's CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki.server_cert, pki.server_key)
    clients: list[str] = []

    @web.middleware
    async def who(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peercert")
        clients.append(dict(item[0] for item in peer["subject"])["commonName"])
        return await handler(request)

    app = create_app(KEY)
    app.middlewares.append(who)
    server = await aiohttp_server(app, ssl=context)
    return Provider(str(server.make_url("")).rstrip("/"), clients)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def doc_options(provider: Provider, pki: Pki) -> dict[str, Any]:
    """The options of the documented mTLS entry, pointed at the test provider and the test PKI."""
    entry = tomllib.loads(DOC_REGISTRY)["adapters"][0]
    return {**entry["options"], "datasets": entry["datasets"], "base_url": provider.url,
            "client_cert_file": str(pki.client_cert), "client_key_file": str(pki.client_key), "ca_file": str(pki.ca)}


def build(session: aiohttp.ClientSession, options: dict[str, Any]) -> ProviderAdapter:
    return registry.build_adapter("http_json", "dgfip", options, session, environ={KEY_ENV: KEY})


def pivot_query(citizen_id: str = "dupont-marie-claire") -> AdapterQuery:
    subject = PivotIdentity(**directory().citizen(citizen_id).pivot.to_json())
    return AdapterQuery(DATASET, 1, subject, frozenset(), "test", recipient="21750001600019")


SPI_QUERY = AdapterQuery(DATASET, 1, ProviderIdentifier("spi", "3123456789012"), frozenset(), "t")


# ------------------------------------------------------------------------------------------ handshakes


async def test_the_documented_entry_posts_over_mutual_tls(session: aiohttp.ClientSession, provider: Provider,
                                                          pki: Pki) -> None:
    adapter = build(session, doc_options(provider, pki))
    assert await adapter.fetch(pivot_query()) == {"annee_revenus": 2023, "revenu_fiscal_reference": 9800,
                                                  "nombre_parts": 2.0, "situation_famille": "celibataire"}
    # the entry's GET lookup goes over the same context
    assert (await adapter.fetch(SPI_QUERY))["nombre_parts"] == 2.5
    assert provider.clients == ["dlnuf-broker", "dlnuf-broker"]
    assert adapter.policy.retries == 2  # the POST is marked idempotent


async def test_no_client_certificate_is_refused(session: aiohttp.ClientSession, provider: Provider,
                                                pki: Pki) -> None:
    options = doc_options(provider, pki)
    del options["client_cert_file"], options["client_key_file"]
    with pytest.raises(ProviderUnavailable):
        await build(session, options).fetch(pivot_query())
    assert provider.clients == []


async def test_a_certificate_from_another_ca_is_refused(session: aiohttp.ClientSession, provider: Provider,
                                                        pki: Pki) -> None:
    options = {**doc_options(provider, pki), "client_cert_file": str(pki.stranger_cert),
               "client_key_file": str(pki.stranger_key)}
    with pytest.raises(ProviderUnavailable):
        await build(session, options).fetch(pivot_query())
    assert provider.clients == []


async def test_an_untrusted_provider_certificate_is_unavailable_and_not_retried(
        session: aiohttp.ClientSession, provider: Provider, pki: Pki) -> None:
    # Without ca_file the system's store is used, which does not know the provider's CA. A GET lookup with
    # retries allowed: still tried once, since a certificate does not verify better on a second attempt.
    options = {k: v for k, v in doc_options(provider, pki).items() if k != "ca_file"}
    adapter = build(session, options)
    with pytest.raises(ProviderUnavailable,
                       match=re.escape("GET /v1/revenu-fiscal/spi/{identifier}: TLS handshake failed")):
        await adapter.fetch(SPI_QUERY)
    assert adapter.health().retries == 0 and adapter.policy.retries == 2


async def test_adapters_sharing_a_session_never_share_a_connection(session: aiohttp.ClientSession,
                                                                   provider: Provider, pki: Pki) -> None:
    with_cert = build(session, doc_options(provider, pki))
    options = doc_options(provider, pki)
    del options["client_cert_file"], options["client_key_file"]
    without = build(session, options)
    await with_cert.fetch(SPI_QUERY)  # leaves a kept-alive connection made with the client certificate
    with pytest.raises(ProviderUnavailable):
        await without.fetch(SPI_QUERY)
    await with_cert.fetch(SPI_QUERY)
    assert provider.clients == ["dlnuf-broker", "dlnuf-broker"]


# ------------------------------------------------------------------------------------------ configuration


def test_a_key_that_is_not_the_certificates_fails_at_build(session: aiohttp.ClientSession, pki: Pki) -> None:
    options = {**doc_options(Provider("https://impots.example", []), pki), "client_key_file": str(pki.stranger_key)}
    registry.check_options("http_json", options)  # each file is a fine PEM file on its own
    with pytest.raises(registry.AdapterConfigError,
                       match=rf"^client_key_file: {re.escape(str(pki.stranger_key))} is not the key of the cert"):
        build(session, options)


@pytest.mark.parametrize(("change", "message"), [
    ({"client_cert_file": "/nonexistent/client.pem"},
     "client_cert_file: cannot read /nonexistent/client.pem: No such file or directory"),
    ({"client_key_file": "/nonexistent/client.key"}, "client_key_file: cannot read /nonexistent/client.key"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file: cannot read /nonexistent/ca.pem"),
    ({"ca_file": "{dir}"}, "ca_file: cannot read {dir}: Is a directory"),
    ({"ca_file": "ca.pem"}, "ca_file: must be an absolute file path"),
    ({"client_cert_file": 42}, "client_cert_file: must be an absolute file path"),
    ({"client_cert_file": "{client_key}"}, "client_cert_file: {client_key} holds no PEM certificate"),
    ({"client_key_file": "{client_cert}"}, "client_key_file: {client_cert} holds no PEM private key"),
    ({"ca_file": "{client_key}"}, "ca_file: {client_key} holds no PEM certificate"),
    ({"client_key_file": "{encrypted_key}"}, "client_key_file: {encrypted_key} holds an encrypted key"),
    ({"client_key_file": None}, "client_key_file: required with client_cert_file"),
    ({"client_cert_file": None}, "client_cert_file: required with client_key_file"),
    ({"base_url": "http://impots.example"}, "client_cert_file: client certificates and a provider CA need an https"),
    ({"base_url": "http://impots.example", "client_cert_file": None, "client_key_file": None},
     "ca_file: client certificates and a provider CA need an https"),
])
def test_bad_tls_options_are_refused_naming_the_option(pki: Pki, change: dict[str, Any], message: str) -> None:
    paths = {"dir": str(pki.ca.parent), "client_key": str(pki.client_key), "client_cert": str(pki.client_cert),
             "encrypted_key": str(pki.encrypted_key)}
    options = doc_options(Provider("https://impots.example", []), pki)
    for key, value in change.items():
        if value is None:
            del options[key]
        else:
            options[key] = value.format(**paths) if isinstance(value, str) else value
    with pytest.raises(registry.AdapterConfigError) as info:
        registry.check_options("http_json", options)
    assert str(info.value).startswith(message.format(**paths)), str(info.value)


def test_the_documented_entry_is_a_valid_registry_with_the_files(pki: Pki) -> None:
    text = (DOC_REGISTRY.replace("/etc/dlnuf/tls/dgfip-client.pem", str(pki.client_cert))
            .replace("/etc/dlnuf/tls/dgfip-client.key", str(pki.client_key))
            .replace("/etc/dlnuf/tls/dgfip-ca.pem", str(pki.ca)))
    entry = broker_registry.parse_registry(text, "registry.toml").adapter_for(DATASET)
    assert entry is not None and entry.options["client_key_file"] == str(pki.client_key)


def test_the_documented_error_is_the_one_registry_apply_gives() -> None:
    # The example's files do not exist here, as on the host the page describes.
    assert not Path("/etc/dlnuf/tls/dgfip-client.pem").exists()
    with pytest.raises(broker_registry.RegistryError) as info:
        broker_registry.parse_registry(DOC_REGISTRY, "registry.toml")
    assert f"error: {info.value}\n" in DOC
