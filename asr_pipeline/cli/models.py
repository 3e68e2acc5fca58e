"""The models and what they produce: `asr-pipeline report`, `champion`, `transcribe`, and `ui`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from asr_pipeline.cli.runs import _instance
from asr_pipeline.core import settings as env


def _storage() -> Path:
    return env.asr_home() / "storage"


def _report_path() -> Path:
    return _storage() / "evaluation_report" / "report.json"


def _print_report_summary() -> None:
    from asr_pipeline.core.report import metrics_table

    report = json.loads(_report_path().read_text(encoding="utf-8"))
    if report.get("warning"):
        print(f"\n*** {report['warning']} ***\n")
    print(metrics_table(report))
    if report.get("promotion"):
        verdict = "promoted to champion" if report["promotion"]["promote"] else "not promoted"
        print(f"\n{verdict}: {report['promotion']['reason']}")
    if report.get("ctranslate2"):
        c = report["ctranslate2"]
        print(f"CTranslate2 int8 export: CER {c['cer']:.4f}, {c['utterances_per_s']:.2f} utterances/s at {c['path']}")
    print(f"\nreport: {report.get('html_path')} (open it in a browser), {report.get('markdown_path')}, "
          f"{report.get('json_path', _report_path())}")


def cmd_report(args) -> None:
    path = _report_path()
    if not path.exists():
        raise SystemExit(f"no report yet at {path}: run `asr-pipeline run` (or `demo`) first")
    if args.json:
        print(path.read_text(encoding="utf-8"))
    else:
        print((path.parent / "report.md").read_text(encoding="utf-8"))


def cmd_champion(args) -> None:
    from asr_pipeline.core.champion import current_champion, promotion_history, retire_champion

    home = env.asr_home()
    if args.retire:
        entry = retire_champion(home, reason="asr-pipeline champion --retire")
        print(f"retired {entry['model_path']}; the next evaluated checkpoint is compared with the base model and "
              "becomes the champion if it beats it" if entry
              else "there is no champion to retire")
        return
    if args.history:
        history = promotion_history(home)
        if args.json:
            print(json.dumps(history, indent=2, ensure_ascii=False))
            return
        for entry in history:
            if "retired_at" in entry:
                print(f"{entry['retired_at']}\tretired\t{entry['model_path']}")
                continue
            if "removed_at" in entry:
                print(f"{entry['removed_at']}\tcopy removed ({entry.get('reason', '')})\t{entry['model_path']}")
                continue
            print(f"{entry['promoted_at']}\tCER {entry['test_cer']:.4f}\tnormalised {entry['test_cer_normalized']:.4f}"
                  f"\t{entry['model_path']}")
        if not history:
            print("no promotions yet")
        return
    pointer = current_champion(home)
    if pointer is None:
        if args.json:
            print("null")
            return
        # an answer, not an error: the demo's placeholder model, say, never beats its base
        print(f"no champion yet in {home / 'champion'}: the first checkpoint that beats the base model becomes it "
              "(`asr-pipeline run`)")
        return
    if args.json:
        print(json.dumps(pointer, indent=2, ensure_ascii=False))
        return
    for key in ("model_path", "ctranslate2_path", "test_cer", "test_cer_normalized", "test_wer", "test_rows",
                "promoted_at", "run_id", "report_path", "previous_model_path"):
        print(f"{key}: {pointer.get(key)}")


def _default_model_dir() -> str:
    """The champion when there is one (the model in service), else the latest fine-tuned checkpoint."""
    from asr_pipeline.core.champion import current_champion

    pointer = current_champion(env.asr_home())
    if pointer and (Path(pointer["model_path"]) / "config.json").exists():
        print(f"using the champion {pointer['model_path']} (test CER {pointer['test_cer']:.4f})", file=sys.stderr)
        return pointer["model_path"]
    model_dir = str(_storage() / "finetuned_checkpoint")
    if not (Path(model_dir) / "config.json").exists():
        raise SystemExit(f"no champion and no fine-tuned checkpoint at {model_dir}: run `asr-pipeline run` or pass "
                         "--model DIR")
    print(f"no champion yet; using the latest fine-tuned checkpoint {model_dir}", file=sys.stderr)
    return model_dir


def cmd_transcribe(args) -> None:
    from asr_pipeline.core.audio import AudioError, load_16k
    from asr_pipeline.core.decoding import DecodingPolicy
    from asr_pipeline.core.transformers_decoding import transcribe_clips
    from asr_pipeline.core.model import inference_placement, load_model, load_processor

    model_dir = args.model or _default_model_dir()
    clips, names = [], []
    for name in args.files:
        try:
            clip = load_16k(name)
        except AudioError as exc:
            print(f"{name}\t<error: {exc}>")
            continue
        if len(clip) > 30 * 16_000:
            print(f"{name}\t<note: longer than 30 s; only the first 30 s are transcribed>", file=sys.stderr)
        clips.append(clip)
        names.append(name)
    if not clips:
        raise SystemExit(1)
    # on CUDA when present (bf16, else fp16), under the report's decoding policy (audio budget, Whisper's guards)
    device, dtype = inference_placement(prefer_bf16=not args.float32)
    print(f"decoding on {device} in {str(dtype).replace('torch.', '')}", file=sys.stderr)
    model, processor = load_model(model_dir, device=device, dtype=dtype), load_processor(model_dir)
    result = transcribe_clips(model, processor, clips, DecodingPolicy(batch_size=8),
                              emit=lambda m: print(m, file=sys.stderr))
    for name, text, silent in zip(names, result.texts, result.silent):  # markers, like <error: ...> above
        print(f"{name}\t{'<no speech>' if silent else text or '<empty>'}")


def cmd_ui(args) -> None:
    """dagster dev on this project's instance (concurrency pool, run queue limits and retries configured)."""
    _instance()  # writes $DAGSTER_HOME/dagster.yaml on first use
    target = ["-w", "workspace.yaml"] if Path("workspace.yaml").exists() else ["-m", "asr_pipeline.definitions"]
    command = ["dagster", "dev", *target, "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}", file=sys.stderr)
    executable = Path(sys.executable).with_name("dagster")
    os.execv(str(executable), command)
