"""Read and write the Minari on-disk format with h5py and JSON only (no pickle, no jax, any Minari version).

A Minari dataset ``namespace/name-vN`` lives in ``$MINARI_DATASETS_PATH/namespace/name-vN/data/``
(``~/.minari/datasets`` when the variable is unset) as two files:

- ``metadata.json``: ``dataset_id``, ``minari_version``, ``total_episodes``, ``total_steps``,
  ``data_format`` (``"hdf5"``), the spaces as Minari's space JSON, ``env_spec`` (Gymnasium's
  ``EnvSpec.to_json()``), reference scores and free-form keys.
- ``main_data.hdf5``: one group ``episode_{i}`` per episode holding ``observations`` (``T + 1``
  rows), ``actions``, ``rewards``, ``terminations``, ``truncations`` (``T`` rows) and an
  ``infos`` group; Dict spaces are groups of their keys, Tuple spaces groups of ``_index_{i}``.
  Image spaces (``uint8`` Box, ``H, W >= 32``, bounds 0..255) are JPEG-encoded when the
  metadata's ``jpeg_encoding`` is true or absent, as Minari does.

What this module adds, ignored by Minari's own reader: extra per-step fields in an ``extras``
group of each episode (``T`` rows each, spaces in the metadata key ``extra_spaces``), and the
metadata keys ``env_id`` (the env spec's id), ``seeds`` (given to ``reset``) and ``policy``.

Durability: :class:`MinariWriter` opens the HDF5 file only while it writes finished episodes,
flushes and ``fsync``s it, and only then commits the new episode count by atomically replacing
``metadata.json``. Readers trust ``metadata.json``: an episode written but not yet committed when
a process died is invisible and is removed on the next append. A process killed while it is not
writing (mid-episode) therefore loses only the episodes it had not finished; a kill during the
milliseconds of the write itself can leave the HDF5 file damaged, as with any HDF5 writer. A
failed write (a full disk) raises :class:`~tt_agents.data.writer.DatasetWriteError` naming the
episodes safe and those lost; the dataset still loads.

One writer per dataset: a writer holds an OS lock from construction to ``close``
(:mod:`tt_agents.data.lock`); a second one is refused naming the holder. Readers take no lock and
never disturb the writer. The loaders refuse files pointing outside themselves and files claiming
more data than they hold (:mod:`tt_agents.data.hdf5`).

This module is the format's description and the one import for all of it; the code lives in
:mod:`tt_agents.data.minari_format` (store, leaves, JPEG), :mod:`tt_agents.spaces` (space JSON),
:mod:`tt_agents.data.writer`, :mod:`tt_agents.data.reader`, :mod:`tt_agents.data.lock` and
:mod:`tt_agents.data.hdf5`.

- :class:`MinariWriter`: create or append to a dataset, one batch of finished episodes at a time.
- :class:`EpisodeRecord`: one finished episode, as the writer takes it.
- :class:`MinariReader`: open a dataset folder, check its structure, read episodes.
- :func:`serialize_space`, :func:`deserialize_space`: Minari's space JSON, parsed without eval.
- :func:`flatten_space`, :func:`get_leaf`, :func:`nest_leaves`, :func:`is_jpeg_space`: the
  array leaves of Dict/Tuple spaces and values, and Minari's rule for image spaces.
- :func:`datasets_root`, :func:`dataset_path`, :func:`parse_dataset_id`: the local store.
- :class:`DatasetMismatchError`: appending data that does not match the dataset on disk.
"""

from tt_agents.data.minari_format import (
    MAIN_FILE,
    METADATA_FILE,
    DatasetMismatchError,
    EpisodeRecord,
    dataset_path,
    datasets_root,
    deserialize_space,
    flatten_space,
    get_leaf,
    is_jpeg_space,
    nest_leaves,
    parse_dataset_id,
    serialize_space,
)
from tt_agents.data.reader import MinariReader, open_hdf5
from tt_agents.data.writer import MinariWriter

__all__ = [
    "MAIN_FILE",
    "METADATA_FILE",
    "DatasetMismatchError",
    "EpisodeRecord",
    "MinariReader",
    "MinariWriter",
    "dataset_path",
    "datasets_root",
    "deserialize_space",
    "flatten_space",
    "get_leaf",
    "is_jpeg_space",
    "nest_leaves",
    "open_hdf5",
    "parse_dataset_id",
    "serialize_space",
]
