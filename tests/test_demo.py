"""The README's first command, `zoo demo`, as a new user runs it: a fresh process, no espeak-ng on PATH, none of the
test extra's packages importable."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


from zoo import data, io as zio, metrics, registry
from zoo.demo import sample_set

from conftest import REPO

# Runs the `zoo` entry point with the test extra's packages made unimportable (as on a plain `pip install -e .`).
BLOCKED = ("skimage", "sklearn", "pystoi", "pesq", "pytest")
# Both the import system and the availability probes libraries make (importlib.util.find_spec) see them missing.
RUNNER = f"""
import importlib.abc, importlib.util, sys
BLOCKED = {BLOCKED!r}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (a test extra: not installed for this check)")
        return None
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in BLOCKED else real_find_spec(name, package))
sys.meta_path.insert(0, NotInstalled())
from zoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def readme_demo_argv() -> list[str]:
    """The `zoo ...` part of the README's first command (``pip install -e . && zoo demo -o zoo-demo``)."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    line = next(line for block in blocks for line in block.splitlines() if "zoo demo" in line)
    command = line.split("&&")[-1].strip()
    assert command.startswith("zoo demo"), line
    return shlex.split(command)[1:]


def test_readme_demo_runs_without_espeak_or_test_extras(tmp_path):
    path = str(Path(sys.executable).parent)  # the interpreter's own bin folder only: no Debian tools
    assert shutil.which("espeak-ng", path=path) is None
    argv = readme_demo_argv()
    result = subprocess.run([sys.executable, "-c", RUNNER, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={"PATH": path, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / argv[argv.index("-o") + 1]
    rows = {row["model"]: row for row in json.loads((out / "summary.json").read_text())}
    bundled = [n for kind in ("tokenizer", "generator") for n in registry.list_models(kind=kind)
               if registry.model_info(n).bundled]
    assert sorted(rows) == sorted(bundled)
    summary = (out / "summary.md").read_text()
    for name in bundled:
        if registry.model_info(name).limitations:  # said plainly, in the summary and beside the outputs
            assert registry.model_info(name).limitations in summary
            assert (out / name / "LIMITATIONS.txt").is_file()

    # what was written is what was measured: re-score the files the demo wrote
    audio = data.samples("audio")
    wav_rows = [rows[n] for n in bundled if registry.model_info(n).modality == "audio"
                and registry.model_info(n).kind == "tokenizer"]
    for row in wav_rows:
        assert "stoi" not in row and "pesq" not in row  # pystoi / pesq were not importable: skipped, not crashed
        distances = []
        for name, (wav, rate) in audio.items():
            rec, rec_rate = zio.load_audio((tmp_path / row["folder"]) / f"{name}_reconstruction.wav")
            assert rec_rate == rate and rec.shape == (1, wav.shape[-1])
            distances.append(float(metrics.si_sdr(rec, wav.mean(0, keepdim=True)).mean()))
        # (SI-SDR: the log-mel distance is dominated by how 16-bit rounding zeroes near-silent frames)
        assert abs(sum(distances) / len(distances) - row["si_sdr"]) < 0.1
    for name in bundled:
        if registry.model_info(name).modality != "image" or registry.model_info(name).kind != "tokenizer":
            continue
        row = rows[name]
        ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("psnr@"))
        if len(ks) > 1:  # a prefix-decodable tokenizer: more tokens, a better picture
            assert row[f"psnr@{ks[-1]}"] > row[f"psnr@{ks[0]}"] + 2
        scores = []
        for photo in data.samples("image", sample_set(registry.model_info(name))):
            grid = zio.load_image((tmp_path / row["folder"]) / f"{photo}_reconstruction.png")
            size = int(row["input"].split(",")[1].split("x")[0])
            original = grid[:, 2: 2 + size, 2: 2 + size]
            last = grid[:, 2: 2 + size, 2 + len(ks) * (size + 2): 2 + len(ks) * (size + 2) + size]
            scores.append(float(metrics.psnr(last[None], original[None])))
        assert abs(sum(scores) / len(scores) - row[f"psnr@{ks[-1]}"]) < 0.3  # 8-bit PNG rounding
