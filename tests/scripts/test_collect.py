"""scripts/collect.py end to end at a tiny size, as a subprocess (like cleanrl's tests): MuJoCo, Procgen (Box2D:
test_collect_resume.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import minari
import numpy as np
import pytest

from tests.scripts._helpers import load_script
from tt_agents.data import load_dataset

REPO = Path(__file__).resolve().parents[2]
TINY = ["--expert-steps", "300", "--dataset-steps", "200", "--num-envs", "2", "--eval-episodes", "2", "--no-progress"]


def collect(tmp_path: Path, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    (tmp_path / "tmp").mkdir(exist_ok=True)  # the script's temporary folder, to see what it leaves there
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "store"), "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path / "tmp")}
    out = subprocess.run(
        [sys.executable, "scripts/collect.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if expect_ok:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def check_datasets(namespace: str, kinds: list[str], env_id: str) -> dict:
    refs = set()
    out = {}
    for kind in kinds:
        ds = load_dataset(f"{namespace}/{kind}-v0")
        assert ds.metadata["env_id"] == env_id and ds.metadata["dataset_id"] == f"{namespace}/{kind}-v0"
        refs.add((ds.metadata["ref_min_score"], ds.metadata["ref_max_score"]))
        assert ds.metadata["policy"]["name"] and ds.metadata["algorithm_name"]
        assert minari.load_dataset(f"{namespace}/{kind}-v0").total_steps == ds.total_steps
        if kind != "medium-replay":
            assert 200 <= ds.total_steps < 202
        out[kind] = ds
    assert len(refs) == 1  # the same reference scores in every dataset
    return out


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    """The Minari store the collect.py subprocesses write into, read back by the checks here."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))


def test_mujoco_hopper_all_datasets_then_reuse_the_expert_zip(tmp_path):
    out_dir = tmp_path / "out"
    res = collect(tmp_path, "--env-id", "Hopper-v5", *TINY, "--max-episode-steps", "50", "--out-dir", str(out_dir))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["algo"] == "sac" and "hopper/medium-v0" in res.stdout
    kinds = ["random", "medium", "medium-replay", "expert"]
    ds = check_datasets("hopper", kinds, "Hopper-v5")
    random_returns = [ep.total_return for ep in ds["random"] if ep.terminations[-1] or len(ep) == 50]
    assert ds["expert"].metadata["ref_min_score"] == pytest.approx(np.mean(random_returns))
    medium = ds["medium"].metadata["policy"]
    assert medium["trained_steps"] == summary["medium_checkpoint_step"] < 300
    # medium-replay: the training episodes up to the medium checkpoint
    assert ds["medium-replay"].total_steps <= max(medium["trained_steps"], len(ds["medium-replay"][0]))
    assert (out_dir / "expert.zip").exists() and (out_dir / "medium.zip").exists()
    assert not (out_dir / "checkpoints").exists()
    # SB3's training statistics as TensorBoard events in the run's folder, and no empty /tmp/SB3-* folder per learn()
    assert any(f.stat().st_size > 0 for f in (out_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not list((tmp_path / "tmp").glob("SB3-*"))

    res = collect(
        tmp_path, "--env-id", "Hopper-v5", *TINY, "--max-episode-steps", "50", "--datasets", "expert",
        "--expert-zip", str(out_dir / "expert.zip"), "--version", "1", "--out-dir", str(tmp_path / "out2"),
    )  # fmt: skip
    assert load_dataset("hopper/expert-v1").metadata["policy"]["zip"] == str(out_dir / "expert.zip")
    res = collect(tmp_path, "--env-id", "Hopper-v5", *TINY, "--datasets", "random", expect_ok=False)
    assert res.returncode == 2 and "hopper/random-v0 already exists" in res.stderr  # the scripts' one-line error
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in res.stderr


def test_procgen_bigfish(tmp_path):
    collect(tmp_path, "--env-id", "procgen/bigfish-v0", *TINY, "--train-envs", "2", "--out-dir", str(tmp_path / "o"))
    ds = check_datasets("procgen/bigfish", ["random", "medium", "medium-replay", "expert"], "procgen/bigfish-v0")
    assert ds["expert"].metadata["policy"]["algorithm"] == "PPO"
    assert ds["expert"][0].observations.shape[1:] == (64, 64, 3)
    # the expert's CNN policy class lives in SB3's common module: its algorithm is read from the zip's data
    assert load_script("collect").algo_of_zip(str(tmp_path / "o" / "expert.zip")) == "ppo"


def test_bad_arguments_fail_clearly(tmp_path):
    res = collect(
        tmp_path, "--env-id", "Hopper-v5", "--datasets", "expert", "medium", "--expert-zip", "x.zip", expect_ok=False
    )
    assert "'medium' needs --medium-zip" in res.stderr + res.stdout
    res = collect(tmp_path, "--env-id", "Hopper-v5", "--datasets", "best", expect_ok=False)
    assert "unknown datasets ['best']" in res.stderr + res.stdout


def test_expert_checkpoint_best_and_switching_it_on_resume(tmp_path):
    """``--expert-checkpoint best``: the best-evaluated of the checkpoints and the final policy is the expert; a run
    interrupted after training may switch to it on --resume until a dataset made with the expert is finished."""
    out_dir = tmp_path / "out"
    args = ["--env-id", "Hopper-v5", *TINY, "--max-episode-steps", "50", "--n-checkpoints", "4",
            "--keep-intermediate", "--out-dir", str(out_dir)]  # fmt: skip
    collect(tmp_path, *args, "--datasets", "random", "expert", "--expert-checkpoint", "best")
    summary = json.loads((out_dir / "summary.json").read_text())
    progress = json.loads((out_dir / "progress.json").read_text())
    info = progress["done"]["train"]["expert_info"]
    returns = {p["step"]: p["return"] for p in summary["expert_return_curve"]}
    assert summary["expert_checkpoint"] == "best" and len(returns) >= 2
    assert info["eval_return"] == max([*returns.values(), info["final_eval_return"]])
    chosen = out_dir / ("final.zip" if summary["expert_step"] == 300 else f"checkpoints/step_{summary['expert_step']}.zip")
    assert (out_dir / "expert.zip").read_bytes() == chosen.read_bytes()
    assert load_dataset("hopper/expert-v0").metadata["policy"]["step"] == summary["expert_step"]
    phases = [progress["done"][k]["seconds"] for k in ("random", "expert")]  # each dataset phase timed
    assert summary["total_seconds"] == pytest.approx(summary["train_seconds"] + sum(phases), abs=0.02)

    # the same run as if interrupted while making its random dataset, with the final policy as its expert
    for kind in ("random", "expert", "all"):
        progress["done"].pop(kind, None)
    progress["done"]["train"]["expert_info"] = {**info, "checkpoint": "final", "step": 300}
    (out_dir / "progress.json").write_text(json.dumps(progress))
    (out_dir / "expert.zip").write_bytes((out_dir / "final.zip").read_bytes())
    collect(tmp_path, *args, "--datasets", "random", "expert", "--expert-checkpoint", "best", "--resume",
            "--overwrite")
    assert (out_dir / "expert.zip").read_bytes() == chosen.read_bytes()
    assert json.loads((out_dir / "summary.json").read_text())["expert_step"] == summary["expert_step"]
    resumed = json.loads((out_dir / "progress.json").read_text())["done"]["train"]["expert_info"]
    assert resumed["checkpoint"] == "best" and resumed["final_eval_return"] == info["final_eval_return"]  # chosen anew

    # once the expert dataset is made, the expert cannot change
    progress = json.loads((out_dir / "progress.json").read_text())
    progress["done"].pop("all")
    (out_dir / "progress.json").write_text(json.dumps(progress))
    res = collect(tmp_path, *args, "--datasets", "random", "expert", "--expert-checkpoint", "final", "--resume",
                  expect_ok=False)
    assert res.returncode == 2 and "--expert-checkpoint best -> final: the expert dataset(s)" in res.stderr


def _zip_counts(path: Path) -> tuple[int, int, int]:
    """(num_timesteps, _n_updates, the actor optimizer's Adam step) of an SB3 SAC .zip, read without unpickling."""
    import io
    import zipfile

    import torch

    with zipfile.ZipFile(path) as z:
        data = json.loads(z.read("data"))
        state = torch.load(io.BytesIO(z.read("actor.optimizer.pth")), weights_only=True)
    adam_steps = {int(s["step"]) for s in state["state"].values()}
    assert len(adam_steps) == 1
    return int(data["num_timesteps"]), int(data["_n_updates"]), adam_steps.pop()


def test_continue_from_trains_a_finished_expert_further(tmp_path):
    """``--continue-from``: a finished run's final.zip trained on, its step count, update count and optimizer state
    carried over (as SB3's load + learn(reset_num_timesteps=False)); the candidates lie after the zip's steps."""
    first = tmp_path / "first"
    collect(tmp_path, "--env-id", "Hopper-v5", *TINY, "--max-episode-steps", "50", "--datasets", "expert",
            "--out-dir", str(first))  # fmt: skip
    steps0, updates0, adam0 = _zip_counts(first / "final.zip")
    assert steps0 == 300 and updates0 > 0 and adam0 == updates0
    more = [a if a != "300" else "600" for a in TINY]  # --expert-steps 600: the total, counted from the start
    second = tmp_path / "second"
    collect(tmp_path, "--env-id", "Hopper-v5", *more, "--max-episode-steps", "50", "--datasets", "expert",
            "--continue-from", str(first / "final.zip"), "--version", "1", "--n-checkpoints", "4",
            "--out-dir", str(second))  # fmt: skip
    steps1, updates1, adam1 = _zip_counts(second / "final.zip")
    assert steps1 == 600 and updates1 == updates0 + 300 and adam1 == adam0 + 300  # one update per step here
    summary = json.loads((second / "summary.json").read_text())
    assert [p["step"] for p in summary["expert_return_curve"]] == [450]  # every 150 steps, after 300 and before 600
    policy = load_dataset("hopper/expert-v1").metadata["policy"]
    assert policy["continued_from"] == str(first / "final.zip") and policy["trained_steps"] == 600

    res = collect(tmp_path, "--env-id", "Hopper-v5", *TINY, "--datasets", "expert", "--continue-from",
                  str(second / "final.zip"), "--version", "2", "--out-dir", str(tmp_path / "o3"),
                  expect_ok=False)  # fmt: skip
    assert res.returncode == 2 and "trained for 600 env steps already; pass --expert-steps above 600" in res.stderr
    res = collect(tmp_path, "--env-id", "Hopper-v5", *more, "--datasets", "expert", "medium-replay",
                  "--continue-from", str(first / "final.zip"), "--version", "2", "--out-dir", str(tmp_path / "o4"),
                  expect_ok=False)  # fmt: skip
    assert res.returncode == 2 and "drop medium-replay" in res.stderr
    res = collect(tmp_path, "--env-id", "Hopper-v5", *more, "--datasets", "expert", "--algo", "sac",
                  "--continue-from", str(tmp_path / "missing.zip"), "--version", "2", "--out-dir",
                  str(tmp_path / "o5"), expect_ok=False)  # fmt: skip
    assert res.returncode == 2 and "missing.zip does not exist" in res.stderr
    assert not any((tmp_path / o).exists() for o in ("o3", "o4", "o5"))  # refused before anything was written


def test_meta_world_without_its_environment_names_the_install(monkeypatch):
    """Meta-World is not in the main environment (it pins mujoco 3.3.0): asking for a task says how to get it."""
    import sys

    collect_mod = load_script("collect")
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if not installed
    args = collect_mod.Args(env_id="metaworld/reach-v3")
    with pytest.raises(collect_mod.UsageError, match=r"install.sh --metaworld"):
        collect_mod.make_env(args)
    with pytest.raises(collect_mod.UsageError, match="scripted experts are Meta-World's"):
        collect_mod.main(collect_mod.Args(env_id="Hopper-v5", algo="scripted", out_dir=None))
