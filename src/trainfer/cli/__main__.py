"""`python -m trainfer.cli`, as the console script."""

from trainfer.cli import main

main()
