"""The training budget in optimizer steps, and the wall time a training is projected to take from the previous one's
measured pace (both printed before training starts)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from asr_pipeline.core.trainer_hooks import duration_text

if TYPE_CHECKING:
    from asr_pipeline.core.training import TrainingSettings


def training_steps(settings: TrainingSettings, train_items: int, world_size: int = 1,
                   device_batch: int | None = None) -> int:
    """The budget in optimizer steps: max_steps, or epochs over the train split. train_items: clips, or packed
    windows; device_batch: items a device step takes (batch_size unpacked)."""
    if settings.max_steps is not None:
        return int(settings.max_steps)
    per_step = (device_batch or settings.batch_size) * settings.gradient_accumulation_steps * max(1, world_size)
    return max(1, math.ceil(settings.epochs * math.ceil(train_items / per_step)))


def projected_wall_time(steps: int, settings: TrainingSettings, device: str, base_source: str,
                        previous: dict | None, device_batch: int | None = None) -> tuple[float | None, str]:
    """(seconds, how they were projected) from the previous training's measured pace, scaled to this batch size
    (device_batch: items a device step takes, packed windows or clips; batch_size when None); None when there is
    no comparable measurement (another device, base model or packing, or none yet)."""
    steps_run = (previous or {}).get("steps_run", (previous or {}).get("steps"))
    if not previous or not steps_run or not previous.get("train_runtime_s"):
        return None, "no previous training to measure the pace from; it is measured after the first steps"
    if previous.get("device") != device or previous.get("base_model") != base_source:
        return None, (f"the previous training ran on {previous.get('device')} with {previous.get('base_model')}, "
                      "not comparable; the pace is measured after the first steps")
    from asr_pipeline.core.model import attention_description

    if device == "cuda" and previous.get("attention") != attention_description():
        # before attention_without_cudnn (no "attention" recorded) a packed GPU step ran several times slower
        return None, (f"the previous training ran with attention {previous.get('attention', 'unrecorded')!r}, not "
                      "comparable; the pace is measured after the first steps")
    old = previous.get("settings", {})
    if old.get("packing", False) != settings.packing:  # a window costs more than a clip: paces are not comparable
        return None, (f"the previous training ran with packing {'on' if old.get('packing') else 'off'}, not "
                      "comparable; the pace is measured after the first steps")
    old_items = (previous.get("windows_per_step") or old.get("batch_size", settings.batch_size)) \
        * old.get("gradient_accumulation_steps", 1)
    per_item = previous["train_runtime_s"] / (steps_run * old_items)
    batch = device_batch or settings.batch_size
    per_step = per_item * batch * settings.gradient_accumulation_steps
    unit = " windows" if settings.packing else ""
    return per_step * steps, (f"{per_step:.3g} s/step from the previous training ({steps_run} steps in "
                              f"{duration_text(previous['train_runtime_s'])}, validation included), scaled to batch "
                              f"{batch}{unit}x{settings.gradient_accumulation_steps}")
