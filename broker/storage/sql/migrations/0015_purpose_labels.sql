-- The registry's purposes with the label citizens read in place of the id, on the consent screen, in their journal
-- and in their e-mails (`[[purposes]]` in the registry file).
CREATE TABLE purposes (
    id      text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    label   text NOT NULL CHECK (label <> '')
);
