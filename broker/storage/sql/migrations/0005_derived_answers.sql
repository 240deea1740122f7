-- Derived answers a habilitation grants instead of raw values (see broker/registry/derived.py).
ALTER TABLE habilitations ADD COLUMN derived jsonb NOT NULL DEFAULT '[]';
-- A habilitation may grant only derived answers, hence no raw field.
ALTER TABLE habilitations DROP CONSTRAINT habilitations_fields_check;
ALTER TABLE habilitations ADD CONSTRAINT habilitations_grants_something
    CHECK (cardinality(fields) > 0 OR jsonb_array_length(derived) > 0);
