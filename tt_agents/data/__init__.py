"""Datasets: one episode representation, loaders for Minari and D4RL files, and the window sampler.

- :class:`Episode`, :class:`EpisodeDataset`: trajectories with their spaces and metadata.
- :func:`load_dataset`: a Minari id (local store), a Minari dataset folder, or a D4RL HDF5 file.
- :class:`WindowSampler`: windows of K steps with returns-to-go, value targets and masks.
"""

from tt_agents.data.episodes import DatasetError, Episode, EpisodeDataset
from tt_agents.data.loading import load_dataset
from tt_agents.data.sampler import WindowSampler, discounted_cumsum

__all__ = [
    "DatasetError",
    "Episode",
    "EpisodeDataset",
    "WindowSampler",
    "discounted_cumsum",
    "load_dataset",
]
