"""Latent actions on envs whose true actions are known (tests/latent/point_env.py).

The LAM's codes identify the true action (the best decoder from the codes, fitted with all labels,
and normalized mutual information), the codebook does not collapse (perplexity from the indices),
the trained decoder learns from 16 and 128 labels, and the LAM's stages never read an action.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.latent.conftest import VECTOR_LAM, fit_latent
from tests.latent.point_env import collect
from tt_agents import TrainConfig, load_agent
from tt_agents.data import Episode, EpisodeDataset
from tt_agents.latent import LAMConfig, LatentActionPolicy, LatentConfig, VPTPolicy, codebook_perplexity
from tt_agents.latent.models import LatentActionModel, UNetFDM

IMAGE_LAM = LAMConfig(n_latents=1, code_dim=8, codebook_size=8, cnn_channels=(8,), cnn_features=32, unet_channels=(8,),
                      vq_decay=0.95, kmeans_init=True)



def _true_actions(ds) -> np.ndarray:
    return np.concatenate([np.asarray(e.actions) for e in ds])


def code_ids(codes: np.ndarray) -> np.ndarray:
    """One id per distinct row of code indices."""
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def lookup_accuracy(codes: np.ndarray, actions: np.ndarray) -> float:
    """Accuracy of the best decoder from the codes alone, fitted on all labels: each code's majority action."""
    ids = code_ids(codes)
    table = np.zeros((ids.max() + 1, actions.max() + 1))
    np.add.at(table, (ids, actions), 1)
    return float(table.max(1).sum() / len(actions))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information, I(a; b) / mean(H(a), H(b)) (scikit-learn's default normalization)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pa[:, None] * pb[None, :])[nz])).sum())
    h = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
    return mi / max(1e-12, 0.5 * (h(pa) + h(pb)))


def decoder_accuracy(agent: LatentActionPolicy, ds) -> float:
    """The agent's trained decoder on the IDM's latents of every transition, against the true actions."""
    _, labels = agent._relabeled(ds)
    pred = agent.decode(labels["latent_actions"])
    return float(np.mean(pred == _true_actions(ds)))


def test_nmi_and_lookup_reference_values():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert nmi(a, a) == pytest.approx(1.0) and nmi(a, 5 - a) == pytest.approx(1.0)
    assert nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)
    assert lookup_accuracy(np.array([[0], [0], [1], [1]]), np.array([2, 2, 0, 1])) == 0.75
    assert codebook_perplexity(torch.zeros(10, dtype=torch.long), 8).item() == pytest.approx(1.0)


def test_vector_codes_identify_the_true_action(vector_agent, vector_data):
    _, labels = vector_agent._relabeled(vector_data)
    codes, actions = labels["latent_codes"], _true_actions(vector_data)
    perplexity = codebook_perplexity(torch.as_tensor(codes), 8).item()
    acc, mi = lookup_accuracy(codes, actions), nmi(code_ids(codes), actions)
    print(f"vector: lookup accuracy {acc:.3f}, NMI {mi:.3f}, perplexity {perplexity:.2f}, "
          f"codes used {len(np.unique(codes))}/8 (chance accuracy 0.25)")
    assert acc > 0.9 and mi > 0.7  # chance: 0.25 and 0
    assert perplexity > 3.0 and len(np.unique(codes)) >= 4  # 4 actions, no collapse
    full = LatentActionPolicy(vector_data.observation_space, vector_data.action_space,
                              vector_agent.config, device="cpu")
    full.model.load_state_dict(vector_agent.model.state_dict())
    full.config.labels = vector_data.total_steps  # the trained decoder, with all labels
    full.fit(vector_data, TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=10, progress=False),
             stage="decoder")
    assert decoder_accuracy(full, vector_data) > 0.9


def test_decoder_learns_from_16_and_128_labels(vector_agent, vector_data):
    acc128 = decoder_accuracy(vector_agent, vector_data)  # the fixture's decoder: 128 labels
    few = LatentActionPolicy(vector_data.observation_space, vector_data.action_space, vector_agent.config, device="cpu")
    few.model.load_state_dict(vector_agent.model.state_dict())
    few.config.labels = 16
    torch.nn.init.normal_(few.model.decoder.net.net[-1].weight)  # forget the 128-label decoder's last layer
    few.fit(vector_data, TrainConfig(steps=300, batch_size=16, lr=3e-3, warmup_steps=10, progress=False),
            stage="decoder")
    acc16 = decoder_accuracy(few, vector_data)
    print(f"decoder accuracy over all {vector_data.total_steps} transitions: 16 labels {acc16:.3f}, "
          f"128 labels {acc128:.3f} (chance 0.25)")
    assert acc128 > 0.9 and acc16 > 0.6


def test_image_codes_identify_the_true_action():
    ds = collect("image", "discrete", n_episodes=40)
    agent = fit_latent(ds, IMAGE_LAM, lam_steps=500, batch=32)
    _, labels = agent._relabeled(ds)
    codes, actions = labels["latent_codes"], _true_actions(ds)
    perplexity = codebook_perplexity(torch.as_tensor(codes), 8).item()
    acc, mi = lookup_accuracy(codes, actions), nmi(code_ids(codes), actions)
    print(f"image: lookup accuracy {acc:.3f}, NMI {mi:.3f}, perplexity {perplexity:.2f} (chance accuracy 0.25)")
    assert acc > 0.6 and mi > 0.25 and perplexity > 2.0


class ActionlessEpisode(Episode):
    """An episode whose actions raise on any read."""

    @property
    def actions(self):  # type: ignore[override]
        raise AssertionError("the actions were read")

    @actions.setter
    def actions(self, value):
        pass


def _poisoned(ds) -> EpisodeDataset:
    eps = [ActionlessEpisode(e.observations, e.actions, e.rewards, e.terminations, e.truncations, id=e.id) for e in ds]
    return EpisodeDataset(eps, ds.observation_space, ds.action_space, ds.metadata)


def test_the_lam_never_reads_actions():
    ds = collect("vector", "discrete", n_episodes=6)
    poisoned = _poisoned(ds)
    with pytest.raises(AssertionError, match="actions were read"):
        poisoned[0].field("actions")
    cfg = TrainConfig(steps=20, batch_size=16, lr=3e-3, warmup_steps=2, progress=False)
    runs = []
    for data in (ds, poisoned):
        agent = LatentActionPolicy(ds.observation_space, ds.action_space, LatentConfig(lam=VECTOR_LAM), device="cpu",
                                   seed=0)
        for stage in ("lam", "relabel", "latent_bc"):  # everything before the decoder
            agent.fit(data, cfg, stage=stage)
        runs.append(agent)
        if data is poisoned:
            with pytest.raises(AssertionError, match="actions were read"):  # the decoder is the one that reads them
                agent.fit(data, cfg, stage="decoder")
    a, b = (torch.cat([v.flatten().float() for v in r.model.state_dict().values()]) for r in runs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # training unchanged without the actions


@pytest.mark.parametrize("quantizer", ["rvq", "fsq", "none"])
def test_other_quantizers(quantizer):
    cfg = LAMConfig(n_latents=2, code_dim=4, codebook_size=8, mlp_hidden=(16,), quantizer=quantizer, fsq_levels=(3, 3))
    lam = LatentActionModel((4,), False, cfg).train()
    out = lam(torch.randn(32, 3, 4))
    assert out["prediction"].shape == (32, 4) and out["latent"].shape == (32, 8)
    if quantizer == "none":
        assert "codes" not in out and torch.equal(out["quantized"], out["latent"])
        return
    n_codes = 4 if quantizer == "rvq" else 2  # residual VQ: 2 levels per token
    assert out["codes"].shape == (32, n_codes) and out["codes"].max() < lam.quantizer.codebook_size
    assert lam.quantizer.codebook_size == (8 if quantizer == "rvq" else 9)
    out["prediction"].sum().backward()
    assert lam.idm.head.weight.grad.abs().sum() > 0  # straight-through gradients reach the IDM


def test_vq_uses_lapos_settings_not_the_librarys_defaults():
    vq = LatentActionModel((4,), False, LAMConfig(mlp_hidden=(8,))).quantizer.vq
    assert vq._codebook.decay == 0.999 and vq.commitment_weight == 0.05 and not vq.rotation_trick
    assert vq._codebook.threshold_ema_dead_code == 2.0


def test_checkpoint_holds_every_stage(vector_agent, vector_data, tmp_path):
    path = vector_agent.save(tmp_path / "latent")
    loaded = load_agent(path, device="cpu")
    assert type(loaded) is LatentActionPolicy
    for k, v in vector_agent.model.state_dict().items():  # LAM (codebook included), latent policy, decoder
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=0)
    assert any("codebook" in k for k in vector_agent.model.state_dict())
    frames = np.stack([vector_data[0].observations[[0, 0, 1]], vector_data[0].observations[[0, 1, 2]]])
    for x, y in zip(loaded.infer_latents(frames), vector_agent.infer_latents(frames)):
        np.testing.assert_array_equal(x, y)
    obs = vector_data[1].observations
    np.testing.assert_array_equal(loaded.predict(obs)[0], vector_agent.predict(obs)[0])


def test_vpt_learns_from_its_labels():
    ds = collect("vector", "discrete", n_episodes=20)
    agent = VPTPolicy.from_preset("tiny", ds.observation_space, ds.action_space, device="cpu", seed=0)
    agent.config.labels = 256
    result = agent.fit(ds, {"idm": TrainConfig(steps=400, batch_size=64, lr=3e-3, warmup_steps=10, progress=False),
                            "relabel": TrainConfig(steps=1, progress=False),
                            "bc": TrainConfig(steps=20, batch_size=64, lr=3e-3, warmup_steps=5, progress=False)})
    _, labels = agent._relabeled(ds)
    right = labels["pseudo_actions"] == _true_actions(ds)
    print(f"VPT IDM accuracy over all transitions with 256 labels: {right.mean():.3f}")
    assert right.mean() > 0.6  # chance: 0.25
    # the relabel stage's loss: how often the IDM disagrees with the labels it learned from
    assert result.stages["relabel"].losses[0] == pytest.approx(1 - right[:256].mean())


def test_joint_order_trains_the_decoder_with_the_lam(vector_data):
    accs = {}
    for joint in (True, False):
        agent = LatentActionPolicy(vector_data.observation_space, vector_data.action_space,
                                   LatentConfig(lam=VECTOR_LAM, decoder_hidden=(64,), normalize_fdm_target=True,
                                                joint_decoder=joint, labels=128), device="cpu", seed=0)
        decoder = [p.detach().clone() for p in agent.model.decoder.parameters()]
        result = agent.fit(vector_data, TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=10,
                                                    progress=False), stage="lam")
        changed = any(not torch.equal(a, b) for a, b in zip(decoder, agent.model.decoder.parameters()))
        assert changed == joint  # the sequential order leaves the decoder to its own stage
        accs[joint] = decoder_accuracy(agent, vector_data)  # no decoder stage run
    print(f"decoder accuracy right after the lam stage: joint {accs[True]:.3f}, sequential {accs[False]:.3f}")
    assert accs[True] > 0.45 and accs[True] > accs[False] + 0.2  # chance: 0.25
    assert len(result.losses) == 300


@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_unet_fdm_first_layer_equals_the_tiled_concatenation(hw):
    """The FDM's first convolution adds the latent's part without tiling it: same output and gradients as
    convolving ``[frames, latent tiled over the frame]`` (zero padding at the borders included)."""
    torch.manual_seed(0)
    h, w = hw
    fdm = UNetFDM((h, w, 3), 2, 12, (4, 8))
    past = torch.randint(0, 256, (3, h, w, 6), dtype=torch.uint8)
    z = torch.randn(3, 12, requires_grad=True)
    x = past.float().permute(0, 3, 1, 2) / 255.0 - 0.5
    conv = fdm.downs[0][0]
    tiled = torch.cat([x, z[:, :, None, None].expand(-1, -1, h, w)], 1)
    ref = torch.nn.functional.conv2d(tiled, conv.weight, conv.bias, padding=1)
    out = fdm._first_conv(x, z)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g_ref = torch.autograd.grad(ref.square().sum(), [z, conv.weight])
    g_out = torch.autograd.grad(out.square().sum(), [z, conv.weight])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert fdm(past, z).shape == (3, 3, h, w)


def test_residual_unet_fdm_predicts_o_t_plus_its_output():
    """``unet_residual``: the prediction is o_t (the newest past frame, in [-0.5, 0.5]) plus the UNet's output; off
    (old checkpoints' setting), the output alone; the same weights either way."""
    torch.manual_seed(0)
    plain, resid = UNetFDM((6, 6, 3), 2, 4, (4, 8)), UNetFDM((6, 6, 3), 2, 4, (4, 8), residual=True)
    resid.load_state_dict(plain.state_dict())
    past = torch.randint(0, 256, (2, 6, 6, 6), dtype=torch.uint8)  # o_t-1 channels 0-2, o_t channels 3-5
    z = torch.randn(2, 4)
    o_t = past[..., 3:].float().permute(0, 3, 1, 2) / 255.0 - 0.5
    torch.testing.assert_close(resid(past, z), o_t + plain(past, z))
    torch.nn.init.zeros_(resid.out.weight), torch.nn.init.zeros_(resid.out.bias)
    torch.testing.assert_close(resid(past, z), o_t)  # a zero change copies o_t
    assert not LAMConfig().unet_residual  # a checkpoint saved without the field keeps LAPO's UNet


def test_vit_backbone_shapes_and_gradients():
    cfg = LAMConfig(n_latents=2, code_dim=4, codebook_size=8, backbone="vit", vit_patch=4, vit_dim=16, vit_layers=1,
                    vit_heads=2)
    lam = LatentActionModel((8, 8, 3), True, cfg).train()
    frames = torch.randint(0, 256, (5, 3, 8, 8, 3), dtype=torch.uint8)
    out = lam(frames)
    assert out["latent"].shape == (5, 8) and out["codes"].shape == (5, 2)
    assert out["prediction"].shape == (5, 3, 8, 8)  # the next frame, channels first
    out["prediction"].square().mean().backward()
    assert lam.idm.head.weight.grad.abs().sum() > 0 and lam.fdm.vit.pos.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patches"):
        LatentActionModel((10, 10, 3), True, cfg)


def test_k_step_rollout_shapes_first_step_and_open_loop():
    torch.manual_seed(0)
    for image, shape, cfg in ((False, (4,), VECTOR_LAM), (True, (8, 8, 3), IMAGE_LAM)):
        lam = LatentActionModel(shape, image, cfg).eval()  # eval: the codebook's EMA stays put between calls
        frames = (torch.randint(0, 255, (3, 5, *shape), dtype=torch.uint8) if image
                  else torch.randn(3, 5, *shape))  # history 1 + o_t + 3 future frames
        out = lam.rollout(frames, 3)
        target = (shape[2], *shape[:2]) if image else shape
        assert out["predictions"].shape == (3, 3, *target) and out["vq_losses"].shape == (3,)
        torch.testing.assert_close(out["predictions"][:, 0], lam(frames[:, :3])["prediction"])  # the 1-step FDM
        # step 2 by hand: its latent from the real o_t, o_{t+1}, o_{t+2}; its FDM input the real o_t and the
        # predicted o_{t+1} (open loop)
        z = lam.encode(frames[:, 1:4])[1]
        past = torch.stack([frames[:, 1].float() if image else frames[:, 1],
                            lam._as_frame(out["predictions"][:, 0], frames.dtype)], 1)
        torch.testing.assert_close(out["predictions"][:, 1], lam.fdm(lam._past(past), z))
        lam.train()
        lam.rollout(frames, 3)["predictions"][:, 2].sum().backward()  # the last step's error trains the IDM too
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lam.idm.parameters())


def test_k_step_windows_mark_frames_past_the_episode_end():
    from tt_agents.latent.transitions import Transitions

    ds = collect("vector", "discrete", n_episodes=2, episode_len=4)
    tr = Transitions(ds, history=1, future=3)
    assert tr.frames(np.arange(len(tr))).shape == (8, 5, 4)
    assert tr.future_valid[:4].tolist() == [[True] * 3, [True] * 3, [True, True, False], [True, False, False]]
    np.testing.assert_array_equal(tr.observations(np.arange(4)), ds[0].observations[:4])


def test_k_step_lam_trains_and_its_codes_identify_the_action(vector_data):
    # the lam stage alone (the codes need nothing else); seen here: k=3 0.85 and k=1 0.64 at 1000 and 400 steps
    agent = LatentActionPolicy(vector_data.observation_space, vector_data.action_space,
                               LatentConfig(lam=LAMConfig(**{**VECTOR_LAM.__dict__, "k_step": 3}),
                                            normalize_fdm_target=True), device="cpu", seed=0)
    agent.fit(vector_data, {"lam": TrainConfig(steps=1000, batch_size=64, lr=3e-3, warmup_steps=10, progress=False)},
              stage="lam")
    _, labels = agent._relabeled(vector_data)
    acc = lookup_accuracy(labels["latent_codes"], _true_actions(vector_data))
    print(f"k=3: lookup accuracy {acc:.3f} (chance 0.25)")
    assert acc > 0.75


@pytest.mark.parametrize("quantizer", ["vq", "rvq", "fsq", "none"])
def test_an_agent_with_each_quantizer_saves_and_loads(quantizer, tmp_path):
    """load_agent checks shapes on a model built on the meta device: FSQ's constructor must not need real numbers."""
    import gymnasium as gym

    lam = LAMConfig(n_latents=2, code_dim=4, codebook_size=8, mlp_hidden=(16,), quantizer=quantizer, fsq_levels=(3, 3))
    agent = LatentActionPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3),
                               LatentConfig(lam=lam, decoder_hidden=(8,)), device="cpu", seed=0)
    back = load_agent(agent.save(tmp_path / f"{quantizer}.zip"), device="cpu")
    assert back.config.lam.quantizer == quantizer
    a, b = agent.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
