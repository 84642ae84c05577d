"""The ``vfm`` command line.

Each sub-module registers its sub-commands with ``register(subparsers)``; a command function
takes the parsed ``argparse.Namespace`` and returns an exit code. A ``VfmError`` ends the
command with a one-line ``error: ...`` on stderr and exit code 2; nothing half-written is left
behind by the commands themselves.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vfm_flower.errors import VfmError


def build_parser() -> argparse.ArgumentParser:
    from vfm_flower.cli import app, clean_room, governance, local

    parser = argparse.ArgumentParser(
        prog="vfm",
        description="Vertical federated learning for marketing collaborations, on Flower.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    local.register(subparsers)
    governance.register(subparsers)
    app.register(subparsers)
    clean_room.register_budget(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # A party's refusal reaches the user as the job's one-line error below; its own log
        # line (useful on a SuperNode) would only repeat it here.
        logging.getLogger("vfm_flower.clients").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except VfmError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
