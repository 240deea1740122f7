"""DLNUF_SIGNER_PLUGIN: the broker's keys from an HSM (or any holder of keys) without changing its code.

`DLNUF_SIGNER_PLUGIN=package.module:function` names a function called once per process with the broker's
configuration; it opens what holds the keys (a PKCS#11 session, say) and returns `PluggedKeys`: the response key as
a `PrivateKey` whose `private_key` is a `Signer`, and/or the log's note key as a `Signer` (Ed25519). A key it leaves
None is read from its file as usual. The keys' fingerprints are checked across nodes like a file's
(broker/storage/nodekeys.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.signing.keys import PrivateKey
from broker.signing.signer import Signer


@dataclass(frozen=True, slots=True)
class PluggedKeys:
    """What a signer plug-in (DLNUF_SIGNER_PLUGIN) gives: the response key and/or the log's note key; None leaves
    that one to its key file."""

    response: PrivateKey | None = None
    log: Signer | None = None


class PluginError(ValueError):
    """DLNUF_SIGNER_PLUGIN names nothing usable."""


def load_plugin(spec: str, config: Any) -> PluggedKeys:
    """Call `module:function` (DLNUF_SIGNER_PLUGIN) with the broker's configuration: it opens its HSM session (or
    whatever holds the keys) and returns `PluggedKeys`."""
    module_name, _, attribute = spec.partition(":")
    try:
        factory: Callable[[Any], object] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"DLNUF_SIGNER_PLUGIN={spec}: cannot load it ({exc})") from None
    keys = factory(config)
    if not isinstance(keys, PluggedKeys):
        raise PluginError(f"DLNUF_SIGNER_PLUGIN={spec} returned {type(keys).__name__}, not PluggedKeys")
    return keys
