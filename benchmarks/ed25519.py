"""Ed25519 as the exchange path does it: OpenSSL (through `cryptography`) against libsodium (through PyNaCl,
`broker.signing.ed25519`), one verification of a request-sized message and one signature, interleaved rounds,
medians and per-round ratios.

    .venv/bin/python benchmarks/ed25519.py            # about 10 s
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.signing import ed25519


def main() -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    message = os.urandom(400)  # about an RFC 9421 signature base
    signature = private.sign(message)
    ops: dict[str, Callable[[], object]] = {
        "verify, OpenSSL": lambda: public.verify(signature, message),
        "verify, libsodium": lambda: ed25519.verify(public, signature, message),
        "sign, OpenSSL": lambda: private.sign(message),
        "sign, libsodium": lambda: ed25519.sign(private, message),
    }
    us: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(9):
        for name, op in ops.items():
            start = time.perf_counter()
            for _ in range(500):
                op()
            us[name].append((time.perf_counter() - start) * 1e6 / 500)
    for name, values in us.items():
        print(f"{name:20s} {statistics.median(values):7.1f} us")
    for what in ("verify", "sign"):
        ratios = [a / b for a, b in zip(us[f"{what}, OpenSSL"], us[f"{what}, libsodium"], strict=True)]
        print(f"{what}: OpenSSL / libsodium = {statistics.median(ratios):.2f} (median of per-round ratios)")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
