"""The `keras-serene` command line: `demo`, `report`.

`keras-serene demo` is the package's main job (see `keras_serene.app.demo`);
`keras-serene report RUN.json` draws a run's figures (`keras_serene.app.report`).
Each subcommand is a module with `build_parser(parser)` and `main(argv)`;
`SUBCOMMANDS` is the one table of them.
"""

import argparse
import importlib
import os
import sys

#: Subcommand -> (module, one-line help).
SUBCOMMANDS = {
    "demo": (
        "keras_serene.app.demo",
        "train, prune, slim and export LeNet on digits or Fashion-MNIST",
    ),
    "report": (
        "keras_serene.app.report",
        "write PNG figures next to a run's JSON report",
    ),
}


def main(argv=None):
    """Entry point of the `keras-serene` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="keras-serene",
        description="Sensitivity-driven pruning for Keras 3.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.print_help() if not argv else parser.parse_args(argv)
        return 0 if not argv else 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # The CLI's own process.
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
