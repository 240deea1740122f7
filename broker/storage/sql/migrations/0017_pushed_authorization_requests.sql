-- RFC 9126 pushed authorization requests of the consent flow: a client POSTs the parameters of an authorization
-- request, authenticated with private_key_jwt, and gets a request_uri to send the citizen's browser with. Only the
-- request_uri's SHA-256 is kept; it is single use (used_at) and short-lived (expires_at), checked in one UPDATE.
CREATE TABLE pushed_authorization_requests (
    request_uri_sha256  text PRIMARY KEY,
    client_id           text NOT NULL,
    parameters          jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    used_at             timestamptz
);
CREATE INDEX pushed_authorization_requests_expiry ON pushed_authorization_requests (expires_at);
