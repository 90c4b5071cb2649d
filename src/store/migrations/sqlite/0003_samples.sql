-- The judge's counts at every look at a canary, for the release page's chart (canary vs stable
-- over time, with the weight): one row per objective every few seconds while a canary runs, and at
-- every transition.
CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release TEXT NOT NULL,
    objective TEXT NOT NULL,
    weight INTEGER NOT NULL,
    canary_bad INTEGER NOT NULL,
    canary_total INTEGER NOT NULL,
    stable_bad INTEGER NOT NULL,
    stable_total INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX samples_by_release ON samples (release, environment, objective, at);
-- the event stream's look for anything new of a service
CREATE INDEX samples_by_service ON samples (service, id);
