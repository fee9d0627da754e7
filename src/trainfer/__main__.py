"""`python -m trainfer`, as the console script (the same as `python -m trainfer.cli`)."""

from trainfer.cli import main

main()
