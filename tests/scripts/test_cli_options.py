"""scripts/train.py and scripts/eval.py options: each listed once, each doing what it says (issue items 1 and 7)."""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import json
import re

import numpy as np
import pytest
import tyro

from tests.fake_env import FakeEnv
from tests.scripts._helpers import HOPPER, TINY_BC, call_cli, load_script, make_store, run_script
from tt_agents import BCPolicy, evaluate
from tt_agents.checkpoint import read_checkpoint
from tt_agents.evaluation import DEFAULT_N_ENVS

RUN_SETTINGS = ("run_dir", "seed", "device", "overwrite")


def _actions(args_cls: type) -> list[argparse.Action]:
    """The argparse actions of one subcommand's options."""
    return list(tyro.extras.get_parser(args_cls)._actions)


def _help(parser_type, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        tyro.cli(parser_type, args=[*argv, "--help"])
    assert e.value.code == 0
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", out.getvalue()))


def test_every_subcommand_lists_each_option_once_with_help():
    train = load_script("train")
    from benches.presets import measured

    figures = measured()
    assert {"bc", "tt", "tt-small", "dt-cpu"} <= set(figures)
    commands = train.subcommands()
    parser_type = train.parser_type(commands)
    for name, (_, args_cls, _) in commands.items():
        actions = _actions(args_cls)
        options = [o for a in actions for o in a.option_strings if o.startswith("--")]
        twice = [o for o, n in collections.Counter(options).items() if n > 1]
        assert not twice, (name, twice)
        for setting in RUN_SETTINGS:  # one name per setting: never also under --train. or a stage
            flag = setting.replace("_", "-")
            run_level = [o for o in options if not o.startswith(("--agent.", "--act."))]  # act.seed: the plan's
            assert [o for o in run_level if o.lstrip("-").split(".")[-1] == flag] == [f"--{flag}"], (name, setting)
        text = _help(parser_type, [name])
        if name in figures:  # a measured preset says what it costs
            assert f"{figures[name]['steps_per_s']:.3g} train steps/s" in text, name
        for option in options:
            assert option in text, (name, option)
        assert "``" not in text, name
        if name.split("-")[0] != "tt":
            assert "TT's default" not in text, name
        # every --train.* option says what it does
        for action in actions:
            if any(o.startswith("--train.") for o in action.option_strings):
                assert action.help and action.help.strip() and not action.help.startswith("(default"), action
    eval_actions = _actions(load_script("eval").Args)
    options = [o for a in eval_actions for o in a.option_strings if o.startswith("--")]
    assert len(options) == len(set(options))
    for action in eval_actions:
        if set(action.option_strings) & {"--deterministic", "--device"}:
            assert action.help and not action.help.startswith("(default"), action.option_strings


def test_run_dir_seed_and_no_progress_are_honoured_by_a_subprocess(tmp_path):
    """--run-dir is where the run goes (nothing under runs/), train_config.json records --seed and --device, and
    --train.no-progress leaves stderr without a single progress bar, the evaluation's included."""
    store = make_store(tmp_path)
    run = tmp_path / "A"
    proc = run_script("train.py", "bc", "--dataset", HOPPER, "--run-dir", str(run), "--seed", "3",
                      "--train.steps", "6", "--train.no-progress", "--eval-episodes", "1", "--eval-envs", "1",
                      *TINY_BC, store=store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "final.zip").exists() and (run / "eval.json").exists()
    assert not (tmp_path / "runs").exists()
    config = json.loads((run / "train_config.json").read_text())
    assert config["train"]["model"]["seed"] == 3 and config["train"]["model"]["device"] == "cpu"
    assert config["agent"]["hidden_sizes"] == [8] and config["dataset"] == "fixtures/hopper/random-v0"
    assert "it/s" not in proc.stderr and "%|" not in proc.stderr, proc.stderr


def _weights(path) -> np.ndarray:
    return np.concatenate([t.flatten().numpy() for _, t in sorted(read_checkpoint(path).tensors["model"].items())])


def test_seed_changes_the_weights_and_device_is_checked(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    weights = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        code, out, err = call_cli("train", ["bc", "--dataset", HOPPER, "--run-dir", str(tmp_path / name),
                                            "--seed", seed, "--train.steps", "4", *TINY_BC])
        assert code == 0, err
        weights[name] = _weights(tmp_path / name / "final.zip")
    np.testing.assert_array_equal(weights["a"], weights["b"])
    assert not np.allclose(weights["a"], weights["c"])
    assert "%|" in err  # a bar without --train.no-progress (so the check above could fail)
    code, out, err = call_cli("train", ["bc", "--dataset", HOPPER, "--run-dir", str(tmp_path / "d"),
                                        "--device", "cuda:99"])
    assert code == 2 and "--device cuda:99" in err and not (tmp_path / "d").exists(), err


def test_eval_defaults_agree_with_evaluate():
    ev, train = load_script("eval"), load_script("train")
    fields = {f.name: f.default for f in dataclasses.fields(ev.Args)}
    for name, default in ev.evaluate_defaults().items():
        assert fields[name] == default, name
    assert fields["n_envs"] == DEFAULT_N_ENVS
    assert {f.name: f.default for f in dataclasses.fields(train.Common)}["eval_envs"] == DEFAULT_N_ENVS


class CountingEnv(FakeEnv):
    renders: list[int] = []

    def __init__(self, index: int, **kw) -> None:
        super().__init__(render_mode="rgb_array", **kw)
        self.index = index

    def render(self):
        CountingEnv.renders.append(self.index)
        return super().render()


def test_a_video_renders_only_sub_env_0_and_only_while_recording(tmp_path):
    counter = iter(range(100))
    CountingEnv.renders = []
    env = FakeEnv()
    agent = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0)
    res = evaluate(agent, lambda: CountingEnv(next(counter)), n_episodes=6, n_envs=3, progress=False,
                   video_path=tmp_path / "ep.gif")
    assert (tmp_path / "ep.gif").exists() and res.n_episodes == 6
    assert set(CountingEnv.renders) == {0}
    assert res.lengths == [10] * 6  # FakeEnv's episodes: 10 steps
    assert len(CountingEnv.renders) == 10 + 1  # the first frame, then one per step of the first episode


def test_bench_writes_benchmarks_md_only_with_write(monkeypatch, tmp_path):
    from tests.scripts._helpers import REPO

    bench = load_script("bench")
    presets = bench.sections()["presets"]
    own = presets.write_section
    recorded = []
    monkeypatch.setattr(bench._common, "write_section", lambda name, title, body, **kw: recorded.append(name))
    before = (REPO / "benchmarks.md").read_bytes()
    tiny = ["presets", "--presets", "bc", "--steps", "1", "--warmup", "1", "--rounds", "1", "--actions", "1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.cli(tiny)
    assert "benchmarks.md not changed" in out.getvalue() and "| bc | BCPolicy |" in out.getvalue()
    assert recorded == [] and (REPO / "benchmarks.md").read_bytes() == before
    with contextlib.redirect_stdout(io.StringIO()):
        bench.cli([*tiny, "--write"])
    assert recorded == ["presets"]
    assert presets.write_section is own  # cli's redirect lasts for its call only: later callers see the module as it was
