"""The ``probekit`` command line: one subcommand module per pipeline stage.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)``, which adds its subcommand and sets
``func(args) -> int`` as the handler. Errors that are the user's to fix (``probekit.errors.UserError``, and an
``OSError`` about a named path that is missing, forbidden, full or read-only: see ``probekit.errors``) are printed
as one line ``probekit: error: ...`` with exit code 2, before any work starts; any other exception (a plain
``ValueError``, ``KeyError``, ...) is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

SUBCOMMANDS: tuple[str, ...] = ("data", "train", "probe", "eval", "plot", "demo", "patch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probekit",
        description=(
            "Train small transformers on synthetic biographies (NTP, ABI, BICO objectives), probe where they "
            "store each attribute, and test whether the knowledge can be extracted and reversed."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `probekit <command> --help` for the options of each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--threads", type=int, default=None, dest="torch_threads",
        help="CPU threads for torch (default: torch's choice; 1 is fastest for small models on a busy machine)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"probekit.cli.{name}")
        except ModuleNotFoundError as e:  # a stage not built in this checkout
            if e.name == f"probekit.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("kaleido", "choreographer", "httpx", "urllib3", "accelerate", "transformer_lens"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from probekit.errors import is_user_error, one_line
    from probekit.provenance import set_command_line

    set_command_line(["probekit", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.torch_threads is not None:
            from probekit.errors import check_threads

            check_threads(args.torch_threads)
            import torch

            torch.set_num_threads(args.torch_threads)
        return int(args.func(args) or 0)
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug (anything but a UserError or a user's path problem): keep the traceback
        print(f"probekit: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
