-- API keys (SPEC §6, ARCHITECTURE.md "Security"). Only a SHA-256 hash of
-- each key is stored; the key itself is printed once by `pulse keys create`.
-- Every serving instance keeps the non-revoked keys in memory and reloads
-- them every second, so a revocation takes effect within seconds.

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    scope text NOT NULL,
    key_hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    CONSTRAINT api_keys_name_length CHECK (octet_length(name) BETWEEN 1 AND 200),
    CONSTRAINT api_keys_scope CHECK (scope IN ('ingest', 'query', 'admin')),
    CONSTRAINT api_keys_hash_length CHECK (octet_length(key_hash) = 32),
    CONSTRAINT api_keys_key_hash_unique UNIQUE (key_hash)
);
COMMENT ON TABLE api_keys IS 'API keys clients send as `authorization: Bearer <key>`; managed with `pulse keys create|list|revoke`.';
COMMENT ON COLUMN api_keys.id IS 'The key id shown by `pulse keys list` and taken by `pulse keys revoke` (UUIDv7, so ids sort by creation); not secret.';
COMMENT ON COLUMN api_keys.name IS 'A name for people (who or what holds the key).';
COMMENT ON COLUMN api_keys.scope IS 'What the key may call: ingest (IngestService), query (QueryService and the dashboard API) or admin (everything).';
COMMENT ON COLUMN api_keys.key_hash IS 'SHA-256 of the whole key string; the key itself is never stored.';
COMMENT ON COLUMN api_keys.created_at IS 'When the key was created.';
COMMENT ON COLUMN api_keys.last_used_at IS 'When a server last accepted the key, updated at most once a minute per key and instance; NULL if never used.';
COMMENT ON COLUMN api_keys.revoked_at IS 'When the key was revoked; a revoked key is refused by every instance within seconds. NULL while the key is valid.';
COMMENT ON CONSTRAINT api_keys_key_hash_unique ON api_keys IS 'One row per key; also the index servers would look a hash up by.';
