"""The consumer gateway: X-Road's security server on the consumer's side, so any form service exchanges through the
broker in plain HTTP, without writing crypto.

The form service posts the broker's own JSON to the gateway; the gateway signs it with the organisation's key
(RFC 9421, a fresh nonce each time), sends it to the broker, verifies the broker's signed answer and the transparency
log's inclusion promise, records both, and passes the answer on with what verified in headers.

Invariants:

- Nothing the broker released reaches the form service unless the broker's signature, bound to the request the
  gateway signed, and the log's promise for exactly that payload verified; otherwise the form service gets the
  gateway's own problem and no data. Refusals pass through unchanged when the broker signed them.
- Every signed request is recorded before it leaves (its nonce unique per key in the record's database, so none is
  ever sent twice), and its answer before anything is passed on: the administration keeps its own evidence.
- Only the form service may call it: loopback or a Unix socket, else mutual TLS or a client secret.
- It is a client of the broker like any other: it imports nothing of the broker's service, pipeline or routes
  (checked by lint-imports).
"""
