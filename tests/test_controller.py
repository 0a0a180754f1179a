"""The REINFORCE controller (docs/design.md §5): loss, learning, masking, determinism, resume."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from s2dnas_tf import controller as controller_lib
from s2dnas_tf.controller import Controller, ControllerConfig, reinforce_loss

# A SearchSpace-shaped toy: 3 stages x 3 unit groups -> 6 fraction tokens (eighths), then the
# concat positions of stages 2 and 3 (3 unit groups).
NUM_GROUPS, GRID = 3, 8
KINDS = ["fraction"] * 6 + ["concat"] * 2
CHOICES = [GRID] * 6 + [NUM_GROUPS] * 2
TARGET = [1, 4, 2, 5, 6, 2, 2, 0]  # valid: every stage-2 fraction >= its stage-1 fraction


def valid_choices(prefix):
    """SearchSpace's rule: a fraction may not be below the previous stage's in its group."""
    pos = len(prefix)
    if KINDS[pos] == "concat":
        return list(range(NUM_GROUPS))
    low = prefix[pos - NUM_GROUPS] if pos >= NUM_GROUPS else 0
    return list(range(low, GRID))


def smooth_reward(tokens) -> float:
    """1 at the target, falling linearly with each position's distance from it."""
    return float(
        np.mean([1 - abs(t - g) / (n - 1) for t, g, n in zip(tokens, TARGET, CHOICES)])
    )


def is_valid(tokens) -> bool:
    return all(t in valid_choices(tokens[:pos]) for pos, t in enumerate(tokens))


def _run(controller, num_updates, batch_size=4):
    """Samples and updates; returns everything observable."""
    trace = []
    for _ in range(num_updates):
        samples = [controller.sample(valid_choices) for _ in range(batch_size)]
        batch = [tokens for tokens, _ in samples]
        stats = controller.update(batch, [smooth_reward(t) for t in batch], valid_choices)
        trace.append((samples, stats))
    return trace


def _weights(controller):
    return [v.numpy() for v in controller.trainable_variables]


# --- reinforce_loss ------------------------------------------------------------------------


def test_reinforce_loss_hand_computed():
    # advantages [0.5, -0.5]: -(0.5 * -1 + -0.5 * -2) / 2 = -0.25; entropy: 0.1 * mean[3, 1]
    loss = reinforce_loss([-1.0, -2.0], [1.0, 0.0], 0.5, entropies=[3.0, 1.0], entropy_weight=0.1)
    assert float(loss) == pytest.approx(-0.25 - 0.2, abs=1e-6)
    assert float(reinforce_loss(np.array([-1.0, -2.0]), np.array([1.0, 0.0]), 0.5)) == (
        pytest.approx(-0.25, abs=1e-6)
    )


def test_reinforce_loss_gradient_sign():
    log_probs = tf.Variable([-1.0, -1.0])
    with tf.GradientTape() as tape:
        loss = reinforce_loss(log_probs, [2.0, 0.0], 1.0)
    grad = tape.gradient(loss, log_probs).numpy()
    # Above the baseline: raising log p lowers the loss; below it: raising log p raises it.
    assert grad[0] < 0 < grad[1]
    np.testing.assert_allclose(grad, [-0.5, 0.5])


def test_reinforce_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same non-zero length"):
        reinforce_loss([-1.0, -2.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="1-D"):
        reinforce_loss([[-1.0]], [1.0], 0.0)
    with pytest.raises(ValueError, match="entropy_weight needs entropies"):
        reinforce_loss([-1.0], [1.0], 0.0, entropy_weight=0.1)


# --- learning ------------------------------------------------------------------------------


def test_controller_learns_toy_reward():
    # A larger learning rate than the default so 60 updates suffice; the rest is default.
    controller = Controller(KINDS, CHOICES, ControllerConfig(learning_rate=3e-2, seed=0))
    num_updates, batch_size = 60, 8
    rewards = []
    for _ in range(num_updates):
        batch = [controller.sample(valid_choices)[0] for _ in range(batch_size)]
        rewards.append([smooth_reward(t) for t in batch])
        controller.update(batch, rewards[-1], valid_choices)
    # Random search with the same budget: each token uniform over its valid choices.
    rng = np.random.default_rng(0)
    random_rewards = []
    for _ in range(num_updates * batch_size):
        tokens = []
        for _ in KINDS:
            tokens.append(int(rng.choice(valid_choices(tokens))))
        random_rewards.append(smooth_reward(tokens))
    controller_mean = float(np.mean(rewards[-5:]))
    random_mean = float(np.mean(random_rewards))
    assert controller_mean > random_mean + 0.15, (controller_mean, random_mean)
    best = controller.best_tokens(valid_choices)
    assert is_valid(best)
    assert sum(t == g for t, g in zip(best, TARGET)) >= 5, best
    assert smooth_reward(best) >= 0.85, best


def test_first_update_uses_batch_mean_as_baseline():
    controller = Controller(KINDS, CHOICES, ControllerConfig(baseline_decay=0.9))
    assert controller.baseline is None
    batch = [controller.sample(valid_choices)[0] for _ in range(2)]
    stats = controller.update(batch, [0.0, 1.0], valid_choices)
    assert stats["baseline"] == pytest.approx(0.5) and stats["mean_reward"] == 0.5
    stats = controller.update(batch, [1.0, 1.0], valid_choices)
    assert stats["baseline"] == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    assert set(stats) == {"loss", "baseline", "mean_reward", "entropy"}
    assert controller.step == 2


def test_normalized_rewards_make_updates_invariant_to_the_rewards_scale():
    """Affine-rescaled rewards (accuracy vs. percent, a shifted cost) move the policy alike
    with `normalize_rewards`; without it the step grows with the scale."""

    def trained(scale, shift, normalize):
        controller = Controller(KINDS, CHOICES, ControllerConfig(seed=3, normalize_rewards=normalize))
        rng = np.random.default_rng(0)
        for _ in range(3):
            batch = [controller.sample(valid_choices)[0] for _ in range(4)]
            rewards = [smooth_reward(t) + 0.01 * rng.standard_normal() for t in batch]
            controller.update(batch, [scale * r + shift for r in rewards], valid_choices)
        return controller

    small, large = trained(1.0, 0.0, True), trained(100.0, 5.0, True)
    for wa, wb in zip(_weights(small), _weights(large)):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    assert large.reward_scale == pytest.approx(100 * small.reward_scale)
    # The first update divides by the batch's own spread (RMS of the centred rewards).
    first = Controller(KINDS, CHOICES, ControllerConfig(seed=3, normalize_rewards=True))
    batch = [first.sample(valid_choices)[0] for _ in range(2)]
    first.update(batch, [0.2, 0.6], valid_choices)
    assert first.reward_scale == pytest.approx(0.2)
    unscaled_small, unscaled_large = trained(1.0, 0.0, False), trained(100.0, 5.0, False)
    moved_small = max(float(np.abs(a - b).max()) for a, b in zip(
        _weights(unscaled_small), _weights(Controller(KINDS, CHOICES, ControllerConfig(seed=3)))))
    moved_large = max(float(np.abs(a - b).max()) for a, b in zip(
        _weights(unscaled_large), _weights(Controller(KINDS, CHOICES, ControllerConfig(seed=3)))))
    assert moved_large > moved_small


def test_risk_seeking_learns_only_from_the_top_of_the_batch():
    """risk_seeking=e: the batch's (1 - e) quantile is the baseline and only architectures at
    or above it push; a batch whose rewards are all equal moves nothing (no entropy term
    here), and the best architecture of a batch becomes more likely."""
    config = ControllerConfig(seed=1, risk_seeking=0.25, entropy_weight=0.0)
    controller = Controller(KINDS, CHOICES, config)
    batch = [controller.sample(valid_choices)[0] for _ in range(4)]
    before = _weights(controller)
    controller.update(batch, [0.5] * 4, valid_choices)
    for a, b in zip(before, _weights(controller)):
        np.testing.assert_array_equal(a, b)
    best = batch[2]
    start = float(controller.log_prob([best], valid_choices)[0][0])
    for _ in range(5):
        controller.update(batch, [0.1, 0.2, 0.9, 0.3], valid_choices)
    assert float(controller.log_prob([best], valid_choices)[0][0]) > start + 0.5
    for bad in (0.0, 1.0, True, "0.2"):
        with pytest.raises(ValueError, match="risk_seeking must be None or a fraction"):
            ControllerConfig(risk_seeking=bad).validate()


# --- masking and consistency ----------------------------------------------------------------


def test_samples_satisfy_valid_choices():
    controller = Controller(KINDS, CHOICES, ControllerConfig(seed=5, temperature=2.0))
    for _ in range(40):
        tokens, _ = controller.sample(valid_choices)
        assert is_valid(tokens), tokens
    # A mask forbidding almost everything leaves the policy no choice.
    only = Controller(KINDS, CHOICES).sample(lambda prefix: [len(prefix) % 3])
    assert only == ([p % 3 for p in range(len(KINDS))], pytest.approx(0.0, abs=1e-12))


def test_probabilities_are_masked_distributions():
    controller = Controller(KINDS, CHOICES)
    probs = controller.probabilities(valid_choices)
    best = controller.best_tokens(valid_choices)
    assert [len(p) for p in probs] == CHOICES
    for pos, p in enumerate(probs):
        assert p.sum() == pytest.approx(1.0)
        allowed = valid_choices(best[:pos])
        assert np.all(p[[v for v in range(CHOICES[pos]) if v not in allowed]] == 0)
        assert best[pos] == int(np.argmax(p))


def test_sampled_log_prob_matches_teacher_forcing():
    controller = Controller(KINDS, CHOICES, ControllerConfig(seed=2))
    samples = [controller.sample(valid_choices) for _ in range(4)]
    log_probs, entropies = controller.log_prob([t for t, _ in samples], valid_choices)
    np.testing.assert_allclose(log_probs.numpy(), [lp for _, lp in samples], rtol=1e-4)
    assert np.all(entropies.numpy() > 0)


def test_controller_samples_a_real_search_space():
    from s2dnas_tf.models import build_model
    from s2dnas_tf.space import SearchSpace

    space = SearchSpace.from_model(build_model("resnet8", input_shape=(8, 8, 1)), num_stages=3)
    assert (space.token_kinds(), space.token_choices()) == (KINDS, CHOICES)
    rng = np.random.default_rng(0)
    for _ in range(20):  # the stand-in rule is the space's rule
        prefix = space.sample(int(rng.integers(1 << 30))).tokens[: int(rng.integers(8))]
        assert valid_choices(prefix) == space.valid_choices(prefix)
    controller = Controller(space.token_kinds(), space.token_choices())
    for _ in range(5):
        space.decode(controller.sample(space.valid_choices)[0])


# --- determinism and resumption -------------------------------------------------------------


def test_same_seed_same_samples_and_updates():
    a, b = (Controller(KINDS, CHOICES, ControllerConfig(seed=3)) for _ in range(2))
    assert _run(a, 3) == _run(b, 3)
    for wa, wb in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(wa, wb)
    other = Controller(KINDS, CHOICES, ControllerConfig(seed=4))
    assert [other.sample()[0] for _ in range(3)] != [a.sample()[0] for _ in range(3)]


def test_construction_leaves_global_random_state_alone():
    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), np.random.random())
    random.seed(1)
    np.random.seed(1)
    Controller(KINDS, CHOICES).sample()
    assert (random.random(), np.random.random()) == expected


def test_state_round_trip_continues_identically():
    original = Controller(KINDS, CHOICES, ControllerConfig(seed=7, normalize_rewards=True))
    _run(original, 2)
    state = json.loads(json.dumps(original.get_state()))  # JSON-serialisable
    # Another seed on purpose: the restored state, not the config's seed, drives what follows.
    restored = Controller(KINDS, CHOICES, ControllerConfig(seed=99, normalize_rewards=True))
    restored.set_state(state)
    assert restored.step == original.step == 2 and restored.baseline == original.baseline
    assert restored.reward_scale == original.reward_scale is not None
    assert _run(restored, 3) == _run(original, 3)
    for wa, wb in zip(_weights(original), _weights(restored)):
        np.testing.assert_array_equal(wa, wb)
    for va, vb in zip(original.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_save_load_round_trip(tmp_path):
    config = ControllerConfig(seed=1)
    original = Controller(KINDS, CHOICES, config)
    _run(original, 1)
    path = str(tmp_path / "controller.json")
    original.save(path)
    assert os.listdir(tmp_path) == ["controller.json"]  # no temporary file left behind
    restored = Controller.load(path, KINDS, CHOICES, config)
    assert _run(restored, 2) == _run(original, 2)


def test_set_state_rejects_other_layouts():
    state = Controller(KINDS, CHOICES).get_state()
    with pytest.raises(ValueError, match="token_kinds"):
        Controller(KINDS[:-1], CHOICES[:-1]).set_state(state)
    with pytest.raises(ValueError, match="shape"):
        Controller(KINDS, CHOICES, ControllerConfig(hidden_units=8)).set_state(state)
    with pytest.raises(ValueError, match=controller_lib.STATE_FORMAT):
        Controller(KINDS, CHOICES).set_state({"weights": []})


# --- bad inputs -------------------------------------------------------------------------------


def test_constructor_rejects_bad_layouts():
    with pytest.raises(ValueError, match="same length. Received: 2 kinds, 1 choices"):
        Controller(["fraction", "concat"], [8])
    with pytest.raises(ValueError, match="token_kinds\\[1\\]='width'"):
        Controller(["fraction", "width"], [8, 3])
    with pytest.raises(ValueError, match="token_choices\\[0\\]=0"):
        Controller(["fraction"], [0])
    with pytest.raises(ValueError, match="temperature"):
        Controller(KINDS, CHOICES, ControllerConfig(temperature=0.0))


def test_update_rejects_bad_batches():
    controller = Controller(KINDS, CHOICES)
    good = controller.sample(valid_choices)[0]
    with pytest.raises(ValueError, match="must be in \\[0, 7\\]. Received: 8"):
        controller.update([[8] + good[1:]], [1.0])
    with pytest.raises(ValueError, match="8 tokens. Received: 7"):
        controller.update([good[:-1]], [1.0])
    with pytest.raises(ValueError, match="not a valid choice"):
        controller.update([[7, 7, 7, 0, 0, 0, 0, 0]], [1.0], valid_choices)
    with pytest.raises(ValueError, match="2 finite numbers"):
        controller.update([good, good], [1.0])
    with pytest.raises(ValueError, match="2 finite numbers"):
        controller.update([good, good], [1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        controller.update([], [])
    with pytest.raises(ValueError, match="non-empty subset"):
        controller.sample(lambda prefix: [])
    assert controller.step == 0 and controller.baseline is None


# --- the space's prior ----------------------------------------------------------------------


def _space(num_stages=3):
    from s2dnas_tf.models import build_model
    from s2dnas_tf.space import SearchSpace

    return SearchSpace.from_model(build_model("resnet8", input_shape=(8, 8, 1)),
                                  num_stages=num_stages)


def _prior_probability(space, tokens):
    """The probability a left-to-right sampler of softmax(prior) over valid_choices gives."""
    prior = space.token_log_prior()
    p = 1.0
    for pos, token in enumerate(tokens):
        allowed = space.valid_choices(tokens[:pos])
        weights = np.exp([prior[pos][v] for v in allowed])
        p *= weights[allowed.index(token)] / weights.sum()
    return p


@pytest.mark.parametrize("num_stages", [2, 3, 4])
def test_token_log_prior_draws_every_architecture_alike(num_stages):
    """Sampled left to right through valid_choices, the prior gives each of one group's
    fraction sequences the same probability (so, with the free concat tokens, every
    architecture 1 / space.size, as space.sample draws them)."""
    import itertools

    space = _space(num_stages)
    prior = space.token_log_prior()
    assert [len(p) for p in prior] == space.token_choices()
    g = space.num_groups
    # Group 0's fraction positions are 0, g, 2g, ...; the other groups' are alike.
    sequences = list(itertools.combinations_with_replacement(range(space.grid), num_stages - 1))
    probabilities = []
    for seq in sequences:
        p = 1.0
        for r, value in enumerate(seq):
            low = seq[r - 1] if r else 0
            weights = np.exp(prior[r * g][low:])
            p *= weights[value - low] / weights.sum()
        probabilities.append(p)
    np.testing.assert_allclose(probabilities, 1 / len(sequences), rtol=1e-9)
    arch = space.sample(3)
    assert _prior_probability(space, arch.tokens) == pytest.approx(1 / space.size, rel=1e-9)


@pytest.mark.parametrize("num_stages", [2, 3, 4])
def test_token_log_prior_with_block_skipping_draws_every_architecture_alike(num_stages):
    """With depth tokens (non-increasing skips per group) too, the prior's left-to-right
    sampler gives every architecture 1 / space.size, and a controller samples valid ones."""
    from s2dnas_tf.models import build_model
    from s2dnas_tf.space import SearchSpace

    space = SearchSpace.from_model(build_model("resnet20", input_shape=(8, 8, 1)),
                                   num_stages=num_stages, block_skipping=True)
    assert space.skippable == (3, 2, 2)
    prior = space.token_log_prior()
    assert [len(p) for p in prior] == space.token_choices()
    for seed in range(5):
        tokens = space.sample(seed).tokens
        assert _prior_probability(space, tokens) == pytest.approx(1 / space.size, rel=1e-9)
    controller = Controller(space.token_kinds(), space.token_choices(),
                            ControllerConfig(seed=0), prior)
    for _ in range(8):
        space.decode(controller.sample(space.valid_choices)[0])


def test_controller_with_the_prior_starts_near_random_search():
    """With the space's prior the untrained controller gives thin first stages the weight
    the space gives them (random search's); uniform tokens give them far less."""
    space = _space()
    kinds, choices = space.token_kinds(), space.token_choices()
    withp = Controller(kinds, choices, ControllerConfig(seed=1), space.token_log_prior())
    without = Controller(kinds, choices, ControllerConfig(seed=1))
    first = [withp.probabilities(space.valid_choices)[0],
             without.probabilities(space.valid_choices)[0]]
    target = np.arange(space.grid, 0, -1) / np.arange(space.grid, 0, -1).sum()
    # The untrained heads' logits are small but not zero: near, not equal.
    assert np.abs(first[0] - target).max() < 0.05
    assert np.abs(first[1] - target).max() > 0.08  # uniform: 1/8 each
    # Sampling and teacher forcing agree on the prior-shifted policy.
    samples = [withp.sample(space.valid_choices) for _ in range(4)]
    log_probs, _ = withp.log_prob([t for t, _ in samples], space.valid_choices)
    np.testing.assert_allclose(log_probs.numpy(), [lp for _, lp in samples], rtol=1e-4)


def test_prior_is_kept_in_the_state_and_checked():
    prior = [np.linspace(0, 1, n) for n in CHOICES]
    original = Controller(KINDS, CHOICES, ControllerConfig(seed=2), prior)
    _run(original, 2)
    state = json.loads(json.dumps(original.get_state()))
    restored = Controller(KINDS, CHOICES, ControllerConfig(seed=2), prior)
    restored.set_state(state)
    assert _run(restored, 2) == _run(original, 2)
    with pytest.raises(ValueError, match="another log_prior"):
        Controller(KINDS, CHOICES).set_state(state)
    with pytest.raises(ValueError, match="another log_prior"):
        plain = Controller(KINDS, CHOICES).get_state()
        Controller(KINDS, CHOICES, log_prior=prior).set_state(plain)


def test_prior_that_decides_alone():
    """A prior far larger than the logits picks its value: it is really added."""
    prior = [np.where(np.arange(n) == min(pos, n - 1) % n, 50.0, 0.0) for pos, n in
             enumerate(CHOICES)]
    controller = Controller(KINDS, CHOICES, log_prior=prior)
    tokens, _ = controller.sample()
    assert tokens == [min(pos, n - 1) for pos, n in enumerate(CHOICES)]


def test_constructor_rejects_a_bad_prior():
    with pytest.raises(ValueError, match="one row per token position \\(8\\). Received: 7"):
        Controller(KINDS, CHOICES, log_prior=[np.zeros(n) for n in CHOICES[:-1]])
    bad = [np.zeros(n) for n in CHOICES]
    bad[6] = np.zeros(2)
    with pytest.raises(ValueError, match="log_prior\\[6\\] must be 3 finite numbers"):
        Controller(KINDS, CHOICES, log_prior=bad)
    bad[6] = np.array([0.0, -np.inf, 0.0])
    with pytest.raises(ValueError, match="log_prior\\[6\\]"):
        Controller(KINDS, CHOICES, log_prior=bad)
