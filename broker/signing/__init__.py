"""Request signing: HTTP Message Signatures (RFC 9421) and Content-Digest (RFC 9530) in `messages`, structured field
values (RFC 8941) in `structured_fields`, keys (JWK, Ed25519 and P-256) in `keys`.

Invariant: only `messages.verify_request` makes a `VerifiedRequest`, so nothing downstream can hold an unverified one.
A domain package: it never imports the HTTP service.
"""
