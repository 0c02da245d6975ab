"""``tt_agents.data.minari_io`` stays importable (for one release) as the one import of the format's parts."""

from __future__ import annotations

import importlib

import tt_agents.data.minari_io as minari_io

HOMES = {  # where each name lives now
    "tt_agents.data.minari_format": [
        "MAIN_FILE", "METADATA_FILE", "DatasetMismatchError", "EpisodeRecord", "dataset_path", "datasets_root",
        "deserialize_space", "flatten_space", "get_leaf", "is_jpeg_space", "nest_leaves", "parse_dataset_id",
    ],
    "tt_agents.data.reader": ["MinariReader", "open_hdf5"],
    "tt_agents.data.writer": ["MinariWriter"],
    "tt_agents.spaces": ["serialize_space"],
}


def test_every_name_is_the_one_of_its_home_module():
    listed = sorted(minari_io.__all__)
    assert listed == sorted(n for names in HOMES.values() for n in names)
    for module, names in HOMES.items():
        home = importlib.import_module(module)
        for name in names:
            assert getattr(minari_io, name) is getattr(home, name), name
