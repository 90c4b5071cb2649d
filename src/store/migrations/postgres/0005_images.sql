-- Releases built elsewhere: a request may announce an image (a registry reference pinned by
-- digest) instead of asking for a build; its `commit_sha` is then the commit the image was built
-- from, or empty. The size of each release's artifact, in bytes, once it is in the layout. The
-- pushed commits a build made moot (skipped by coalescing), space-separated.
ALTER TABLE build_requests ADD COLUMN image TEXT;
ALTER TABLE builds ADD COLUMN size BIGINT;
ALTER TABLE builds ADD COLUMN skipped TEXT;
