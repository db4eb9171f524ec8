"""The pure NEq maths on hand-made activations (no model)."""

import numpy as np
import pytest

from keras_serene.neq import equilibrium as eq


def test_cosine_rules_for_zero_vectors():
    a = np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 4.0], [-3.0, 0.0], [0.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(
        eq.cosine(a, b, axis=1), [0.0, 1.0, -1.0, 1.0, 0.0], atol=1e-15
    )
    # Three-four-five: cos = (3 * 4) / (5 * 4) = 0.6.
    assert eq.cosine([3.0, 4.0], [4.0, 0.0], axis=0) == pytest.approx(0.6)


def test_phi_averages_per_sample_cosines_over_the_map():
    # 2 samples, a 2x1 map, 2 neurons (channels last).
    previous = np.zeros((2, 2, 1, 2))
    current = np.zeros((2, 2, 1, 2))
    # Neuron 0: sample 0 same direction (1), sample 1 orthogonal (0).
    previous[0, :, 0, 0] = [1.0, 1.0]
    current[0, :, 0, 0] = [2.0, 2.0]
    previous[1, :, 0, 0] = [1.0, 0.0]
    current[1, :, 0, 0] = [0.0, 3.0]
    # Neuron 1: sample 0 both zero (1), sample 1 cos([3, 4], [4, 0]) = 0.6.
    previous[1, :, 0, 1] = [4.0, 0.0]
    current[1, :, 0, 1] = [3.0, 4.0]
    np.testing.assert_allclose(eq.phi(current, previous), [0.5, 0.8])


def test_phi_reads_the_channel_axis():
    previous = np.zeros((1, 2, 3, 1))  # channels first: 2 neurons, 3x1 maps
    current = np.zeros((1, 2, 3, 1))
    previous[0, 0, :, 0] = [1.0, 0.0, 0.0]
    current[0, 0, :, 0] = [0.0, 1.0, 0.0]
    previous[0, 1, :, 0] = [1.0, 1.0, 1.0]
    current[0, 1, :, 0] = [5.0, 5.0, 5.0]
    np.testing.assert_allclose(
        eq.phi(current, previous, channel_axis=1), [0.0, 1.0]
    )
    assert eq.to_neuron_maps(current, channel_axis=1).shape == (1, 3, 2)


def test_phi_of_2d_outputs_compares_each_neuron_over_the_samples():
    previous = np.array([[1.0, 2.0], [0.0, -1.0], [1.0, 0.0]])
    current = np.array([[1.0, 4.0], [1.0, -2.0], [0.0, 0.0]])
    # Neuron 0: [1, 0, 1] . [1, 1, 0] = 1, norms sqrt(2) sqrt(2): 0.5.
    # Neuron 1: [2, -1, 0] vs [4, -2, 0]: parallel, 1.
    np.testing.assert_allclose(eq.phi(current, previous), [0.5, 1.0])


def test_streamed_phi_equals_phi_of_the_whole_subset():
    rng = np.random.default_rng(0)
    for shape in ((7, 5, 3), (7, 3)):
        previous = rng.normal(size=shape)
        current = previous + 0.3 * rng.normal(size=shape)
        accumulator = eq.PhiAccumulator()
        for start in range(0, 7, 3):
            accumulator.update(
                current[start : start + 3], previous[start : start + 3]
            )
        assert accumulator.samples == 7
        np.testing.assert_allclose(
            accumulator.result(), eq.phi(current, previous), rtol=1e-12
        )
    with pytest.raises(ValueError, match="no samples"):
        eq.PhiAccumulator().result()
    with pytest.raises(ValueError, match="differ in shape"):
        eq.PhiAccumulator().update(np.zeros((2, 3)), np.zeros((2, 4)))


DPHI = [-0.5, 0.2, 0.1]


def test_paper_velocity_by_hand():
    # v0 = -0.5; v1 = 0.2 - 0.5 * -0.5 = 0.45; v2 = 0.1 - 0.5 * 0.45.
    state = np.zeros(1)
    velocities = []
    for dphi in DPHI:
        velocity, state = eq.velocity_step("paper", [dphi], state, 0.5)
        velocities.append(velocity[0])
    np.testing.assert_allclose(velocities, [-0.5, 0.45, -0.125])
    np.testing.assert_allclose(eq.paper_velocity(0.2, -0.5, 0.9), 0.65)


def test_code_velocity_by_hand_and_against_the_authors_recursion():
    # v_t = dphi_t - (1 - mu) sum_{j<t} mu^(t-1-j) dphi_j, mu = 0.5:
    # v0 = -0.5; v1 = 0.2 - 0.5 * -0.5 = 0.45;
    # v2 = 0.1 - 0.5 * (0.5 * -0.5 + 0.2) = 0.125.
    state = np.zeros(1)
    velocities = []
    for dphi in DPHI:
        velocity, state = eq.velocity_step("code", [dphi], state, 0.5)
        velocities.append(velocity[0])
    np.testing.assert_allclose(velocities, [-0.5, 0.45, 0.125])

    # The authors' Hook: get_velocity adds dphi to the stored value and
    # returns it; update_velocity then stores mu * stored - dphi.
    for mu in (0.0, 0.3, 0.9):
        stored, state = 0.0, np.zeros(1)
        for dphi in [0.4, -0.7, 0.05, 0.2, -0.1]:
            stored += dphi
            expected = stored
            stored = mu * stored - dphi
            velocity, state = eq.velocity_step("code", [dphi], state, mu)
            assert velocity[0] == pytest.approx(expected, abs=1e-12)


def test_the_two_forms_differ():
    # mu = 0.9 at t = 1: paper 0.2 - 0.9 * -0.5, code 0.2 - 0.1 * -0.5.
    for form, expected in (("paper", 0.65), ("code", 0.25)):
        state = np.zeros(1)
        for dphi in DPHI[:2]:
            velocity, state = eq.velocity_step(form, [dphi], state, 0.9)
        assert velocity[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="form='x'"):
        eq.velocity_step("x", [0.0], np.zeros(1), 0.5)


def test_delta_threshold_and_flops():
    np.testing.assert_allclose(eq.delta_phi([0.9, 1.0], [1.0, 1.0]), [-0.1, 0])
    np.testing.assert_array_equal(
        eq.at_equilibrium([1e-3, -9e-4, 0.0, -2e-3], 1e-3),
        [False, True, True, False],
    )
    # (100 * 0.5 + 300 / 3) / 400.
    assert eq.backprop_flops_saved([100, 300], [0.5, 1 / 3]) == 0.375
    assert eq.backprop_flops_saved([0, 0], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="one frozen fraction per layer"):
        eq.backprop_flops_saved([1, 2], [0.5])


def test_argument_checks_name_the_value():
    assert eq.check_epsilon(1e-3, "C") == 1e-3
    for bad in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"C: `epsilon` .*epsilon="):
            eq.check_epsilon(bad, "C")
    with pytest.raises(TypeError, match="epsilon='1'"):
        eq.check_epsilon("1", "C")
    assert eq.check_momentum(0, "C") == 0.0
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\).*momentum="):
            eq.check_momentum(bad, "C")
    with pytest.raises(TypeError, match="velocity_momentum=True"):
        eq.check_momentum(True, "C")
    with pytest.raises(ValueError, match="velocity_form='fast'"):
        eq.check_form("fast", "C")
    with pytest.raises(ValueError, match="sample axis and a neuron axis"):
        eq.to_neuron_maps(np.zeros(3))
