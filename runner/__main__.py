"""`python -m runner [overrides...]`: hands the command line to runner.cli.main."""
import sys

from runner.cli import main

if __name__ == "__main__":
    sys.exit(main())
