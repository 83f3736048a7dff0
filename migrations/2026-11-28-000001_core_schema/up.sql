-- Pulse core schema: the four entities of the product contract (users,
-- events, pageviews, purchases), one lookup table (event_types) and the views
-- that analysts and the code read.
--
-- Designed for ingest speed on a narrow fact table:
--   * events.event_id (the client's UUID) is the only random-order index; it
--     is the idempotency key, so it must be unique on its own.
--   * time is indexed by BRIN (events arrive nearly in time order), not btree;
--     event_type is served by the rollups, not by an index on raw events.
--   * user and event type are small integer surrogates, so a fact row carries
--     no repeated strings.

CREATE TABLE users (
    user_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL,
    username text,
    email text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_external_id_key UNIQUE (external_id),
    CONSTRAINT users_external_id_length CHECK (octet_length(external_id) BETWEEN 1 AND 256)
);
COMMENT ON TABLE users IS 'Users seen in events or registered by UpsertUsers. Rows are never deleted, so events keep their user.';
COMMENT ON COLUMN users.user_id IS 'Internal surrogate key (the entity''s user_id): fact tables store this 8-byte integer, not the client''s string.';
COMMENT ON COLUMN users.external_id IS 'The client''s user id as sent in Event.user_id and User.user_id (the API''s user_id).';
COMMENT ON COLUMN users.username IS 'Filled in by UpsertUsers; NULL until then.';
COMMENT ON COLUMN users.email IS 'Filled in by UpsertUsers; NULL until then.';
COMMENT ON COLUMN users.created_at IS 'When Pulse first saw the user.';

CREATE TABLE event_types (
    event_type_id smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    CONSTRAINT event_types_name_key UNIQUE (name)
);
COMMENT ON TABLE event_types IS 'Lookup of event type names, registered on first sight, so events store a 2-byte id.';
COMMENT ON COLUMN event_types.event_type_id IS 'Surrogate key stored in events.event_type_id.';
COMMENT ON COLUMN event_types.name IS 'The event type as sent by clients: click, purchase, sign_up, pageview, ...';
INSERT INTO event_types (name) VALUES ('pageview'), ('click'), ('purchase'), ('sign_up');

CREATE TABLE events (
    event_id uuid PRIMARY KEY,
    "timestamp" timestamptz NOT NULL,
    user_id bigint REFERENCES users (user_id),
    event_type_id smallint NOT NULL REFERENCES event_types (event_type_id),
    data jsonb
);
COMMENT ON TABLE events IS 'One row per accepted event: the raw fact table. Rollups outlive it (retention deletes old rows).';
COMMENT ON COLUMN events.event_id IS 'The client-chosen UUID; primary key and idempotency key (a resent id is a duplicate).';
COMMENT ON COLUMN events."timestamp" IS 'When the event happened (UTC), after client clock-skew correction.';
COMMENT ON COLUMN events.user_id IS 'The user (users.user_id); NULL for an anonymous event.';
COMMENT ON COLUMN events.event_type_id IS 'The event type (event_types.event_type_id).';
COMMENT ON COLUMN events.data IS 'Free-form properties sent by the client (Event.data); NULL when none were sent.';
CREATE INDEX events_timestamp_brin ON events USING brin ("timestamp") WITH (pages_per_range = 32);
COMMENT ON INDEX events_timestamp_brin IS 'Time-range scans of raw events (retention, ad-hoc SQL); BRIN because rows arrive nearly in time order.';
CREATE INDEX events_user_id_timestamp ON events (user_id, "timestamp") WHERE user_id IS NOT NULL;
COMMENT ON INDEX events_user_id_timestamp IS 'Per-user queries (GetMetrics with filter.user_id), which rollups do not serve.';

CREATE TABLE pageviews (
    pageview_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    user_id bigint REFERENCES users (user_id),
    page_url text NOT NULL,
    CONSTRAINT pageviews_event_id_key UNIQUE (event_id)
);
COMMENT ON TABLE pageviews IS 'The detail of each pageview event (exactly one row per event of type pageview).';
COMMENT ON COLUMN pageviews.pageview_id IS 'Surrogate key, increasing in insertion order.';
COMMENT ON COLUMN pageviews.event_id IS 'The pageview event; deleting the event deletes this row.';
COMMENT ON COLUMN pageviews.user_id IS 'The viewing user, as in events.user_id (required by the data model); NULL when anonymous.';
COMMENT ON COLUMN pageviews.page_url IS 'The page viewed, as sent by the client.';

CREATE TABLE purchases (
    purchase_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    user_id bigint REFERENCES users (user_id),
    product_id text NOT NULL,
    quantity integer NOT NULL,
    amount numeric(18, 4) NOT NULL,
    CONSTRAINT purchases_event_id_key UNIQUE (event_id),
    CONSTRAINT purchases_quantity_positive CHECK (quantity > 0),
    CONSTRAINT purchases_amount_not_negative CHECK (amount >= 0)
);
COMMENT ON TABLE purchases IS 'The detail of each purchase event (exactly one row per event of type purchase).';
COMMENT ON COLUMN purchases.purchase_id IS 'Surrogate key, increasing in insertion order.';
COMMENT ON COLUMN purchases.event_id IS 'The purchase event; deleting the event deletes this row.';
COMMENT ON COLUMN purchases.user_id IS 'The buying user, as in events.user_id (required by the data model); NULL when anonymous.';
COMMENT ON COLUMN purchases.product_id IS 'The client''s product id.';
COMMENT ON COLUMN purchases.quantity IS 'Units bought, at least 1.';
COMMENT ON COLUMN purchases.amount IS 'Money paid, exact decimal with at most 4 fractional digits; never floating point.';

CREATE VIEW event_details AS
SELECT e.event_id, e."timestamp", t.name AS event_type, u.external_id AS user_id, e.data
FROM events e
JOIN event_types t USING (event_type_id)
LEFT JOIN users u USING (user_id);
COMMENT ON VIEW event_details IS 'Events with their type name and the client''s user id, for analysts in psql.';

CREATE VIEW pageview_details AS
SELECT p.pageview_id, p.event_id, e."timestamp", u.external_id AS user_id, u.username, p.page_url, e.data
FROM pageviews p
JOIN events e USING (event_id)
LEFT JOIN users u ON u.user_id = p.user_id;
COMMENT ON VIEW pageview_details IS 'Pageviews joined with their event and user.';

CREATE VIEW purchase_details AS
SELECT p.purchase_id, p.event_id, e."timestamp", u.external_id AS user_id, u.username, u.email,
       p.product_id, p.quantity, p.amount, e.data
FROM purchases p
JOIN events e USING (event_id)
LEFT JOIN users u ON u.user_id = p.user_id;
COMMENT ON VIEW purchase_details IS 'Purchases joined with their event and user.';
