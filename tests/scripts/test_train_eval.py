"""scripts/train.py and scripts/eval.py end to end, as subprocesses, at a tiny size (cleanrl's tests do the same)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DATA = REPO / "tests" / "data" / "minari"  # real Minari-written datasets, checked in


@pytest.fixture
def minari_store(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FIXTURE_DATA, store)
    return store


def _run(args: list[str], store: Path, timeout: int = 600) -> str:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize(
    "subcommand, extra",
    [
        ("bc", ["--agent.hidden-sizes", "16", "16"]),
        ("tt-tiny", []),
        ("dt-cpu", ["--agent.context-len", "4", "--agent.n-embd", "16", "--train.batch-size", "8"]),
    ],
)
def test_train_then_eval_on_the_real_hopper_fixture(subcommand, extra, minari_store, tmp_path):
    run = tmp_path / subcommand
    out = _run(["scripts/train.py", subcommand, "--dataset", "fixtures/hopper/random-v0", "--run-dir", str(run),
                "--device", "cpu", "--train.steps", "4", "--train.no-progress", "--eval-episodes", "1",
                "--eval-envs", "1", *extra], minari_store)
    assert "trained" in out
    assert (run / "final.zip").exists() and (run / "eval.json").exists()
    res = tmp_path / "eval.json"
    out = _run(["scripts/eval.py", "--checkpoint", str(run / "final.zip"), "--n-episodes", "2", "--n-envs", "2",
                "--device", "cpu", "--json-out", str(res)], minari_store)
    assert "Hopper-v5" in out
    data = json.loads(res.read_text())
    assert data["n_episodes"] == 2 and data["env_id"] == "Hopper-v5"


def test_eval_without_env_names_the_fix(tmp_path, minari_store):
    from tests.fake_env import make_env
    from tt_agents import BCPolicy

    env = make_env()
    path = BCPolicy(env.observation_space, env.action_space, device="cpu").save(tmp_path / "a")
    proc = subprocess.run([sys.executable, "scripts/eval.py", "--checkpoint", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode != 0 and "--env-id" in proc.stderr + proc.stdout


def test_bench_lists_every_section():
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sections = sorted(p.stem.replace("_", "-") for p in (REPO / "scripts" / "benches").glob("[!_]*.py"))
    for name in sections:
        assert name in proc.stdout


def test_eval_act_options_change_a_loaded_tts_search_and_not_the_checkpoint(tmp_path):
    """``--act.beam-width 4 --act.horizon 2`` plans with that search; the file on disk is unchanged."""
    from tests.fake_env import make_env
    from tt_agents import TTPlanner

    env = make_env("vector", "continuous")
    path = TTPlanner.from_preset("tiny", env.observation_space, env.action_space, device="cpu", seed=0).save(
        tmp_path / "tt")
    before = path.read_bytes()
    probe = tmp_path / "probe.py"  # eval.py's main, with evaluate replaced by a recorder of the search it plans with
    probe.write_text(
        "import json, runpy, sys\n"
        "import tt_agents.evaluation as ev\n"
        "from tests.fake_env import make_env\n"
        "real = ev.evaluate\n"
        "def spy(agent, env_id, **kw):\n"
        "    seen = []\n"
        "    inner = type(agent)._predict\n"
        "    def record(self, obs, reward, state, starts, det):\n"
        "        seen.append([state.act.beam_width, state.act.horizon] if state is not None else None)\n"
        "        return inner(self, obs, reward, state, starts, det)\n"
        "    type(agent)._predict = record\n"
        "    res = real(agent, lambda: make_env('vector', 'continuous'), **kw)\n"
        f"    open({str(tmp_path / 'seen.json')!r}, 'w').write(json.dumps(seen))\n"
        "    return res\n"
        "ev.evaluate = spy\n"
        "sys.argv = ['scripts/eval.py', *sys.argv[1:]]\n"
        "runpy.run_path('scripts/eval.py', run_name='__main__')\n"
    )
    env_vars = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra, expected in (([], [3, 2]), (["--act.beam-width", "4", "--act.horizon", "2"], [4, 2])):
        proc = subprocess.run([sys.executable, str(probe), "--checkpoint", str(path), "--env-id", "fake",
                               "--n-episodes", "1", "--n-envs", "1", "--device", "cpu", *extra],
                              capture_output=True, text=True, cwd=REPO, env=env_vars, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads((tmp_path / "seen.json").read_text())
        assert seen and all(s == expected for s in seen), seen
    proc = subprocess.run([sys.executable, "scripts/eval.py", "--checkpoint", str(path), "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert "--act.beam-width" in proc.stdout and "--act.horizon" in proc.stdout
    assert path.read_bytes() == before


def test_eval_async_runs_the_same_episodes_as_sync(tmp_path):
    """``--vectorization async`` (a process per sub-env) gives the episodes sync gives; with ``--video`` it is refused."""
    import gymnasium as gym

    from tt_agents import BCPolicy

    env = gym.make("CartPole-v1")
    path = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=3).save(tmp_path / "a")
    returns = {}
    for mode in ("sync", "async"):
        out = tmp_path / f"{mode}.json"
        _run(["scripts/eval.py", "--checkpoint", str(path), "--env-id", "CartPole-v1", "--n-episodes", "4",
              "--n-envs", "2", "--vectorization", mode, "--device", "cpu", "--no-progress", "--json-out", str(out)],
             tmp_path)
        returns[mode] = json.loads(out.read_text())["returns"]
    assert len(returns["sync"]) == 4 and returns["async"] == returns["sync"]
    proc = subprocess.run([sys.executable, "scripts/eval.py", "--checkpoint", str(path), "--env-id", "CartPole-v1",
                           "--vectorization", "async", "--video", str(tmp_path / "v.mp4")], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "--video needs --vectorization sync" in proc.stderr
