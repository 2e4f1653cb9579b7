-- Placeholder on branch searchbench only: version 0027 belongs to the fedkeys branch
-- (docs: /work/wt/notes/SESSION4.md); the loader refuses gaps below 0028.
-- Delete this file when merging that branch's real 0027 migration.
SELECT 1;
