"""Dataset loaders (filled in by the data issue)."""

from __future__ import annotations

from tt_agents.data.episodes import EpisodeDataset


def load_dataset(source: str) -> EpisodeDataset:
    raise NotImplementedError("load_dataset is provided by the data layer")
