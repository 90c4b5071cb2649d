-- A push webhook is a hint to fetch, never a commit to build: its request names no commit and has
-- `kind` 'fetch' (the builder fetches the branch and builds the tip it finds). Build requests by
-- operators are 'build'; images announced as releases are 'release'.
ALTER TABLE build_requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'build';
UPDATE build_requests SET kind = 'release' WHERE image IS NOT NULL;
-- The webhook deliveries received (GitHub's `X-GitHub-Delivery`, Gitea's `X-Gitea-Delivery`,
-- GitLab's `X-Gitlab-Event-UUID`), remembered for a window so that a repeated one is refused.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    at BIGINT NOT NULL
);
-- The web pages' sign-in sessions: the browser holds only a random session id (in an HttpOnly
-- cookie), stored here by its SHA-256; a session reads with its token's rights and ends with the
-- token, at its expiry, or at sign-out.
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    expires BIGINT NOT NULL
);
