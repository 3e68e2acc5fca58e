"""What the trainer reads from featurized shards: the rows of a split (FeatureRows, a torch-style dataset over the
memory-mapped shards), the collator that rebuilds Whisper's inputs and labels, and the rows to leave out because their
audio is also in the test split."""

from __future__ import annotations

from collections import abc
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from asr_pipeline.core.features import FeatureShard, rebuild_padded


class RowPositions(abc.Sequence):
    """(shard, row) of each row of a FeatureRows, kept as two numpy arrays: a train split of millions of rows as a
    list of tuples costs about 100 bytes a row, which every forked loader worker copies page by page as it reads."""

    def __init__(self, shards: np.ndarray, rows: np.ndarray):
        self.shards, self.rows = shards.astype(np.int32, copy=False), rows.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return RowPositions(self.shards[k], self.rows[k])
        return int(self.shards[k]), int(self.rows[k])

    def take(self, chosen) -> "RowPositions":
        chosen = np.asarray(chosen, dtype=np.int64)
        return RowPositions(self.shards[chosen], self.rows[chosen])

    def __eq__(self, other):
        if isinstance(other, RowPositions):
            return np.array_equal(self.shards, other.shards) and np.array_equal(self.rows, other.rows)
        return list(self) == list(other) if isinstance(other, abc.Sequence) else NotImplemented

    __hash__ = None


class FeatureRows:
    """A torch-style dataset over chosen rows of one or more feature shards. Rows whose manifest id is in exclude_ids
    (deleted from the table since the shard was made, or left out for another reason) are not in it."""

    def __init__(self, shards: Sequence[FeatureShard], split: str, limit: int | None = None,
                 exclude_ids: frozenset[int] | set[int] = frozenset()):
        """exclude_ids: manifest ids left out (exact duplicates of test audio, deleted rows)."""
        self.shards = list(shards)
        per_shard = [np.asarray(shard.split_positions(split), dtype=np.int64) for shard in self.shards]
        if exclude_ids:
            excluded = np.fromiter(exclude_ids, dtype=np.int64, count=len(exclude_ids))
            per_shard = [rows[~np.isin(shard.index["id"].to_numpy()[rows].astype(np.int64), excluded)]
                         for shard, rows in zip(self.shards, per_shard)]
        self.positions = RowPositions(
            np.concatenate([np.full(len(rows), s, np.int32) for s, rows in enumerate(per_shard)] or [np.zeros(0)]),
            np.concatenate(per_shard or [np.zeros(0)]))
        if limit is not None:
            self.positions = self.positions[:limit]

    def __len__(self) -> int:
        return len(self.positions)

    def label_lengths(self) -> list[int]:
        return [int(n) for n in self.column("label_length")]  # column-wise: .iloc a row is microseconds each

    def __getitem__(self, k: int) -> dict[str, Any]:
        s, i = self.positions[k]
        shard = self.shards[s]
        row = shard.index.iloc[i]
        return {"frames": np.asarray(shard.frames(i)), "pad_value": float(row["pad_value"]),
                "labels": list(row["labels"])}

    def row(self, k: int):
        s, i = self.positions[k]
        return self.shards[s].index.iloc[i]

    def _column_array(self, name: str, convert=lambda c: c) -> np.ndarray:
        values = np.empty(len(self.positions), dtype=object)
        by_shard = np.argsort(self.positions.shards, kind="stable")  # once: each shard's rows are then one run
        bounds = np.searchsorted(self.positions.shards[by_shard], np.arange(len(self.shards) + 1))
        for s, shard in enumerate(self.shards):
            mine = by_shard[bounds[s]:bounds[s + 1]]
            if len(mine):
                values[mine] = convert(shard.index[name]).to_numpy()[self.positions.rows[mine]]
        return values

    def column(self, name: str) -> list:
        """One index column's value for every row, read column-wise: fast on millions of rows."""
        return self._column_array(name).tolist()

    def groups(self) -> np.ndarray:
        """Each row's episode (the manifest's `group`), read column-wise: fast on millions of rows."""
        return self._column_array("group", lambda column: column.astype(str))

    def subset(self, chosen) -> "FeatureRows":
        """The same shards, only the rows at `chosen` (indices into this dataset), in that order."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.positions = self.positions.take(chosen)
        return out


@dataclass
class SpeechSeq2SeqCollator:
    """Pads a batch: rebuilds Whisper's 30 s inputs and pads labels with -100.

    The tokenizer puts <|startoftranscript|> (decoder_start_token_id, 50258 for OpenAI's models) first; the model
    prepends it again when it shifts labels right, so it is stripped here. (The notebook compared with BOS, 50257,
    which never matches, and trained on a doubled start token.)
    """

    decoder_start_token_id: int
    pad_label: int = -100

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        inputs = np.stack([rebuild_padded(f["frames"], f["pad_value"]) for f in features])
        labels = [list(f["labels"]) for f in features]
        if labels and all(seq and seq[0] == self.decoder_start_token_id for seq in labels):
            labels = [seq[1:] for seq in labels]
        width = max(len(seq) for seq in labels)
        padded = torch.full((len(labels), width), self.pad_label, dtype=torch.long)
        for row, seq in enumerate(labels):
            padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return {"input_features": torch.from_numpy(inputs), "labels": padded}


def duplicate_audio_ids(shards: Sequence[FeatureShard]) -> set[int]:
    """Ids of train and valid rows whose audio (sha256 of the 16 kHz samples) also sits in the test split of any
    batch: an exact duplicate recording would otherwise be trained on and then scored as unseen."""
    test_hashes: set[str] = set()
    for shard in shards:
        if "audio_sha256" in shard.index:
            test_rows = shard.index[shard.index["split"] == "test"]
            test_hashes.update(h for h in test_rows["audio_sha256"] if isinstance(h, str))
    leaked: set[int] = set()
    for shard in shards:
        if "audio_sha256" in shard.index and test_hashes:
            rows = shard.index[(shard.index["split"] != "test") & shard.index["audio_sha256"].isin(test_hashes)]
            leaked.update(int(i) for i in rows["id"])
    return leaked
