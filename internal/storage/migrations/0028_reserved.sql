-- Placeholder: the lead replaces it with the real migration 0028 at merge.
SELECT 1;
