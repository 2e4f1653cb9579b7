-- Placeholder: the lead replaces it with the real migration 0027 at merge.
SELECT 1;
