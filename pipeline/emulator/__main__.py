"""``python -m pipeline.emulator``: the emulator command without the rest of the CLI."""

import logging

from pipeline.emulator.command import emulator

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
emulator(prog_name="python -m pipeline.emulator")
