"""The citizen login's settings as a generic OpenID Connect relying party: presets, overrides, what is refused at
start; and the checks that do not need an OP (RFC 9207 iss, JWE decryption with the right key only). The login
against real third-party OPs is tests/interop/test_oidc_provider.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwe
from joserfc.jwk import ECKey, KeySet, RSAKey

from broker.config import ConfigError, load_config
from consent import oidc, oidc_keys

BASE = {"DLNUF_OIDC_ISSUER": "https://op.example/", "DLNUF_OIDC_CLIENT_ID": "dlnuf",
        "DLNUF_OIDC_CLIENT_SECRET": "s", "DLNUF_OIDC_REDIRECT_URI": "https://dlnuf.example/citizen/callback",
        "DLNUF_STATE_DIR": "/nonexistent/state"}


def login(**env: str) -> Any:
    config = load_config(env={**BASE, **env}).citizen_login
    assert config is not None
    return config


def test_the_issuer_is_kept_exactly_as_configured() -> None:
    assert login().issuer == "https://op.example/"
    assert login(DLNUF_OIDC_ISSUER="https://op.example").issuer == "https://op.example"
    assert oidc.discovery_url("https://op.example/") == "https://op.example/.well-known/openid-configuration"
    assert oidc.discovery_url("https://fc.example/api/v2") == "https://fc.example/api/v2/.well-known/openid-configuration"


def test_presets() -> None:
    fc = login()
    assert (fc.preset, fc.provider_name, fc.auth_method) == ("franceconnect", "FranceConnect", "client_secret_post")
    assert fc.scopes[0] == "openid" and "birthcountry" in fc.scopes and fc.acr_values == ("eidas1",)
    assert fc.encryption_algs == frozenset() and fc.encryption_key_file is None and fc.client_key_file is None
    plus = login(DLNUF_OIDC_PRESET="franceconnect-plus")
    assert plus.acr_values == ("eidas2",) and plus.accepted_acr == {"eidas2", "eidas3"}
    assert plus.encryption_algs == {"RSA-OAEP-256", "ECDH-ES"} and plus.encryption_encs == {"A256GCM"}
    assert plus.encryption_key_file == Path("/nonexistent/state/oidc-encryption-keys.jwks")
    generic = login(DLNUF_OIDC_PRESET="generic")
    assert generic.scopes == ("openid", "profile", "email") and generic.acr_values == ()
    assert generic.accepted_acr == frozenset() and generic.auth_method == "client_secret_basic"


def test_every_setting_overrides_the_preset() -> None:
    config = login(DLNUF_OIDC_PRESET="generic", DLNUF_OIDC_SCOPES="openid profile birth",
                   DLNUF_OIDC_ACR_VALUES="urn:a urn:b", DLNUF_OIDC_ACCEPTED_ACR="urn:b",
                   DLNUF_OIDC_CLAIMS="birthplace=place_of_birth, birthcountry=country_of_birth",
                   DLNUF_OIDC_USERINFO="false", DLNUF_OIDC_TOKEN_AUTH="private_key_jwt",
                   DLNUF_OIDC_CLIENT_KEY="/keys/rp.jwk", DLNUF_OIDC_ID_TOKEN_ALGS="PS256",
                   DLNUF_OIDC_ENCRYPTION_ALGS="ECDH-ES", DLNUF_OIDC_PROVIDER_NAME="ProConnect")
    assert config.scopes == ("openid", "profile", "birth") and config.acr_values == ("urn:a", "urn:b")
    assert config.accepted_acr == {"urn:b"} and config.userinfo is False and config.provider_name == "ProConnect"
    assert config.claims["birthplace"] == "place_of_birth" and config.claims["family_name"] == "family_name"
    assert config.auth_method == "private_key_jwt" and config.client_key_file == Path("/keys/rp.jwk")
    assert config.id_token_algs == {"PS256"} and config.encryption_algs == {"ECDH-ES"}
    # set but empty: none asked, none checked (an FC-preset broker facing an OP without acr)
    bare = login(DLNUF_OIDC_ACR_VALUES="", DLNUF_OIDC_ACCEPTED_ACR="")
    assert bare.acr_values == () and bare.accepted_acr == frozenset()
    # private_key_jwt needs no client secret
    without_secret = {k: v for k, v in BASE.items() if k != "DLNUF_OIDC_CLIENT_SECRET"}
    config = load_config(env={**without_secret, "DLNUF_OIDC_TOKEN_AUTH": "private_key_jwt"}).citizen_login
    assert config is not None and config.client_key_file == Path("/nonexistent/state/oidc-client-key.jwk")


@pytest.mark.parametrize(("env", "message"), [
    ({"DLNUF_OIDC_PRESET": "keycloak"}, "DLNUF_OIDC_PRESET"),
    ({"DLNUF_OIDC_SCOPES": "profile email"}, "openid"),
    ({"DLNUF_OIDC_ID_TOKEN_ALGS": "RS256 HS256"}, "DLNUF_OIDC_ID_TOKEN_ALGS"),
    ({"DLNUF_OIDC_ID_TOKEN_ALGS": "none"}, "DLNUF_OIDC_ID_TOKEN_ALGS"),
    ({"DLNUF_OIDC_ID_TOKEN_ALGS": ""}, "DLNUF_OIDC_ID_TOKEN_ALGS"),
    ({"DLNUF_OIDC_TOKEN_AUTH": "client_secret_jwt"}, "DLNUF_OIDC_TOKEN_AUTH"),
    ({"DLNUF_OIDC_ENCRYPTION_ALGS": "RSA1_5"}, "DLNUF_OIDC_ENCRYPTION_ALGS"),
    ({"DLNUF_OIDC_ENCRYPTION_ALGS": "dir"}, "DLNUF_OIDC_ENCRYPTION_ALGS"),
    ({"DLNUF_OIDC_CLAIMS": "pointure=shoe_size"}, "DLNUF_OIDC_CLAIMS"),
    ({"DLNUF_OIDC_CLAIMS": "birthplace"}, "DLNUF_OIDC_CLAIMS"),
    ({"DLNUF_OIDC_USERINFO": "peut-être"}, "DLNUF_OIDC_USERINFO"),
])
def test_bad_settings_stop_the_broker(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        login(**env)


def test_rfc9207_iss_of_the_authorization_response() -> None:
    meta = oidc.ProviderMetadata("https://op.example/", "https://op.example/a", "https://op.example/t", None,
                                 "https://op.example/j", None, iss_parameter_supported=True)
    oidc.verify_response_issuer(meta, "https://op.example/")
    for wrong in ["https://op.example", "https://evil.example/", None]:
        with pytest.raises(oidc.InvalidIdToken):
            oidc.verify_response_issuer(meta, wrong)
    silent = oidc.ProviderMetadata("https://op.example/", "https://op.example/a", "https://op.example/t", None,
                                   "https://op.example/j", None)
    oidc.verify_response_issuer(silent, None)  # an OP that never sends iss cannot be held to it
    with pytest.raises(oidc.InvalidIdToken):
        oidc.verify_response_issuer(silent, "https://evil.example/")


def test_relying_party_keys_are_created_once_and_published_without_private_members(tmp_path: Path) -> None:
    keys = oidc_keys.load_or_create_decryption_keys(tmp_path / "enc.jwks")
    again = oidc_keys.load_or_create_decryption_keys(tmp_path / "enc.jwks")
    assert keys.as_dict() == again.as_dict()
    assert (tmp_path / "enc.jwks").stat().st_mode & 0o777 == 0o600
    signer = oidc_keys.load_or_create_client_key(tmp_path / "rp.jwk")
    published = oidc_keys.public_jwks(signer, keys)["keys"]
    assert [k["use"] for k in published] == ["sig", "enc", "enc"]
    assert {k.get("alg") for k in published} == {"ES256", "RSA-OAEP-256", "ECDH-ES"}
    assert not any("d" in k or "p" in k for k in published)
    (tmp_path / "bad.jwks").write_text(json.dumps({"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]}))
    with pytest.raises(oidc_keys.KeyFileError):
        oidc_keys.load_or_create_decryption_keys(tmp_path / "bad.jwks")


def test_only_our_key_opens_an_encrypted_id_token(tmp_path: Path) -> None:
    ours = oidc_keys.load_or_create_decryption_keys(tmp_path / "enc.jwks")
    theirs = KeySet([RSAKey.generate_key(2048, {"use": "enc"}, private=True, auto_kid=True),
                     ECKey.generate_key("P-256", {"use": "enc"}, private=True, auto_kid=True)])
    from broker.signing import jose

    for alg in ("RSA-OAEP-256", "ECDH-ES"):
        key = next(k for k in ours if k.as_dict().get("alg") == alg)
        token = jwe.encrypt_compact({"alg": alg, "enc": "A256GCM", "kid": key.kid}, b"a.b.c", key,
                                    algorithms=[alg, "A256GCM"])
        assert jose.decrypt(token, ours, algorithms={alg}, encryptions={"A256GCM"})[1] == b"a.b.c"
        # encrypted to another key that claims our kid, or without kid: does not open
        stranger = next(k for k in theirs if k.key_type == key.key_type)
        for header in ({"alg": alg, "enc": "A256GCM", "kid": key.kid}, {"alg": alg, "enc": "A256GCM"}):
            forged = jwe.encrypt_compact(header, b"a.b.c", stranger, algorithms=[alg, "A256GCM"])
            with pytest.raises(jose.JoseError):
                jose.decrypt(forged, ours, algorithms={alg}, encryptions={"A256GCM"})
        # and an algorithm outside the list is refused before any key is tried
        with pytest.raises(jose.JoseError, match="not allowed"):
            jose.decrypt(token, ours, algorithms={"ECDH-ES+A256KW"}, encryptions={"A256GCM"})
