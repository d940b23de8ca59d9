"""What every command line parser of the experiments shares."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help (unless None: the help says what then happens), and the
    description and epilog as written (their line breaks)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` that refuses abbreviated flags (``--seed`` is not ``--seeds``)."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=HelpFormatter, allow_abbrev=False)
