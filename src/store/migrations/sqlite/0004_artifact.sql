-- Where a release's artifact can be pulled from with standard tools (a registry reference pinned
-- by digest); none: only in autopilot's own OCI layout. A build whose artifact is being pushed
-- has status `pushing` (not deployable yet).
ALTER TABLE builds ADD COLUMN artifact TEXT;
