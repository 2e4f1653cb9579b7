-- Placeholder: the lead replaces it with the real migration 0026 at merge.
SELECT 1;
