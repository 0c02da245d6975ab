"""README's Python blocks and shell commands run as written, at tiny sizes, on data they make themselves (issue
item 6), so a README that drifts from the code fails here.

A ``<!-- readme-test: {...} -->`` comment right before a block says how: ``{"replace": {"a": "b"}}`` gives its tiny
sizes (each ``a`` must be in the block), ``{"skip": "why"}`` leaves it out (the install, the test suite itself).
Python blocks run first, in README's order, in one interpreter (each in a fresh namespace), then the shell
commands, in a folder that looks like a fresh clone (``scripts/`` and ``.venv`` of this checkout).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym

from tests.scripts._helpers import REPO

BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>\{.*?\}) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)


def readme_blocks(text: str) -> list[tuple[str, str, dict]]:
    """``(lang, code with its tiny sizes, marker)`` of every python and bash block."""
    out = []
    for m in BLOCK.finditer(text):
        marker = json.loads(m["marker"]) if m["marker"] else {}
        assert set(marker) <= {"replace", "skip"}, marker
        code = m["code"]
        for old, new in marker.get("replace", {}).items():
            assert old in code, f"README marker replaces {old!r}, which its block no longer holds:\n{code}"
            code = code.replace(old, new)
        out.append((m["lang"], code, marker))
    return out


def test_readme_runs_as_written(tmp_path):
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert sum(lang == "python" for lang, _, m in blocks if "skip" not in m) >= 5
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("scripts", ".venv"):
        (clone / name).symlink_to(REPO / name)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "store"), "PYTHONPATH": str(REPO),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    env.pop("TT_AGENTS_DEBUG", None)
    # what scripts/demo.py would have left: a TTPlanner for Hopper (untrained, the tiny preset)
    from tt_agents import TTPlanner

    hopper = gym.make("Hopper-v5")
    TTPlanner.from_preset("tiny", hopper.observation_space, hopper.action_space, device="cpu", seed=0).save(
        clone / "runs" / "demo" / "tt" / "final.zip")

    files = []
    (tmp_path / "blocks").mkdir()
    for i, (lang, code, marker) in enumerate(blocks):
        if lang == "python" and "skip" not in marker:
            files.append(tmp_path / "blocks" / f"readme_block_{i}.py")
            files[-1].write_text(code)
    driver = ("import runpy, sys, time\n"
              "for f in sys.argv[1:]:\n"
              "    t = time.perf_counter()\n"
              "    runpy.run_path(f, run_name='__main__')\n"
              "    print('--- README block', f, f'{time.perf_counter() - t:.1f} s', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", driver, *map(str, files)], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "store" / "hopper" / "mine-v0").is_dir()
    for made in ("runs/bc/final.zip", "runs/bc/agent.zip", "hopper.mp4"):
        assert (clone / made).is_file(), made

    for lang, code, marker in blocks:
        if lang != "bash" or "skip" in marker:
            continue
        for line in code.splitlines():
            command = line.split("  #")[0].strip()
            if not command or command.startswith("#"):
                continue
            proc = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert json.loads((clone / "eval.json").read_text())["env_id"] == "Hopper-v5"
    assert (clone / "runs" / "bc-ddp" / "final.zip").is_file()


def test_readme_preset_table_holds_the_recorded_figures():
    """README's preset table quotes benchmarks.md's presets section (the figures of one benchmark run)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from benches.presets import measured

    figures = measured()
    assert figures, "benchmarks.md has no presets section: run scripts/bench.py presets --write"
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[0].strip("`") in figures:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(figures), (sorted(rows), sorted(figures))
    for name, cells in rows.items():
        f = figures[name]
        assert cells[1] == f"{f['parameters']:,}", name
        assert cells[2].split()[0] == f"{f['steps_per_s']:.3g}", name
        assert cells[4] == f"{f['s_per_action']:.3g}", name
