"""The signing path of one exchange, as `broker/exchange/pipeline.py` calls it: `verify_request` on a request signed
like the load generator's, `covers("authorization")` (the consent path asks it), and `sign_with_evidence` on a
broker-shaped answer. Microseconds per call, medians of rounds, and how many structured-field dictionaries are
parsed and signature bases built per exchange.

    .venv/bin/python benchmarks/signing_path.py                          # this tree, about 10 s
    .venv/bin/python benchmarks/signing_path.py --compare /tmp/base      # against another checkout, interleaved

`--compare DIR` runs the same measurement on the code in DIR (e.g. `git archive main | tar -x -C /tmp/base`) in
child processes alternating with this tree's, so that a shared machine's drifts hit both alike; each ratio is
taken within a repetition, then its median. Times are the process's CPU time (`time.process_time`), not the
wall clock: on a shared machine, time spent preempted is not the code's cost. The nonce claim is a coroutine that
accepts every nonce: the database's part is measured by `exchange.py`, not here. It prints figures and asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
STEPS = ("verify_request", "covers", "sign_with_evidence", "exchange (sum)")
BATCH = 400  # distinct requests per round: every one has its own nonce, as on the wire


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    # The nonce claim below never suspends, so the coroutine completes on its first step: no event loop in the
    # figures.
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine suspended")


def measure(rounds: int) -> dict[str, Any]:
    """In the child: the figures of the tree on sys.path."""
    from aiohttp import web
    from multidict import CIMultiDict, CIMultiDictProxy

    from broker.signing import messages
    from broker.signing import structured_fields as sf
    from broker.signing.keys import generate_private_key
    from broker.tlog import evidence

    consumer = generate_private_key(kid="bench-consumer")
    consumer_public = consumer.public_key(owner="21750001600019")
    broker = generate_private_key(kid="bench-broker")
    broker_public = broker.public_key(owner=evidence.BROKER_OWNER)
    url = "http://127.0.0.1:8080/v1/exchanges"
    body = json.dumps({"dataset": "quotient_familial", "purpose": "Instruction d'une aide au transport scolaire",
                       "recipient": "21750001600019", "fields": ["quotient_familial", "enfants"],
                       "subject": {"pivot_identity": {"family_name": "DUPONT", "given_names": ["Marie", "Claire"],
                                                      "birthdate": "1980-06-15", "gender": "female",
                                                      "birthplace": "75056", "birthcountry": "99100"}}}
                      ).encode()
    answer = json.dumps({"request_id": str(uuid.uuid4()), "log_entry_id": str(uuid.uuid4()),
                         "dataset": "quotient_familial", "version": 1, "fields_released": ["quotient_familial"],
                         "data_sha256": "0" * 64, "data": {"quotient_familial": 1234, "enfants": []},
                         "log": {"entry": {"id": str(uuid.uuid4())}, "leaf_hash": "A" * 44,
                                 "inclusion_promise": "B" * 120}}).encode()

    def requests() -> list[CIMultiDictProxy[str]]:
        out = []
        for _ in range(BATCH):
            headers: CIMultiDict[str] = CIMultiDict({"Host": "127.0.0.1:8080", "Content-Type": "application/json",
                                                     "Content-Length": str(len(body))})
            headers.update(messages.sign_request(method="POST", url=url, headers=headers, body=body,
                                                 private_key=consumer))
            out.append(CIMultiDictProxy(headers))
        return out

    async def claim(kid: str, nonce: str, until: datetime) -> bool:
        return True

    def lookup(kid: str) -> Any:
        return consumer_public if kid == consumer.kid else None

    def verify(headers: CIMultiDictProxy[str]) -> Any:
        return _run(messages.verify_request(method="POST", target_uri=url, headers=headers, body=body,
                                            lookup_key=lookup, claim_nonce=claim, now=datetime.now(UTC)))

    def sign(verified: Any) -> Any:
        response = web.Response(status=200, body=answer, content_type="application/json")
        now = datetime.now(UTC)
        return evidence.sign_with_evidence(response, request=verified, private_key=broker, broker_key=broker_public,
                                           entry_id=uuid.uuid4(), logged_at=now, now=now)

    # What one exchange parses and builds: counted on one, by wrapping the module functions the path calls.
    counts = {"parse_dictionary": 0, "_build_base": 0}

    def counting(name: str, module: Any) -> Callable[..., Any]:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(*args, **kwargs)
        setattr(module, name, wrapper)
        return original

    first = requests()[0]
    originals = [(sf, "parse_dictionary", counting("parse_dictionary", sf)),
                 (messages, "_build_base", counting("_build_base", messages))]
    one = verify(first)
    one.covers("authorization")
    sign(one)
    for module, name, original in originals:
        setattr(module, name, original)

    us: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(rounds):
        batch = requests()
        start = time.process_time()
        verified = [verify(h) for h in batch]
        t_verify = (time.process_time() - start) * 1e6 / BATCH
        start = time.process_time()
        for v in verified:
            v.covers("authorization")
        t_covers = (time.process_time() - start) * 1e6 / BATCH
        start = time.process_time()
        for v in verified:
            sign(v)
        t_sign = (time.process_time() - start) * 1e6 / BATCH
        for step, t in zip(STEPS, (t_verify, t_covers, t_sign, t_verify + t_covers + t_sign), strict=True):
            us[step].append(t)
    return {"us": {step: statistics.median(values) for step, values in us.items()}, "counts": counts}


def _child(tree: Path, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--rounds", str(rounds)],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help="another checkout, measured as 'before'")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (child processes per tree)")
    parser.add_argument("--rounds", type=int, default=5, help=f"rounds per child, of {BATCH} exchanges each")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds)))
        return
    trees = {"after": HERE} if args.compare is None else {"before": args.compare.resolve(), "after": HERE}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for rep in range(args.reps):
        order = list(trees) if rep % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(_child(trees[name], args.rounds))
    for name, tree in trees.items():
        counts = runs[name][0]["counts"]
        print(f"{name:6s} {tree}: per exchange {counts['parse_dictionary']} dictionary parses, "
              f"{counts['_build_base']} signature bases built")
    print(f"{'step':22s}" + "".join(f"{name:>10s}" for name in trees) + ("     ratio" if len(trees) == 2 else ""))
    for step in STEPS:
        medians = [statistics.median(r["us"][step] for r in runs[name]) for name in trees]
        line = f"{step:22s}" + "".join(f"{m:8.1f}us" for m in medians)
        if len(trees) == 2:
            ratios = [a["us"][step] / b["us"][step] for a, b in zip(runs["after"], runs["before"], strict=True)]
            line += f"  {statistics.median(ratios):8.2f}"
        print(line)
    if len(trees) == 2:
        print("ratio = after / before, median of per-repetition ratios")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
