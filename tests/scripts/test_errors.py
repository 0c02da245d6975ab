"""User errors in the scripts: one line on stderr, exit code 2, no traceback; the traceback on request (issue item 4)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fake_env import make_env
from tests.scripts._helpers import REPO, call_cli, make_store, script_env
from tt_agents import BCPolicy


@pytest.fixture(scope="module")
def bc_checkpoint(tmp_path_factory):
    env = make_env("vector", "continuous")
    return BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0).save(
        tmp_path_factory.mktemp("ckpt") / "bc.zip")


CASES = {
    "missing dataset": (["train.py", "bc", "--dataset", "nowhere/none-v0"], "'nowhere/none-v0'"),
    # a bad value is refused before the (missing) dataset is even looked for
    "negative steps": (["train.py", "bc", "--dataset", "nowhere/none-v0", "--train.steps", "-3"], "--train.steps"),
    "negative lr": (["train.py", "tt-tiny", "--dataset", "nowhere/none-v0", "--train.lr", "-1"], "--train.lr must be > 0"),
    "missing checkpoint": (["eval.py", "--checkpoint", "{tmp}/none.zip"], "none.zip: no such file"),
    "wrong env spaces": (["eval.py", "--checkpoint", "{ckpt}", "--env-id", "CartPole-v1", "--device", "cpu"],
                         "action space Discrete(2) does not fit the agent's Box"),
}


def test_one_line_and_exit_code_2_for_each_user_error(tmp_path, bc_checkpoint):
    store = make_store(tmp_path)
    cases = list(CASES.items())
    for batch in (cases[i:i + 2] for i in range(0, len(cases), 2)):  # two at a time: mostly interpreter start-up
        procs = {}
        for case, (args, _) in batch:
            args = [a.format(tmp=tmp_path, ckpt=bc_checkpoint) for a in args]
            procs[case] = subprocess.Popen([sys.executable, str(REPO / "scripts" / args[0]), *args[1:]], cwd=REPO,
                                           env=script_env(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
        for case, proc in procs.items():
            _, stderr = proc.communicate(timeout=300)
            lines = stderr.strip().splitlines()
            assert proc.returncode == 2, (case, proc.returncode, stderr[-2000:])
            assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, (case, stderr)
            assert CASES[case][1] in lines[0], (case, lines[0])
            if case in ("negative steps", "negative lr"):
                assert "nowhere" not in lines[0], case


def test_debug_lets_the_error_through(tmp_path, monkeypatch):
    """With TT_AGENTS_DEBUG=1 or --debug the exception itself comes out of the script (Python prints its traceback);
    without, the same error is one line and exit code 2."""
    from tt_agents.data import DatasetError

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(make_store(tmp_path)))
    code, _, err = call_cli("train", ["bc", "--dataset", "nowhere/none-v0"])
    assert code == 2 and err.startswith("error: ") and "nowhere" in err
    with pytest.raises(DatasetError, match="nowhere"):
        call_cli("train", ["bc", "--dataset", "nowhere/none-v0", "--debug"])
    monkeypatch.setenv("TT_AGENTS_DEBUG", "1")
    with pytest.raises(DatasetError, match="nowhere"):
        call_cli("train", ["bc", "--dataset", "nowhere/none-v0"])
