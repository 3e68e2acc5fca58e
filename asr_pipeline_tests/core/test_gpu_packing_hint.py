"""What packed training on a GPU tells its user (core/packing.py gpu_packing_hint): a batch that fills the step,
and either less gradient accumulation or the step settings and rate scaled; nothing when there is nothing to fill.
Its emission by train_whisper is tested in test_packed_training.py."""

from asr_pipeline.core.packing import gpu_packing_hint, windows_per_step


def test_a_gpu_user_hears_how_to_fill_a_packed_step_and_a_filled_step_is_left_alone():
    factor = 3.692  # clips a window in the GPU benchmark's corpus (240 clips in 65 windows)
    hint = gpu_packing_hint(4, batch_size=16, learning_rate=1e-5, packing_factor=factor)  # the default step
    assert "4 windows a step" in hint and "batch_size of about 60 (now 16)" in hint
    assert "divide max_steps" in hint and "by about 3.8" in hint and "about 3.8e-05" in hint  # 60 / 16
    assert "past the 4x measured" in gpu_packing_hint(1, batch_size=1, learning_rate=1e-5, packing_factor=factor)
    # a split of fewer windows than a filled step cannot fill one: nothing to advise
    assert gpu_packing_hint(4, batch_size=16, learning_rate=1e-5, packing_factor=factor, train_windows=15) is None
    assert gpu_packing_hint(4, batch_size=16, learning_rate=1e-5, packing_factor=factor, train_windows=16)
    # the batch suggested does fill the step, whatever the rounding of the current one
    for batch_size in (1, 2, 16, 32):
        windows = windows_per_step(batch_size, utterances=240, windows=65)
        suggested = int(gpu_packing_hint(windows, batch_size, 1e-5, factor).split("batch_size of about ")[1].split()[0])
        assert windows_per_step(suggested, utterances=240, windows=65) >= 16
        assert gpu_packing_hint(windows_per_step(suggested, 240, 65), suggested, 1e-5, factor) is None
    # enough accumulation to give up: the optimizer step keeps its utterances, the rate and budget stay
    kept = gpu_packing_hint(4, batch_size=16, learning_rate=1e-5, packing_factor=factor, gradient_accumulation_steps=8)
    assert "batch_size of about 64 with gradient_accumulation_steps 2 (now 16 and 8)" in kept
    assert "about 128 utterances" in kept and "keep their meaning" in kept and "e-05" not in kept
    # whatever the settings, the advice fills the step and keeps an optimizer step's utterances within a batch
    for batch_size in range(1, 257, 7):
        for accumulation in range(2, 9):
            windows = windows_per_step(batch_size, utterances=240, windows=65)
            said = gpu_packing_hint(windows, batch_size, 1e-5, factor, accumulation)
            if said is None or "keep their meaning" not in said:
                continue
            batch, steps = (int(said.split("batch_size of about ")[1].split()[0]),
                            int(said.split("gradient_accumulation_steps ")[1].split()[0]))
            assert steps < accumulation and windows_per_step(batch, 240, 65) >= 16
            assert 0 <= batch * steps - batch_size * accumulation < steps
    # not enough: no accumulation left, and the rate and budget scale by what an optimizer step gains (60 / 32)
    short = gpu_packing_hint(4, batch_size=16, learning_rate=1e-5, packing_factor=factor, gradient_accumulation_steps=2)
    assert "gradient_accumulation_steps 1" in short and "by about 1.9" in short and "about 1.9e-05" in short
    assert gpu_packing_hint(17, batch_size=64, learning_rate=4e-5, packing_factor=factor) is None
    assert gpu_packing_hint(8, batch_size=8, learning_rate=1e-5, packing_factor=1.0) is None  # nothing packed
    assert "1 window a step" in gpu_packing_hint(1, batch_size=1, learning_rate=1e-5, packing_factor=factor)
