"""The A/A noise floor: one configuration compared with itself under two disjoint seed sets.

Nothing is added between the two arms, so every difference is training randomness (seeds, and on
other machines the arithmetic) plus test sampling. The same seed-aware rule that calls a setting
significantly hurt or helped (:func:`cxrstudy.evaluate.bootstrap.mean_delta_bootstrap`,
:func:`cxrstudy.tracking.keys.significance`) is applied to each A/A comparison; a calibrated rule
calls about 5% of them significant (docs/PROTOCOL.md "Statistics").

The A/A configurations of a study are its unbalanced models of the headline method: each
single-hospital model (scored on the test splits of every study hospital, the groups it meets as a
base) and each two-hospital model (scored on its two hospitals' test splits, as in its settings).
Arm a is the study's seeds; arm b as many further seeds, after the largest (0,1,2 -> 3,4,5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass

from cxrstudy.labels import label_key
from cxrstudy.train.balancing import BALANCE_NONE
from cxrstudy.train.config import TrainConfig, normalise_envs


@dataclass(frozen=True)
class AAComparison:
    """One A/A comparison: ``config`` (its seed ignored) trained with ``seeds_a`` and with ``seeds_b``,
    scored on the test splits of ``eval_envs``."""

    config: TrainConfig
    eval_envs: tuple[str, ...]
    seeds_a: tuple[int, ...]
    seeds_b: tuple[int, ...]

    @property
    def arm(self) -> str:
        return "single" if len(self.config.envs) == 1 else "pair"

    @property
    def name(self) -> str:
        return f"{'+'.join(self.config.envs)}/{label_key(self.config.label)}"

    def configs(self, seeds) -> list[TrainConfig]:
        return [dataclasses.replace(self.config, seed=int(s)) for s in seeds]

    def key(self) -> str:
        """Identity for reuse: the two seed sets' model hashes and what they are scored on."""
        d = {"a": [c.content_hash() for c in self.configs(self.seeds_a)],
             "b": [c.content_hash() for c in self.configs(self.seeds_b)], "eval": list(self.eval_envs), "version": 1}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def disjoint_seeds(seeds) -> tuple[int, ...]:
    """As many seeds as ``seeds``, none of them among ``seeds``: the ones after the largest."""
    top = max(int(s) for s in seeds)
    return tuple(range(top + 1, top + 1 + len(seeds)))


def aa_comparisons(template: TrainConfig, envs: list[str], labels: list[str], seeds) -> list[AAComparison]:
    """The A/A comparisons of a study over ``envs`` x ``labels`` (see the module docstring)."""
    seeds_a = tuple(int(s) for s in seeds)
    seeds_b = disjoint_seeds(seeds_a)
    base = dataclasses.replace(template, balance=BALANCE_NONE)
    out = []
    for label in labels:
        for env in envs:
            out.append(AAComparison(dataclasses.replace(base, envs=(env,), label=label), tuple(envs), seeds_a, seeds_b))
        for a, b in itertools.combinations(envs, 2):
            pair = normalise_envs([a, b], BALANCE_NONE)
            out.append(AAComparison(dataclasses.replace(base, envs=pair, label=label), tuple(pair), seeds_a, seeds_b))
    return out


def aa_training_cells(comparisons: list[AAComparison]) -> list[TrainConfig]:
    """The models the A/A comparisons need beyond the study's own: every config at ``seeds_b``."""
    return [c for aa in comparisons for c in aa.configs(aa.seeds_b)]
