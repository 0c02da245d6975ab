"""One JSON format for spaces: Minari's, in datasets and checkpoints alike; old checkpoints' dialect still read."""

from __future__ import annotations

import json

import gymnasium as gym
import minari.serialization
import numpy as np
import pytest

from tt_agents.data import DatasetError
from tt_agents.data.minari_format import deserialize_space as data_deserialize_space
from tt_agents.spaces import (
    SpaceFormatError,
    deserialize_space,
    serialize_space,
    space_from_json,
    space_to_json,
    spaces_equal,
)

SPACES = {
    "box": gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32),
    "unbounded box": gym.spaces.Box(np.array([0.0, -np.inf]), np.array([np.inf, 1.5]), (2,), np.float64),
    "scalar box": gym.spaces.Box(-np.inf, 1.0, (), np.float64),
    "image": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
    "discrete": gym.spaces.Discrete(4, start=-1),
    "multi-discrete": gym.spaces.MultiDiscrete([3, 4]),
    "multi-binary": gym.spaces.MultiBinary([2, 3]),
    "nested": gym.spaces.Dict(
        {"a": gym.spaces.Discrete(2), "b": gym.spaces.Tuple((gym.spaces.Box(0, np.inf, (1,), np.float32),))}
    ),
    "text": gym.spaces.Text(5, min_length=1),
}


@pytest.mark.parametrize("name", SPACES)
def test_our_format_is_minaris(name):
    space = SPACES[name]
    ours = json.dumps(serialize_space(space))
    assert ours == minari.serialization.serialize_space(space)  # metadata.json: byte for byte what Minari writes
    assert spaces_equal(deserialize_space(ours), space)
    assert spaces_equal(minari.serialization.deserialize_space(ours), space)


@pytest.mark.parametrize("name", SPACES)
def test_strict_json_for_checkpoints_reads_back_everywhere(name):
    space = SPACES[name]
    text = json.dumps(space_to_json(space), allow_nan=False)  # a checkpoint's manifest has no Infinity/NaN
    assert spaces_equal(space_from_json(json.loads(text)), space)
    assert spaces_equal(space_from_json(text), space)
    assert spaces_equal(minari.serialization.deserialize_space(text), space)
    finite = json.dumps(serialize_space(space))
    assert ("Infinity" in finite) == (
        '"inf"' in text or '"-inf"' in text
    )  # the two differ only in how infinite bounds are spelled


def test_the_old_checkpoint_dialect_still_reads():
    old = {
        "type": "Dict",
        "spaces": {
            "box": {
                "type": "Box",
                "shape": [2, 2],
                "dtype": "float32",
                "low": [-1.0, "-inf", 0.0, 0.0],
                "high": [1.0, "inf", 2.0, 3.0],
            },
            "image": {"type": "Box", "shape": [2, 2, 1], "dtype": "uint8", "low": [0.0] * 4, "high": [255.0] * 4},
            "discrete": {"type": "Discrete", "n": 3, "start": 0},
            "multi-discrete": {"type": "MultiDiscrete", "nvec": [2, 5]},
            "multi-binary": {"type": "MultiBinary", "n": 4},
        },
    }
    space = space_from_json(old)
    box = space["box"]
    assert box.shape == (2, 2) and box.dtype == np.float32
    np.testing.assert_array_equal(box.low, [[-1, -np.inf], [0, 0]])
    np.testing.assert_array_equal(box.high, [[1, np.inf], [2, 3]])
    assert space["image"] == gym.spaces.Box(0, 255, (2, 2, 1), np.uint8)
    assert space["discrete"] == gym.spaces.Discrete(3)
    assert space["multi-discrete"] == gym.spaces.MultiDiscrete([2, 5])
    assert space["multi-binary"] == gym.spaces.MultiBinary(4)


@pytest.mark.parametrize(
    "desc, message",
    [
        ('{"type": "Graph"}', "unknown space type 'Graph'"),
        ('{"type": "Box", "dtype": "float32"}', "malformed Box space description"),
        (
            '{"type": "Box", "dtype": "float32", "shape": [1000000000], "low": [0], "high": [1]}',
            "malformed Box space description",
        ),  # bounds are never broadcast to a claimed shape
        ('{"type": "Discrete", "n": "many"}', "malformed Discrete space description"),
        ("[1, 2]", "must be a JSON object with a 'type'"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_descriptions_raise_value_errors_and_dataset_errors_in_the_data_layer(desc, message):
    with pytest.raises(SpaceFormatError, match=message) as e:
        deserialize_space(desc)
    assert isinstance(e.value, ValueError)
    with pytest.raises(DatasetError, match=message):
        data_deserialize_space(desc)
