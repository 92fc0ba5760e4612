"""The `mlscratch` command line (also `python -m mlscratch`).

This dispatcher is hand-written: it only routes a subcommand to the module that
implements it. The commands themselves are tangled from the book's chapters.
"""

import argparse
import sys

import mlscratch


def _tangle(args):
    from mlscratch import tangle

    return tangle.main(args)


def _train(args):
    from mlscratch.tune import cli  # Part IV's command, with Part V's --init_from

    return cli.main(args)


def _sample(args):
    from mlscratch.tune import cli

    return cli.sample_main(args)


def _tokenizer(args):
    from mlscratch.llm import tokenizer_cli

    return tokenizer_cli.main(args)


COMMANDS = {
    "tangle": (_tangle, "write src/ from the book's chapters (a checkout only; see --help)"),
    "tokenizer": (_tokenizer, "train a byte-level BPE tokenizer, encode or decode (see --help)"),
    "train": (_train, "train a GPT on a text file; also under torchrun (see --help)"),
    "sample": (_sample, "generate text from a trained GPT (see --help)"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="mlscratch",
        description="Machine Learning from Scratch: the tools built in the book.",
        epilog="Run `mlscratch COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"mlscratch {mlscratch.__version__}")
    parser.add_argument(
        "command",
        choices=sorted(COMMANDS),
        help="; ".join(f"{name}: {help_}" for name, (_, help_) in sorted(COMMANDS.items())),
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv[:1])
    run, _ = COMMANDS[args.command]
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
