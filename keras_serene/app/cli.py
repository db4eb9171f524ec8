"""The `keras-serene` command line: `demo`, `report`.

`keras-serene demo` is the package's main job (see `keras_serene.app.demo`);
`keras-serene report RUN.json` draws its figures (`keras_serene.app.report`).
Each subcommand is a module with `build_parser(parser)` and `main(argv)`;
`SUBCOMMANDS` is the one table of them.

Start-up: `--help` and `--version` import neither TensorFlow nor Keras (the
package's public names load on first use), so they answer at once. Before a
subcommand runs, TensorFlow's C++ and absl logs are silenced
(`TF_CPP_MIN_LOG_LEVEL=3`, absl verbosity ERROR, and the start-up lines that
TensorFlow writes before its logging is set up, such as "Could not find cuda
drivers", and LiteRT's once-per-process XNNPACK banner go to /dev/null);
`keras-serene --verbose COMMAND` shows them all.
A `TF_CPP_MIN_LOG_LEVEL` already set by the user is kept.
"""

import argparse
import contextlib
import importlib
import os
import sys

#: Subcommand -> (module, one-line help, whether it imports TensorFlow).
SUBCOMMANDS = {
    "demo": (
        "keras_serene.app.demo",
        "train, prune, slim and export LeNet on digits or Fashion-MNIST",
        True,
    ),
    "report": (
        "keras_serene.app.report",
        "write PNG figures next to a run's JSON report",
        False,
    ),
}


def build_parser():
    """The top-level parser: global flags, then `COMMAND [ARGS...]`."""
    from keras_serene import __version__

    parser = argparse.ArgumentParser(
        prog="keras-serene",
        description="Sensitivity-driven pruning for Keras 3.",
        epilog="Run `keras-serene COMMAND --help` for a command's options.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"keras-serene {__version__}",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's and absl's log lines (hidden by default)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text, _) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv=None):
    """Entry point of the `keras-serene` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        parser.print_help()
        return 0
    module_name, _, needs_tensorflow = SUBCOMMANDS[args.command]
    if needs_tensorflow and not args.verbose:
        quiet_tensorflow()
    module = importlib.import_module(module_name)
    return module.main(rest)


def quiet_tensorflow():
    """Silences TensorFlow/absl logs of this process; imports TensorFlow.

    Must run before TensorFlow is imported to take full effect (the CLI
    calls it first thing). Python exceptions are not affected: only the C++
    log lines written to file descriptor 2 during the import are dropped.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        pass
    with _stderr_to_devnull():
        import tensorflow as tf

        _spend_litert_banner()
    tf.get_logger().setLevel("ERROR")


def _spend_litert_banner():
    """Lets LiteRT print its once-per-process banner where nobody sees it.

    LiteRT writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    to stderr the first time an interpreter allocates its tensors, whatever
    the log level. Allocating a two-input ADD model, built here with
    LiteRT's flatbuffer schema, while stderr points at /dev/null spends it.
    Anything going wrong here is ignored: the banner then simply shows.
    """
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter

        tensors = []
        for name in (b"a", b"b", b"sum"):
            tensor = schema.TensorT()
            tensor.shape, tensor.type = [1, 4], schema.TensorType.FLOAT32
            tensor.buffer, tensor.name = 0, name
            tensors.append(tensor)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
        op.builtinOptionsType = schema.BuiltinOptions.AddOptions
        op.builtinOptions = schema.AddOptionsT()
        code = schema.OperatorCodeT()
        code.builtinCode = schema.BuiltinOperator.ADD
        code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
        code.version = 1
        graph = schema.SubGraphT()
        graph.tensors, graph.operators = tensors, [op]
        graph.inputs, graph.outputs = [0, 1], [2]
        model = schema.ModelT()
        model.version, model.subgraphs = 3, [graph]
        model.buffers, model.operatorCodes = [schema.BufferT()], [code]
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        Interpreter(model_content=bytes(builder.Output())).allocate_tensors()
    except Exception:  # noqa: BLE001 - a cosmetic step must never fail
        pass


@contextlib.contextmanager
def _stderr_to_devnull():
    """Points file descriptor 2 at /dev/null for the block (C++ writes too)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no usable fd 2
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
