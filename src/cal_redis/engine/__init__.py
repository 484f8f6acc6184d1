"""The engines behind the API: single-flight, cache-first entities and string-key
values, account records, and the one write path."""
