"""`python -m broker request`: send one signed exchange, verify the broker's signed answer, print it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from broker.consumer.client import BrokerClient, BrokerProblem
from broker.signing.keys import InvalidKey, PrivateKey, private_key_from_jwk
from broker.signing.messages import SignatureRejected

_PROVENANCE = {
    "bound": "the broker refused: its problem is signed and bound to this request",
    "unbound": "the broker refused before it could verify the request: its problem is signed, not bound to it",
    None: "an error answer that no broker key signed (a proxy's, or altered on the way)",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("request", help="send one signed exchange request and print the verified answer")
    p.add_argument("--url", required=True, help="broker base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--key", required=True, type=Path, help="the consumer's private JWK file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--version", type=int)
    p.add_argument("--purpose", required=True)
    p.add_argument("--recipient", required=True, help="consumer SIRET, or SIRET/sub-unit")
    p.add_argument("--fields", required=True, help="comma-separated field paths")
    p.add_argument("--subject", required=True, help="subject JSON, or @file")
    p.add_argument("--context", help="the framework of the call (API Entreprise), e.g. 'Marchés publics'")
    p.add_argument("--object", help="the procedure's reference (API Entreprise), at most 50 characters")


async def _send(args: argparse.Namespace, key: PrivateKey, subject: Any) -> int:
    async with BrokerClient(args.url, key=key) as client:
        try:
            answer = await client.exchange(
                dataset=args.dataset, version=args.version, purpose=args.purpose, recipient=args.recipient,
                fields=[f.strip() for f in args.fields.split(",") if f.strip()], subject=subject,
                context=args.context, object=args.object,
            )
        except BrokerProblem as exc:
            print(f"# {_PROVENANCE[exc.signature]}"
                  + (f" ({exc.signature_error.reason})" if exc.signature_error else ""), file=sys.stderr)
            print(json.dumps(exc.problem, indent=2, ensure_ascii=False))
            return 1
        except SignatureRejected as exc:
            print(f"error: the broker's response signature did not verify ({exc.reason})", file=sys.stderr)
            return 3
    print("# response signature verified against the broker's JWKS", file=sys.stderr)
    print(json.dumps(answer.raw, indent=2, ensure_ascii=False))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        key = private_key_from_jwk(json.loads(args.key.read_text("utf-8")))
    except (OSError, ValueError, InvalidKey) as exc:
        print(f"error: cannot load the key {args.key}: {exc}", file=sys.stderr)
        return 2
    try:
        raw = Path(args.subject[1:]).read_text("utf-8") if args.subject.startswith("@") else args.subject
        subject = json.loads(raw)
    except (OSError, ValueError) as exc:
        print(f"error: --subject is not readable JSON: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_send(args, key, subject))
