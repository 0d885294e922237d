"""Argument types and the parser class of ``launch.py``: a bad flag is one line, never a usage dump."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


class OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")
