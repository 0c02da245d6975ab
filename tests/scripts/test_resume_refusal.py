"""A run directory belongs to one run: other settings, fewer steps, or overwriting are refused (issue item 2)."""

from __future__ import annotations

import json

import pytest

from tests.scripts._helpers import HOPPER, TINY_BC, call_cli, make_store, run_script

BASE = ["bc", "--dataset", HOPPER, "--train.steps", "6", "--train.log-every", "2", "--train.no-progress", *TINY_BC]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A finished 6-step run in tmp_path/A (trained in this process)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(make_store(tmp_path)))
    run = tmp_path / "A"
    code, _, err = call_cli("train", [*BASE, "--run-dir", str(run)])
    assert code == 0, err
    return run


def _files(run) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_other_settings_are_refused_naming_them(trained, tmp_path):
    before = _files(trained)
    proc = run_script("train.py", *BASE, "--run-dir", str(trained), "--train.lr", "0.01", "--train.batch-size", "32",
                      store=make_store(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert "train.lr 0.001 -> 0.01" in line and "train.batch_size 8 -> 32" in line, line
    assert "--overwrite" in line and "--run-dir" in line
    assert _files(trained) == before  # nothing written (train_config.json still says the old settings)


def test_fewer_steps_another_network_or_no_resume_are_refused(trained):
    before = _files(trained)
    code, _, err = call_cli("train", [*BASE, "--run-dir", str(trained), "--train.steps", "3"])
    assert code == 2 and "has trained 6 steps, more than the 3 asked for" in err, err
    code, _, err = call_cli("train", [*BASE, "--run-dir", str(trained), "--agent.hidden-sizes", "4", "4"])
    assert code == 2 and "agent.hidden_sizes [8] -> [4, 4]" in err, err
    code, _, err = call_cli("train", [*BASE, "--run-dir", str(trained), "--train.no-resume"])
    assert code == 2 and "would be overwritten" in err and "--overwrite" in err, err
    code, out, err = call_cli("train", [*BASE, "--run-dir", str(trained)])  # the same: nothing to do
    assert code == 0 and "already trained to 6 steps" in out, err
    assert _files(trained) == before


def test_more_steps_resume_and_overwrite_starts_over(trained):
    code, out, err = call_cli("train", [*BASE, "--run-dir", str(trained), "--train.steps", "10"])
    assert code == 0 and "trained BCPolicy" in out, err
    assert _steps(trained) == [2, 4, 6, 8, 10]  # each step once
    assert json.loads((trained / "train_config.json").read_text())["train"]["model"]["steps"] == 10
    (trained / "notes.txt").write_text("mine")
    code, out, err = call_cli("train", [*BASE, "--run-dir", str(trained), "--overwrite", "--train.lr", "0.01",
                                        "--train.steps", "4"])
    assert code == 0, err
    assert _steps(trained) == [2, 4]
    assert json.loads((trained / "train_config.json").read_text())["train"]["model"]["lr"] == 0.01
    assert (trained / "notes.txt").read_text() == "mine"  # only the run's own files are deleted
