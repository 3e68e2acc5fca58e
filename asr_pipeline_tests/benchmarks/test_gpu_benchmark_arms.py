"""benchmarks/gpu_benchmark.py's --packed-batches: extra packed arms, each a batch size and an optional learning rate."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_benchmark  # noqa: E402


def test_packed_arms_take_a_batch_size_and_an_optional_learning_rate_each_once():
    assert gpu_benchmark.packed_arms("") == ()
    assert gpu_benchmark.packed_arms("64@4e-5, 64,32,64") == ((32, None), (64, None), (64, 4e-5))
    # the seed's rate is the plain arm, not a second run of it under another name
    assert gpu_benchmark.packed_arms("64,64@1e-5") == ((64, None),)


@pytest.mark.parametrize("text", ["x", "64@", "0", "64@-1e-5", "64@fast", "64@nan", "64@inf",
                                  "64@4e-5,64@4.0000001e-5"])  # the last two would share a name and a folder
def test_a_malformed_packed_arm_stops_the_run_naming_it(text):
    with pytest.raises(SystemExit, match="--packed-batches"):
        gpu_benchmark.packed_arms(text)
