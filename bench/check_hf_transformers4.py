"""Does transformers 4.x read our HF export like transformers 5 does? Logits of both against ours.

transformers 4.x reads RoPE theta only from a top-level `rope_theta` (absent: 10,000); 5.x reads
`rope_parameters`. `export.hf_config_dict` writes both. This script exports the tiny preset, then
loads it with the project's transformers (5.x) and with transformers 4.57.1 in a side virtualenv
(`bench/.venv-transformers4`, created on first use: transformers, huggingface-hub and tokenizers
pinned to a 4.57-compatible set; torch and the rest are borrowed from `.venv` through a .pth file),
and prints the largest logit difference and the next-token argmax agreement against our model. The
same export with the transformers-4 keys removed is the control: it must differ under 4.x.

    .venv/bin/python bench/check_hf_transformers4.py            # appends to bench/RESULTS.md
    .venv/bin/python bench/check_hf_transformers4.py --no-append

A check of a version we cannot install into the test environment (one transformers per venv), so it
lives here rather than in tests/; tests/trainer/test_export.py checks the key set and the 5.x read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-transformers4"
PINS = ["transformers==4.57.1", "huggingface-hub==0.36.0", "tokenizers==0.22.1"]
V4_ONLY_KEYS = ("rope_theta", "rope_scaling", "torch_dtype")


def export(out: Path) -> None:
    """Write the tiny preset (seeded) as `out/new` and the control without the 4.x keys as `out/old`."""
    import torch

    from olmo_trainer.config import ModelConfig
    from olmo_trainer.export import CONFIG_NAME, to_hf
    from olmo_trainer.model import Transformer

    model = Transformer(ModelConfig.preset("tiny"))
    model.init_weights(torch.Generator().manual_seed(0))
    model.eval()
    to_hf(model, str(out / "new"))
    shutil.copytree(out / "new", out / "old")
    config = json.loads((out / "new" / CONFIG_NAME).read_text())
    (out / "old" / CONFIG_NAME).write_text(
        json.dumps({k: v for k, v in config.items() if k not in V4_ONLY_KEYS})
    )
    # 200 positions: RoPE theta 10k vs 500k differ visibly only past a few dozen positions.
    ids = torch.randint(0, model.config.vocab_size, (2, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids)}, out / "ours.pt")


def compare(out: Path) -> dict[str, Any]:
    """Runs under either interpreter: transformers' logits vs ours, for `new` and `old`."""
    import torch
    import transformers

    ref = torch.load(out / "ours.pt")
    result: dict[str, Any] = {"transformers": transformers.__version__}
    for name in ("new", "old"):
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(out / name)).float().eval()
        with torch.no_grad():
            logits = hf(input_ids=ref["ids"]).logits
        theta = getattr(hf.config, "rope_theta", None) or hf.config.rope_parameters["rope_theta"]
        result[name] = {
            "rope_theta": float(theta),
            "max_abs_diff": float((logits - ref["logits"]).abs().max()),
            "argmax_agree": float((logits.argmax(-1) == ref["logits"].argmax(-1)).float().mean()),
        }
    return result


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import transformers; assert transformers.__version__.startswith('4.')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # After the side venv's own packages: torch, safetensors, ... come from the project's venv.
    Path(purelib, "zz_project.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *PINS], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(compare(Path(args.worker))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        export(out)
        rows = [compare(out)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run(
            [str(ensure_venv()), __file__, "--worker", str(out)], capture_output=True, text=True, env=env
        )
        if done.returncode:
            sys.exit(f"transformers 4 worker failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = [
        "| transformers | config | rope_theta read | max abs logit diff vs ours | next-token argmax "
        "agreement |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for name, label in (("new", "as exported"), ("old", f"control: without {', '.join(V4_ONLY_KEYS)}")):
            r = row[name]
            lines.append(
                f"| {row['transformers']} | {label} | {r['rope_theta']:,.0f} | {r['max_abs_diff']:.2e} "
                f"| {r['argmax_agree']:.1%} |"
            )
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(
                f"\n## check_hf_transformers4 — {stamp}\n\n`.venv/bin/python "
                "bench/check_hf_transformers4.py` "
                f"(tiny preset, 2 x 200 tokens, fp32, CPU)\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
