"""Budgeted pruning against tfmot: the section `reproduce.py --budgeted` runs.

Full Fashion-MNIST (60,000 images, the last 10% held out for validation),
LeNet-300-100 and LeNet-5 (Caffe), 20 epochs, SGD 0.05 momentum 0.9, batch
100 (issue 13's settings; tfmot's in its own process, `_tfmot_run.py`).

Row names (`--rows`):

- `dense`; `tfmotNN` (tfmot `PolynomialDecay` to NN% per layer, its own
  process; its slim widths are what `ks.slim` removes of its dead neurons);
- `CRIT` + `NN` (`mag98`, `taylor98`, `serene98`, `mag98.5`): ours,
  unstructured, `SensitivityPruning(target_sparsity=0.NN, criterion=...)`
  with LOBSTER decay 1e-4; a `-nd` suffix trains without decay, `-dX`
  with decay X (`mag90-d1e-3`); `bK`
  after the target (`mag98b4`) prunes blocks of K neighbouring inputs
  (`block_size=K`);
- `stNN-CRIT` (`st80-mag`, `st80-global`, `st80-serene`, `st80-taylor`):
  ours, `structured=True`, NN% of the prunable neurons / channels removed;
  `-nd` without decay (`st80-mag-nd` is the L2-norm no-decay baseline);
- `CRITNN=kernels`: ours, unstructured, biases not pruned (kernels only,
  as tfmot); `CRITNN=each`: every layer with a kernel at NN% of that
  kernel, ranked within the layer (a dict `target_sparsity` with
  `structured=False`: tfmot's equal fraction per layer, biases kept);
- `stNN-CRIT=W1-W2-...` (`st80-mag-nd=32-48`): the same, each hidden
  layer keeping the width given (a dict `target_sparsity`, each layer's own
  fraction; NN must be the share of neurons those widths remove);
- a `@PP` suffix on any of ours (`st80-mag-nd@50`) ends the ramp at PP% of
  the epochs instead of the default 70%; `@BB-PP` also starts it at BB%
  instead of 0 (`st80-tglobal-nd@5-50`: from epoch 1 to epoch 10 of 20);
- a `+CRITNN` suffix on a structured row (`st80-mag-nd+mag95`) adds a
  second, unstructured `SensitivityPruning(target_sparsity=0.NN)` to the
  same fit, on the same ramp: zeros inside the neurons the first keeps (the
  slim widths are the structured row's; `+mag98.5b4`: in 1x4 blocks;
  `+mag98.5b4=fc1`: only layer fc1's kernel, through the callback's
  `exclude=["bias", "^(?!fc1/)"]`, the target a fraction of it). Such
  rows also export the slim model with `sparse=True` and, for seed 0, keep
  its weights (`.npz`, compressed) in `benchmarks/` beside the JSON, so
  `budgeted_latency.py` times the trained zeros in any export mode;
- `scratchNN`: the narrow network `stNN-mag` slims to (every hidden width
  times 1 - NN%), trained from scratch in the same budget: what the
  capacity alone gives, without pruning; `scratch-W1-W2-...` trains the
  hidden widths given (`scratch-10-24-80`: the widths another row slimmed
  to).

Rows run in the order given, seed by seed; `results_budgeted.json` is
rewritten after every run, so an interrupted run keeps what it measured.
"""

import json
import os
import re
import subprocess
import sys
import time

import keras
import numpy as np

import keras_serene as ks
from keras_serene.app import datasets
from keras_serene.app import zoo

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 20
BATCH_SIZE = 100
LEARNING_RATE = 0.05
MOMENTUM = 0.9
#: How a run's batches are ordered, recorded in each run's `extra`: a new
#: order every epoch (`datasets.shuffled_batches`). Runs without the key
#: replayed one order every epoch (`model.fit` on arrays under a global
#: seed), tfmot's runs excepted: tf_keras reshuffles.
SHUFFLE = "every epoch"
DECAY = 1e-4
CRITERIA = {
    "mag": "magnitude",
    "global": "magnitude_global",
    "group": "magnitude_group",
    "taylor": "taylor",
    "tglobal": "taylor_global",
    "serene": "serene",
}
#: An unstructured row: criterion, target percent, optional `bK` blocks.
UNSTRUCTURED = re.compile(r"^([a-z]+?)(\d+(?:\.\d+)?)(?:b(\d+))?$")


def _head(name):
    """The row name without its `@` window and `+` second callback."""
    return name.split("@")[0].split("+")[0]


def ramp_window(name):
    """`(begin, end)` of the ramp as fractions of the epochs (`@BB-PP`,
    `@PP`); `(0.0, None)` without a suffix (None: the default end)."""
    if "@" not in name:
        return 0.0, None
    window = [int(p) / 100 for p in name.split("@")[1].split("-")]
    return (0.0, window[0]) if len(window) == 1 else tuple(window)


def inner_sparsity(name):
    """`(target, criterion, block size, exclude)` of a `+CRITNN` suffix, or
    None; `=LAYER` excludes every variable but that layer's kernel."""
    if "+" not in name:
        return None
    inner, _, layer = name.split("@")[0].split("+")[1].partition("=")
    exclude = ["bias", f"^(?!{re.escape(layer)}/)"] if layer else []
    kind, target, criterion, _ = parse_row(inner)
    if kind != "unstructured" or parse_row(name)[0] != "structured":
        raise ValueError(
            f"budgeted row {name!r}: `+` adds an unstructured row (`mag95`) "
            "to a structured one (`st80-mag-nd`)"
        )
    return target, criterion, block_size(inner), exclude


def block_size(name):
    """The `bK` of an unstructured row (`mag98b4` -> 4), else 1."""
    name = _head(name).partition("=")[0]
    match = UNSTRUCTURED.match(split_decay(name)[0])
    return int(match.group(3)) if match and match.group(3) else 1


def entry_scope(name, model, target):
    """`(target, exclude)` of an unstructured row's callback: `=kernels`
    excludes biases; `=each` gives every layer with a kernel the target on
    its own (a dict target, `structured=False`), biases excluded."""
    head = _head(name)
    scope = head.partition("=")[2] if "=" in head else ""
    if parse_row(name)[0] != "unstructured" or not scope:
        return target, []
    if scope == "kernels":
        return target, ["bias"]
    if scope == "each":
        layers = [
            layer.name
            for layer in model.layers
            if getattr(layer, "kernel", None) is not None
        ]
        return dict.fromkeys(layers, target), ["bias"]
    raise ValueError(
        f"budgeted row {name!r}: an unstructured row's `=` suffix is "
        "`=kernels` or `=each`"
    )


def kept_widths(name):
    """The `=W1-W2` hidden widths of a structured row, or None."""
    head = _head(name)
    if "=" not in head or parse_row(name)[0] != "structured":
        return None
    return tuple(int(w) for w in head.partition("=")[2].split("-"))


def layer_targets(model, widths, percent):
    """`{hidden layer name: fraction removed}` keeping `widths`, checked
    against the row's percent of neurons removed."""
    hidden = _hidden(model.get_config())
    names = [layer["name"] for layer in hidden]
    sizes = [_width(layer) for layer in hidden]
    removed = 1 - sum(widths) / sum(sizes)
    if len(widths) != len(hidden) or abs(removed - percent) > 0.005:
        raise ValueError(
            f"budgeted row widths {widths}: the hidden layers {names} have "
            f"widths {sizes}; the widths must remove the row's {percent:.0%} "
            "of them"
        )
    return {
        name: 1 - kept / size for name, kept, size in zip(names, widths, sizes)
    }


def _hidden(config):
    """The layer configs of a model config's hidden Dense/Conv layers, in
    order (every layer with `units` or `filters` but the output one)."""
    last = config["layers"][-1]["name"]
    return [
        layer
        for layer in config["layers"]
        if layer["name"] != last
        and ({"units", "filters"} & set(layer["config"]))
    ]


def _width(layer):
    inner = layer["config"]
    return inner["units"] if "units" in inner else inner["filters"]


def split_decay(name):
    """`(name without its decay suffix, decay)`: `-nd` 0, `-dX` X, else
    `DECAY`."""
    if name.endswith("-nd"):
        return name[:-3], 0.0
    if re.search(r"-d[0-9.e-]+$", name):
        base, _, value = name.rpartition("-d")
        return base, float(value)
    return name, DECAY


def parse_row(name):
    """`(kind, target, criterion, decay)` of a row name."""
    name = _head(name).partition("=")[0]
    if name == "dense":
        return "dense", None, None, 0.0
    if name.startswith("tfmot"):
        return "tfmot", int(name[5:]) / 100, None, 0.0
    if name.startswith("scratch-"):
        widths = tuple(int(w) for w in name[8:].split("-"))
        return "scratch", widths, None, 0.0
    if name.startswith("scratch"):
        return "scratch", int(name[7:]) / 100, None, 0.0
    base, decay = split_decay(name)
    if base.startswith("st"):
        percent, criterion = base[2:].split("-")
        return "structured", int(percent) / 100, CRITERIA[criterion], decay
    match = UNSTRUCTURED.match(base)
    if match and match.group(1) in CRITERIA:
        target = float(match.group(2)) / 100
        return "unstructured", target, CRITERIA[match.group(1)], decay
    raise ValueError(f"unknown budgeted row {name!r}")


def compile_classifier(model, optimizer):
    """Compiles a logits classifier the way every benchmark row does."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train(row, model_name, data, seed, workdir, epochs=EPOCHS):
    """One run; returns (plain model, train seconds, extra dict)."""
    (x, y), (x_test, y_test) = data
    kind, target, criterion, decay = parse_row(row)
    keras.utils.set_random_seed(seed)
    model = zoo.get(model_name, input_shape=x.shape[1:], num_classes=10)
    sgd = keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)
    extra = {}
    if kind == "tfmot":
        return _tfmot(model, model_name, target, data, seed, workdir, epochs)
    callbacks = []
    # The last 10% validate, for `fit` and for the pruning callbacks alike.
    fit_data = datasets.fit_arrays(x, y, BATCH_SIZE, seed)
    if kind == "scratch":
        model = (
            narrow(model, widths=target)
            if isinstance(target, tuple)
            else narrow(model, removed=target)
        )
        kind = "dense"
    if kind == "dense":
        compile_classifier(model, sgd)
    else:
        compile_classifier(model, ks.SensitivityOptimizer(sgd, decay=decay))
        begin, end = ramp_window(row)
        inner = inner_sparsity(row)
        widths = kept_widths(row)
        if widths is not None:
            target = layer_targets(model, widths, target)
        target, scope = entry_scope(row, model, target)
        for structured, sparsity, ranking, block, exclude in (
            (kind == "structured", target, criterion, block_size(row), scope),
            *([(False, *inner)] if inner else []),
        ):
            callbacks.append(
                ks.callbacks.SensitivityPruning(
                    target_sparsity=sparsity,
                    structured=structured,
                    criterion=ranking,
                    block_size=block,
                    exclude=exclude,
                    begin_epoch=begin * epochs,
                    end_epoch=None if end is None else end * epochs,
                    validation_data=fit_data["validation_data"],
                    verbose=0,
                )
            )
    start = time.perf_counter()
    history = model.fit(
        **fit_data,
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    extra["shuffle"] = SHUFFLE
    if callbacks:
        extra["sparsity_by_epoch"] = [
            round(v, 5) for v in history.history["sparsity"]
        ]
        if "removed_neurons" in history.history:
            extra["removed_neurons"] = history.history["removed_neurons"][-1]
        model = ks.strip_masks(model)
    return model, seconds, extra


def narrow(model, removed=0.0, widths=None):
    """The same architecture with narrower hidden Dense/Conv layers: every
    width times `1 - removed` (rounded, at least 1), or the `widths` given,
    in layer order; the output layer keeps its width."""
    config = model.get_config()
    hidden = _hidden(config)
    if widths is not None and len(widths) != len(hidden):
        raise ValueError(
            f"scratch widths {widths} do not match the {len(hidden)} hidden "
            f"layers {[layer['name'] for layer in hidden]}"
        )
    for layer in config["layers"]:
        layer.pop("build_config", None)  # Input shapes change: rebuild.
    for i, layer in enumerate(hidden):
        inner = layer["config"]
        key = "units" if "units" in inner else "filters"
        if widths is not None:
            inner[key] = widths[i]
        else:
            inner[key] = max(1, int(round(inner[key] * (1 - removed))))
    return keras.Model.from_config(config)


def _tfmot(model, model_name, target, data, seed, workdir, epochs):
    (x, y), (x_test, y_test) = data
    npz = os.path.join(workdir, f"data-{len(x)}.npz")
    if not os.path.exists(npz):
        np.savez(npz, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    out = os.path.join(workdir, f"tfmot-{model_name}.npz")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    command = [
        sys.executable,
        os.path.join(HERE, "_tfmot_run.py"),
        "--model", model_name,
        "--sparsity", str(target),
        "--epochs", str(epochs),
        "--data", npz,
        "--out", out,
        "--seed", str(seed),
        "--lr", str(LEARNING_RATE),
        "--momentum", str(MOMENTUM),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"tfmot run failed:\n{result.stderr[-3000:]}")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    weights = np.load(out)
    model.set_weights([weights[f"arr_{i}"] for i in range(len(weights))])
    extra = {
        "versions": {k: info[k] for k in ("tf_keras", "tfmot")},
        "shuffle": SHUFFLE,  # tf_keras reshuffles arrays every epoch
    }
    return model, info["train_seconds"], extra


def tflite_accuracy(blob, x, y, batch=1000):
    """Test accuracy of a flatbuffer run in LiteRT (batches of `batch`)."""
    logits = np.concatenate(
        [ks.export.run_tflite(blob, [x[i : i + batch]])[0]
         for i in range(0, len(x), batch)]
    )  # fmt: skip
    return float(np.mean(logits.argmax(axis=-1) == np.asarray(y)))


def measure(model, data, export=True, sparse=False, slim_sparse=None):
    """Accuracy, nonzero, slim widths/params, the slim float32 and int8
    `.tflite`s' test accuracy; with `export`, their sizes and latency.

    `slim_sparse`: a path (or "" for none) to also export the slim model
    with `sparse=True` (zeros inside its kept neurons), keeping its weights
    there (`np.savez_compressed`, in `get_weights` order).
    """
    (x, _), (x_test, y_test) = data
    compile_classifier(model, "sgd")
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    report = ks.summary(model, print_fn=False)
    slim = ks.slim(model)
    slim_report = ks.summary(slim, print_fn=False)
    row = {
        "accuracy": accuracy,
        "params": report["total"]["params"],
        "nonzero_fraction": report["total"]["nonzero"]
        / report["total"]["params"],
        "slim_widths": slim_report["architecture"].split(" -> ")[-1],
        "slim_params": slim_report["total"]["params"],
    }
    # What the phone runs, every seed: the test accuracy of the slim exports.
    blob = ks.to_tflite(slim)
    int8 = ks.to_tflite(slim, quantization="int8", representative_data=x[:200])
    row["tflite_accuracy"] = tflite_accuracy(blob, x_test, y_test)
    row["tflite_int8_accuracy"] = tflite_accuracy(int8, x_test, y_test)
    if export:
        row["tflite_bytes"] = len(blob)
        row["tflite_int8_bytes"] = len(int8)
        row["latency_ms"] = ks.export.tflite_latency(blob, runs=300) * 1e3
        if slim_sparse is not None:
            if slim_sparse:
                os.makedirs(os.path.dirname(slim_sparse), exist_ok=True)
                np.savez_compressed(slim_sparse, *slim.get_weights())
            blob = ks.to_tflite(slim, sparse=True)
            row["slim_sparse_tflite_bytes"] = len(blob)
            row["slim_sparse_ops"] = ks.export.tflite_ops(blob)
            row["slim_sparse_latency_ms"] = (
                ks.export.tflite_latency(blob, runs=300) * 1e3
            )
        if sparse:
            blob = ks.to_tflite(model, sparse=True)
            row["sparse_tflite_bytes"] = len(blob)
            row["sparse_latency_ms"] = (
                ks.export.tflite_latency(blob, runs=300) * 1e3
            )
    return row


def run_grid(plan, data_for, out_path, workdir, meta, epochs=EPOCHS):
    """Runs `plan` (list of (model, row, seed, export)); saves after each."""
    saved = {"meta": {**meta, "commands": [meta["command"]]}, "runs": []}
    if os.path.exists(out_path):  # Add to it; say which commands ran.
        with open(out_path) as f:
            saved = json.load(f)
        old = saved["meta"]
        commands = old.get("commands") or [old["command"]]
        if meta["command"] not in commands:
            commands.append(meta["command"])
        saved["meta"] = {**old, **meta, "commands": commands}
    done = {(r["model"], r["row"], r["seed"]) for r in saved["runs"]}
    for model_name, row, seed, export in plan:
        if (model_name, row, seed) in done:
            continue
        print(f"{model_name} / {row} / seed {seed} ...", flush=True)
        data = data_for(model_name)
        model, seconds, extra = train(
            row, model_name, data, seed, workdir, epochs
        )
        slim_sparse = None
        if "+" in row or block_size(row) > 1:
            slim_sparse = ""
            if export:
                name = f"{model_name}_{row}_seed{seed}_slim_weights.npz"
                slim_sparse = os.path.join(
                    os.path.dirname(out_path), "benchmarks", name
                )
        measured = measure(
            model,
            data,
            export=export,
            sparse=row == "tfmot98" and export,
            slim_sparse=slim_sparse,
        )
        if slim_sparse:
            measured["slim_weights"] = os.path.relpath(
                slim_sparse, os.path.dirname(out_path)
            )
        extra.pop("versions", None)
        result = {
            "model": model_name,
            "row": row,
            "seed": seed,
            "train_size": len(data[0][0]),
            "train_seconds": seconds,
            **measured,
            **extra,
        }
        saved["runs"].append(result)
        print("  " + json.dumps(result), flush=True)
        with open(out_path, "w") as f:
            json.dump(saved, f, indent=1)
    return saved


#: Rows that decide issue 13's goals (three seeds in the sized run).
DECIDING_300 = "dense,tfmot98,tfmot99,mag98,mag99,st80-mag-nd,BEST_STRUCTURED"
#: Seed-0 rows of the sized run, in order (the structured variants first,
#: so the best one is known before the extra seeds).
SEED0_300 = (
    "dense,tfmot98,mag98,tfmot99,mag99,st80-mag-nd,st80-mag,st80-global,"
    "st80-global-nd,st80-serene,st80-mag-nd+mag98.5b4=fc1"
)
EXTRA_300 = (
    "tfmot90,mag90,tfmot95,mag95,taylor98,serene98,mag98-nd,st90-mag,"
    "st50-mag,mag99-nd,st80-taylor"
)
ROWS_5 = "dense,st80-mag,st80-global,st80-tglobal-nd@50"
ALL_300 = (
    "dense,tfmot90,tfmot95,tfmot98,tfmot99,mag90,mag95,mag98,mag99,"
    "mag90-nd,mag95-nd,mag98-nd,mag99-nd,taylor98,taylor99,serene98,"
    "serene99,st50-mag,st80-mag,st90-mag,st50-global,st80-global,"
    "st90-global,st80-mag-nd,st80-global-nd,st80-serene,st80-taylor"
)
ALL_5 = "dense,tfmot98,st50-global,st80-mag,st80-global,st90-global,st80-mag-nd"


def best_structured(path, model_name="lenet300", percent=80):
    """Our best seed-0 structured row at `percent` (not the baseline)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        runs = json.load(f)["runs"]
    candidates = [
        r
        for r in runs
        if r["model"] == model_name
        and r["seed"] == 0
        and r["row"].startswith(f"st{percent}-")
        and r["row"] != f"st{percent}-mag-nd"
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda r: r["accuracy"])["row"]


def main(args, load, meta):
    """The budgeted section; `load(model_name) -> data`."""
    import tempfile

    os.makedirs(args.out, exist_ok=True)
    out_path = os.path.join(args.out, "results_budgeted.json")
    seeds = list(args.seeds)
    epochs = args.epochs or (2 if args.quick else EPOCHS)
    meta = {**meta, "epochs": epochs}
    with tempfile.TemporaryDirectory() as workdir:
        if getattr(args, "rows", None):
            pairs = [pair.split("/") for pair in args.rows.split(",")]
            plan = [
                (m, row, seed, seed == 0) for seed in seeds for m, row in pairs
            ]
            run_grid(plan, load, out_path, workdir, meta, epochs)
            return out_path
        if args.full:
            plan = [
                (m, row, seed, seed == 0)
                for seed in seeds
                for m, rows in (("lenet300", ALL_300), ("lenet5", ALL_5))
                for row in rows.split(",")
            ]
            run_grid(plan, load, out_path, workdir, meta, epochs)
            return out_path
        first = [("lenet300", r, 0, True) for r in SEED0_300.split(",")]
        run_grid(first, load, out_path, workdir, meta, epochs)
        best = best_structured(out_path) or "st80-global"
        deciding = DECIDING_300.replace("BEST_STRUCTURED", best).split(",")
        plan = [("lenet5", r, 0, True) for r in ROWS_5.split(",")]
        plan += [
            ("lenet300", r, seed, False) for seed in seeds[1:] for r in deciding
        ]
        plan += [("lenet300", r, 0, True) for r in EXTRA_300.split(",")]
        run_grid(plan, load, out_path, workdir, meta, epochs)
    return out_path
