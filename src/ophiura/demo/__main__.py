"""`python -m ophiura.demo` is `ophiura demo`."""

import sys

from ophiura.cli import main

if __name__ == "__main__":
    main(["demo", *sys.argv[1:]])
