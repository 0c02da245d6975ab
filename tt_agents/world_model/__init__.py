"""World Models (Ha & Schmidhuber 2018) as one staged agent: V (VAE), M (MDN-RNN, Transformer or TraDE), C (CMA-ES).

- :mod:`tt_agents.world_model.models`: the torch modules and losses.
- :mod:`tt_agents.world_model.controller`: CMA-ES, dream and real-env population evaluation.
- :mod:`tt_agents.world_model.agent`: :class:`WorldModelController`, the agent.
"""
