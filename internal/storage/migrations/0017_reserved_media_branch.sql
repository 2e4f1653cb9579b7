-- Placeholder on the media branch only: versions 0013-0020 belong to other
-- branches (push, E2EE, hardening, ...). Delete this file at merge time;
-- the real 0017 migration comes from its own branch.
SELECT 1;
