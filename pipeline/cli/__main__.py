"""``python -m pipeline.cli``: the same as the ``pipeline`` console script."""

from pipeline.cli.main import main

main()
