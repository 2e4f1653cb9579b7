-- Placeholder on the userdir branch only: versions 0015-0029 belong to other
-- branches. Delete this file at merge time (the user directory and search
-- migrations are 0030 and 0031).
SELECT 1;
