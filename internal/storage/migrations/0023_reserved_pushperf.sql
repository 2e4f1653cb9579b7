-- Placeholder on branch small1 only: 0023 belongs to the pushperf branch,
-- and the loader refuses gaps. Delete this file when merging (pushperf's
-- 0023 replaces it).
SELECT 1;
