"""``python -m consumer.emulator``: the emulator without the ``knock-sink`` wrapper."""

from __future__ import annotations

import argparse
import sys

from .cli import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m consumer.emulator", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
