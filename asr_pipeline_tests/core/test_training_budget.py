"""Issue 11: the training budget (point 9) and resuming after a save cut short by kill -9 (point 8)."""

import shutil

import pytest

from asr_pipeline.core.trainer_hooks import CHECKPOINT_COMPLETE
from asr_pipeline.core.training import TrainingSettings, train_whisper, training_fingerprint
from asr_pipeline.core.training_budget import projected_wall_time
from asr_pipeline_tests.core.test_training_options import shard  # noqa: F401  (the module-scoped fixture)

FAST = dict(learning_rate=1e-3, batch_size=4, warmup_steps=0, logging_steps=1, max_eval_samples=2,
            generation_max_length=8)


def test_the_budget_is_steps_or_epochs_never_both():
    with pytest.raises(ValueError, match="max_steps or epochs, not both"):
        TrainingSettings(max_steps=10, epochs=1.0).validate()
    with pytest.raises(ValueError, match="max_steps or epochs"):
        TrainingSettings(max_steps=None).validate()
    with pytest.raises(ValueError, match="epochs must be > 0"):
        TrainingSettings(max_steps=None, epochs=0.0).validate()


def test_an_epoch_budget_trains_that_many_passes_and_the_wall_time_is_projected_first(shard, tiny_model_dir,
                                                                                        tmp_path):
    previous = {"steps": 12, "steps_run": 10, "train_runtime_s": 20.0, "device": "cpu",
                "base_model": str(tiny_model_dir), "settings": {"batch_size": 2, "gradient_accumulation_steps": 1}}
    lines = []
    summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "model",
                            TrainingSettings(**FAST, max_steps=None, epochs=2.0, eval_steps=100, packing=False),
                            emit=lines.append, previous_summary=previous)
    # 10 train clips in batches of 4: 3 steps an epoch, 6 for two (packed windows: test_packing.py)
    assert summary["steps"] == 6 and summary["epochs"] == pytest.approx(2.0)
    # 2 s a sample of 2 = 1 s a sample, so 4 s a step of 4: 24 s for 6 steps, printed before the first step
    assert summary["projected_wall_s"] == 24.0
    projection = next(i for i, line in enumerate(lines) if line.startswith("projected wall time: 0m24s"))
    assert projection < next(i for i, line in enumerate(lines) if line.startswith("step 1/6"))
    assert any(line.startswith("measured ") and "s/step over 6 steps" in line for line in lines)


def test_a_resumed_training_skips_a_half_written_checkpoint_and_uses_the_previous_complete_one(shard, tiny_model_dir,
                                                                                               tmp_path):
    work = tmp_path / "work"
    settings = TrainingSettings(**FAST, max_steps=8, eval_steps=2)

    def killed_after_step_4(line):
        if line.startswith("step 5/"):
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_whisper(str(tiny_model_dir), [shard], tmp_path / "out", settings, emit=killed_after_step_4,
                      work_dir=work)
    assert (work / "checkpoint-4" / CHECKPOINT_COMPLETE).is_file()
    # kill -9 while checkpoint-6 was being saved: half its weights written, nothing after them
    half = work / "checkpoint-6"
    half.mkdir()
    weights = (work / "checkpoint-4" / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copy(work / "checkpoint-4" / "config.json", half / "config.json")

    lines = []
    summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "out", settings, emit=lines.append,
                            work_dir=work)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8 and summary["steps_run"] == 4
    assert any("ignoring checkpoint-6" in line for line in lines)


def test_packing_is_part_of_the_training_fingerprint_and_of_the_pace_projection():
    packed, unpacked = TrainingSettings(packing=True), TrainingSettings(packing=False)
    assert training_fingerprint("base", [{}], packed) != training_fingerprint("base", [{}], unpacked)
    previous = {"steps_run": 10, "train_runtime_s": 40.0, "device": "cpu", "base_model": "base",
                "windows_per_step": 2, "settings": {"batch_size": 16, "gradient_accumulation_steps": 1,
                                                    "packing": True}}
    # 2 s a window: 3 windows a step for 5 steps
    assert projected_wall_time(5, packed, "cpu", "base", previous, device_batch=3)[0] == pytest.approx(30.0)
    seconds, why = projected_wall_time(5, unpacked, "cpu", "base", previous)
    assert seconds is None and "packing on" in why
    # on a GPU, a pace measured before cuDNN's attention was taken out (no "attention" recorded) is not this one's
    gpu = {**previous, "device": "cuda"}
    seconds, why = projected_wall_time(5, packed, "cuda", "base", gpu, device_batch=3)
    assert seconds is None and "'unrecorded'" in why
    gpu["attention"] = "sdpa without cuDNN"
    assert projected_wall_time(5, packed, "cuda", "base", gpu, device_batch=3)[0] == pytest.approx(30.0)
