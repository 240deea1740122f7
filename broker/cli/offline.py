"""`python -m broker log evidence|verify-evidence|verify-proof`: export the evidence of one exchange, and check it, or
an offline tlog-proof, anywhere, with nothing but the keys given on the command line.

The checks exit 0 when everything verifies, 1 with the reason otherwise, 2 when they cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.config import Config
from broker.storage import db
from broker.tlog import evidence, tlogproof
from broker.tlog import log as tlog
from broker.tlog.checkpoint import CheckpointError, parse_verifier_key
from broker.tlog.witness import WitnessError


def add_parsers(log_sub: Any) -> None:
    e = log_sub.add_parser("evidence", help="export the evidence of one exchange (request, answer, key, proof)")
    e.add_argument("entry_id", type=uuid.UUID)
    e.add_argument("--database-url", help="the broker's database (default: DATABASE_URL, or the embedded one)")
    e.add_argument("--out", type=Path, help="write it to this file (default: standard output)")

    ve = log_sub.add_parser("verify-evidence", help="check an exported evidence file offline")
    ve.add_argument("file", type=Path)
    _trust_arguments(ve)
    ve.add_argument("--broker-jwks", type=Path,
                    help="the broker's published JWKS (/.well-known/jwks.json), kept by you: its answers' key must be "
                         "one of them (default: the key in the file, which only shows the file is self-consistent)")

    vp = log_sub.add_parser("verify-proof", help="check an offline proof (C2SP tlog-proof) of one entry")
    vp.add_argument("file", type=Path)
    _trust_arguments(vp)
    vp.add_argument("--entry", type=Path, help="the entry (JSON) the proof is for: from the answer or the journal "
                                               "(default: the public leaf the proof carries)")


def _trust_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vkey", action="append", required=True, help="the log's verifier key (repeat after a rotation)")
    p.add_argument("--origin", help="the log's origin (default: the verifier key's name)")
    p.add_argument("--witness", action="append", default=[], help="a witness's cosignature key (repeatable)")
    p.add_argument("--quorum", type=int, default=None,
                   help="how many of the --witness keys must have cosigned (default: all of them)")


def _policy(args: argparse.Namespace) -> dict[str, Any]:
    vkeys = [parse_verifier_key(k) for k in args.vkey]
    return {"origin": args.origin or vkeys[0].name, "witnesses": args.witness,
            "quorum": len(args.witness) if args.quorum is None else args.quorum, "vkeys": vkeys}


async def _export(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    if not config.log_key_file.exists():
        raise OSError(f"no note key at {config.log_key_file}: run this where the broker's state is")
    signer = tlog.load_or_create_note_key(config.log_key_file, config.log_origin)
    async with db.database_dsn(args.database_url or config.database_url, config.state_dir) as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        try:
            document = await evidence.export(pool, args.entry_id)
            log = tlog.TransparencyLog(pool, signer, max_merge_delay=config.log_max_merge_delay,
                                       witness_quorum=config.log_witness_quorum)
            try:
                # the evidence's own entry, should a row in another month reuse its id
                found = await log.entry_proof(args.entry_id,
                                              logged_at=datetime.fromisoformat(str(document["entry"]["logged_at"])))
                document["log"] = {"origin": log.origin, "verifier_key": signer.verifier.vkey(),
                                   "index": found.index, "tree_size": found.tree_size,
                                   "inclusion_proof": [tlog.b64(h) for h in found.proof],
                                   "checkpoint": found.checkpoint}
            except tlog.NotYetIntegrated:
                document["log"] = None
        finally:
            await pool.close()
    return document


_CANNOT_RUN: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, CheckpointError, WitnessError,
                                                tlog.NoteKeyError, *db.DB_ERRORS)


def run(args: argparse.Namespace, config: Config) -> int:
    try:
        if args.log_command == "evidence":
            document = asyncio.run(_export(args, config))
            text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            if args.out is None:
                sys.stdout.write(text)
            else:
                args.out.write_text(text, "utf-8")
            return 0
        policy = _policy(args)
        if args.log_command == "verify-evidence":
            document = json.loads(args.file.read_text("utf-8"))
            jwks = None if args.broker_jwks is None else json.loads(args.broker_jwks.read_text("utf-8"))["keys"]
            evidence.verify_evidence(document, log_verifiers=policy["vkeys"], origin=policy["origin"],
                                     witnesses=policy["witnesses"], quorum=policy["quorum"], broker_keys=jwks)
            entry = document["entry"]
            print(f"OK: {entry['consumer']} asked for {entry['dataset']} at {entry['logged_at']} "
                  f"(entry {entry['id']}, {entry['outcome']} {entry['http_status']}): the request signature, the "
                  f"answer bound to it and the entry's inclusion in the log verify")
            return 0
        entry = None if args.entry is None else json.loads(args.entry.read_text("utf-8"))
        found, signed = tlogproof.verify(args.file.read_text("utf-8"), policy["vkeys"], origin=policy["origin"],
                                         entry=entry, witnesses=policy["witnesses"], quorum=policy["quorum"])
        cosigned = f" and cosigned by {policy['quorum']} witness(es)" if policy["quorum"] else ""
        print(f"OK: leaf {found.index} is in the tree of size {signed.size} signed by {policy['origin']}{cosigned}")
        return 0
    except (evidence.EvidenceError, tlogproof.ProofError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except evidence.UnknownEvidence as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except _CANNOT_RUN as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
