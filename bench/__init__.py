"""healthgate's benchmark: ``python -m bench --size smoke|full`` (or ``make bench``)."""
