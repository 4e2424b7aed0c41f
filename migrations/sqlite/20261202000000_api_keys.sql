-- API keys: only a SHA-256 of each key is kept. Scopes are space-separated scope names.
CREATE TABLE api_keys (
    name         TEXT   NOT NULL PRIMARY KEY,
    key_hash     TEXT   NOT NULL UNIQUE,       -- hex SHA-256 of the key
    scopes       TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,              -- micros since the epoch
    last_used_at BIGINT                        -- micros; recorded at most once a minute per key
);
