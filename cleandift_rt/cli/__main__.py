"""`python -m cleandift_rt.cli`: the console entry point."""

from . import main

main()
