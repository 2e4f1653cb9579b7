-- Counters of the table-backed streams beyond events (typing lives in
-- memory and has none).
INSERT INTO stream_sequences (name, last_value) VALUES
    ('presence', 0), ('receipts', 0), ('account_data', 0), ('push_rules', 0),
    ('to_device', 0), ('device_lists', 0), ('caches', 0);
