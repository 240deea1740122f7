-- E-mail notifications of citizens (docs/notifications.md): their choice, and the mails due to them.

-- At most one subscription per citizen (subject key). The address is personal data: sealed with the identity key
-- (AES-256-GCM, bound to the row's id), never stored in clear. `confirmed_at` is NULL until the link of the
-- confirmation mail is followed, before `confirm_before`. `digest_from` starts the next weekly digest's period.
CREATE TABLE mail_subscriptions (
    id              uuid PRIMARY KEY,
    subject_key     text NOT NULL UNIQUE,
    address_sealed  bytea NOT NULL,
    mode            text NOT NULL CHECK (mode IN ('each', 'weekly')),
    created_at      timestamptz NOT NULL,
    confirmed_at    timestamptz,
    confirm_before  timestamptz,
    digest_from     timestamptz NOT NULL,
    CHECK (confirmed_at IS NOT NULL OR confirm_before IS NOT NULL)
);

-- Mails to send, leased and retried as the webhook's notification outbox is: one access, one weekly digest, or one
-- address confirmation. They go with their subscription: an unsubscribed citizen gets nothing more.
CREATE TABLE mail_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id uuid NOT NULL REFERENCES mail_subscriptions (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('access', 'digest', 'confirmation')),
    entry_id        uuid,
    period_start    timestamptz,
    period_end      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    last_error      text,
    CHECK ((kind = 'access') = (entry_id IS NOT NULL)),
    CHECK ((kind = 'digest') = (period_start IS NOT NULL AND period_end IS NOT NULL)),
    UNIQUE (subscription_id, entry_id)
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- Every row of the notification outbox (one per released entry, committed with it) is fanned out to the e-mail
-- subscribers exactly once. Rows that exist now are history: marked done, nobody is mailed about them.
ALTER TABLE notification_outbox ADD COLUMN mail_fanned_out_at timestamptz DEFAULT now();
ALTER TABLE notification_outbox ALTER COLUMN mail_fanned_out_at DROP DEFAULT;
CREATE INDEX notification_outbox_mail_pending ON notification_outbox (id) WHERE mail_fanned_out_at IS NULL;
