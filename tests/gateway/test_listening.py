"""Only the form service can call the gateway: a Unix socket or loopback by default, else mutual TLS or a client
secret; a configuration that would let anyone else in does not start."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker.config import ConfigError
from broker.gateway.config import load_gateway_config
from tests.adapters.test_http_json_mtls import _authority, _issue
from tests.broker_harness import Harness
from tests.gateway.conftest import StartGateway, ask

EVERYWHERE = "0.0.0.0"  # noqa: S104 - the address whose refusal is under test
ENV = {"DLNUF_GATEWAY_BROKER_URL": "https://dlnuf.example.gouv.fr", "DLNUF_GATEWAY_SIRET": "21750001600019",
       "DLNUF_GATEWAY_KEY": "/etc/dlnuf/commune.jwk"}


async def test_a_unix_socket(broker: Harness, start_gateway: StartGateway, tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    gateway = await start_gateway(broker.url("/").rstrip("/"), broker.consumer.key, unix_socket=path)
    assert gateway.url == f"unix:{path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o660  # the gateway's user and group, nobody else
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session, session.post(
            "http://gateway/v1/exchanges", json=ask()) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["DLNUF-Inclusion-Promise"] == "verified"
    [call] = await gateway.records()
    assert call["caller"] == "unix"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gateway-pki")
    ca, stranger_ca = _authority("Mairie de Paris, services numériques"), _authority("Someone else")
    from cryptography.hazmat.primitives import serialization

    (d / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    server = _issue(d, "server", "gateway.mairie.test", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1")
    client = _issue(d, "client", "formulaires.mairie.test", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _issue(d, "stranger", "formulaires.mairie.test", stranger_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    assert isinstance(ca[1], ec.EllipticCurvePrivateKey)
    return {"ca": d / "ca.pem", "server_cert": server[0], "server_key": server[1], "client_cert": client[0],
            "client_key": client[1], "stranger_cert": stranger[0], "stranger_key": stranger[1]}


def _client_context(pki: dict[str, Path], who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if who is not None:
        context.load_cert_chain(pki[f"{who}_cert"], pki[f"{who}_key"])
    return context


async def _post(url: str, context: ssl.SSLContext) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/exchanges", json=ask(),
                                                                ssl=context) as resp:
        return resp.status, await resp.json()


async def test_mutual_tls(broker: Harness, start_gateway: StartGateway, pki: dict[str, Path]) -> None:
    gateway = await start_gateway(broker.url("/").rstrip("/"), broker.consumer.key, tls_cert=pki["server_cert"],
                                  tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    assert gateway.url.startswith("https://127.0.0.1:")
    status, body = await _post(gateway.url, _client_context(pki, "client"))
    assert status == 200, body
    [call] = await gateway.records()
    assert call["caller"] == "mtls:formulaires.mairie.test"
    for who in (None, "stranger"):  # no certificate, or one from another CA: the handshake fails
        with pytest.raises(aiohttp.ClientError):
            await _post(gateway.url, _client_context(pki, who))
    assert len(await broker.log_rows()) == 1


@pytest.mark.parametrize(("env", "message"), [
    ({"DLNUF_GATEWAY_HOST": EVERYWHERE}, "is not a loopback address: serve TLS"),
    ({"DLNUF_GATEWAY_HOST": EVERYWHERE, "DLNUF_GATEWAY_CLIENT_SECRET_FILE": "/s"}, "is not a loopback address: serve"),
    ({"DLNUF_GATEWAY_HOST": "10.0.0.5", "DLNUF_GATEWAY_TLS_CERT": "/c", "DLNUF_GATEWAY_TLS_KEY": "/k"},
     "callers must authenticate"),
    ({"DLNUF_GATEWAY_TLS_CERT": "/c"}, "go together"),
    ({"DLNUF_GATEWAY_TLS_CLIENT_CA": "/ca"}, "needs DLNUF_GATEWAY_TLS_CERT"),
    ({"DLNUF_GATEWAY_BROKER_URL": "dlnuf.example.gouv.fr"}, "DLNUF_GATEWAY_BROKER_URL must be an http"),
    ({"DLNUF_GATEWAY_BROKER_URL": ""}, "DLNUF_GATEWAY_BROKER_URL is missing"),
    ({"DLNUF_GATEWAY_SIRET": "2175000160001"}, "DLNUF_GATEWAY_SIRET must be a SIRET"),
    ({"DLNUF_GATEWAY_KEY": ""}, "DLNUF_GATEWAY_KEY is missing"),
    ({"DLNUF_GATEWAY_PORT": "80800"}, "DLNUF_GATEWAY_PORT must be between"),
    ({"DLNUF_GATEWAY_DATABASE_URL": "mysql://x"}, "postgresql://"),
], ids=["open-address", "secret-in-clear", "tls-without-caller-auth", "half-tls", "ca-without-tls", "url",
        "no-url", "siret", "no-key", "port", "database"])
def test_a_configuration_that_would_let_others_in_does_not_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(env={**ENV, **env})


@pytest.mark.parametrize("env", [
    {},
    {"DLNUF_GATEWAY_HOST": "::1"},
    {"DLNUF_GATEWAY_HOST": "localhost"},
    {"DLNUF_GATEWAY_HOST": EVERYWHERE, "DLNUF_GATEWAY_TLS_CERT": "/c", "DLNUF_GATEWAY_TLS_KEY": "/k",
     "DLNUF_GATEWAY_TLS_CLIENT_CA": "/ca"},
    {"DLNUF_GATEWAY_HOST": EVERYWHERE, "DLNUF_GATEWAY_TLS_CERT": "/c", "DLNUF_GATEWAY_TLS_KEY": "/k",
     "DLNUF_GATEWAY_CLIENT_SECRET_FILE": "/s"},
    {"DLNUF_GATEWAY_HOST": EVERYWHERE, "DLNUF_GATEWAY_UNIX_SOCKET": "/run/dlnuf/gateway.sock"},
], ids=["default-loopback", "ipv6-loopback", "localhost", "mtls", "tls-and-secret", "unix-socket-wins"])
def test_configurations_that_start(env: dict[str, str]) -> None:
    config = load_gateway_config(env={**ENV, **env})
    assert config.local_only or config.tls_cert is not None


def test_the_command_refuses_a_missing_key_file_naming_the_variable(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "broker", "gateway"], cwd=root, capture_output=True, text=True, timeout=60,
        check=False, env={"PATH": "/usr/bin:/bin", **ENV, "DLNUF_GATEWAY_KEY": str(tmp_path / "absent.jwk")})
    assert result.returncode == 2
    assert result.stderr.startswith("configuration error: DLNUF_GATEWAY_KEY: cannot load")
    assert "Traceback" not in result.stderr
    json.dumps(result.stderr)  # one line, printable
