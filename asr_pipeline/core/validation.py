"""Which rows choose the best training checkpoint: a seeded sample of the valid split spread over episodes, or, with
no valid split, whole train episodes held out (and said so loudly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from asr_pipeline.core.text import episode_codes

if TYPE_CHECKING:
    from asr_pipeline.core.training_data import FeatureRows


def episode_stratified_sample(groups, size: int, seed: int) -> np.ndarray:
    """Indices of at most `size` rows, spread over as many episodes as possible: a seeded random order of episodes,
    and rounds that take one random not-yet-taken clip of every episode, until `size` rows are taken. Validation then
    sees every era and programme of the data, not the oldest episodes' first clips."""
    n = len(groups)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    codes = episode_codes(groups)
    shuffled = rng.permutation(n)
    shuffled_codes = codes[shuffled]
    by_episode = np.argsort(shuffled_codes, kind="stable")
    sorted_codes = shuffled_codes[by_episode]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    rank = np.empty(n, dtype=np.int64)  # the round in which each (shuffled) clip is taken
    rank[by_episode] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    episode_turn = rng.permutation(int(codes.max()) + 1)
    taken = np.lexsort((episode_turn[shuffled_codes], rank))[:size]
    return np.sort(shuffled[taken])


@dataclass(frozen=True)
class Validation:
    """Where the rows that choose the best checkpoint come from; `warning` is set when it is not the valid split."""

    source: str  # "valid split" | "held-out train episodes" | "none"
    rows: int
    episodes: int
    warning: str | None = None

    def as_summary(self) -> dict:
        return {"validation_source": self.source, "valid_rows_decoded": self.rows, "valid_episodes": self.episodes,
                "validation_warning": self.warning}


def choose_validation(train_rows: FeatureRows, valid_rows: FeatureRows, size: int, seed: int,
                      holdout_share: float = 0.1) -> tuple[FeatureRows, FeatureRows, Validation]:
    """(rows to train on, rows to validate on, what was done). A seeded sample of the valid split, stratified by
    episode. With no valid split, whole episodes of train (about holdout_share of its rows, at most `size`) are held
    out and not trained on, so best-checkpoint selection still has unseen data; with fewer than two train episodes
    there is nothing to hold out and selection is off. Both fallbacks say so in Validation.warning."""
    if len(valid_rows):
        sample = valid_rows.subset(episode_stratified_sample(valid_rows.groups(), size, seed))
        return train_rows, sample, Validation("valid split", len(sample), len(set(sample.groups())))
    groups = train_rows.groups()
    episodes = np.unique(groups)
    if len(episodes) < 2:
        return train_rows, valid_rows, Validation("none", 0, 0, (
            "NO VALIDATION: the valid split is empty and the train split has fewer than two episodes to hold out; "
            "the last checkpoint is kept without selection. Give ASR_SPLIT_RATIOS a valid share."))
    rng = np.random.default_rng(seed)
    target = min(size, max(1, int(round(len(groups) * holdout_share))))
    per_episode = {e: int(c) for e, c in zip(*np.unique(groups, return_counts=True))}
    held, count = [], 0
    for episode in rng.permutation(episodes)[:-1]:  # at least one episode stays for training
        held.append(episode)
        count += per_episode[episode]
        if count >= target:
            break
    is_held = np.isin(groups, held)
    kept, holdout = train_rows.subset(np.flatnonzero(~is_held)), train_rows.subset(np.flatnonzero(is_held))
    sample = holdout.subset(episode_stratified_sample(holdout.groups(), size, seed))
    warning = (f"NO VALID SPLIT: the valid split is empty, so {len(holdout)} clips of {len(held)} train episodes "
               f"are held out (not trained on) and {len(sample)} of them choose the best checkpoint. Give "
               "ASR_SPLIT_RATIOS a valid share for a stable validation set.")
    return kept, sample, Validation("held-out train episodes", len(sample), len(held), warning)
