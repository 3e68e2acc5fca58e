"""FeatureRows at the scale of an archive's train split."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from asr_pipeline.core.training_data import FeatureRows


def test_feature_rows_over_many_rows_keep_their_positions_as_arrays():
    """FeatureRows over two shards of a large split: positions cost bytes, not a tuple a row, and exclusions, limits,
    columns and subsets pick the same rows as the list of (shard, row) pairs they replace."""
    import tracemalloc

    n = 50_000
    shards = [SimpleNamespace(index=pd.DataFrame({"id": np.arange(n) + offset, "group": [f"EP{i // 100}" for i in
                                                                                            range(n)]}),
                              split_positions=lambda split: range(0, n, 2))  # every other row is in the split
              for offset in (0, 10 * n)]
    tracemalloc.start()
    try:
        rows = FeatureRows(shards, "train", exclude_ids={4, 10 * n + 8})
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert retained / len(rows) < 40, f"{retained / len(rows):.0f} bytes a row"
    expected = [(s, i) for s in (0, 1) for i in range(0, n, 2) if (s, i) not in {(0, 4), (1, 8)}]
    assert len(rows) == len(expected) and list(rows.positions) == expected and rows.positions[-1] == expected[-1]
    assert rows.column("id")[:3] == [0, 2, 6] and rows.column("id")[-1] == 10 * n + n - 2
    assert list(rows.groups()[:2]) == ["EP0", "EP0"]
    chosen = [5, 0, len(expected) - 1]
    assert list(rows.subset(chosen).positions) == [expected[k] for k in chosen]
    assert list(FeatureRows(shards, "train", limit=3).positions) == [(0, 0), (0, 2), (0, 4)]
