"""Real whisper-base weights for the lent GPU machine, which cannot download and takes at most 64 MiB a call.

whisper-base's published weights are float16 values (every one of the 72.6 M round-trips through float16 exactly;
`split` checks it), so they travel as a float16 safetensors file of 138.5 MiB, cut into parts that fit a call each.
The warm machine keeps /tmp between calls, so each call adds the part it carries to a stash there, and the last one
joins them, checks every SHA-256, and writes the float32 model directory transformers loads:

  here:   .venv/bin/python benchmarks/gpu_weights.py split --model /work/cache/whisper-base --out .gpu_weights
          (.gpu_weights/part-00.bin ... and manifest.json; beside .gpu, not in it: .gpu/data travels whole)
  there:  python3 benchmarks/gpu_weights.py stash --parts .gpu_weights --expect K   (call K, carrying part K-1 and
          the manifest; exit status 3 unless the stash then holds parts 0..K-1 intact: a machine handed back between
          calls, or a part not carried, shows in the call that lost it)
          python3 benchmarks/gpu_weights.py join --parts .gpu_weights --files .gpu/data/tokenizer --out DIR
          (exit status 3 while a part is missing or damaged: the message names it)

Only numpy, safetensors and the standard library: the GPU image has them, and no Dagster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

STASH = Path("/tmp/asr_gpu_weights")
MISSING = 3  # join's exit status while parts are still to be carried


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def float16_blob(model_dir: Path) -> bytes:
    """The model's safetensors as float16, refusing any value float16 does not hold exactly (then the weights would
    not be the released model's)."""
    import numpy as np
    from safetensors.numpy import load_file, save

    tensors = load_file(str(model_dir / "model.safetensors"))
    halves = {}
    for name, value in tensors.items():
        if value.dtype.kind == "f":
            half = value.astype(np.float16)
            inexact = int(np.count_nonzero(half.astype(value.dtype) != value))
            if inexact:
                raise SystemExit(f"{name}: {inexact} values are not exact in float16; these weights cannot travel "
                                 "as float16 without changing the model")
            value = half
        halves[name] = value
    return save(halves, metadata={"format": "pt"})


def split(model_dir: Path, out: Path, part_mib: float) -> dict:
    blob = float16_blob(model_dir)
    size = int(part_mib * 2**20)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.bin"):
        old.unlink()
    parts = []
    for index, start in enumerate(range(0, len(blob), size)):
        chunk = blob[start:start + size]
        name = f"part-{index:02d}.bin"
        (out / name).write_bytes(chunk)
        parts.append({"name": name, "bytes": len(chunk), "sha256": sha256(chunk)})
    manifest = {"source": str(model_dir), "dtype": "float16", "bytes": len(blob), "sha256": sha256(blob),
                "parts": parts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def stash(parts_dir: Path, stash_dir: Path = STASH) -> tuple[list[str], list[str]]:
    """Copies the parts (and manifest) this call carried into the stash. Returns (intact, missing): the manifest's
    parts the stash holds with their SHA-256, and the rest (all of them while no manifest has come)."""
    stash_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(parts_dir.glob("part-*.bin")) + sorted(parts_dir.glob("manifest.json")):
        shutil.copy(path, stash_dir / path.name)
    manifest = stash_dir / "manifest.json"
    if not manifest.exists():
        return [], ["manifest.json"]
    intact, missing = [], []
    for part in json.loads(manifest.read_text())["parts"]:
        path = stash_dir / part["name"]
        if path.exists() and sha256(path.read_bytes()) == part["sha256"]:
            intact.append(part["name"])
        else:
            missing.append(part["name"] + (" (damaged)" if path.exists() else ""))
    return intact, missing


def join(parts_dir: Path, files: Path, out: Path, stash_dir: Path = STASH) -> Path:
    """The float32 model directory (weights from the parts, configuration and tokenizer from `files`)."""
    import numpy as np
    from safetensors.numpy import load, save_file

    intact, missing = stash(parts_dir, stash_dir)
    if missing:
        print(f"missing or damaged in {stash_dir}: {', '.join(missing)}; carry them (a call carries one part and "
              f"{parts_dir}/manifest.json)", file=sys.stderr)
        raise SystemExit(MISSING)
    manifest = json.loads((stash_dir / "manifest.json").read_text())
    blob = b"".join((stash_dir / name).read_bytes() for name in intact)
    if sha256(blob) != manifest["sha256"]:
        raise SystemExit("the joined weights do not match the manifest's SHA-256")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in files.iterdir():
        if path.is_file() and path.name != "model.safetensors":
            shutil.copy(path, partial / path.name)
    tensors = {name: value.astype(np.float32) if value.dtype == np.float16 else value
               for name, value in load(blob).items()}
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    (partial / "weights_sha256.txt").write_text(manifest["sha256"] + " (float16 safetensors as carried)\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    here = sub.add_parser("split", help="here: float16 parts and their manifest")
    here.add_argument("--model", required=True, type=Path)
    here.add_argument("--out", default=Path(".gpu_weights"), type=Path)
    here.add_argument("--part-mib", type=float, default=58.0,
                      help="a part's size; with the working tree it must stay under a call's 64 MiB")
    there = sub.add_parser("stash", help="there: keep the parts this call carried")
    there.add_argument("--parts", default=Path(".gpu_weights"), type=Path)
    there.add_argument("--expect", type=int, default=1, help="parts the stash must hold intact after this call")
    there.add_argument("--stash", default=STASH, type=Path, help="where the parts wait between calls")
    joined = sub.add_parser("join", help="there: the float32 model directory, once every part is stashed")
    joined.add_argument("--parts", default=Path(".gpu_weights"), type=Path)
    joined.add_argument("--files", default=Path(".gpu/data/tokenizer"), type=Path)
    joined.add_argument("--out", required=True, type=Path)
    joined.add_argument("--stash", default=STASH, type=Path)
    args = parser.parse_args()
    if args.command == "split":
        manifest = split(args.model, args.out, args.part_mib)
        print(f"{manifest['bytes'] / 2**20:.1f} MiB of float16 weights in {len(manifest['parts'])} parts in "
              f"{args.out}: " + ", ".join(f"{p['name']} {p['bytes'] / 2**20:.1f} MiB" for p in manifest["parts"]))
    elif args.command == "stash":
        intact, missing = stash(args.parts, args.stash)
        print(f"stash {args.stash}: intact {', '.join(intact) or 'none'}; to come: {', '.join(missing) or 'none'}")
        if len(intact) < args.expect:
            print(f"expected {args.expect} intact parts after this call: was the machine handed back between calls, "
                  "or a part or the manifest not carried?", file=sys.stderr)
            raise SystemExit(MISSING)
    else:
        print(f"whisper-base with real weights in {join(args.parts, args.files, args.out, args.stash)}")


if __name__ == "__main__":
    main()
