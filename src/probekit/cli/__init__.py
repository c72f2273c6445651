"""The ``probekit`` command line: one subcommand module per pipeline stage.

Each module in ``SUBCOMMANDS`` exposes ``COMMANDS`` (its subcommands' one-line summaries) and
``register(subparsers)``, which adds its subcommands and sets ``func(args) -> int`` as the handler. Only the
subcommand being run is registered in full (``build_parser(only=...)``), so ``probekit --help`` and each command
import only what they need. Flags that set config fields are generated from the config dataclasses and their
field docs (``probekit.cli.flags``). Errors that are the user's to fix (``probekit.errors.UserError``, and an
``OSError`` about a named path that is missing, forbidden, full or read-only: see ``probekit.errors``) are printed
as one line ``probekit: error: ...`` with exit code 2, before any work starts; any other exception (a plain
``ValueError``, ``KeyError``, ...) is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Collection, Sequence

SUBCOMMANDS: tuple[str, ...] = ("data", "train", "probe", "eval", "plot", "demo", "patch")


def build_parser(only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``probekit`` parser. With ``only``, just those subcommands get their options (the others are listed
    by name and help), so a command imports only what it needs; ``None`` builds every subcommand."""
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
        commands: dict[str, str] = module.COMMANDS
        if only is None or any(c in only for c in commands):
            module.register(sub)
        else:
            for command, summary in commands.items():
                sub.add_parser(command, help=summary, add_help=False)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word after the global options), if any."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--threads":
            i += 2
            continue
        if not word.startswith("-"):
            return word
        i += 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command(words)
    parser = build_parser(only=[command] if command else [])
    args = parser.parse_args(words)
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
        print(f"probekit: error: {one_line(e, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
