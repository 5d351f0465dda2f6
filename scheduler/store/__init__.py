"""The store: tables, migrations, bulk writes, reads for people, and the one writer of a
message's states."""
