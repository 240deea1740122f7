"""The signing path of one exchange, as `broker/exchange/pipeline.py` calls it: `verify_request` on a request signed
like the load generator's, `covers("authorization")` (the consent path asks it), and `sign_with_evidence` on a
broker-shaped answer. Microseconds per call, medians of rounds, and how many structured-field dictionaries are
parsed and signature bases built per exchange.

    .venv/bin/python benchmarks/signing_path.py                          # this tree, about 10 s
    .venv/bin/python benchmarks/signing_path.py --compare /tmp/base      # against another checkout, interleaved
    .venv/bin/python benchmarks/signing_path.py --compare /tmp/base --in-process

`--compare DIR` runs the same measurement on the code in DIR (e.g. `git archive main | tar -x -C /tmp/base`) in
child processes alternating with this tree's, so that a shared machine's drifts hit both alike; each ratio is
taken within a repetition, then its median. Times are the process's CPU time (`time.process_time`), not the
wall clock: on a shared machine, time spent preempted is not the code's cost. Process against process still
differs by 10 to 30 % between identical trees when the machine is loaded (heap layout, caches, the other
tenants): `--in-process` also loads the other tree's messages.py and evidence.py beside this tree's and
alternates rounds of 400 in one process, which resolves a few percent; the two share this tree's other modules.
The nonce claim is a coroutine that accepts every nonce: the database's part is measured by `exchange.py`, not
here. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
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


class SigningPath:
    """One broker-shaped exchange's signing path, run with the given `messages` and `evidence` modules."""

    def __init__(self, messages: Any, evidence: Any) -> None:
        from broker.signing.keys import generate_private_key

        self.messages, self.evidence = messages, evidence
        self.consumer = generate_private_key(kid="bench-consumer")
        self.consumer_public = self.consumer.public_key(owner="21750001600019")
        self.broker = generate_private_key(kid="bench-broker")
        self.broker_public = self.broker.public_key(owner="broker")
        self.url = "http://127.0.0.1:8080/v1/exchanges"
        self.body = json.dumps({
            "dataset": "quotient_familial", "purpose": "Instruction d'une aide au transport scolaire",
            "recipient": "21750001600019", "fields": ["quotient_familial", "enfants"],
            "subject": {"pivot_identity": {"family_name": "DUPONT", "given_names": ["Marie", "Claire"],
                                           "birthdate": "1980-06-15", "gender": "female", "birthplace": "75056",
                                           "birthcountry": "99100"}}}).encode()
        self.answer = json.dumps({
            "request_id": str(uuid.uuid4()), "log_entry_id": str(uuid.uuid4()), "dataset": "quotient_familial",
            "version": 1, "fields_released": ["quotient_familial"], "data_sha256": "0" * 64,
            "data": {"quotient_familial": 1234, "enfants": []},
            "log": {"entry": {"id": str(uuid.uuid4())}, "leaf_hash": "A" * 44, "inclusion_promise": "B" * 120},
        }).encode()

    def requests(self) -> list[Any]:
        """BATCH requests as the broker receives them, each with its own nonce."""
        from multidict import CIMultiDict, CIMultiDictProxy

        out = []
        for _ in range(BATCH):
            headers: CIMultiDict[str] = CIMultiDict({"Host": "127.0.0.1:8080", "Content-Type": "application/json",
                                                     "Content-Length": str(len(self.body))})
            headers.update(self.messages.sign_request(method="POST", url=self.url, headers=headers, body=self.body,
                                                      private_key=self.consumer))
            out.append(CIMultiDictProxy(headers))
        return out

    async def _claim(self, kid: str, nonce: str, until: datetime) -> bool:
        return True

    def _lookup(self, kid: str) -> Any:
        return self.consumer_public if kid == self.consumer.kid else None

    def verify(self, headers: Any) -> Any:
        return _run(self.messages.verify_request(
            method="POST", target_uri=self.url, headers=headers, body=self.body, lookup_key=self._lookup,
            claim_nonce=self._claim, now=datetime.now(UTC)))

    def sign(self, verified: Any, response: Any) -> Any:
        now = datetime.now(UTC)
        return self.evidence.sign_with_evidence(response, request=verified, private_key=self.broker,
                                                broker_key=self.broker_public, entry_id=uuid.uuid4(),
                                                logged_at=now, now=now)

    def round(self, batch: list[Any]) -> dict[str, float]:
        """CPU microseconds per exchange of each step over `batch`."""
        from aiohttp import web

        start = time.process_time()
        verified = [self.verify(h) for h in batch]
        t_verify = time.process_time() - start
        start = time.process_time()
        for v in verified:
            v.covers("authorization")
        t_covers = time.process_time() - start
        responses = [web.Response(status=200, body=self.answer, content_type="application/json") for _ in batch]
        start = time.process_time()
        for v, response in zip(verified, responses, strict=True):
            self.sign(v, response)
        t_sign = time.process_time() - start
        times = (t_verify, t_covers, t_sign, t_verify + t_covers + t_sign)
        return {step: t * 1e6 / len(batch) for step, t in zip(STEPS, times, strict=True)}

    def counts(self) -> dict[str, int]:
        """What one exchange parses and builds, by wrapping the module functions the path calls."""
        from aiohttp import web

        from broker.signing import structured_fields as sf

        counts = {"parse_dictionary": 0, "_build_base": 0}

        def counting(name: str, module: Any) -> Callable[..., Any]:
            original = getattr(module, name)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return original(*args, **kwargs)
            setattr(module, name, wrapper)
            return original

        first = self.requests()[0]
        originals = [(sf, "parse_dictionary", counting("parse_dictionary", sf)),
                     (self.messages, "_build_base", counting("_build_base", self.messages))]
        try:
            one = self.verify(first)
            one.covers("authorization")
            self.sign(one, web.Response(status=200, body=self.answer, content_type="application/json"))
        finally:
            for module, name, original in originals:
                setattr(module, name, original)
        return counts


def measure(rounds: int) -> dict[str, Any]:
    """In the child: the figures of the tree on sys.path."""
    from broker.signing import messages
    from broker.tlog import evidence

    path = SigningPath(messages, evidence)
    counts = path.counts()
    us: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(rounds):
        for step, t in path.round(path.requests()).items():
            us[step].append(t)
    return {"us": {step: statistics.median(values) for step, values in us.items()}, "counts": counts}


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def in_process(compare: Path, reps: int) -> dict[str, list[dict[str, float]]]:
    """Both versions of messages.py and evidence.py in this process, rounds interleaved: one heap, one CPU
    state, finer than process against process. Everything else (structured fields, keys) is this tree's."""
    sys.path.insert(0, str(HERE))  # this tree, whatever the virtualenv has installed
    from broker.signing import messages
    from broker.tlog import evidence

    assert Path(messages.__file__).is_relative_to(HERE), messages.__file__

    before_messages = _load("_before_messages", compare / "broker" / "signing" / "messages.py")
    before_evidence = _load("_before_evidence", compare / "broker" / "tlog" / "evidence.py")
    before_evidence.messages = before_messages
    paths = {"before": SigningPath(before_messages, before_evidence), "after": SigningPath(messages, evidence)}
    # the same keys for both: both verify the same requests
    for attribute in ("consumer", "consumer_public", "broker", "broker_public"):
        setattr(paths["before"], attribute, getattr(paths["after"], attribute))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for rep in range(reps):
        batch = paths["after"].requests()  # the same requests for both: both verify the same signatures
        for name in ("before", "after") if rep % 2 == 0 else ("after", "before"):
            runs[name].append(paths[name].round(batch))
    return runs


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
    parser.add_argument("--in-process", action="store_true",
                        help="with --compare, also both trees' messages.py and evidence.py in one process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds)))
        return
    trees = {"after": HERE} if args.compare is None else {"before": args.compare.resolve(), "after": HERE}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for rep in range(args.reps):
        order = list(trees) if rep % 2 == 0 else list(reversed(trees))
        for name in order:
            child = _child(trees[name], args.rounds)
            runs[name].append(child["us"])
            if rep == 0:
                print(f"{name:6s} {trees[name]}: per exchange {child['counts']['parse_dictionary']} dictionary "
                      f"parses, {child['counts']['_build_base']} signature bases built")
    print("process against process, CPU us per exchange (medians of repetitions):")
    _table(runs)
    if args.compare is not None and args.in_process:
        print(f"in one process, messages.py and evidence.py of each tree, {args.reps * args.rounds} interleaved "
              "rounds:")
        _table(in_process(args.compare.resolve(), args.reps * args.rounds))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def _table(runs: dict[str, list[dict[str, float]]]) -> None:
    names = list(runs)
    print(f"{'step':22s}" + "".join(f"{name:>10s}" for name in names) + ("     ratio" if len(names) == 2 else ""))
    for step in STEPS:
        medians = [statistics.median(r[step] for r in runs[name]) for name in names]
        line = f"{step:22s}" + "".join(f"{m:8.1f}us" for m in medians)
        if len(names) == 2:
            ratios = [a[step] / b[step] for a, b in zip(runs["after"], runs["before"], strict=True)]
            line += f"  {statistics.median(ratios):8.2f}"
        print(line)
    if len(names) == 2:
        print("ratio = after / before, median of per-repetition ratios")


if __name__ == "__main__":
    main()
