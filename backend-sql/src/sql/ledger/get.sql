-- One record: $1 key.
SELECT {columns} FROM {runs} WHERE key = $1
