"""benchmarks/profiling.py charges py-spy's samples to the pipeline's steps: the stacks here are py-spy's own lines
from a profile of the broker under load (process lines kept, as py-spy writes them)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import profiling

PROCESS = 'process 11837:"python -m broker serve --workers 2";'
HANDLER = ("_handle_request (aiohttp/web_protocol.py:577);request_id_middleware (broker/service/middleware.py:33);"
           "handle_exchange (broker/exchange/pipeline.py:189);")
VERIFY = (PROCESS + HANDLER + "verify_request (broker/signing/messages.py:689);PublicKey.verify "
          "(broker/signing/keys.py:111);verify (broker/signing/ed25519.py:46);crypto_sign_open "
          "(nacl/bindings/crypto_sign.py:103) 7")
SIGN = (PROCESS + HANDLER + "_sign_with_evidence (broker/exchange/pipeline.py:356);sign_with_evidence "
        "(broker/tlog/evidence.py:104);sign_message (broker/signing/keys.py:182);sign "
        "(broker/signing/ed25519.py:37);crypto_sign (nacl/bindings/crypto_sign.py:84) 3")
PARSE = PROCESS + HANDLER + "parse (broker/exchange/pipeline.py:117);verify (broker/service/contract.py:53) 5"


def test_libsodium_time_goes_to_the_ed25519_steps_not_to_the_pipeline() -> None:
    steps = {step: n for (step, _), n in profiling.fold("\n".join([VERIFY, SIGN, PARSE])).by_step.items()}
    assert steps == {"Ed25519 verify (consumer's signature)": 7, "Ed25519 sign (broker's answer)": 3,
                     "pipeline: parse, authz, subject key, middlewares": 5}
