-- Placeholder on branch e2eefix only: version 0025 belongs to the small2 branch
-- (docs: /work/wt/notes/SESSION4.md); the loader refuses gaps below 0026.
-- Delete this file when merging that branch's real 0025 migration.
SELECT 1;
