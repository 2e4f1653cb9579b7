-- Placeholder on branch searchbench only: version 0026 belongs to the e2eefix branch
-- (docs: /work/wt/notes/SESSION4.md); the loader refuses gaps below 0028.
-- Delete this file when merging that branch's real 0026 migration.
SELECT 1;
