-- Two things about the consent flow's requests (issue 10).
--
-- 1. Several authorization_details in one request (RFC 9396 §2): the citizen's one decision gives one consent per
--    object, and the code and refresh token stand for all of them. consent_id stays (the first, and its foreign
--    key); consent_ids lists them all, first included.
ALTER TABLE authorization_codes ADD COLUMN consent_ids uuid[];
UPDATE authorization_codes SET consent_ids = ARRAY[consent_id];
ALTER TABLE authorization_codes ALTER COLUMN consent_ids SET NOT NULL;
ALTER TABLE authorization_codes ADD CHECK (consent_ids[1] = consent_id);

ALTER TABLE refresh_tokens ADD COLUMN consent_ids uuid[];
UPDATE refresh_tokens SET consent_ids = ARRAY[consent_id];
ALTER TABLE refresh_tokens ALTER COLUMN consent_ids SET NOT NULL;
ALTER TABLE refresh_tokens ADD CHECK (consent_ids[1] = consent_id);

-- 2. A pending request is bound to the browser that opened it: the SHA-256 of a random value the broker set in a
--    cookie of that browser at /oauth/authorize, and the citizen session that first opened its consent screen.
--    Another browser, or another session, gets a page and never a code. NULL only for requests made before this
--    migration, which such a request can no longer be decided on.
ALTER TABLE authorization_requests ADD COLUMN browser_sha256 text;
ALTER TABLE authorization_requests ADD COLUMN session_id text;
