"""`python -m training` = `python -m training.distill`."""

from .distill import main

main()
