"""finetuned_checkpoint's blocking check: a training whose loss went NaN or infinite is not evaluated."""

import json
import math
from pathlib import Path

import dagster as dg

LOSS_FINITE = "training_loss_finite"

TRAINING_CHECKS = [
    dg.AssetCheckSpec(LOSS_FINITE, asset="finetuned_checkpoint", blocking=True,
                      description="Every logged training loss is finite (a NaN/inf run must not be evaluated)."),
]


def training_loss_finite(checkpoint_dir: Path) -> dg.AssetCheckResult:
    history = json.loads((checkpoint_dir / "training_log.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h] + [h["train_loss"] for h in history if "train_loss" in h]
    bad = [x for x in losses if not math.isfinite(x)]
    return dg.AssetCheckResult(check_name=LOSS_FINITE, asset_key="finetuned_checkpoint",
                               passed=bool(losses) and not bad,
                               metadata={"logged_losses": len(losses), "non_finite": len(bad)})
