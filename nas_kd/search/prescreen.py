"""The training-free prescreen (``search.prescreen``): which candidate of a sampled pool is worth training.

With a prescreen, the searcher draws ``pool`` new, feasible candidates for each trial (``optuna_search.py``),
scores each at initialisation with a zero-cost proxy (``arch.zero_cost``: NASWOT) on a fixed batch of training
images, and trains one. The others are told to Optuna as PRUNED (user attribute ``untrained``: "prescreened
out"), so the sampler learns to avoid what the proxy rejects, and no trial of the budget is spent on them.

Which one: a raw proxy score grows with the network's width (more units tell images apart), so in a search
that trades accuracy against size, taking the best score would only buy big students. The candidate trained is
the first drawn of those that no other candidate of the pool dominates in (higher score, fewer params): a
candidate is dropped only when another one is both smaller and scores higher. Scores of every pool member are
kept as the user attribute ``prescreen_score``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nas_kd.arch import build_model, count_params
from nas_kd.arch.zero_cost import naswot_score
from nas_kd.config import PrescreenConfig
from nas_kd.data import Split
from nas_kd.search.pareto import pareto_mask

SCORE = "prescreen_score"  # user attribute: the proxy's score of a candidate


class Prescreen:
    """``choose(configs)`` -> (index of the candidate to train, every candidate's score). Picklable (searcher
    checkpoints): it keeps the batch as a CPU tensor and builds each candidate on the CPU."""

    def __init__(self, config: PrescreenConfig, train: Split, num_classes: int, seed: int):
        self.pool = config.pool
        generator = torch.Generator().manual_seed(seed)  # the same images for every candidate and every resume
        index = torch.randperm(len(train), generator=generator)[: config.batch_size]
        self.images = train.batch(index.to(train.device)).cpu()
        self.num_classes = num_classes

    def score(self, config: dict[str, Any]) -> tuple[float, int]:
        """The candidate's proxy score and params, built as its trial would build it (same seed)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config.get("seed", 0)))
            model = build_model(config["arch"], tuple(self.images.shape[1:]), self.num_classes)  # type: ignore[arg-type]
        return naswot_score(model, self.images), count_params(model)

    def choose(self, configs: list[dict[str, Any]]) -> tuple[int, list[float]]:
        scored = np.array([self.score(config) for config in configs], dtype=float)
        # pareto_mask ranks a row that is not finite (-inf: singular K; NaN: no ReLU) after every finite one.
        front = pareto_mask(scored, ["maximize", "minimize"])
        return int(np.flatnonzero(front)[0]), scored[:, 0].tolist()
