-- API Entreprise's mandatory call context, as the consumer gave it in the exchange request: `context` (the framework
-- of the call: a public tender, a grant) and `object` (the procedure's reference). Kept beside the entry so an audit
-- can trace a call back to its procedure, as the provider does on its side; NULL when the request carried none.
-- Not part of the leaf: the leaf commits to the request signature, which covers the body holding both.
ALTER TABLE access_log ADD COLUMN call_context text;
ALTER TABLE access_log ADD COLUMN call_object text;
ALTER TABLE access_log ADD CONSTRAINT access_log_call_context_length
    CHECK (char_length(call_context) <= 100 AND char_length(call_object) <= 50);
