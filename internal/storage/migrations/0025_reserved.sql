-- Placeholder: the lead replaces it with the real migration 0025 at merge.
SELECT 1;
