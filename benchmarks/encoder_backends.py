"""Can float32 evaluation on a CPU get faster where its time goes, in whisper-base's encoder (86% of a fine-tuned
model's decode, docs/BENCHMARKS.md)? Times the encoder on a batch of 16 padded 30 s inputs, float32, under the
backends PyTorch offers without changing the model: eager with SDPA attention (what the report runs), eager
attention, every Linear through oneDNN (torch.utils.mkldnn), and torch.compile with weight freezing (its compile time
reported apart). Arms alternate for --rounds rounds; medians, the largest difference from eager SDPA's output, and
the CPU model and flags go to results/encoder_backends_<date>_cpu-<kind>.json.

    .venv/bin/python benchmarks/encoder_backends.py --model /work/cache/whisper-base [--rounds 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from bench_common import cpu_info, cpu_tag
from result_files import write_result


class DenseThroughOneDNN(torch.nn.Module):
    """A Linear whose product runs in oneDNN (its weights prepacked), on ordinary tensors in and out."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        from torch.utils.mkldnn import MkldnnLinear

        self.linear = MkldnnLinear(linear, torch.float32)

    def forward(self, x):
        shape = x.shape
        return self.linear(x.reshape(-1, shape[-1]).to_mkldnn()).to_dense().reshape(*shape[:-1], -1)


def encoders(model_dir: str, compile_too: bool) -> dict:
    from transformers import WhisperForConditionalGeneration

    def load(attention: str = "sdpa"):
        return WhisperForConditionalGeneration.from_pretrained(model_dir, attn_implementation=attention).eval() \
            .model.encoder

    arms = {"eager_sdpa": load(), "eager_attention": load("eager")}
    onednn = load()
    swaps = [(parent, name, child) for parent in onednn.modules() for name, child in parent.named_children()
             if isinstance(child, torch.nn.Linear)]
    for parent, name, child in swaps:
        setattr(parent, name, DenseThroughOneDNN(child))
    arms["onednn_linear"] = onednn
    if compile_too:
        import torch._inductor.config as inductor

        inductor.freezing = True  # constant weights folded and prepacked, as for inference
        arms["compiled_frozen"] = torch.compile(load())
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    arms = encoders(args.model, not args.no_compile)
    features = torch.randn(args.batch, arms["eager_sdpa"].config.num_mel_bins, 3000)
    times: dict[str, list[float]] = {name: [] for name in arms}
    first_call_s, max_abs_difference = {}, {}
    with torch.inference_mode():
        reference = arms["eager_sdpa"](features).last_hidden_state
        for name, encoder in arms.items():  # the first call (compiling, for the compiled arm) is timed apart
            started = time.perf_counter()
            output = encoder(features).last_hidden_state
            first_call_s[name] = round(time.perf_counter() - started, 2)
            max_abs_difference[name] = float((output - reference).abs().max())
        for round_ in range(args.rounds):
            for name, encoder in arms.items():
                started = time.perf_counter()
                encoder(features)
                times[name].append(time.perf_counter() - started)
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
                  flush=True)
    eager = statistics.median(times["eager_sdpa"])
    cpu = cpu_info()
    result = {"command": "benchmarks/encoder_backends.py", "date": date.today().isoformat(), "cpu": cpu,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "model": args.model,
              "batch": args.batch, "dtype": "float32",
              "arms": {name: {"median_s": round(statistics.median(t), 3), "runs_s": [round(x, 3) for x in t],
                              "first_call_s": first_call_s[name],
                              "speedup_vs_eager_sdpa": round(eager / statistics.median(t), 3),
                              "max_abs_difference_from_eager_sdpa": max_abs_difference[name]}
                       for name, t in times.items()}}
    write_result(result, args.out, f"encoder_backends_{result['date']}_cpu-{cpu_tag(cpu)}.json")


if __name__ == "__main__":
    main()
