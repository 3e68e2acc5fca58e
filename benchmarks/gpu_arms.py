"""The GPU benchmark's models and arms (benchmarks/gpu_benchmark.py's docstring says what they measure): the
random models, the warm-up, the training arms (the seed; ours unpacked, packed, and packed with more utterances a
step) and the evaluation arms (the seed's Seq2SeqTrainer.predict against our decoding). No Dagster import: the GPU
machine has none.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

from bench_common import cpu_info, random_whisper, seed_evaluate, seed_train, step_summary, time_steps

SEED_LEARNING_RATE = 1e-5  # the notebook's

TURBO_SHAPE = {"num_mel_bins": 128, "d_model": 1280, "encoder_layers": 32, "decoder_layers": 4,
               "encoder_attention_heads": 20, "decoder_attention_heads": 20, "encoder_ffn_dim": 5120,
               "decoder_ffn_dim": 5120}


def packed_arm_name(batch: int, learning_rate: float | None) -> str:
    """An extra packed arm's name, also its model folder: packed_batch64, packed_batch64_lr4e-05."""
    return f"packed_batch{batch}" + (f"_lr{learning_rate:g}" if learning_rate else "")


def random_model(data: Path, out: Path, shape: str, tiny: bool = False) -> str:
    """A seeded random initialisation of whisper-base's configuration, or of the 128-mel turbo shape (tiny: two
    narrow layers each, to try the script on a CPU)."""
    if shape != "turbo128":
        return random_whisper(data / "tokenizer", out, {})
    narrow = {"d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024} if tiny else {}
    return random_whisper(data / "tokenizer", out, {**TURBO_SHAPE, **narrow})


def warm_up(model_dir: str, device: str = "cuda") -> None:
    """CUDA's context, cuBLAS handles and the kernels' first loads (training and generation), paid before any timed
    run. (The 2026-11-27 results predate the generation part.) device: "cpu" only to try this function here."""
    import torch

    from asr_pipeline.core.model import load_model

    if device == "cuda" and not torch.cuda.is_available():
        return
    from asr_pipeline.core.model import attention_without_cudnn

    model = load_model(model_dir, device=device)
    features = torch.randn(2, model.config.num_mel_bins, 3000, device=device)
    labels = torch.randint(0, 1000, (2, 20), device=device)
    # the seed's fp16 with PyTorch's attention defaults, as the seed runs; ours in bf16 under our training's and
    # decoding's attention (without cuDNN, unless --keep-cudnn-sdpa)
    with torch.autocast(device, dtype=torch.float16):
        model(input_features=features, labels=labels).loss.backward()
    with attention_without_cudnn(), torch.autocast(device, dtype=torch.bfloat16):
        model(input_features=features, labels=labels).loss.backward()
    model.eval()
    with torch.no_grad():  # generation too: the seed's (fp16 autocast), then in float32 and bf16 weights as ours
        with torch.autocast(device, dtype=torch.float16):
            model.generate(input_features=features, max_new_tokens=4)
        with attention_without_cudnn():
            model.generate(input_features=features, max_new_tokens=4)
            model.to(torch.bfloat16).generate(input_features=features.to(torch.bfloat16), max_new_tokens=4)
    if device == "cuda":
        torch.cuda.synchronize()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def our_decode(model_dir: str, shard, prefer_bf16: bool, greedy_only: bool = False, scored: bool = False) -> dict:
    """The report's decoding (transformers_decoding.transcribe_features) on the test split, placed as
    evaluate_on_test places it. scored: also the report's normalised CER (real weights only: a random model's CER
    means nothing)."""
    import torch

    from asr_pipeline.core.decoding import DecodingPolicy
    from asr_pipeline.core.transformers_decoding import transcribe_features
    from asr_pipeline.core.model import inference_placement, load_model, load_processor
    from asr_pipeline.core.training_data import FeatureRows

    device, dtype = inference_placement(prefer_bf16)
    model, processor = load_model(model_dir, device=device, dtype=dtype), load_processor(model_dir)
    rows = FeatureRows([shard], "test")
    durations = [float(d) for d in rows.column("duration")]
    policy = DecodingPolicy(temperatures=(0.0,)) if greedy_only else DecodingPolicy()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    decoded = transcribe_features(model, processor, lambda i: shard.features(rows.positions[i][1]), durations,
                                  policy, emit=lambda _: None)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = [len(processor.tokenizer(t, add_special_tokens=False).input_ids) for t in decoded.texts]
    scores = {}
    if scored:
        from packing_benchmark import score_test_split

        rates, _ = score_test_split(rows, decoded.texts)
        scores = {k: rates[k] for k in ("cer", "cer_normalized", "cer_normalized_ci95")}
        scores["texts"] = decoded.texts  # what the errors are, beside the rates (the references are the corpus's)
    return {"utterances": len(rows), "seconds": round(seconds, 3), "utterances_per_s": round(len(rows) / seconds, 4),
            **scores,
            "device": device, "dtype": str(dtype).replace("torch.", ""),
            "temperatures": list(policy.temperatures), "mean_budget_tokens": round(
                sum(policy.budget(d) for d in durations) / len(durations), 1),
            "mean_tokens_of_final_text": round(sum(tokens) / len(tokens), 1), **{k: round(v, 3) for k, v in
                                                                                  decoded.stats().items()}}

def train_arms(entry: dict, seed, shard, model_dir: str, work: Path, utterances: int, batch: int,
               packed_batches: tuple[tuple[int, float | None], ...], only_ours: bool, deadline: float,
               save, default_packed: bool = True) -> None:
    """entry["training"] and entry["ratios"]: every arm trains for the same utterances; work: the shape's folder;
    packed_batches: (utterances a step, learning rate or None for the seed's 1e-5) of each extra packed arm;
    default_packed: False leaves out the packed arm at the default step (device time for the extra arms)."""
    from packing_benchmark import train_ours

    steps = utterances // batch
    started = time.perf_counter()
    try:
        if only_ours:
            raise RuntimeError("not run (--only-ours)")
        seed_result, seed_model = seed_train(seed, work / "seed_train", work / "seed_out", model_dir, steps, batch)
        del seed_model
        entry["training"]["seed"] = {"precision": "fp16 autocast (the notebook's)", "steps": steps,
                                     "utterances_seen": steps * batch, "training_s": seed_result["seconds"],
                                     "call_s": round(time.perf_counter() - started, 2),
                                     "utterances_per_s": seed_result["samples_per_s"]}
    except Exception as error:
        entry["training"]["seed"] = {"error": f"{type(error).__name__}: {error}"}
    save()
    arms = [("unpacked", False, batch, None)] + ([("packed", True, batch, None)] if default_packed else [])
    # GPU-sized packed steps: as many utterances a step as the batch's windows hold (--packed-batches), at the
    # seed's lr or the one given (fewer optimizer steps for the same utterances)
    arms += [(packed_arm_name(b, lr) if (b, lr) != (batch, None) else "packed", True, b, lr)
             for b, lr in packed_batches
             if (b, lr) != (batch, None) or not default_packed]  # with the default arm, that one is "packed" itself
    for name, packing, arm_batch, arm_lr in arms:
        if time.time() > deadline:
            entry["training"][name] = {"skipped": "deadline"}
            continue
        options = SimpleNamespace(utterances=utterances, batch_size=arm_batch,
                                  learning_rate=arm_lr or SEED_LEARNING_RATE, valid=10, seed=42)
        try:
            seconds = time_steps()
            entry["training"][name] = train_ours(name, shard, work / "models", model_dir, options, packing,
                                                 True)
        except Exception as error:  # one broken arm must not lose the others' figures
            import traceback

            traceback.print_exc()
            entry["training"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        result = entry["training"][name]
        result["batch_size"], result["learning_rate"] = arm_batch, arm_lr or SEED_LEARNING_RATE
        result.update(step_summary(seconds, result["utterances_seen"] / max(1, result["steps"]),
                                   result["train_runtime_s"]))
        save()
    training = entry["training"]
    entry["ratios"] = {f"{name}_vs_seed_utterances_per_s": round(training[name]["utterances_per_s"]
                                                                 / training["seed"]["utterances_per_s"], 2)
                       for name in ("unpacked", "packed")
                       if "utterances_per_s" in training.get(name, {}) and "utterances_per_s" in training["seed"]}
    for name, *_ in arms[1:]:  # whole runs (fixed costs included), and steady steps
        for key in ("utterances_per_s", "utterances_per_s_steady"):
            if key in training.get(name, {}) and key in training.get("unpacked", {}):
                entry["ratios"][f"{name}_vs_unpacked_{key}"] = round(training[name][key] / training["unpacked"][key], 2)
    save()


def evaluate_arms(evaluation: dict, seed, shard, model_dir: str, work: Path, deadline: float, save,
                  scored: bool = False, known: dict | None = None) -> None:
    """The seed's predict, then ours in bf16, in one greedy pass and in float32, on the test split (scored: with the
    report's CER, for real weights; known: arms already measured on this model, copied instead of decoded again)."""
    for name, run in (("seed", lambda: seed_scored(work, model_dir, seed, scored)),
                      ("ours_bf16", lambda: our_decode(model_dir, shard, prefer_bf16=True, scored=scored)),
                      ("ours_greedy_bf16", lambda: our_decode(model_dir, shard, True, greedy_only=True,
                                                              scored=scored)),
                      ("ours_fp32", lambda: our_decode(model_dir, shard, prefer_bf16=False, scored=scored))):
        if (known or {}).get(name):
            evaluation[name] = {**known[name], "measured_in": "test_scores"}
        elif time.time() > deadline:
            evaluation[name] = {"skipped": "deadline"}
            continue
        else:
            try:
                evaluation[name] = run()
            except Exception as error:  # one broken arm must not lose the others' figures
                evaluation[name] = {"error": f"{type(error).__name__}: {error}"}
        if name != "seed" and "utterances_per_s" in evaluation[name] and "utterances_per_s" in evaluation["seed"]:
            evaluation[name]["speedup_vs_seed"] = round(evaluation[name]["utterances_per_s"]
                                                        / evaluation["seed"]["utterances_per_s"], 2)
        save()


def seed_scored(work: Path, model_dir: str, seed, scored: bool) -> dict:
    """The seed's predict on the test split; scored: its texts scored as ours are (the report's normalised CER
    against the cleaned transcripts of seed_test.csv, the order the seed's dataset keeps)."""
    result = seed_evaluate(work / "seed_test", model_dir, seed=seed)
    if scored:
        import pandas as pd

        from asr_pipeline.core.evaluation import score
        from asr_pipeline.core.settings import normalization_policy
        from asr_pipeline.core.text import clean

        references = [clean(str(t)) for t in pd.read_csv(work / "seed_test.csv", keep_default_na=False)["transcript"]]
        try:  # a scoring failure must not lose the seed's timing, which every speedup_vs_seed divides by
            if len(references) != len(result["texts"]):
                raise ValueError(f"{len(result['texts'])} texts for {len(references)} references")
            rates, _ = score(references, result["texts"], normalization_policy(), resamples=1000)
            result.update({k: rates[k] for k in ("cer", "cer_normalized", "cer_normalized_ci95")})
        except Exception as error:
            result["scoring_error"] = f"{type(error).__name__}: {error}"
    else:
        del result["texts"]  # a random model's texts mean nothing
    return result


def score_trained(entry: dict, shard, models: Path, deadline: float, save) -> None:
    """entry["test_scores"]: each trained arm's model (real weights) decoded on the test split as the report decodes
    it, in bf16 where the GPU has it: the packing goal's "equal or lower test CER" on this machine."""
    scores = entry.setdefault("test_scores", {})
    for name in entry["training"]:
        if name == "seed" or not (models / name / "config.json").exists():
            continue
        if time.time() > deadline:
            scores[name] = {"skipped": "deadline"}
            continue
        try:
            scores[name] = our_decode(str(models / name), shard, prefer_bf16=True, scored=True)
        except Exception as error:
            scores[name] = {"error": f"{type(error).__name__}: {error}"}
        save()


def environment() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "cpu": cpu_info(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                       "multiprocessors": properties.multi_processor_count,
                       "bf16": torch.cuda.is_bf16_supported()}
    return info
