"""V, the mixture, M (each kind) and C on tiny data: shapes, losses, the mixture against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as td

from tt_agents.world_model.models import (
    LOG_SIGMA_MIN,
    MEMORY_KINDS,
    Controller,
    ConvVAE,
    MixtureHead,
    WorldModel,
    memory_loss,
    mixture_log_prob,
    mmd2,
    sample_mixture,
)


def _reference(x, logit_pi, mu, log_sigma):
    mix = td.MixtureSameFamily(td.Categorical(logits=logit_pi), td.Normal(mu, log_sigma.exp()))
    return mix.log_prob(x)


def _train(module, loss_fn, steps, lr=3e-3):
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_vae_shapes_and_loss_decreases():
    torch.manual_seed(0)
    vae = ConvVAE(3, latent=4, widths=(4, 8, 8, 8))
    x = torch.rand(6, 3, 1, 1).expand(6, 3, 64, 64) ** 3  # solid colours, mostly dark
    with torch.no_grad():
        recon, mu, logvar = vae(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (6, 4)
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1
    noise = torch.zeros(6, 4)
    losses = _train(vae, lambda: vae.loss(x, noise, kl_tolerance=0.0)[0], 40, lr=1e-2)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.85 * losses[0]
    loss, metrics = vae.loss(x, noise, kl_tolerance=0.5)
    assert loss.item() >= metrics["reconstruction"] + 0.5 * 4 - 1e-4  # the KL term is floored at the tolerance
    paper = ConvVAE()
    assert paper.decode(torch.zeros(1, 32)).shape == (1, 3, 64, 64) and paper.fc.out_features == 1024


@pytest.mark.parametrize("case", ["easy", "tiny sigmas", "far away"])
def test_mixture_log_prob_matches_torch_distributions(case):
    g = torch.Generator().manual_seed(0)
    B, D, K = 16, 5, 3
    logit_pi = torch.randn(B, D, K, generator=g)
    mu = torch.randn(B, D, K, generator=g)
    log_sigma = 0.3 * torch.randn(B, D, K, generator=g)
    x = torch.randn(B, D, generator=g)
    if case == "tiny sigmas":
        log_sigma = torch.full_like(log_sigma, LOG_SIGMA_MIN)  # sigma 9e-4: densities of 1e-300 and below
        x = mu[..., 0] + 0.05  # 55 sigmas from the nearest component
    elif case == "far away":
        x = torch.full((B, D), 1e3)
    ours = mixture_log_prob(x, logit_pi, mu, log_sigma)
    ref = _reference(x, logit_pi, mu, log_sigma)
    assert ours.shape == (B, D) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    if case != "easy":  # the case is extreme: summing densities first underflows to log(0)
        naive = torch.log((torch.softmax(logit_pi, -1) * td.Normal(mu, log_sigma.exp()).log_prob(x[..., None]).exp())
                          .sum(-1))
        assert torch.isinf(naive).any()
    mu = mu.clone().requires_grad_()
    mixture_log_prob(x, logit_pi, mu, log_sigma).sum().backward()
    assert torch.isfinite(mu.grad).all()


def test_mixture_head_bounds_sigmas_and_gives_each_dimension_its_weights():
    head = MixtureHead(features=4, latent=3, n_mixtures=2)
    with torch.no_grad():
        out = head(torch.randn(2, 7, 4) * 1e6)
    assert out.logit_pi.shape == out.mu.shape == out.log_sigma.shape == (2, 7, 3, 2)
    assert out.reward.shape == out.done_logit.shape == (2, 7)
    assert float(out.log_sigma.min()) >= LOG_SIGMA_MIN and float(out.log_sigma.max()) <= 2.0


class _SharedWeightsHead(MixtureHead):
    """The port's head: one set of mixture weights for every latent dimension."""

    def forward(self, h):
        out = super().forward(h)
        out.logit_pi = out.logit_pi.mean(-2, keepdim=True).expand_as(out.logit_pi)
        return out


def _fit_two_modes(head_cls):
    """Dimension 0 puts 80% of its mass at -2, dimension 1 50%: the weights ``{0.8, 0.2}`` and ``{0.5, 0.5}``
    cannot be one shared set under any relabeling of the components."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 2048
    left = torch.stack([torch.rand(n, generator=g) < 0.8, torch.rand(n, generator=g) < 0.5], 1)  # (n, 2)
    x = torch.where(left, -2.0, 2.0) + 0.1 * torch.randn(n, 2, generator=g)
    head = head_cls(features=1, latent=2, n_mixtures=2)
    h = torch.ones(n, 1)
    with torch.no_grad():  # start the components apart, the same way in both dimensions
        head.proj.bias[2 * 2: 4 * 2].copy_(torch.tensor([-1.0, 1.0, -1.0, 1.0]))

    def nll():
        out = head(h[:1])  # every row's feature is the same: one row, broadcast over the n points
        return -mixture_log_prob(x, out.logit_pi, out.mu, out.log_sigma).mean()

    _train(head, nll, 300, lr=3e-2)
    out = head(h[:1])
    pi = torch.softmax(out.logit_pi[0], -1)  # (D, K)
    return pi.gather(1, out.mu[0].argmin(-1)[:, None])[:, 0].detach()  # the weight of the component near -2, per dimension


def test_per_dimension_mixture_weights_are_learned():
    w_left = _fit_two_modes(MixtureHead)
    assert abs(float(w_left[0]) - 0.8) < 0.05 and abs(float(w_left[1]) - 0.5) < 0.05, w_left
    shared = _fit_two_modes(_SharedWeightsHead)  # the same check fails with shared weights
    assert not (abs(float(shared[0]) - 0.8) < 0.05 and abs(float(shared[1]) - 0.5) < 0.05), shared


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_memory_shapes_loss_and_one_step_use(kind):
    torch.manual_seed(0)
    D, A, T = 4, 2, 6
    wm = WorldModel(3, A, latent=D, vae_widths=(4, 4, 4, 4), memory_kind=kind, hidden=16, n_mixtures=3, d_model=8,
                    n_head=2, n_layer=1, context=T)
    m = wm.memory
    z, a = torch.randn(3, T, D), torch.randn(3, T, A)
    next_z = torch.roll(z, -1, 1) * 0.5
    rewards, dones, mask = z[..., 0], torch.zeros(3, T), torch.ones(3, T, dtype=torch.bool)
    out, _ = m(z, a)
    assert out.logit_pi.shape == (3, T, D, 3) and out.features.shape == (3, T, m.feature_dim)
    weight = 1.0 if kind == "trade" else 0.0

    def loss():
        return memory_loss(m(z, a)[0], next_z, rewards, dones, mask, mmd_weight=weight)[0]

    _, metrics = memory_loss(out, next_z, rewards, dones, mask, mmd_weight=weight)
    assert ("mmd2" in metrics) == (kind == "trade")
    losses = _train(m, loss, 40)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # one step at a time equals the whole sequence (what acting and dreaming rely on)
    with torch.no_grad():
        full, _ = m(z, a)
        state = m.initial_state(3)
        for t in range(T):
            assert torch.allclose(wm.controller_input(z[:, t], state)[:, D:],
                                  torch.zeros(3, m.feature_dim) if t == 0 else full.features[:, t - 1], atol=1e-5)
            step, state = m.step(z[:, t], a[:, t], state)
            torch.testing.assert_close(step.mu[:, 0], full.mu[:, t], atol=1e-5, rtol=1e-4)
        # reset rows start afresh
        fresh = m.step(z[:, 0], a[:, 0], m.initial_state(3))[0]
        again = m.step(z[:, 0], a[:, 0], m.reset_rows(state, torch.tensor([True, False, True])))[0]
        torch.testing.assert_close(again.mu[[0, 2]], fresh.mu[[0, 2]])
        assert not torch.allclose(again.mu[1], fresh.mu[1])


def test_transformer_window_rolls_past_its_context():
    torch.manual_seed(0)
    wm = WorldModel(3, 2, latent=4, vae_widths=(4, 4, 4, 4), memory_kind="transformer", d_model=8, n_head=2,
                    n_layer=1, context=3)
    z, a = torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    with torch.no_grad():
        state = wm.memory.initial_state(1)
        for t in range(5):
            step, state = wm.memory.step(z[:, t], a[:, t], state)
        window, _ = wm.memory(z[:, 2:], a[:, 2:])  # the last 3 steps
    torch.testing.assert_close(step.mu[:, 0], window.mu[:, -1], atol=1e-5, rtol=1e-4)


def test_mmd_and_sampling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    assert float(mmd2(x, torch.randn(256, 3, generator=g))) < 0.05 < float(mmd2(x, x + 2.0))
    # a two-component mixture per dimension, sampled: the weights and temperature act per dimension
    logit = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]])).expand(4000, 2, 2)
    mu = torch.tensor([-5.0, 5.0]).expand(4000, 2, 2)
    s = sample_mixture(logit, mu, torch.full((4000, 2, 2), -3.0), generator=g)
    left = (s < 0).float().mean(0)
    assert abs(float(left[0]) - 0.9) < 0.03 and abs(float(left[1]) - 0.1) < 0.03
    hot = sample_mixture(logit, mu, torch.full((4000, 2, 2), -3.0), temperature=100.0, generator=g)
    assert abs(float((hot < 0).float().mean()) - 0.5) < 0.05


def test_controller_sizes_and_batched_population():
    assert Controller(32 + 256, 3).n_params == 867  # the paper's C
    torch.manual_seed(0)
    for hidden in (0, 5):
        c = Controller(6, 3, hidden)
        params = torch.randn(4, c.n_params)
        x = torch.randn(4, 6)
        batched = c.batched(params, x)
        for j in range(4):
            torch.nn.utils.vector_to_parameters(params[j], c.parameters())
            torch.testing.assert_close(batched[j], c(x[j: j + 1])[0], rtol=1e-5, atol=1e-6)
