"""The ``probekit`` command line: one subcommand module per pipeline stage.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)``, which adds its subcommand and sets
``func(args) -> int`` as the handler. Errors that are the user's to fix (``ValueError``, ``FileNotFoundError``,
``FileExistsError``) are printed as one line ``probekit: error: ...`` with exit code 2, before any work starts.
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
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            print("probekit: error: --threads must be at least 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"probekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
