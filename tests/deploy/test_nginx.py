"""deploy/nginx/dlnuf.conf in front of a running broker: a consumer signs for https://localhost:<port> (the
DLNUF_PUBLIC_URL), nginx terminates TLS and forwards, the broker verifies the signature and answers, and the SDK
verifies the broker's signed answer, the JWKS fetched through nginx too. The configuration is the shipped file,
with its names, ports and certificate paths substituted."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.sandbox.api_particulier import create_app as sandbox_app
from broker.app import create_app
from broker.consumer.client import BrokerClient
from tests.broker_harness import broker_config, exchange_body
from tests.factories import SANDBOX_TOKEN, TOKEN_ENV, consumer, registry_toml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "dlnuf.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(),
                                reason="nginx is not installed (`make test` installs Debian's nginx)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "fullchain.pem", directory / "privkey.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def nginx_conf(directory: Path, *, tls_port: int, http_port: int, broker_port: int) -> Path:
    cert, key = self_signed(directory)
    site = SHIPPED.read_text("utf-8")
    for shipped, here in [("server 127.0.0.1:8080 ", f"server 127.0.0.1:{broker_port} "),
                          ("listen 443 ssl", f"listen 127.0.0.1:{tls_port} ssl"),
                          ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                          ("server_name dlnuf.example.gouv.fr;", "server_name localhost;"),
                          ("/etc/ssl/dlnuf/fullchain.pem", str(cert)), ("/etc/ssl/dlnuf/privkey.pem", str(key))]:
        assert shipped in site, f"{shipped!r} is no longer in {SHIPPED.name}: update this test's substitutions"
        site = site.replace(shipped, here)
    (directory / "dlnuf.conf").write_text(site)
    # the rest of what Debian's /etc/nginx/nginx.conf gives, for a server that runs as this user, in the foreground
    main = directory / "nginx.conf"
    main.write_text(f"""
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/dlnuf.conf;
}}
""")
    return main


async def test_a_signed_exchange_through_nginx_with_tls_verifies_both_ways(
        database_url: str, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    monkeypatch.setenv(TOKEN_ENV, SANDBOX_TOKEN)
    sandbox: TestServer = await aiohttp_server(sandbox_app(SANDBOX_TOKEN))
    tls_port, http_port = free_port(), free_port()
    public_url = f"https://localhost:{tls_port}"
    paris = consumer()
    config = broker_config(tmp_path, database_url,
                           registry_toml([paris], provider_url=str(sandbox.make_url("")).rstrip("/")),
                           public_url=public_url, host_from_request=False)
    broker: TestServer = await aiohttp_server(create_app(config), host="127.0.0.1")
    conf = nginx_conf(nginx_dir, tls_port=tls_port, http_port=http_port, broker_port=broker.port or 0)
    checked = await asyncio.create_subprocess_exec(NGINX, "-t", "-c", str(conf), "-p", str(nginx_dir),
                                                   stderr=asyncio.subprocess.PIPE)
    _, errors = await checked.communicate()
    assert checked.returncode == 0, errors.decode()
    nginx = await asyncio.create_subprocess_exec(NGINX, "-c", str(conf), "-p", str(nginx_dir))
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", tls_port)) == 0:
                    break
            assert nginx.returncode is None, (nginx_dir / "error.log").read_text()
            await asyncio.sleep(0.05)
        trust = ssl.create_default_context(cafile=str(nginx_dir / "fullchain.pem"))
        body = exchange_body()
        async with BrokerClient(public_url, key=paris.key, ssl_context=trust) as client:
            answer = await client.exchange(dataset=body["dataset"], purpose=body["purpose"],
                                           recipient=body["recipient"], fields=body["fields"],
                                           subject=body["subject"])
            # plain HTTP is redirected to the public URL, never served
            async with client.session.get(f"http://127.0.0.1:{http_port}/healthz", allow_redirects=False) as resp:
                assert resp.status == 308
                assert resp.headers["Location"] == "https://localhost/healthz"
        assert answer.data["quotient_familial"]
        # the request went through nginx (its access log), signed for the public URL
        assert "POST /v1/exchanges HTTP/" in (nginx_dir / "access.log").read_text()
    finally:
        nginx.terminate()
        await nginx.wait()
