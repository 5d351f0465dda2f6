"""``python -m scheduler.cli``."""

from scheduler.cli import main

main()
