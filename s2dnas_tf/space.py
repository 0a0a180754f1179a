"""The architecture space of multi-stage networks derived from one model (docs/design.md §3).

An architecture is a short list of discrete decisions (tokens):

- for each stage s < S and each unit group g, the cumulative fraction of the group's channels
  visible to stages <= s, as a token t in 0..grid-1 meaning (t + 1) / grid. Fractions never
  decrease from one stage to the next; the last stage always sees everything.
- for each stage s >= 2, its concat position: the unit group from which on it reuses the
  features of stages 1..s-1 (before it, it runs on its own channels only).

- optionally (`block_skipping=True`), for each stage s < S and each unit group g, its depth:
  how many of the group's last identity blocks (`analysis.IdentityBlock`: residual blocks
  whose shortcut is the identity) stage s skips, 0..n_g. A stage skips no more blocks than
  the stage before it; the last stage skips none.

Token order: the fractions of stage 1 (one per group), those of stage 2, ..., stage S-1, then
the concat positions of stages 2..S, then (with block skipping) the skips of stage 1 (one per
group), ..., stage S-1.

Depth: a stage that skips an identity block `x + f(x)` computes nothing of f: its slice of
the block's output is its slice of x (the features flow through the shortcut), and a later
stage that reads earlier stages' features inside f reads nothing from the skipping stage
there. Every weight is inherited as before; the skipped stage's slice of f's inner channels
is computed by no stage. Fewer layers per stage is what a runtime with a cost per op
(TensorFlow's CPU kernels at batch 1) pays for, which channel slices alone cannot cut.

Channel multiple: with `channel_multiple=m` (an attribute of the space and of its archs, not a
token), every stage's channel group in a unit of C channels is a multiple of gcd(C, m) (so of
m itself whenever C is a multiple of m), besides the unit's own quantum (grouped convs). Mobile
kernels (TFLite's XNNPACK) compute channels in blocks of 4 or 8 and pay a count off the block
nearly at the next multiple; m = 8 keeps every stage's convolutions on whole blocks. Token lists
that round to the same channel counts build the same network: `SearchSpace.network_key` tells.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Sequence

import keras
import numpy as np

from s2dnas_tf import analysis as analysis_lib

DEFAULT_GRID = 8  # eighths, as in docs/design.md §3: fine enough to matter, small enough to search


def partition_boundaries(
    channels: int, quantum: int, fractions: list[int], grid: int
) -> list[int]:
    """Channel boundaries b_0=0 <= b_1 <= ... <= b_S=channels of one unit.

    Stage s gets channels [b_{s-1}, b_s). Boundaries are multiples of `quantum`, stage 1 gets
    at least one quantum, and a stage whose fraction grows gets at least one quantum when
    there are enough channels.

    Args:
        channels: Channels of the unit.
        quantum: Boundaries are multiples of this.
        fractions: Cumulative fractions (in 1..grid) of stages 1..S-1.
        grid: The fraction denominator.

    Returns:
        The S+1 boundaries.
    """
    quanta = channels // quantum
    full = list(fractions) + [grid]
    grows = [True] + [full[i] > full[i - 1] for i in range(1, len(full))]
    bounds = [0]
    for s in range(len(full) - 1):
        target = int(full[s] * quanta / grid + 0.5)  # round half up, predictably
        low = bounds[-1] + (1 if grows[s] else 0)
        high = quanta - sum(grows[s + 1 :])
        if low <= high:
            value = min(max(target, low), high)
        else:  # too few channels for every growing stage: stage 1 first, then in order
            value = max(bounds[-1] + (1 if s == 0 else 0), min(target, high))
        bounds.append(min(max(value, bounds[-1]), quanta))
    bounds.append(quanta)
    return [b * quantum for b in bounds]


@dataclasses.dataclass(frozen=True)
class Arch:
    """One multi-stage architecture.

    Attributes:
        num_stages: S.
        grid: Fractions are multiples of 1/grid.
        fractions: S-1 rows (stages 1..S-1) of one value in 1..grid per unit group:
            the cumulative fraction of channels visible to stages <= s is value / grid.
        concat_positions: S-1 unit-group indices, for stages 2..S.
        group_labels: Readable name of each unit group (e.g. "32x32").
        channel_multiple: Stage channel counts are multiples of gcd(unit channels, this)
            (see the module docstring); 1: any count.
        skips: Empty (a space without block skipping), or S-1 rows (stages 1..S-1) of one
            value per unit group: how many of the group's last identity blocks the stage
            skips (see the module docstring).
    """

    num_stages: int
    grid: int
    fractions: tuple
    concat_positions: tuple
    group_labels: tuple
    channel_multiple: int = 1
    skips: tuple = ()

    @property
    def num_groups(self) -> int:
        return len(self.group_labels)

    @property
    def tokens(self) -> list[int]:
        """The architecture as a list of ints (see the module docstring)."""
        fraction_tokens = [v - 1 for row in self.fractions for v in row]
        skip_tokens = [v for row in self.skips for v in row]
        return fraction_tokens + list(self.concat_positions) + skip_tokens

    def skipped_blocks(self, stage: int, group: int) -> int:
        """How many of group `group`'s last identity blocks stage `stage` skips."""
        if not self.skips or stage >= self.num_stages:
            return 0
        return self.skips[stage - 1][group]

    def fraction(self, stage: int, group: int) -> float:
        """Cumulative fraction of group `group`'s channels visible to stages <= `stage`."""
        if stage >= self.num_stages:
            return 1.0
        return self.fractions[stage - 1][group] / self.grid

    def concat_position(self, stage: int) -> int | None:
        """Unit group from which stage `stage` (>= 2) reuses earlier stages' features."""
        return None if stage == 1 else self.concat_positions[stage - 2]

    def to_dict(self) -> dict:
        return {
            "num_stages": self.num_stages,
            "grid": self.grid,
            "group_labels": list(self.group_labels),
            "tokens": self.tokens,
            "fractions": [list(r) for r in self.fractions],
            "concat_positions": list(self.concat_positions),
            "channel_multiple": self.channel_multiple,
            "skips": [list(r) for r in self.skips],
            "readable": str(self),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "Arch":
        """Inverse of `to_dict` (the readable form is ignored; a dict without
        channel_multiple or skips, as written before they existed, means 1 or no block
        skipping)."""
        try:
            arch = cls(
                num_stages=int(data["num_stages"]),
                grid=int(data["grid"]),
                fractions=tuple(tuple(int(v) for v in row) for row in data["fractions"]),
                concat_positions=tuple(int(v) for v in data["concat_positions"]),
                group_labels=tuple(data["group_labels"]),
                channel_multiple=int(data.get("channel_multiple", 1)),
                skips=tuple(tuple(int(v) for v in row) for row in data.get("skips", ())),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                "An arch dict needs num_stages, grid, fractions, concat_positions and "
                "group_labels (channel_multiple and skips are optional). Received keys: "
                f"{sorted(data)}"
            ) from e
        if arch.channel_multiple < 1:
            raise ValueError(
                f"channel_multiple must be >= 1. Received: {data['channel_multiple']!r}"
            )
        return arch

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        multiple = (
            f" (channel counts multiples of {self.channel_multiple})"
            if self.channel_multiple > 1 else ""
        )
        lines = [
            f"{self.num_stages} stage(s) over unit groups {', '.join(self.group_labels)}"
            f"{multiple}:"
        ]
        for stage in range(1, self.num_stages + 1):
            if stage < self.num_stages:
                seen = " ".join(
                    f"{self.fractions[stage - 1][g]}/{self.grid}" for g in range(self.num_groups)
                )
            else:
                seen = "all"
            text = f"  stage {stage}: sees {seen}"
            if stage > 1:
                pos = self.concat_positions[stage - 2]
                text += f"; reuses stages <{stage} from group {pos} ({self.group_labels[pos]})"
            if self.skips and stage < self.num_stages and any(self.skips[stage - 1]):
                text += "; skips the last " + ", ".join(
                    f"{v} block(s) of {self.group_labels[g]}"
                    for g, v in enumerate(self.skips[stage - 1]) if v
                )
            lines.append(text)
        return "\n".join(lines)


class SearchSpace:
    """All multi-stage architectures of one model for a given number of stages.

    Build with `SearchSpace.from_model(model, num_stages=3)`.
    """

    def __init__(
        self,
        analysis: analysis_lib.Analysis,
        num_stages: int,
        grid: int,
        channel_multiple: int = 1,
        block_skipping: bool = False,
    ):
        self.analysis = analysis
        self.num_stages = num_stages
        self.grid = grid
        self.channel_multiple = channel_multiple
        self.block_skipping = bool(block_skipping)
        self.group_labels = tuple(g.label for g in analysis.groups)
        # Identity blocks per unit group: the most a stage can skip there.
        self.skippable = tuple(
            len(analysis.blocks_of_group(g.index)) for g in analysis.groups
        )

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        num_stages: int = 3,
        grid: int = DEFAULT_GRID,
        channel_multiple: int = 1,
        block_skipping: bool = False,
    ) -> "SearchSpace":
        """Analyses `model` and builds its space.

        Args:
            model: A Keras 3 functional or Sequential CNN ending in a classifier.
            num_stages: Number of stages S (>= 1).
            grid: Channel fractions are multiples of 1/grid (>= 1).
            channel_multiple: Every stage's channel count in a unit of C channels is a
                multiple of gcd(C, channel_multiple) (>= 1; 8 suits TFLite's kernels; see the
                module docstring).
            block_skipping: Add a depth decision per stage and unit group: how many of the
                group's last identity blocks the stage skips (module docstring).

        Returns:
            The space.

        Raises:
            TypeError: For non-functional models.
            ValueError: For bad arguments or unsupported layers (see `analysis.analyse`).
        """
        if isinstance(num_stages, bool) or not isinstance(num_stages, (int, np.integer)):
            raise TypeError(f"num_stages must be an int. Received: num_stages={num_stages!r}")
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1. Received: num_stages={num_stages!r}")
        if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
            raise ValueError(f"grid must be an int >= 1. Received: grid={grid!r}")
        if (
            isinstance(channel_multiple, bool)
            or not isinstance(channel_multiple, (int, np.integer))
            or channel_multiple < 1
        ):
            raise ValueError(
                "channel_multiple must be an int >= 1 (e.g. 8 for TFLite's kernels). "
                f"Received: channel_multiple={channel_multiple!r}"
            )
        if not isinstance(block_skipping, (bool, np.bool_)):
            raise TypeError(
                f"block_skipping must be a bool. Received: block_skipping={block_skipping!r}"
            )
        return cls(
            analysis_lib.analyse(model), int(num_stages), int(grid), int(channel_multiple),
            bool(block_skipping),
        )

    # --- shape of the token sequence ----------------------------------------------------

    @property
    def num_groups(self) -> int:
        return self.analysis.num_groups

    @property
    def num_tokens(self) -> int:
        depth = self.num_groups if self.block_skipping else 0
        return (self.num_stages - 1) * (self.num_groups + 1 + depth)

    @property
    def _depth_start(self) -> int:
        """Position of the first depth token."""
        return (self.num_stages - 1) * (self.num_groups + 1)

    def token_kinds(self) -> list[str]:
        """"fraction", "concat" or "depth" for each token position (a controller's head per
        kind)."""
        n = (self.num_stages - 1) * self.num_groups
        depth = n if self.block_skipping else 0
        return ["fraction"] * n + ["concat"] * (self.num_stages - 1) + ["depth"] * depth

    def token_choices(self) -> list[int]:
        """Number of possible values at each token position."""
        sizes = {"fraction": self.grid, "concat": self.num_groups}
        choices = [sizes.get(k, 0) for k in self.token_kinds()]
        for pos in range(self._depth_start, self.num_tokens):
            choices[pos] = self.skippable[(pos - self._depth_start) % self.num_groups] + 1
        return choices

    def valid_choices(self, prefix: Sequence[int]) -> list[int]:
        """Values allowed at position len(prefix) given the tokens before it (fractions may
        not decrease from one stage to the next)."""
        pos = len(prefix)
        if pos >= self.num_tokens:
            raise ValueError(f"All {self.num_tokens} tokens are given. Received: {len(prefix)}")
        kind = self.token_kinds()[pos]
        if kind == "concat":
            return list(range(self.num_groups))
        if kind == "depth":  # no more skips than the stage before
            if pos - self._depth_start >= self.num_groups:
                return list(range(prefix[pos - self.num_groups] + 1))
            return list(range(self.skippable[pos - self._depth_start] + 1))
        low = prefix[pos - self.num_groups] if pos >= self.num_groups else 0
        return list(range(low, self.grid))

    def token_log_prior(self) -> list[np.ndarray]:
        """Per token position, log-weights over its values under which a left-to-right
        sampler restricted to `valid_choices` draws every architecture with the same
        probability, as `sample` does.

        A group's fractions are a non-decreasing sequence over the grid; value v at stage r
        leaves C(grid - v + m - 1, m) ways to finish it (m = num_stages - 1 - r stages left),
        whatever came before, so log of that count is the weight (the last stage's is 0).
        Concat tokens are unconstrained: weight 0. A depth token's values form a
        non-increasing sequence: value v with m stages left leaves C(v + m, m) ways. A
        controller that adds these to its logits
        (`Controller(log_prior=...)`) starts from random search's distribution, not from
        uniform tokens, which favour wide first stages.
        """
        prior = []
        choices = self.token_choices()
        for pos, kind in enumerate(self.token_kinds()):
            if kind == "concat":
                prior.append(np.zeros(self.num_groups))
                continue
            if kind == "depth":
                left = self.num_stages - 2 - (pos - self._depth_start) // self.num_groups
                prior.append(np.log([
                    float(math.comb(v + left, left)) for v in range(choices[pos])
                ]))
                continue
            left = self.num_stages - 2 - pos // self.num_groups
            prior.append(np.log([
                float(math.comb(self.grid - v + left - 1, left)) for v in range(self.grid)
            ]))
        return prior

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        per_group = math.comb(self.grid + self.num_stages - 2, self.num_stages - 1)
        size = per_group**self.num_groups * self.num_groups ** (self.num_stages - 1)
        if self.block_skipping:
            for n in self.skippable:
                size *= math.comb(n + self.num_stages - 1, self.num_stages - 1)
        return size

    # --- architectures --------------------------------------------------------------------

    def decode(self, tokens: Sequence[int]) -> Arch:
        """The architecture of a token list.

        Raises:
            ValueError: Wrong length, a value out of range, or a fraction smaller than the
                previous stage's in the same group.
        """
        tokens = [int(t) for t in tokens]
        if len(tokens) != self.num_tokens:
            raise ValueError(
                f"This space ({self.num_stages} stages, {self.num_groups} unit groups) takes "
                f"{self.num_tokens} tokens. Received: {len(tokens)} tokens {tokens}"
            )
        for pos, (tok, n) in enumerate(zip(tokens, self.token_choices())):
            if not 0 <= tok < n:
                raise ValueError(
                    f"Token {pos} ({self.token_kinds()[pos]}) must be in [0, {n - 1}]. "
                    f"Received: {tok} in {tokens}"
                )
        for pos in range(self.num_groups, (self.num_stages - 1) * self.num_groups):
            if tokens[pos] < tokens[pos - self.num_groups]:
                raise ValueError(
                    f"Token {pos}: stage {pos // self.num_groups + 1} must see at least the "
                    f"channels stage {pos // self.num_groups} sees in group "
                    f"{pos % self.num_groups}. Received: {tokens}"
                )
        for pos in range(self._depth_start + self.num_groups, self.num_tokens):
            if tokens[pos] > tokens[pos - self.num_groups]:
                stage = (pos - self._depth_start) // self.num_groups + 1
                raise ValueError(
                    f"Token {pos}: stage {stage} may skip no more identity blocks than stage "
                    f"{stage - 1} in group {(pos - self._depth_start) % self.num_groups}. "
                    f"Received: {tokens}"
                )
        g, s = self.num_groups, self.num_stages
        fractions = tuple(
            tuple(tokens[r * g + j] + 1 for j in range(g)) for r in range(s - 1)
        )
        return Arch(
            s,
            self.grid,
            fractions,
            tuple(tokens[(s - 1) * g : self._depth_start]),
            self.group_labels,
            self.channel_multiple,
            tuple(
                tuple(tokens[self._depth_start + r * g + j] for j in range(g))
                for r in range(s - 1)
            ) if self.block_skipping else (),
        )

    def unit_quantum(self, unit: analysis_lib.Unit) -> int:
        """The channel counts of `unit`'s stages are multiples of this: the unit's own quantum
        (grouped convs) and gcd(unit channels, channel_multiple)."""
        return math.lcm(unit.quantum, math.gcd(unit.channels, self.channel_multiple))

    def unit_bounds(self, arch: Arch) -> dict[int, list[int]]:
        """Unit index -> its S+1 channel boundaries under `arch` (stage s gets channels
        [b_{s-1}, b_s)); a gate unit (a squeeze-and-excite bottleneck) is all stage 1's."""
        bounds = {}
        for unit in self.analysis.units:
            if unit.gate:
                bounds[unit.index] = [0] + [unit.channels] * arch.num_stages
                continue
            fractions = [arch.fractions[s][unit.group] for s in range(arch.num_stages - 1)]
            bounds[unit.index] = partition_boundaries(
                unit.channels, self.unit_quantum(unit), fractions, arch.grid
            )
        return bounds

    def idle_stages(self, arch: Arch) -> list[int]:
        """Stages s >= 2 that compute no channel of their own in the unit the classifier
        reads: their exit sees exactly stage s-1's features (anything they compute earlier
        is cut off), so they only repeat an earlier exit. Rounding makes such archs common
        with a channel multiple (e.g. stage 2 already at 64 of 64 channels in the last
        group). Empty if the classifier's input is not a split unit (nothing to tell)."""
        self.check_arch(arch)
        unit = self.analysis.unit_of(self.analysis.classifier.inputs[0])
        if unit is None:
            return []
        bounds = self.unit_bounds(arch)[unit.index]
        return [s for s in range(2, arch.num_stages + 1) if bounds[s] == bounds[s - 1]]

    def channel_table(self, arch: Arch) -> str:
        """The channels each stage computes in each unit group (its first unit), and those
        of stages 1..s together: what the fractions become after rounding (to the unit's
        quantum and the channel multiple); plus a note naming any `idle_stages`."""
        self.check_arch(arch)
        bounds = self.unit_bounds(arch)
        units = self.analysis.units
        lines = [f"  channels per stage (own / stages up to it) in {', '.join(self.group_labels)}:"]
        for stage in range(1, arch.num_stages + 1):
            cells = []
            for group in self.analysis.groups:
                b = bounds[units[group.units[0]].index]
                cells.append(f"{b[stage] - b[stage - 1]}/{b[stage]}")
            lines.append(f"  stage {stage}: {'  '.join(cells)}")
        idle = self.idle_stages(arch)
        if idle:
            lines.append(
                f"  note: stage(s) {idle} add no channels where the classifier reads, so "
                "their exits repeat the stage before (search.py --reject_idle_stages keeps "
                "such archs out)"
            )
        return "\n".join(lines)

    def network_key(self, tokens: Sequence[int]) -> tuple:
        """What the network of `tokens` is made of: every unit's channel boundaries and the
        concat positions. Token lists with the same key build the same network (possible
        when a unit has fewer channels, or quanta, than the grid has steps)."""
        arch = self.decode(tokens)
        bounds = self.unit_bounds(arch)
        return tuple(tuple(bounds[u]) for u in sorted(bounds)) + (
            arch.concat_positions, arch.skips)

    def default_arch(self) -> Arch:
        """Evenly growing stages (stage s sees about s/S of every group), every later stage
        reusing earlier features from the first group on: a sensible start without search."""
        g, s = self.num_groups, self.num_stages
        tokens = []
        for stage in range(1, s):
            value = max(1, min(self.grid, round(stage * self.grid / s)))
            tokens += [value - 1] * g
        tokens += [0] * (s - 1)
        tokens += [0] * (self.num_tokens - len(tokens))  # no block skipped
        return self.decode(tokens)

    def sample(self, seed: int) -> Arch:
        """A uniformly random architecture; the same seed gives the same one."""
        rng = np.random.default_rng(seed)
        sequences = list(
            itertools.combinations_with_replacement(range(self.grid), self.num_stages - 1)
        )
        picks = [sequences[i] for i in rng.integers(len(sequences), size=self.num_groups)]
        tokens = [picks[j][r] for r in range(self.num_stages - 1) for j in range(self.num_groups)]
        tokens += [int(v) for v in rng.integers(self.num_groups, size=self.num_stages - 1)]
        if self.block_skipping:  # drawn after the rest: a seed's widths stay the same
            rows = []
            for n in self.skippable:
                runs = list(
                    itertools.combinations_with_replacement(range(n + 1), self.num_stages - 1)
                )
                rows.append(runs[int(rng.integers(len(runs)))][::-1])  # non-increasing
            tokens += [rows[j][r] for r in range(self.num_stages - 1)
                       for j in range(self.num_groups)]
        return self.decode(tokens)

    def check_arch(self, arch: Arch) -> None:
        """Raises ValueError unless `arch` belongs to this space."""
        if not isinstance(arch, Arch):
            raise TypeError(f"Expected an Arch. Received: {type(arch).__name__}")
        skipping = bool(arch.skips)
        expected_rows = self.num_stages - 1 if self.block_skipping else 0
        if (arch.num_stages, arch.num_groups, arch.grid, arch.channel_multiple) != (
            self.num_stages,
            self.num_groups,
            self.grid,
            self.channel_multiple,
        ) or len(arch.skips) != expected_rows:
            def skip_text(on):
                return "with" if on else "without"
            raise ValueError(
                f"The arch has {arch.num_stages} stages, {arch.num_groups} unit groups, grid "
                f"{arch.grid}, channel multiple {arch.channel_multiple}, "
                f"{skip_text(skipping)} block skipping; this model's space "
                f"has {self.num_stages} stages, {self.num_groups} unit groups "
                f"({', '.join(self.group_labels)}), grid {self.grid}, channel multiple "
                f"{self.channel_multiple}, {skip_text(self.block_skipping)} block skipping."
            )
        self.decode(arch.tokens)

    def describe(self) -> str:
        units = self.analysis.units
        lines = [
            f"SearchSpace of {self.analysis.graph.model_name!r}: {self.num_stages} stages, "
            f"grid 1/{self.grid}, {self.num_tokens} tokens, {self.size:,} architectures"
            + (
                f" (token lists; channel counts multiples of {self.channel_multiple})"
                if self.channel_multiple > 1 else ""
            ) + (
                f"; block skipping over {sum(self.skippable)} identity blocks"
                if self.block_skipping else ""
            ),
        ]
        for group in self.analysis.groups:
            channels = sorted({units[u].channels for u in group.units})
            steps = sorted({self.unit_quantum(units[u]) for u in group.units})
            lines.append(
                f"  group {group.index} ({group.label}): {len(group.units)} units, "
                f"channels {channels}"
                + (f", in steps of {steps}" if steps != [1] else "")
                + (f", {self.skippable[group.index]} identity block(s)"
                   if self.block_skipping else "")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()
