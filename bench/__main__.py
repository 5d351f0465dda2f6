"""``python -m bench``: run the benchmark and write its results under ``bench/results``."""

from bench.run import main

main()
