"""One budgeted pruning step, on tiny tensors with hand-worked answers."""

import keras
import numpy as np
import pytest

import keras_serene as ks
from keras_serene.core import masking as masks
from keras_serene.sensitivity import budget_pruning
from keras_serene.sensitivity import pruning_criteria


def _tiny():
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3), keras.layers.Dense(2)]
    )
    model.compile(
        optimizer=ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)),
        loss="mse",
    )
    opt = masks.mask_optimizer(model)
    masks.ensure_built(opt, model)
    return model, opt


def test_prune_entries_zeroes_exactly_the_lowest_fraction():
    model, opt = _tiny()
    first = model.layers[0]
    first.kernel.assign([[0.1, -0.9, 0.3], [0.5, -0.2, 0.8]])
    first.bias.assign([0.05, 0.0, 1.0])
    second = model.layers[1]
    second.kernel.assign([[0.4, -0.6], [0.7, 0.15], [-1.0, 0.25]])
    second.bias.assign([0.35, -2.0])
    variables = opt.regularized_variables
    assert len(variables) == 4  # 6 + 3 + 6 + 2 = 17 entries.
    values = [v.numpy() for v in variables]
    scores = pruning_criteria.entry_scores(
        "magnitude", variables, values, None, None
    )
    # round(0.3 * 17) = 5: |w| 0.0, 0.05, 0.1, 0.15, 0.2 go.
    count, cut = budget_pruning.prune_entries(opt, variables, 0.3, scores)
    assert count == 5 and cut == np.float32(0.2)
    np.testing.assert_array_equal(
        first.kernel.numpy(), np.float32([[0, -0.9, 0.3], [0.5, 0, 0.8]])
    )
    np.testing.assert_array_equal(first.bias.numpy(), [0, 0, 1])
    assert masks.pruned(opt, second.kernel).sum() == 1  # 0.15.
    # A pruned entry stays pruned even if its score is now the highest.
    scores[3] = np.array([100.0, 100.0])
    masks.add_flag(opt, second.bias, masks.PRUNED, [False, True], zero=True)
    count, _ = budget_pruning.prune_entries(opt, variables, 0.3, scores)
    # 6 forced (5 + the -2.0 bias): the count never goes down.
    assert count == 6 and second.bias.numpy()[1] == 0.0


def test_block_ids_run_along_the_input_axis():
    ids, count = budget_pruning.block_ids((5, 2), 2)
    # Inputs 0-1, 2-3 and the short 4 of each of the two units.
    np.testing.assert_array_equal(ids, [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5]])
    assert count == 6
    conv, count = budget_pruning.block_ids((1, 1, 4, 3), 4)
    assert count == 3 and np.all(conv[0, 0] == [0, 1, 2])  # One per unit.
    vector, count = budget_pruning.block_ids((3,), 2)
    np.testing.assert_array_equal(vector, [0, 0, 1])
    assert count == 2


def test_prune_entries_in_blocks_takes_whole_blocks_by_mean_score():
    model, opt = _tiny()
    first, second = model.layers
    # Blocks of 2 along the 2 inputs: one block per unit (column).
    first.kernel.assign([[0.1, -0.9, 0.3], [0.5, -0.2, 0.8]])
    first.bias.assign([0.05, 0.0, 1.0])
    # 3 inputs: blocks rows 0-1 and the short row 2, per column.
    second.kernel.assign([[0.4, -0.6], [0.7, 0.15], [-1.0, 0.25]])
    second.bias.assign([0.35, -2.0])
    variables = opt.regularized_variables
    values = [v.numpy() for v in variables]
    scores = pruning_criteria.entry_scores(
        "magnitude", variables, values, None, None
    )
    # Block means: first kernel 0.3, 0.55, 0.55; first bias 0.025, 1.0;
    # second kernel 0.55, 0.375, 1.0, 0.25; second bias 1.175.
    # round(0.3 * 17) = 5 entries: blocks 0.025 (2), 0.25 (1), 0.3 (2).
    count, cut = budget_pruning.prune_entries(opt, variables, 0.3, scores, 2)
    assert count == 5 and cut == pytest.approx(0.3)
    np.testing.assert_array_equal(
        first.kernel.numpy(), np.float32([[0, -0.9, 0.3], [0, -0.2, 0.8]])
    )
    np.testing.assert_array_equal(first.bias.numpy(), np.float32([0, 0, 1]))
    assert (
        second.kernel.numpy()[2, 1] == 0
        and masks.pruned(opt, second.kernel).sum() == 1
    )
    # 6 entries: the next block (0.375, two entries) overshoots to 7.
    count, _ = budget_pruning.prune_entries(opt, variables, 0.35, scores, 2)
    assert count == 7
    np.testing.assert_array_equal(second.kernel.numpy()[:2, 1], [0, 0])
    # A block with one pruned entry goes as a whole.
    masks.add_flag(opt, second.bias, masks.PRUNED, [True, False], zero=True)
    count, _ = budget_pruning.prune_entries(opt, variables, 0.35, scores, 2)
    assert count == 9 and np.all(second.bias.numpy() == 0)


def test_per_group_choice_takes_the_same_fraction_and_keeps_one():
    removed = [np.zeros(10, bool), np.zeros(4, bool), np.zeros(2, bool)]
    scores = [np.arange(10.0)[::-1], np.array([3.0, 1.0, 2.0, 0.0]), np.ones(2)]
    # 0.5 of 16 = 8: floors 5, 2, 1 -> exactly 8.
    chosen = budget_pruning._per_group_choice(removed, scores, 0.5, 8)
    assert [int(c.sum()) for c in chosen] == [5, 2, 1]
    assert np.flatnonzero(chosen[0]).tolist() == [5, 6, 7, 8, 9]
    assert np.flatnonzero(chosen[1]).tolist() == [1, 3]
    # 0.99: every group keeps one channel (9 + 3 + 1).
    chosen = budget_pruning._per_group_choice(removed, scores, 0.99, 16)
    assert [int(c.sum()) for c in chosen] == [9, 3, 1]


def test_per_group_choice_takes_each_groups_own_fraction():
    removed = [np.zeros(10, bool), np.zeros(4, bool), np.zeros(2, bool)]
    scores = [np.arange(10.0), np.array([3.0, 1.0, 2.0, 0.0]), np.ones(2)]
    # 0.8 of 10 and 0.25 of 4, none of the third: 8 + 1 + 0 = 9.
    fractions = np.array([0.8, 0.25, 0.0])
    chosen = budget_pruning._per_group_choice(removed, scores, fractions, 9)
    assert [int(c.sum()) for c in chosen] == [8, 1, 0]
    assert np.flatnonzero(chosen[0]).tolist() == list(range(8))
    assert np.flatnonzero(chosen[1]).tolist() == [3]
    # Halfway up the ramp (0.4, 0.125, 0: 4 + 0.5 -> 5 in all) the larger
    # remainder, the second group's 0.5, takes the extra channel.
    chosen = budget_pruning._per_group_choice(removed, scores, fractions / 2, 5)
    assert [int(c.sum()) for c in chosen] == [4, 1, 0]


def test_global_choice_normalises_per_group_and_keeps_one():
    removed = [np.zeros(4, bool), np.zeros(2, bool)]
    # Group 0 norms are 100x group 1's, but normalised they interleave.
    scores = [np.array([100.0, 200.0, 300.0, 400.0]), np.array([1.0, 5.0])]
    chosen = budget_pruning._global_choice(removed, scores, 3)
    # rms0 = 273.9: 0.365, 0.730, 1.095; rms1 = 3.606: 0.277 (5 is kept).
    assert np.flatnonzero(chosen[0]).tolist() == [0, 1]
    assert np.flatnonzero(chosen[1]).tolist() == [0]
    chosen = budget_pruning._global_choice(removed, scores, 6)
    assert [int(c.sum()) for c in chosen] == [3, 1]


def test_channel_scores_by_hand():
    slices = [np.array([[3.0, 4.0], [0.0, 1.0]])]
    np.testing.assert_allclose(
        pruning_criteria.channel_scores("magnitude", slices, None, []), [5, 1]
    )
    np.testing.assert_allclose(
        pruning_criteria.channel_scores("taylor", [-slices[0]], None, []),
        [7, 1],
    )
    # Group Taylor: (sum of w * dL/dw over the producing slices)^2; signs
    # cancel: (3 - 4 + 2)^2 = 1 and (0 + 1 + 1)^2 = 4.
    taylor = [np.array([[3.0, -4.0], [0.0, 1.0]]), np.array([[2.0], [1.0]])]
    np.testing.assert_allclose(
        pruning_criteria.channel_scores("taylor_global", taylor, None, []),
        [1, 4],
    )


def test_global_choice_without_normalising_ranks_raw_scores():
    removed = [np.zeros(4, bool), np.zeros(3, bool)]
    scores = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 11.0, 100.0])]
    raw = budget_pruning._global_choice(removed, scores, 2, normalise=False)
    assert [np.flatnonzero(c).tolist() for c in raw] == [[0, 1], []]
    # Normalised, group 1's 10 and 11 are the lowest (0.17, 0.19 of its
    # rms 58.4, against 0.37 for group 0's 1.0).
    scaled = budget_pruning._global_choice(removed, scores, 2)
    assert [np.flatnonzero(c).tolist() for c in scaled] == [[], [0, 1]]


def test_taylor_global_scores_channels_with_signed_gradients():
    model, opt = _tiny()
    first, _ = model.layers
    first.kernel.assign([[1.0, 2.0, 0.5], [-1.0, 1.0, 0.5]])
    pruner = budget_pruning.ChannelPruner(model, opt, ks.slimming_plan(model))
    grads = {id(first.kernel): np.array([[0.5, 0.1, -1.0], [0.5, 0.1, 1.0]])}
    grads[id(first.bias)] = np.zeros(3)
    (scores,) = pruner.scores("taylor_global", [grads])
    # Per neuron: (1*0.5 - 1*0.5)^2 = 0, (0.2 + 0.1)^2, (-0.5 + 0.5)^2 = 0.
    np.testing.assert_allclose(scores, [0.0, 0.09, 0.0], atol=1e-7)


def test_taylor_global_squares_each_slice_before_averaging():
    model, opt = _tiny()
    first, _ = model.layers
    first.kernel.assign([[1.0, 2.0, 0.5], [-1.0, 1.0, 0.5]])
    pruner = budget_pruning.ChannelPruner(model, opt, ks.slimming_plan(model))
    # Two slices whose gradients cancel in their mean: Molchanov et al.
    # average the squares, (0.3^2 + 0.3^2) / 2 for neuron 1, not 0.
    up = {id(first.kernel): np.array([[0.0, 0.1, 0.2], [0.0, 0.1, 0.0]])}
    down = {key: -value for key, value in up.items()}
    for found in (up, down):
        found[id(first.bias)] = np.zeros(3)
    (scores,) = pruner.scores("taylor_global", iter([up, down]))
    np.testing.assert_allclose(scores, [0.0, 0.09, 0.01], atol=1e-7)


def test_batch_gradients_yield_one_slice_per_size_samples():
    model, _ = _tiny()
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.ones((10, 2), "float32")
    batches = pruning_criteria.sample_batches((x, y))
    slices = list(pruning_criteria.batch_gradients(model, batches, size=4))
    assert len(slices) == 3  # 4 + 4 + 2 samples.
    first = model.layers[0].kernel
    mean = pruning_criteria.gradient_statistics(model, batches, "taylor")
    # One 10-sample batch: "taylor" is |dL/dw| of it; the slices' weighted
    # mean of signed gradients (mse averages per sample) gives it back.
    weighted = (
        4 * slices[0][id(first)]
        + 4 * slices[1][id(first)]
        + 2 * slices[2][id(first)]
    ) / 10
    np.testing.assert_allclose(np.abs(weighted), mean[id(first)], rtol=1e-5)


def test_group_magnitude_counts_the_consuming_weights():
    model, opt = _tiny()
    first, second = model.layers
    # Neurons 0 and 1 have the same incoming norm (1.0); neuron 0 feeds the
    # next layer with 0.1s, neuron 1 with 2s; neuron 2 comes in with 0.8.
    first.kernel.assign([[0.6, 0.8, 0.8], [0.8, 0.6, 0.0]])
    second.kernel.assign([[0.1, 0.1], [2.0, 2.0], [1.0, 1.0]])
    plan = ks.slimming_plan(model)
    pruner = budget_pruning.ChannelPruner(model, opt, plan)
    (incoming,) = pruner.scores("magnitude", None)
    np.testing.assert_allclose(incoming, [1.0, 1.0, 0.8], rtol=1e-6)
    (group,) = pruner.scores("magnitude_group", None)
    # sqrt(in^2 + out^2): sqrt(1 + 0.02), sqrt(1 + 8), sqrt(0.64 + 2).
    np.testing.assert_allclose(group, np.sqrt([1.02, 9.0, 2.64]), rtol=1e-6)
    # One of 3 goes: by incoming norm neuron 2, by the group neuron 0.
    assert pruner.prune_to(1 / 3, "magnitude_group") == 1
    dead = np.all(first.kernel.numpy() == 0, axis=0)
    assert dead.tolist() == [True, False, False]
