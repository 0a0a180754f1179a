"""The policy-gradient controller of the architecture search (docs/design.md §5).

An LSTM cell, shared over the steps, emits an architecture token by token. At step t its input
is the embedding of the token chosen at step t-1 (a learned start embedding at t = 0; one
embedding table per decision kind, since a "fraction" 3 and a "concat" 3 mean different
things), and one softmax head per kind ("fraction", "concat") turns its output into a
distribution over that position's values. A `valid_choices(prefix)` function (e.g.
`SearchSpace.valid_choices`) masks values the space forbids: their logits become -inf before
the softmax, so they are never sampled and carry no probability mass. An optional fixed
`log_prior` per position is added to the logits: with `SearchSpace.token_log_prior` the
untrained policy draws architectures uniformly over the space, as random search does, and
training moves it from there.

Training is REINFORCE with a moving-average baseline and an entropy bonus (`reinforce_loss`),
one Adam step per batch of sampled architectures (`Controller.update`). Optionally
(`normalize_rewards`) the advantages are divided by a moving estimate of the rewards' spread,
so that a step moves the policy as far whatever the rewards' scale. Off by default: on a
surrogate of the CIFAR-10 ResNet-20 space (fitted to a real search log) it collapsed sooner,
to local optima more often, and found no better architectures than the plain advantages
(experiments/results/README.md, "The controller on a surrogate reward").

Determinism and resumption: every initializer is seeded from `ControllerConfig.seed` (nothing
reads or advances the global Python/NumPy/Keras random state), and sampling draws from a NumPy
`Generator` seeded by the same value. `get_state` holds the weights, the optimizer variables,
the baseline, the generator's state and the step count, all JSON-serialisable: a fresh
controller given `set_state(other.get_state())` samples and updates exactly as `other` would
have continued.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from s2dnas_tf import fileio

KINDS = ("fraction", "concat", "depth")  # the decision types of a SearchSpace (space.token_kinds)
STATE_FORMAT = "s2dnas_tf.controller/1"

# Below this spread the rewards are taken as equal and the advantages are left unscaled.
_MIN_SCALE = 1e-8

ValidChoices = Callable[[Sequence[int]], Sequence[int]]


def reinforce_loss(
    log_probs,
    rewards,
    baseline: float,
    entropies=None,
    entropy_weight: float = 0.0,
) -> tf.Tensor:
    """The REINFORCE loss with a baseline and an entropy bonus.

    loss = mean_b[-(rewards[b] - baseline) * log_probs[b]] - entropy_weight * mean_b[entropies[b]]

    Minimising it raises the probability of architectures rewarded above the baseline, lowers
    that of the others, and (for entropy_weight > 0) keeps the policy from collapsing early.
    Rewards and baseline are constants: gradients flow only through `log_probs` and
    `entropies`.

    Args:
        log_probs: [B] tensor or array, the sum over tokens of log p(token) of each sampled
            architecture.
        rewards: [B] rewards of those architectures.
        baseline: The baseline subtracted from every reward.
        entropies: [B] entropy of the policy along each architecture (summed over tokens), or
            None for no entropy term.
        entropy_weight: Weight of the entropy bonus (>= 0).

    Returns:
        A scalar float32 tensor.

    Raises:
        ValueError: For inputs that are not 1-D, of different lengths or empty, or a non-zero
            entropy_weight without entropies.
    """
    log_probs = tf.convert_to_tensor(log_probs, dtype=tf.float32)
    rewards = tf.stop_gradient(tf.convert_to_tensor(rewards, dtype=tf.float32))
    if log_probs.shape.rank != 1 or rewards.shape.rank != 1:
        raise ValueError(
            "log_probs and rewards must be 1-D ([batch]). Received: log_probs shape "
            f"{log_probs.shape}, rewards shape {rewards.shape}"
        )
    if log_probs.shape[0] != rewards.shape[0] or log_probs.shape[0] == 0:
        raise ValueError(
            "log_probs and rewards must have the same non-zero length. Received: "
            f"{log_probs.shape[0]} log_probs, {rewards.shape[0]} rewards"
        )
    advantages = rewards - tf.cast(baseline, tf.float32)
    loss = -tf.reduce_mean(advantages * log_probs)
    if entropies is None:
        if entropy_weight:
            raise ValueError(
                "entropy_weight needs entropies. Received: entropies=None, "
                f"entropy_weight={entropy_weight!r}"
            )
        return loss
    entropies = tf.convert_to_tensor(entropies, dtype=tf.float32)
    if entropies.shape != log_probs.shape:
        raise ValueError(
            f"entropies must have the shape of log_probs {log_probs.shape}. Received: "
            f"{entropies.shape}"
        )
    return loss - entropy_weight * tf.reduce_mean(entropies)


@dataclasses.dataclass
class ControllerConfig:
    """Settings of the controller.

    Attributes:
        hidden_units: LSTM units; 64 is ample for sequences of ~10 small decisions.
        embedding_dim: Size of a token embedding.
        learning_rate: Adam's learning rate. 0.01: a search of 300 candidates in batches of 4
            makes 75 updates, and at 3e-3 the policy barely moved in them (on a surrogate
            of a real CIFAR-10 search; experiments/results/README.md).
        entropy_weight: Weight of the entropy bonus; small, it only delays collapse.
        baseline_decay: baseline <- decay * baseline + (1 - decay) * batch mean reward; the
            rewards' spread is averaged with the same decay.
        normalize_rewards: Divide the advantages by the rewards' moving standard deviation
            (the first batch's own, then the moving average of squared advantages).
        temperature: Logits are divided by it everywhere (sampling, training, greedy);
            > 1 flattens the policy.
        risk_seeking: None, or a fraction e in (0, 1): each update learns only from the
            architectures at or above the batch's (1 - e) quantile of rewards, with that
            quantile as the baseline (the risk-seeking policy gradient of Petersen et al.,
            "Deep symbolic regression", ICLR 2021). A search keeps the best architecture it
            finds, so this optimises the best rewards instead of the mean; it wants batches
            of several architectures per update (with 4, only the best of each batch).
        seed: Seeds the initializers and the sampling generator.
    """

    hidden_units: int = 64
    embedding_dim: int = 32
    learning_rate: float = 1e-2
    entropy_weight: float = 1e-2
    baseline_decay: float = 0.9
    normalize_rewards: bool = False
    temperature: float = 1.0
    risk_seeking: float | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raises ValueError for out-of-range settings."""
        for name in ("hidden_units", "embedding_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1. Received: {name}={value!r}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be > 0. Received: learning_rate={self.learning_rate!r}"
            )
        if not self.entropy_weight >= 0:
            raise ValueError(
                f"entropy_weight must be >= 0. Received: entropy_weight={self.entropy_weight!r}"
            )
        if not 0 <= self.baseline_decay <= 1:
            raise ValueError(
                "baseline_decay must be in [0, 1]. Received: "
                f"baseline_decay={self.baseline_decay!r}"
            )
        if self.risk_seeking is not None and not (
                isinstance(self.risk_seeking, (float, int)) and 0 < self.risk_seeking < 1):
            raise ValueError("risk_seeking must be None or a fraction in (0, 1). Received: "
                             f"risk_seeking={self.risk_seeking!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={self.temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or (
            self.seed < 0
        ):
            raise ValueError(f"seed must be an int >= 0. Received: seed={self.seed!r}")


class Controller:
    """An LSTM policy over token sequences, trained with REINFORCE.

    Example:
        controller = Controller(space.token_kinds(), space.token_choices())
        batch = [controller.sample(space.valid_choices)[0] for _ in range(8)]
        stats = controller.update(batch, [reward(space.decode(t)) for t in batch],
                                  space.valid_choices)

    The baseline starts undefined: the first `update` uses the batch's mean reward as the
    baseline (its advantages are the rewards centred within the batch, with no push from an
    arbitrary initial value), later updates use the moving average. The baseline is updated
    after the advantages are computed.
    """

    def __init__(
        self,
        token_kinds: Sequence[str],
        token_choices: Sequence[int],
        config: ControllerConfig | None = None,
        log_prior: Sequence[Sequence[float]] | None = None,
    ):
        """Builds every variable eagerly.

        Args:
            token_kinds: The decision kind ("fraction", "concat" or "depth") of each token
                position.
            token_choices: The number of values (>= 1) at each position.
            config: Settings; `ControllerConfig()` when None.
            log_prior: None, or per position token_choices[pos] finite log-weights added to
                the (temperature-divided) logits everywhere, fixed, not trained: the policy
                starts near the distribution they define (e.g. `SearchSpace.token_log_prior`,
                random search's) instead of uniform tokens, and learns the difference.

        Raises:
            ValueError: For empty or mismatched token_kinds / token_choices, an unknown kind,
                a non-positive number of choices, a log_prior of other lengths or with
                non-finite values, or a bad config.
        """
        config = ControllerConfig() if config is None else config
        config.validate()
        token_kinds = list(token_kinds)
        token_choices = list(token_choices)
        if not token_kinds or len(token_kinds) != len(token_choices):
            raise ValueError(
                "token_kinds and token_choices must be non-empty and of the same length. "
                f"Received: {len(token_kinds)} kinds, {len(token_choices)} choices"
            )
        for pos, (kind, n) in enumerate(zip(token_kinds, token_choices)):
            if kind not in KINDS:
                raise ValueError(
                    f"Token kinds must be in {KINDS}. Received: token_kinds[{pos}]={kind!r}"
                )
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(
                    f"Token choices must be ints >= 1. Received: token_choices[{pos}]={n!r}"
                )
        self.token_kinds = token_kinds
        self.token_choices = [int(n) for n in token_choices]
        self.config = config
        # Kinds in order of first appearance; a head is as wide as its kind's widest position.
        self.kinds = list(dict.fromkeys(token_kinds))
        self.kind_choices = {
            k: max(n for kk, n in zip(token_kinds, self.token_choices) if kk == k)
            for k in self.kinds
        }
        self.log_prior = self._check_prior(log_prior)
        # The prior padded to each position's head width (values past token_choices are
        # masked anyway), float32 for the compiled evaluation.
        self._bias = []
        for pos, kind in enumerate(token_kinds):
            bias = np.zeros(self.kind_choices[kind], np.float32)
            if self.log_prior is not None:
                bias[: self.token_choices[pos]] = self.log_prior[pos]
            self._bias.append(bias)

        # Explicit integer seeds: an unseeded Keras initializer would draw its seed from the
        # global Python `random` module, disturbing (and depending on) the caller's state.
        seeds = itertools.count(config.seed * 1000)  # a few per controller, never shared
        embed_dim, units = config.embedding_dim, config.hidden_units

        def embedding(n: int) -> keras.layers.Embedding:
            init = keras.initializers.RandomUniform(-0.1, 0.1, seed=next(seeds))
            return keras.layers.Embedding(n, embed_dim, embeddings_initializer=init)

        self.start_embedding = embedding(1)
        self.embeddings = {k: embedding(self.kind_choices[k]) for k in self.kinds}
        self.cell = keras.layers.LSTMCell(
            units,
            kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
            recurrent_initializer=keras.initializers.Orthogonal(seed=next(seeds)),
            seed=config.seed,  # for its (unused) dropout generator, again to stay off globals
        )
        self.heads = {
            k: keras.layers.Dense(
                self.kind_choices[k],
                kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
            )
            for k in self.kinds
        }
        for layer in [self.start_embedding, *self.embeddings.values()]:
            layer.build((None,))
        self.cell.build((None, embed_dim))
        for head in self.heads.values():
            head.build((None, units))
        self.trainable_variables = [
            v
            for layer in [self.start_embedding, *self.embeddings.values(), self.cell,
                          *self.heads.values()]
            for v in layer.trainable_weights
        ]
        self.optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        self.optimizer.build(self.trainable_variables)

        # Compiled once per controller: eager TF spends milliseconds per tiny op. Python
        # arguments (the kinds) retrace, so there is one graph per (previous kind, kind) pair.
        self._compiled_step = tf.function(self._step)
        self._compiled_train_step = tf.function(self._train_step)

        self.baseline: float | None = None
        self.reward_scale: float | None = None  # the rewards' moving standard deviation
        self.step = 0
        self.rng = np.random.default_rng(config.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.token_kinds)

    def _check_prior(self, log_prior) -> list[list[float]] | None:
        if log_prior is None:
            return None
        rows = list(log_prior)
        if len(rows) != len(self.token_choices):
            raise ValueError(
                f"log_prior must have one row per token position ({len(self.token_choices)}). "
                f"Received: {len(rows)} rows"
            )
        checked = []
        for pos, (row, n) in enumerate(zip(rows, self.token_choices)):
            row = np.asarray(row, dtype=np.float64)
            if row.shape != (n,) or not np.all(np.isfinite(row)):
                raise ValueError(
                    f"log_prior[{pos}] must be {n} finite numbers (one per value of token "
                    f"{pos}). Received: {np.asarray(log_prior[pos]).tolist()}"
                )
            checked.append([float(v) for v in row])
        return checked

    # --- the policy ----------------------------------------------------------------------

    def _step(self, prev_kind: str | None, kind: str, prev_tokens, h, c):
        """One LSTM step over a batch.

        Args:
            prev_kind: Kind of the previous position, None at the first (start embedding).
            kind: Kind of this position (selects the head).
            prev_tokens: [B] int32 previous tokens (ignored at the first position).
            h, c: [B, hidden_units] LSTM states.

        Returns:
            (logits [B, head width] already divided by the temperature, h, c).
        """
        if prev_kind is None:
            inputs = self.start_embedding(tf.zeros_like(prev_tokens))
        else:
            inputs = self.embeddings[prev_kind](prev_tokens)
        output, (h, c) = self.cell(inputs, [h, c])
        return self.heads[kind](output) / self.config.temperature, h, c

    def _zero_state(self, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
        zeros = tf.zeros([batch_size, self.config.hidden_units])
        return zeros, zeros

    def _mask(self, pos: int, prefix: Sequence[int], valid_choices: ValidChoices | None):
        """Boolean [head width] mask of the values allowed at `pos` after `prefix`."""
        width = self.kind_choices[self.token_kinds[pos]]
        mask = np.zeros(width, dtype=bool)
        if valid_choices is None:
            mask[: self.token_choices[pos]] = True
            return mask
        allowed = [int(v) for v in valid_choices(list(prefix))]
        bad = [v for v in allowed if not 0 <= v < self.token_choices[pos]]
        if not allowed or bad:
            raise ValueError(
                f"valid_choices must return a non-empty subset of [0, "
                f"{self.token_choices[pos] - 1}] for token {pos}. Received: {allowed} after "
                f"prefix {list(prefix)}"
            )
        mask[allowed] = True
        return mask

    @staticmethod
    def _masked_log_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Log-probabilities (float64) with -inf for masked-out values."""
        z = np.where(mask, logits.astype(np.float64), -np.inf)
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    def sample(self, valid_choices: ValidChoices | None = None) -> tuple[list[int], float]:
        """Samples one architecture.

        Args:
            valid_choices: prefix -> allowed values at position len(prefix) (e.g.
                `SearchSpace.valid_choices`); None allows every value.

        Returns:
            (tokens, sum over tokens of log p(token)). Draws advance `self.rng`.

        Raises:
            ValueError: If valid_choices returns nothing or values out of range.
        """
        tokens: list[int] = []
        log_prob = 0.0
        h, c = self._zero_state(1)
        for pos in range(self.num_tokens):
            logits, h, c = self._single_step(pos, tokens, h, c)
            mask = self._mask(pos, tokens, valid_choices)
            log_p = self._masked_log_softmax(logits.numpy()[0] + self._bias[pos], mask)
            allowed = np.flatnonzero(mask)
            # Inverse CDF over the allowed values: one uniform draw per token.
            cdf = np.cumsum(np.exp(log_p[allowed]))
            index = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")),
                        len(allowed) - 1)
            token = int(allowed[index])
            tokens.append(token)
            log_prob += float(log_p[token])
        return tokens, log_prob

    def _single_step(self, pos: int, prefix: Sequence[int], h, c):
        """The compiled `_step` for one architecture at position `pos` after `prefix`."""
        prev_kind = self.token_kinds[pos - 1] if pos else None
        prev_tokens = np.asarray([prefix[-1] if pos else 0], dtype=np.int32)
        return self._compiled_step(prev_kind, self.token_kinds[pos], prev_tokens, h, c)

    def _check_tokens(self, tokens_batch, valid_choices: ValidChoices | None) -> list[list[int]]:
        if not isinstance(tokens_batch, (list, tuple, np.ndarray)) or len(tokens_batch) == 0:
            raise ValueError(
                f"tokens_batch must be a non-empty list of token lists. Received: {tokens_batch!r}"
            )
        batch = []
        for b, tokens in enumerate(tokens_batch):
            if any(isinstance(t, bool) or not float(t).is_integer() for t in tokens):
                raise ValueError(
                    f"Tokens must be integers. Received: {list(tokens)} at batch index {b}"
                )
            tokens = [int(t) for t in tokens]
            if len(tokens) != self.num_tokens:
                raise ValueError(
                    f"Each architecture has {self.num_tokens} tokens. Received: {len(tokens)} "
                    f"tokens {tokens} at batch index {b}"
                )
            for pos, tok in enumerate(tokens):
                if not 0 <= tok < self.token_choices[pos]:
                    raise ValueError(
                        f"Token {pos} ({self.token_kinds[pos]}) must be in [0, "
                        f"{self.token_choices[pos] - 1}]. Received: {tok} in {tokens}"
                    )
                if valid_choices is not None and tok not in valid_choices(tokens[:pos]):
                    raise ValueError(
                        f"Token {pos} is not a valid choice after {tokens[:pos]} (allowed: "
                        f"{list(valid_choices(tokens[:pos]))}). Received: {tokens}"
                    )
            batch.append(tokens)
        return batch

    def _masks(self, batch: list[list[int]], valid_choices: ValidChoices | None) -> list:
        """Per position, the [B, head width] boolean masks of the allowed values."""
        return [
            np.stack([self._mask(pos, tokens[:pos], valid_choices) for tokens in batch])
            for pos in range(self.num_tokens)
        ]

    def _evaluate(self, tokens, masks):
        """Teacher-forced log-probs and entropies ([B] each) of int32 tokens [B, T]."""
        tokens = tf.convert_to_tensor(tokens, tf.int32)
        h, c = self._zero_state(tf.shape(tokens)[0])
        log_probs = tf.zeros([tf.shape(tokens)[0]])
        entropies = tf.zeros_like(log_probs)
        for pos in range(self.num_tokens):
            prev_kind = self.token_kinds[pos - 1] if pos else None
            prev_tokens = tokens[:, pos - 1] if pos else tokens[:, 0]
            logits, h, c = self._step(prev_kind, self.token_kinds[pos], prev_tokens, h, c)
            logits += self._bias[pos]
            mask = tf.convert_to_tensor(masks[pos], tf.bool)
            # A large negative number instead of -inf keeps 0 * log(0) out of the entropy.
            log_p = tf.nn.log_softmax(tf.where(mask, logits, -1e9))
            log_probs += tf.gather(log_p, tokens[:, pos], axis=1, batch_dims=1)
            entropies -= tf.reduce_sum(tf.where(mask, tf.exp(log_p) * log_p, 0.0), axis=1)
        return log_probs, entropies

    def _train_step(self, tokens, masks, rewards, baseline):
        """Compiled in __init__: one Adam step on the REINFORCE loss; returns (loss,
        entropies)."""
        with tf.GradientTape() as tape:
            log_probs, entropies = self._evaluate(tokens, masks)
            loss = reinforce_loss(
                log_probs, rewards, baseline, entropies, self.config.entropy_weight
            )
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return loss, entropies

    def log_prob(
        self, tokens_batch: Sequence[Sequence[int]], valid_choices: ValidChoices | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Differentiable re-evaluation (teacher forcing) of a batch of architectures.

        Args:
            tokens_batch: B token lists.
            valid_choices: The mask used when they were sampled.

        Returns:
            (log_probs [B], entropies [B]) float32 tensors: the sum over tokens of log p of
            each architecture, and the sum over its positions of the entropy of the policy at
            that position (given the architecture's prefix).

        Raises:
            ValueError: For wrong lengths, out-of-range or invalid tokens.
        """
        batch = self._check_tokens(tokens_batch, valid_choices)
        return self._evaluate(np.asarray(batch, np.int32), self._masks(batch, valid_choices))

    def update(
        self,
        tokens_batch: Sequence[Sequence[int]],
        rewards: Sequence[float],
        valid_choices: ValidChoices | None = None,
    ) -> dict:
        """One REINFORCE step (Adam) on a batch of sampled architectures.

        Args:
            tokens_batch: B sampled token lists.
            rewards: Their B rewards.
            valid_choices: The mask used when sampling them.

        Returns:
            {"loss": float, "baseline": the baseline after this update, "mean_reward": float,
            "entropy": mean sequence entropy before the step}.

        Raises:
            ValueError: For wrong lengths, out-of-range or invalid tokens, or rewards that
                are not B finite numbers.
        """
        batch = self._check_tokens(tokens_batch, valid_choices)
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.shape != (len(batch),) or not np.all(np.isfinite(rewards)):
            raise ValueError(
                f"rewards must be {len(batch)} finite numbers, one per architecture. "
                f"Received: {rewards.tolist()}"
            )
        mean_reward = float(rewards.mean())
        baseline = mean_reward if self.baseline is None else self.baseline
        decay = self.config.baseline_decay
        advantages = rewards - baseline
        if self.config.risk_seeking is not None:
            quantile = float(np.quantile(rewards, 1 - self.config.risk_seeking))
            advantages = np.where(rewards >= quantile, rewards - quantile, 0.0)
        if self.config.normalize_rewards:
            square = float(np.mean(advantages**2))
            if self.reward_scale is None:
                self.reward_scale = float(np.sqrt(square))
            scale = self.reward_scale if self.reward_scale > _MIN_SCALE else 1.0
            advantages = advantages / scale
            self.reward_scale = float(
                np.sqrt(decay * self.reward_scale**2 + (1 - decay) * square)
            )
        loss, entropies = self._compiled_train_step(
            np.asarray(batch, np.int32),
            self._masks(batch, valid_choices),
            advantages.astype(np.float32),
            np.float32(0.0),
        )
        self.baseline = decay * baseline + (1 - decay) * mean_reward
        self.step += 1
        return {
            "loss": float(loss),
            "baseline": float(self.baseline),
            "mean_reward": mean_reward,
            "entropy": float(tf.reduce_mean(entropies)),
        }

    def _greedy(self, valid_choices: ValidChoices | None) -> tuple[list[int], list[np.ndarray]]:
        tokens: list[int] = []
        distributions = []
        h, c = self._zero_state(1)
        for pos in range(self.num_tokens):
            logits, h, c = self._single_step(pos, tokens, h, c)
            mask = self._mask(pos, tokens, valid_choices)
            probs = np.exp(self._masked_log_softmax(logits.numpy()[0] + self._bias[pos], mask))
            distributions.append(probs[: self.token_choices[pos]])
            tokens.append(int(np.argmax(probs)))
        return tokens, distributions

    def probabilities(self, valid_choices: ValidChoices | None = None) -> list[np.ndarray]:
        """Per-position distributions along the greedy (argmax) path, for logging.

        Returns:
            One float64 array per position, of length token_choices[pos] (0 where masked).
        """
        return self._greedy(valid_choices)[1]

    def best_tokens(self, valid_choices: ValidChoices | None = None) -> list[int]:
        """The argmax decoding of the policy (does not touch the sampling generator)."""
        return self._greedy(valid_choices)[0]

    # --- state -----------------------------------------------------------------------------

    def get_state(self) -> dict:
        """Everything needed to continue exactly: JSON-serialisable (nested lists, ints)."""
        return {
            "format": STATE_FORMAT,
            "token_kinds": list(self.token_kinds),
            "token_choices": list(self.token_choices),
            "log_prior": self.log_prior,
            "config": dataclasses.asdict(self.config),
            "weights": [v.numpy().tolist() for v in self.trainable_variables],
            "optimizer": [np.asarray(v.numpy()).tolist() for v in self.optimizer.variables],
            "baseline": self.baseline,
            "reward_scale": self.reward_scale,
            "step": self.step,
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict) -> None:
        """Restores `get_state()` output (e.g. read back from JSON).

        The optimizer's learning rate stays this controller's `config.learning_rate`.

        Raises:
            ValueError: For a state of another format, another token layout, or weights of
                other shapes (e.g. other hidden_units / embedding_dim).
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            received = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"Expected a {STATE_FORMAT!r} state. Received: {received!r}")
        if (list(state["token_kinds"]), [int(n) for n in state["token_choices"]]) != (
            self.token_kinds,
            self.token_choices,
        ):
            raise ValueError(
                f"The state is for token_kinds={state['token_kinds']}, "
                f"token_choices={state['token_choices']}; this controller has "
                f"token_kinds={self.token_kinds}, token_choices={self.token_choices}"
            )
        # Absent from states saved before priors existed: those controllers had none.
        if state.get("log_prior") != self.log_prior:
            raise ValueError(
                "The state was trained with another log_prior (a policy's logits only mean "
                f"the same with the same prior). State: {state.get('log_prior')}; this "
                f"controller: {self.log_prior}"
            )
        for name, variables in (
            ("weights", self.trainable_variables),
            ("optimizer", self.optimizer.variables),
        ):
            values = state[name]
            if len(values) != len(variables):
                raise ValueError(
                    f"Expected {len(variables)} {name} arrays. Received: {len(values)}"
                )
            arrays = []
            for var, value in zip(variables, values):
                array = np.asarray(value, dtype=var.dtype)
                if array.shape != tuple(var.shape):
                    raise ValueError(
                        f"{name} array for {var.path} must have shape {tuple(var.shape)}. "
                        f"Received: {array.shape}"
                    )
                arrays.append(array)
            for var, array in zip(variables, arrays):
                var.assign(array)
        self.optimizer.learning_rate = self.config.learning_rate
        baseline = state["baseline"]
        self.baseline = None if baseline is None else float(baseline)
        scale = state.get("reward_scale")  # absent from states saved before it existed
        self.reward_scale = None if scale is None else float(scale)
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["rng"]

    def save(self, path: str) -> None:
        """Writes `get_state()` as compact JSON, atomically (`fileio`)."""
        fileio.write_text(path, json.dumps(self.get_state()))

    @classmethod
    def load(
        cls,
        path: str,
        token_kinds: Sequence[str],
        token_choices: Sequence[int],
        config: ControllerConfig | None = None,
        log_prior: Sequence[Sequence[float]] | None = None,
    ) -> "Controller":
        """A controller built from `token_kinds`, `token_choices`, `config`, `log_prior` with
        the state saved at `path`.

        Raises:
            FileNotFoundError: If `path` does not exist.
            ValueError: If the saved state does not fit (see `set_state`).
        """
        with open(path) as f:
            state = json.load(f)
        controller = cls(token_kinds, token_choices, config, log_prior)
        controller.set_state(state)
        return controller

