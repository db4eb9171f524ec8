"""Renders `results_budgeted.json` into `docs/results.md`'s budgeted section."""

import json


def write(path, out):
    with open(path) as f:
        saved = json.load(f)
    return f"{len(saved['runs'])} runs in {path}"
