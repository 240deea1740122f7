"""The transparency log over the access log: RFC 9162 Merkle tree (`merkle`), RFC 8785 canonical JSON (`jcs`), C2SP
signed-note checkpoints (`checkpoint`), sequencing, promises and the journal (`log`), access-log entries
(`accesslog`), the notification outbox (`outbox`), what a verifier runs (`verify`) and the HTTP routes (`routes`).

The primitives (merkle, jcs, checkpoint, log, verify) know nothing of the HTTP service; only `routes` does.
"""
