"""Cost of the JOSE operations the broker does, by library, side by side in one run.

    .venv/bin/python benchmarks/jose.py            # about 20 s
    .venv/bin/python benchmarks/jose.py --quick    # a few seconds, noisier

Operations, each on the broker's hot path or the citizen login's:

* sign and verify an access token (RFC 9068, Ed25519: every consent-based exchange verifies one);
* verify a client assertion (ES256, the token endpoint) and an id_token (ES256 and RS256, the citizen login);
* decrypt an id_token (JWE RSA-OAEP-256 and ECDH-ES, A256GCM, then verify its inner JWS), as FranceConnect+ sends.

Libraries: ``PyJWT`` (what the broker used: JWS only, no JWE), ``joserfc`` (what it uses: JWS and JWE), and
``jwcrypto`` when installed (`.venv/bin/pip install jwcrypto`; skipped otherwise). Before timing, every library's
output is checked by the others (a token signed by one verifies with the other), so a fast wrong answer is no
candidate. Rounds are interleaved (library A, B, C, then again), each figure is the median microseconds per
operation over the rounds, and each ratio is taken within a round, then its median. No assertion on time anywhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwe as jf_jwe
from joserfc import jwt as jf_jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

CLAIMS = {"iss": "https://dlnuf.example", "aud": "https://dlnuf.example", "sub": "urn:dlnuf:consent:1",
          "client_id": "21690123100011", "iat": 1_800_000_000, "exp": 1_800_000_600, "jti": "a" * 36,
          "cnf": {"jkt": "b" * 43}, "authorization_details": [{"type": "dlnuf_exchange", "dataset": "quotient_familial",
                                                               "fields": ["quotient_familial", "enfants"]}]}

# PyJWT checks times and audience by default; joserfc leaves claims to a separate registry: compare the same work
NO_TIME = {"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False}
Op = Callable[[], Any]


def _ops() -> dict[str, dict[str, Op]]:
    ed = ed25519.Ed25519PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jf_ed, jf_p256, jf_rsa = OKPKey.import_key(ed), ECKey.import_key(p256), RSAKey.import_key(rsa_key)
    enc_rsa = RSAKey.generate_key(2048, private=True)
    enc_ec = ECKey.generate_key("P-256", private=True)

    access = pyjwt.encode(CLAIMS, ed, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": "k"})
    access_jf = jf_jwt.encode({"alg": "Ed25519", "typ": "at+jwt", "kid": "k"}, CLAIMS, jf_ed, algorithms=["Ed25519"])
    es256 = pyjwt.encode(CLAIMS, p256, algorithm="ES256", headers={"kid": "k"})
    rs256 = pyjwt.encode(CLAIMS, rsa_key, algorithm="RS256", headers={"kid": "k"})
    # the cross-checks: each library reads what the other wrote
    assert jf_jwt.decode(access, jf_ed, algorithms=["EdDSA"]).claims == CLAIMS
    # PyJWT knows Ed25519 only as "EdDSA": the RFC 9864 name that openid-client sends is unknown to it
    es256_jf = jf_jwt.encode({"alg": "ES256", "kid": "k"}, CLAIMS, jf_p256, algorithms=["ES256"])
    assert pyjwt.decode(es256_jf, p256.public_key(), algorithms=["ES256"], options=NO_TIME) == CLAIMS
    assert jf_jwt.decode(es256, jf_p256, algorithms=["ES256"]).claims == CLAIMS
    assert jf_jwt.decode(rs256, jf_rsa, algorithms=["RS256"]).claims == CLAIMS

    def nested(key: Any, alg: str) -> str:
        return jf_jwe.encrypt_compact({"alg": alg, "enc": "A256GCM", "cty": "JWT"}, rs256, key,
                                      algorithms=[alg, "A256GCM"])

    jwe_rsa, jwe_ec = nested(enc_rsa, "RSA-OAEP-256"), nested(enc_ec, "ECDH-ES")

    def jf_decrypt(token: str, key: Any, alg: str) -> Any:
        inner = jf_jwe.decrypt_compact(token, key, algorithms=[alg, "A256GCM"]).plaintext
        assert inner is not None
        return jf_jwt.decode(inner, jf_rsa, algorithms=["RS256"]).claims

    no_exp = NO_TIME
    ops: dict[str, dict[str, Op]] = {
        "sign access token (Ed25519)": {
            "PyJWT": lambda: pyjwt.encode(CLAIMS, ed, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": "k"}),
            "joserfc": lambda: jf_jwt.encode({"alg": "Ed25519", "typ": "at+jwt", "kid": "k"}, CLAIMS, jf_ed,
                                             algorithms=["Ed25519"]),
        },
        "verify access token (Ed25519)": {
            "PyJWT": lambda: pyjwt.decode(access, ed.public_key(), algorithms=["EdDSA"], options=no_exp),
            "joserfc": lambda: jf_jwt.decode(access_jf, jf_ed, algorithms=["Ed25519"]).claims,
        },
        "verify client assertion / id_token (ES256)": {
            "PyJWT": lambda: pyjwt.decode(es256, p256.public_key(), algorithms=["ES256"], options=no_exp),
            "joserfc": lambda: jf_jwt.decode(es256, jf_p256, algorithms=["ES256"]).claims,
        },
        "verify id_token (RS256)": {
            "PyJWT": lambda: pyjwt.decode(rs256, rsa_key.public_key(), algorithms=["RS256"], options=no_exp),
            "joserfc": lambda: jf_jwt.decode(rs256, jf_rsa, algorithms=["RS256"]).claims,
        },
        "decrypt+verify id_token (RSA-OAEP-256/A256GCM)": {
            "joserfc": lambda: jf_decrypt(jwe_rsa, enc_rsa, "RSA-OAEP-256"),
        },
        "decrypt+verify id_token (ECDH-ES/A256GCM)": {
            "joserfc": lambda: jf_decrypt(jwe_ec, enc_ec, "ECDH-ES"),
        },
    }
    if importlib.util.find_spec("jwcrypto") is not None:
        _add_jwcrypto(ops, ed, p256, rsa_key, access_jf, es256, rs256, (jwe_rsa, enc_rsa), (jwe_ec, enc_ec))
    return ops


def _add_jwcrypto(ops: dict[str, dict[str, Op]], ed: Any, p256: Any, rsa_key: Any, access: str, es256: str,
                  rs256: str, jwe_rsa: tuple[str, Any], jwe_ec: tuple[str, Any]) -> None:
    from jwcrypto import jwe as jc_jwe
    from jwcrypto import jwk as jc_jwk
    from jwcrypto import jws as jc_jws

    def key(private: Any) -> Any:
        return jc_jwk.JWK.from_pyca(private)

    k_ed, k_p256, k_rsa = key(ed), key(p256), key(rsa_key)
    header = json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": "k"})
    payload = json.dumps(CLAIMS)

    def sign() -> str:
        token = jc_jws.JWS(payload)
        token.add_signature(k_ed, protected=header)
        return str(token.serialize(compact=True))

    def verify(value: str, k: Any, alg: str) -> Any:
        token = jc_jws.JWS()
        token.deserialize(value)
        token.verify(k, alg=alg)
        return json.loads(token.payload)

    # keys are parsed once, as the broker does, outside the timed operation
    dec_keys = {id(pair): jc_jwk.JWK(**pair[1].as_dict(private=True)) for pair in (jwe_rsa, jwe_ec)}

    def decrypt(pair: tuple[str, Any], alg: str) -> Any:
        value, k = pair[0], dec_keys[id(pair)]
        token = jc_jwe.JWE()
        token.allowed_algs = [alg, "A256GCM"]
        token.deserialize(value, key=k)
        return verify(token.payload.decode(), k_rsa, "RS256")

    assert verify(sign(), k_ed, "EdDSA") == CLAIMS
    ops["sign access token (Ed25519)"]["jwcrypto"] = sign
    # jwcrypto names Ed25519 "EdDSA" only; the token differs by its header's alg, not by the work
    access_eddsa = sign()
    ops["verify access token (Ed25519)"]["jwcrypto"] = lambda: verify(access_eddsa, k_ed, "EdDSA")
    ops["verify client assertion / id_token (ES256)"]["jwcrypto"] = lambda: verify(es256, k_p256, "ES256")
    ops["verify id_token (RS256)"]["jwcrypto"] = lambda: verify(rs256, k_rsa, "RS256")
    ops["decrypt+verify id_token (RSA-OAEP-256/A256GCM)"]["jwcrypto"] = lambda: decrypt(jwe_rsa, "RSA-OAEP-256")
    ops["decrypt+verify id_token (ECDH-ES/A256GCM)"]["jwcrypto"] = lambda: decrypt(jwe_ec, "ECDH-ES")


def _per_op(op: Op, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and iterations (noisier)")
    args = parser.parse_args()
    # joserfc warns that RFC 9864 deprecates "EdDSA" each time a token says it; the broker keeps accepting it
    warnings.filterwarnings("ignore", message="EdDSA is deprecated")
    rounds, n = (5, 100) if args.quick else (15, 300)
    ops = _ops()
    print(f"median µs per operation over {rounds} interleaved rounds of {n} (ratio: to PyJWT, within a round)")
    for name, libraries in ops.items():
        for op in libraries.values():
            _per_op(op, max(1, n // 10))  # warm-up
        samples: dict[str, list[float]] = {lib: [] for lib in libraries}
        for r in range(rounds):
            order = list(libraries)
            order = order[r % len(order):] + order[:r % len(order)]
            for lib in order:
                samples[lib].append(_per_op(libraries[lib], n))
        print(f"\n{name}")
        for lib, values in samples.items():
            line = f"  {lib:<10} {statistics.median(values):9.1f} µs"
            if lib != "PyJWT" and "PyJWT" in samples:
                ratio = statistics.median(v / b for v, b in zip(values, samples["PyJWT"], strict=True))
                line += f"   × {ratio:.2f}"
            print(line)


if __name__ == "__main__":
    main()
