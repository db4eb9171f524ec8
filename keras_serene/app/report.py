"""`keras-serene report`: PNG figures next to a run's JSON report.

`write_report(report, out_dir)` reads a JSON report (a path or the dict
itself) and writes one PNG per section it finds, with `keras_serene.app.plots`
(matplotlib: `pip install keras-serene[plots]`). `main(argv)` is the command
line (`argv` = the arguments after `keras-serene report`).

The JSON schema read (every key optional; unknown keys are ignored):

```
{
  "name": "lenet5-lobster",              # figure titles (default: file stem)
  "history": {                           # per-epoch lists (History.history)
    "accuracy": [...], "val_accuracy": [...], "loss": [...],
    "sparsity": [...], "pruning_threshold": [...], "alive_neurons": [...],
    "frozen_fraction": [...], "psp_entropy/<layer>": [...], ...
  },
  "baseline_history": {...},             # the dense run's History.history
  "runs": [                              # one entry per compared run
    {"name": "dense", "accuracy": 0.92, "params": 50610, "nonzero": 50604},
    {"name": "pruned", "accuracy": 0.91, "params": 50610, "nonzero": 4800},
    {"name": "LOBSTER", "accuracy": 0.91, "compression": 12.5},
    ...
  ],
  "reference_params": 50610,             # dense params (default: the run
                                         #   named "dense", else the largest)
  "latency": {"dense": {"ratio": 1.0, "ratio_min": 1.0, ...}, ...},
                                         # ks.export.latency_ratios(...)
  "psp_entropy": {"<layer>": [H_i, ...]}            # or {"<layer>":
                                                    #   {"entropy": [...]}},
                 or {"<run>": {"<layer>": [...]}}   # runs overlaid
}
```

Compression has one basis, `dense params / nonzero params` of each network
as deployed (`keras_serene.app.tradeoff`): a run with `nonzero` gets
`reference_params / nonzero`, whatever `compression` it carries (a network's
own total would put a slimmed network left of its pruned parent although
they are the same function). `baseline_history` is drawn dashed beside
`history`; `latency` (the dict `ks.export.latency_ratios` returns) is
printed by `main` as ratios to the dense model with their min-max spread
(`format_latency_table`), never as single timings.

Tolerance: a `history` entry that is not a list of numbers (`null` allowed
as a gap) is skipped; a run without `accuracy` is skipped; a run without
`nonzero` or `compression` gets `1 / (1 - sparsity)` when it has `sparsity`
< 1, and is skipped otherwise. Skipped items are returned by `read_report`
as notes and printed by `main`. A report with none of the three sections
is an error.

Files written, for a report `<stem>.json` (`report` for a dict):
`<stem>_history.png`, `<stem>_accuracy_vs_compression.png`,
`<stem>_psp_entropy.png`, each only when its section has data.

References:
    - LOBSTER compression ratio: Tartaglione et al., Neural Networks 2022,
      arXiv:2011.09905 (compression ratio).
    - PSP-entropy: Tartaglione, Bragagnolo, Grangetto, ICANN 2020,
      arXiv:2004.14765 (H_i = sum_k H_ik).
"""

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping

from keras_serene.app import plots
from keras_serene.app import tradeoff

SECTIONS = ("history", "runs", "psp_entropy")


def read_report(report):
    """Loads a report and returns `(sections, title, notes)`.

    `sections` maps each of `"history"`, `"runs"`, `"psp_entropy"` (and
    `"baseline_history"`) that has usable data to that data (runs cleaned
    up as the module docstring says);
    `title` is the report's `"name"` (else the file stem, else `"report"`);
    `notes` lists what was skipped and why.

    Args:
        report: A path to a JSON report, or the report dict.
    """
    name = "report"
    if isinstance(report, (str, os.PathLike)):
        path = os.fspath(report)
        with open(path, encoding="utf-8") as f:
            try:
                report = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"write_report: {path!r} is not valid JSON: {e}"
                ) from e
        name = os.path.splitext(os.path.basename(path))[0]
    if not isinstance(report, Mapping):
        raise TypeError(
            "write_report: the report must be a JSON object (dict) or a path "
            f"to one. Received: {type(report).__name__}"
        )
    title = str(report.get("name", name))
    notes, sections = [], {}
    history = report.get("history")
    if isinstance(history, Mapping):
        series = plots.history_series(history)
        skipped = sorted(str(k) for k in history if str(k) not in series)
        if skipped:
            notes.append(f"history: skipped non-numeric keys {skipped}")
        if series:
            sections["history"] = series
    elif history is not None:
        notes.append("history: not a dict of per-epoch lists, skipped")
    baseline = report.get("baseline_history")
    if isinstance(baseline, Mapping) and plots.history_series(baseline):
        sections["baseline_history"] = plots.history_series(baseline)
    elif baseline is not None:
        notes.append("baseline_history: no per-epoch series, skipped")
    runs = _clean_runs(
        report.get("runs"), notes, report.get("reference_params")
    )
    if runs:
        sections["runs"] = runs
    psp = report.get("psp_entropy")
    if isinstance(psp, Mapping) and psp:
        sections["psp_entropy"] = psp
    elif psp is not None:
        notes.append("psp_entropy: not a non-empty dict, skipped")
    return sections, title, notes


def write_report(report, out_dir=None):
    """Writes the report's figures as PNGs and returns their paths.

    Example:

    ```python
    from keras_serene.app.report import write_report

    paths = write_report("runs/lenet5.json")
    # ['runs/lenet5_history.png', 'runs/lenet5_accuracy_vs_compression.png']
    ```

    Args:
        report: String path of a JSON report, or the report dict (schema in
            the module docstring).
        out_dir: String or `None`. Folder for the PNGs (created if needed);
            `None` means the JSON file's folder (required for a dict).
            Defaults to `None`.

    Returns:
        List of the PNG paths written, in the order history,
        accuracy_vs_compression, psp_entropy.
    """
    if out_dir is None:
        if not isinstance(report, (str, os.PathLike)):
            raise ValueError(
                "write_report: `out_dir` is required when the report is a "
                "dict. Received: out_dir=None"
            )
        out_dir = os.path.dirname(os.path.abspath(os.fspath(report)))
    sections, title, _ = read_report(report)
    stem = (
        os.path.splitext(os.path.basename(os.fspath(report)))[0]
        if isinstance(report, (str, os.PathLike))
        else "report"
    )
    if not set(sections) & set(SECTIONS):
        raise ValueError(
            "write_report: the report has none of the sections "
            f"{list(SECTIONS)} with usable data."
        )
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    if "history" in sections:
        path = os.path.join(out_dir, f"{stem}_history.png")
        plots.plot_history(
            sections["history"],
            path=path,
            title=title,
            baseline=sections.get("baseline_history"),
        )
        paths.append(path)
    if "runs" in sections:
        path = os.path.join(out_dir, f"{stem}_accuracy_vs_compression.png")
        plots.plot_accuracy_vs_compression(
            sections["runs"], path=path, title=title
        )
        paths.append(path)
    if "psp_entropy" in sections:
        path = os.path.join(out_dir, f"{stem}_psp_entropy.png")
        plots.plot_psp_entropy(sections["psp_entropy"], path=path, title=title)
        paths.append(path)
    return paths


def build_parser(parser=None):
    """Adds the `report` arguments to `parser` (a new one if `None`)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="keras-serene report",
            description="Write PNG figures next to a run's JSON report.",
        )
    parser.add_argument("report", help="path of the run's JSON report")
    parser.add_argument(
        "--out-dir",
        default=None,
        help="folder for the PNGs (default: the report's folder)",
    )
    return parser


def main(argv=None):
    """`keras-serene report REPORT.json [--out-dir DIR]`; returns exit code."""
    args = build_parser().parse_args(argv)
    try:
        _, _, notes = read_report(args.report)
        paths = write_report(args.report, args.out_dir)
    except (OSError, ValueError, TypeError, ImportError) as e:
        print(f"keras-serene report: error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    latency = _latency_section(args.report)
    if latency:
        print(format_latency_table(latency))
    for path in paths:
        print(path)
    return 0


def format_latency_table(latency):
    """The latency table: ratio to the reference with min-max, then ms.

    Args:
        latency: The dict `ks.export.latency_ratios` returns (name -> dict
            with `ratio`, `ratio_min`, `ratio_max`, `latency_ms`,
            `latency_ms_min`, `latency_ms_max`, `repeats`, `reference`).
    """
    first = next(iter(latency.values()))
    header = (
        f"{'model':<10}{'latency / ' + first['reference']:>18}"
        f"{'min-max':>14}{'median ms':>12}{'min-max ms':>20}"
    )
    lines = [header, "-" * len(header)]
    for name, r in latency.items():
        spread = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
        ms = f"{r['latency_ms_min']:.4f}-{r['latency_ms_max']:.4f}"
        lines.append(
            f"{name:<10}{r['ratio']:>18.2f}{spread:>14}"
            f"{r['latency_ms']:>12.4f}{ms:>20}"
        )
    lines.append(
        f"single-thread LiteRT, batch of one; {first['repeats']} interleaved "
        "repeats; compare the ratios, absolute times vary by machine and load"
    )
    return "\n".join(lines)


def _latency_section(path):
    with open(path, encoding="utf-8") as f:
        latency = json.load(f).get("latency")
    keys = ("ratio", "ratio_min", "ratio_max", "latency_ms", "reference")
    if (
        isinstance(latency, Mapping)
        and latency
        and all(
            isinstance(r, Mapping) and all(k in r for k in keys)
            for r in latency.values()
        )
    ):
        return latency
    return None


def _clean_runs(runs, notes, reference_params=None):
    if runs is None:
        return []
    if not isinstance(runs, (list, tuple)):
        notes.append("runs: not a list, skipped")
        return []
    counted = [
        r
        for r in runs
        if isinstance(r, Mapping) and _is_number(r.get("nonzero"))
    ]
    if counted:
        if reference_params is None and not any(
            _is_number(r.get("params")) for r in counted
        ):
            reference_params = max(r["nonzero"] for r in counted)
        ratios = tradeoff.compression_ratios(counted, reference_params)
        basis = {id(r): c for r, c in zip(counted, ratios, strict=True)}
    else:
        basis = {}
    clean = []
    for i, run in enumerate(runs):
        label = run.get("name", f"run {i}") if isinstance(run, Mapping) else i
        if not isinstance(run, Mapping) or "accuracy" not in run:
            notes.append(f"runs: {label!r} has no 'accuracy', skipped")
            continue
        compression = basis.get(id(run), run.get("compression"))
        if compression is None and _is_number(run.get("sparsity")):
            if run["sparsity"] < 1:
                compression = 1.0 / (1.0 - run["sparsity"])
        if not _is_number(compression) or not _is_number(run["accuracy"]):
            notes.append(
                f"runs: {label!r} needs numeric 'accuracy' and 'nonzero' "
                "(or 'compression', or 'sparsity' < 1), skipped"
            )
            continue
        if basis and id(run) not in basis:
            notes.append(
                f"runs: {label!r} has no 'nonzero'; its compression is "
                "taken as given, maybe on another basis"
            )
        clean.append(
            {
                "name": str(label),
                "accuracy": float(run["accuracy"]),
                "compression": float(compression),
            }
        )
    return clean


def _is_number(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


if __name__ == "__main__":
    sys.exit(main())
