-- Placeholder on branch e2eefix only: version 0024 belongs to the small1 branch
-- (docs: /work/wt/notes/SESSION4.md); the loader refuses gaps below 0026.
-- Delete this file when merging that branch's real 0024 migration.
SELECT 1;
