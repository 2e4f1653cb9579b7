-- Placeholder on branch e2eefix only: version 0023 belongs to the pushperf branch
-- (docs: /work/wt/notes/SESSION4.md); the loader refuses gaps below 0026.
-- Delete this file when merging that branch's real 0023 migration.
SELECT 1;
