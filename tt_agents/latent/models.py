"""The latent action model (LAPO, Schmidt & Jiang 2024) and the networks that act on its latents.

Read top to bottom: frame encoders (IMPALA CNN for images, MLP for vectors), the quantizer (a thin
wrapper over vector-quantize-pytorch), the inverse-dynamics model (IDM), the forward-dynamics
model (FDM: a small UNet for images, an MLP for vectors), the latent action model (IDM + quantizer
+ FDM), the latent policy (latent behaviour cloning), the action decoder, and the whole network of
:class:`~tt_agents.latent.LatentActionPolicy`.

Frames are given as a window ``(B, W, *obs_shape)`` of ``W = history + 2`` consecutive
observations ``(o_{t-history}, ..., o_t, o_{t+1})``: the IDM sees all of them, the FDM all but the
last, which it predicts. Image frames stay uint8 ``(H, W, C)`` and are stacked along the channels
(LAPO's 9-channel input for ``history=1``); vector frames are the agent's normalized observations,
concatenated.

Quantizers come from vector-quantize-pytorch with LAPO's settings set explicitly (its defaults
differ: EMA decay 0.8, rotation trick on): EMA codebooks with decay 0.999, commitment weight 0.05,
straight-through gradients (rotation trick off), dead-code replacement. The latent ``(B, D)`` is
split into ``n_latents`` tokens of ``code_dim`` each, quantized against one shared codebook (LAPO's
per-chunk codebooks collapsed, LAPO issue #3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from vector_quantize_pytorch import FSQ, ResidualVQ, VectorQuantize

from tt_agents.models.bc import MLP
from tt_agents.models.dt import ImpalaCNN

__all__ = [
    "QUANTIZERS",
    "LAMConfig",
    "Quantizer",
    "InverseDynamics",
    "UNetFDM",
    "MLPFDM",
    "PatchTransformer",
    "ViTIDM",
    "ViTFDM",
    "LatentActionModel",
    "LatentPolicy",
    "ActionDecoder",
    "LatentActionNet",
    "codebook_perplexity",
    "stack_frames",
]

QUANTIZERS = ("vq", "rvq", "fsq", "none")


@dataclass
class LAMConfig:
    """The latent action model's network settings (LAPO's Procgen values by default)."""

    n_latents: int = 8
    """Tokens per latent action; LAPO: 2 codebooks x 4 latents = 8 tokens."""
    code_dim: int = 16
    """Width of each token (LAPO: 16), so the latent action has ``n_latents * code_dim`` (128) dims."""
    codebook_size: int = 64
    """Codes in the codebook (LAPO: 64)."""
    quantizer: str = "vq"
    """``vq`` (EMA VQ), ``rvq`` (residual VQ, hierarchical), ``fsq`` (finite scalar), ``none`` (continuous)."""
    vq_decay: float = 0.999
    """EMA decay of the codebook (LAPO; the library's default is 0.8)."""
    commitment: float = 0.05
    """Commitment loss weight (LAPO)."""
    dead_code_threshold: float = 2.0
    """Codes whose EMA cluster size falls below this are replaced by batch vectors (0 disables)."""
    kmeans_init: bool = False
    """Initialise the codebook by k-means on the first batch (LAPO does not)."""
    rvq_quantizers: int = 2
    """Residual VQ levels (``rvq``): z1 "skill", z2 "behaviour" in the prompt-DT work."""
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels per token (``fsq``): 1000 codes."""
    history: int = 1
    """Past frames besides o_t the IDM and FDM see (LAPO: 1, so the IDM sees o_{t-1}, o_t, o_{t+1})."""
    k_step: int = 1
    """Steps the FDM predicts ahead in training (the prompt-DT work: 5): the IDM infers z_t .. z_{t+k-1}
    from the real frames, the FDM rolls out o_{t+1} .. o_{t+k} from its own predictions, so a latent
    that only encodes the next frame, rather than the change an action makes, predicts badly. 1: LAPO."""
    cnn_channels: tuple[int, ...] = (64, 128, 128)
    """IMPALA CNN widths of the IDM and the latent policy (LAPO)."""
    cnn_features: int = 256
    """Width of the IMPALA CNN's fully connected layer (LAPO)."""
    unet_channels: tuple[int, ...] = (64, 128)
    """Widths of the FDM's UNet levels (images)."""
    unet_residual: bool = False
    """The UNet predicts o_{t+1} as o_t plus a change, as the MLP and ViT FDMs do. Off: LAPO's UNet, which predicts
    the frame itself and must first learn to copy o_t; until it does, the latent pays for describing the frame.
    Measured on bigfish (40k transitions of the latent bench, its CPU widths, 1500 steps at batch 32, seed 0):
    LAPO's UNet ended near 0.0017 training MSE, worse than copying o_t (0.0015), the residual one near 0.0012;
    an MLP probe from the latents to the true actions scored 0.16 and 0.19 (the most frequent action: 0.09)."""
    mlp_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the MLP IDM, FDM and latent policy (vector observations)."""
    backbone: str = "cnn"
    """Images: ``cnn`` (IMPALA IDM, UNet FDM, as LAPO) or ``vit`` (a small transformer over the patches of every
    frame of the window, for both the IDM and the FDM, as the prompt-DT work's option)."""
    vit_patch: int = 8
    """ViT patch size in pixels (the frame's height and width must be multiples of it)."""
    vit_dim: int = 128
    vit_layers: int = 2
    vit_heads: int = 4

    @property
    def latent_dim(self) -> int:
        return self.n_latents * self.code_dim

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        for name in ("n_latents", "code_dim", "codebook_size", "rvq_quantizers", "cnn_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"LAMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.history < 0:
            raise ValueError(f"LAMConfig.history must be >= 0, got {self.history}")
        if self.k_step < 1:
            raise ValueError(f"LAMConfig.k_step must be >= 1, got {self.k_step}")
        if not 0.0 < self.vq_decay < 1.0:
            raise ValueError(f"LAMConfig.vq_decay must be in (0, 1), got {self.vq_decay}")
        if self.backbone not in ("cnn", "vit"):
            raise ValueError(f"LAMConfig.backbone must be 'cnn' or 'vit', got {self.backbone!r}")
        if self.vit_dim % self.vit_heads:
            raise ValueError(f"LAMConfig.vit_dim ({self.vit_dim}) must be a multiple of vit_heads ({self.vit_heads})")
        if not self.fsq_levels or min(self.fsq_levels) < 2:
            raise ValueError(f"LAMConfig.fsq_levels must be levels >= 2, got {self.fsq_levels}")


def stack_frames(frames: torch.Tensor, image: bool) -> torch.Tensor:
    """A window ``(B, W, *obs)`` as one input: images ``(B, H, W_img, W * C)`` uint8, vectors ``(B, W * D)``."""
    if image:
        b, w, h, wi, c = frames.shape
        return frames.permute(0, 2, 3, 1, 4).reshape(b, h, wi, w * c)  # (B, H, W_img, W * C), oldest frame first
    return frames.reshape(frames.shape[0], -1)  # (B, W * D)


def codebook_perplexity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """``exp(entropy)`` of the codes' empirical distribution, computed from the indices.

    1 means every latent got the same code (collapse); ``codebook_size`` means uniform use.

    Example:
        >>> codebook_perplexity(torch.tensor([0, 1, 2, 3]), 8).item()
        4.0
    """
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


# ----------------------------------------------------------------------------- quantizer
class Quantizer(nn.Module):
    """Quantize a latent ``(B, n_latents * code_dim)``; returns ``(quantized, codes, loss)``.

    ``codes`` is ``(B, n_codes)`` int64 (``n_latents`` tokens, times the levels for residual VQ),
    or ``None`` for ``quantizer="none"``; ``loss`` is the commitment loss (0 for FSQ and none).
    """

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        self.kind, self.n_latents, self.code_dim = cfg.quantizer, cfg.n_latents, cfg.code_dim
        vq_args = dict(
            dim=cfg.code_dim,
            codebook_size=cfg.codebook_size,
            decay=cfg.vq_decay,
            commitment_weight=cfg.commitment,
            rotation_trick=False,  # straight-through gradients, as LAPO
            threshold_ema_dead_code=cfg.dead_code_threshold,
            kmeans_init=cfg.kmeans_init,
        )
        self.vq: nn.Module | None = None
        if cfg.quantizer == "vq":
            self.vq = VectorQuantize(**vq_args)
            self.codebook_size = cfg.codebook_size
        elif cfg.quantizer == "rvq":
            self.vq = ResidualVQ(num_quantizers=cfg.rvq_quantizers, **vq_args)
            self.codebook_size = cfg.codebook_size
        elif cfg.quantizer == "fsq":
            # built on the CPU whatever device is the default: FSQ reads its levels' product with .item(), which a
            # meta tensor (load_agent's shape check builds the model on "meta") cannot give
            with torch.device("cpu"):
                self.vq = FSQ(levels=list(cfg.fsq_levels), dim=cfg.code_dim)
            self.codebook_size = math.prod(cfg.fsq_levels)
        else:
            self.codebook_size = 0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.vq is None:
            return z, None, z.new_zeros(())
        tokens = z.float().reshape(z.shape[0], self.n_latents, self.code_dim)  # (B, n_latents, code_dim)
        if self.kind == "fsq":
            q, codes = self.vq(tokens)
            loss = z.new_zeros(())
        else:
            q, codes, loss = self.vq(tokens)
            loss = loss.sum()  # residual VQ: one loss per level
        return q.reshape(z.shape[0], -1), codes.reshape(z.shape[0], -1).long(), loss


# ----------------------------------------------------------------------------- IDM and FDM
class InverseDynamics(nn.Module):
    """Window ``(B, history + 2, *obs)`` -> latent action ``(B, out_dim)``: IMPALA CNN (images) or MLP (vectors).

    Also the IDM of :class:`~tt_agents.latent.VPTPolicy` (with ``out_dim`` the action logits).
    """

    def __init__(self, obs_shape: tuple[int, ...], image: bool, window: int, cfg: LAMConfig, out_dim: int) -> None:
        super().__init__()
        self.image = image
        if image:
            h, w, c = obs_shape
            self.encoder: nn.Module = ImpalaCNN((h, w, c * window), cfg.cnn_channels, cfg.cnn_features)
            self.head = nn.Linear(cfg.cnn_features, out_dim)
        else:
            self.encoder = MLP(math.prod(obs_shape) * window, cfg.mlp_hidden)
            self.head = nn.Linear(self.encoder.out_dim, out_dim)  # type: ignore[arg-type]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(stack_frames(frames, self.image)))


class UNetFDM(nn.Module):
    """Past frames ``(B, H, W, history + 1 channels groups)`` + latent -> the next frame ``(B, C, H, W)``.

    A two-level UNet: the latent is tiled over space at the input and injected again (a linear map
    added per channel) at the bottleneck, as LAPO's FDM does. Frames are scaled to [-0.5, 0.5].

    The first convolution sees ``[frames, tiled latent]`` but never builds the tiled tensor: a 3x3
    convolution of an input that is the same at every pixel is, at each pixel, the sum of the 9 kernel
    taps' ``W_k z`` over the taps that land inside the frame (zero padding drops the others). So the
    latent's part is 9 small matrix-vector products spread over the frame by 0/1 border masks, the same
    function and parameters as the concatenation (equal within float rounding; a test). Measured at
    64x64 frames, batch 64, a 128-d latent and 16 channels, one thread: the tiled input made the FDM
    about 8x the cost of the IDM; this way its first layer costs what the frames' 6 channels cost.
    """

    def __init__(self, obs_shape: tuple[int, int, int], window: int, latent_dim: int, channels: tuple[int, ...],
                 residual: bool = False) -> None:
        super().__init__()
        _, _, c = obs_shape
        self.residual, self.channels_out = residual, c
        c_in = c * window + latent_dim
        self.downs = nn.ModuleList()
        for ch in channels:
            self.downs.append(nn.Sequential(nn.Conv2d(c_in, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                            nn.ReLU()))
            c_in = ch
        self.bottleneck_latent = nn.Linear(latent_dim, c_in)
        self.mid = nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1), nn.ReLU())
        self.ups = nn.ModuleList()
        for ch in reversed(channels):
            self.ups.append(nn.Sequential(nn.Conv2d(c_in + ch, ch, 3, padding=1), nn.ReLU()))
            c_in = ch
        self.out = nn.Conv2d(c_in, c, 1)

    def _first_conv(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The first convolution of ``cat([x, z tiled over H x W], 1)``, without the tiled tensor."""
        conv = self.downs[0][0]
        c_past, (h, w) = x.shape[1], x.shape[-2:]
        out = F.conv2d(x, conv.weight[:, :c_past], conv.bias, padding=1)  # (B, ch, H, W)
        taps = torch.einsum("ockl,bc->bokl", conv.weight[:, c_past:], z)  # (B, ch, 3, 3): W_k z per tap
        ones = x.new_ones(1, 1, h, w)
        # inside[k, l, i, j] = 1 where tap (k, l) at pixel (i, j) reads a pixel inside the frame
        inside = F.conv2d(F.pad(ones, (1, 1, 1, 1)), torch.eye(9, device=x.device, dtype=x.dtype).view(9, 1, 3, 3))
        return out + torch.einsum("bot,thw->bohw", taps.flatten(2), inside[0])

    def forward(self, past: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = past.float().permute(0, 3, 1, 2) / 255.0 - 0.5  # (B, C_past, H, W)
        last = x[:, -self.channels_out:]  # (B, C, H, W): o_t, the newest frame's channels
        skips = []
        for i, down in enumerate(self.downs):
            x = down[1:](self._first_conv(x, z)) if i == 0 else down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, ceil_mode=True)  # halves H and W
        x = self.mid(x + self.bottleneck_latent(z)[:, :, None, None])
        for up, skip in zip(self.ups, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = up(torch.cat([x, skip], 1))
        return last + self.out(x) if self.residual else self.out(x)  # (B, C, H, W)


class PatchTransformer(nn.Module):
    """A small ViT over a window of frames: every ``patch x patch`` patch of every frame is a token, with a learned
    embedding of its (frame, patch) position, plus optional extra tokens; ``torch.nn.TransformerEncoder`` layers.

    Example:
        >>> vit = PatchTransformer((8, 8, 3), frames=3, patch=4, dim=16, layers=1, heads=2)
        >>> vit(torch.zeros(2, 3, 8, 8, 3, dtype=torch.uint8)).shape  # (B, frames * patches, dim)
        torch.Size([2, 12, 16])
    """

    def __init__(self, obs_shape: tuple[int, int, int], frames: int, patch: int, dim: int, layers: int, heads: int,
                 extra_tokens: int = 0) -> None:
        super().__init__()
        h, w, c = obs_shape
        if h % patch or w % patch:
            raise ValueError(f"frames of {h}x{w} pixels do not split into {patch}x{patch} patches; set LAMConfig.vit_patch")
        self.patch, self.grid = patch, (h // patch, w // patch)
        n = frames * self.grid[0] * self.grid[1]
        self.embed = nn.Linear(patch * patch * c, dim)
        self.pos = nn.Parameter(torch.zeros(1, n + extra_tokens, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, F, H, W, C)`` uint8 frames -> ``(B, F * patches, patch * patch * C)`` in [-0.5, 0.5]."""
        b, f, h, w, c = frames.shape
        p, (gh, gw) = self.patch, self.grid
        x = frames.float() / 255.0 - 0.5
        x = x.reshape(b, f, gh, p, gw, p, c).permute(0, 1, 2, 4, 3, 5, 6)  # (B, F, gh, gw, p, p, C)
        return x.reshape(b, f * gh * gw, p * p * c)

    def forward(self, frames: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(self.patches(frames))  # (B, F * patches, dim)
        if extra is not None:
            x = torch.cat([x, extra], 1)  # (B, F * patches + extra, dim)
        return self.norm(self.blocks(x + self.pos))


class ViTIDM(nn.Module):
    """Window ``(B, W, H, W_img, C)`` -> latent action ``(B, out_dim)``: the patch tokens' mean through a linear head."""

    def __init__(self, obs_shape: tuple[int, int, int], window: int, cfg: LAMConfig, out_dim: int) -> None:
        super().__init__()
        self.vit = PatchTransformer(obs_shape, window, cfg.vit_patch, cfg.vit_dim, cfg.vit_layers, cfg.vit_heads)
        self.head = nn.Linear(cfg.vit_dim, out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(frames).mean(1))


class ViTFDM(nn.Module):
    """Past frames ``(B, W - 1, H, W_img, C)`` + latent -> the next frame ``(B, C, H, W_img)`` in [-0.5, 0.5] units:
    the latent is one more token, and the last past frame's patch tokens are read out as the next frame's patches."""

    def __init__(self, obs_shape: tuple[int, int, int], frames: int, latent_dim: int, cfg: LAMConfig) -> None:
        super().__init__()
        self.vit = PatchTransformer(obs_shape, frames, cfg.vit_patch, cfg.vit_dim, cfg.vit_layers, cfg.vit_heads,
                                    extra_tokens=1)
        self.latent = nn.Linear(latent_dim, cfg.vit_dim)
        self.obs_shape, self.patch = obs_shape, cfg.vit_patch
        self.out = nn.Linear(cfg.vit_dim, cfg.vit_patch ** 2 * obs_shape[2])

    def forward(self, past: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h, w, c = self.obs_shape
        p = self.patch
        gh, gw = h // p, w // p
        x = self.vit(past, self.latent(z)[:, None])  # (B, F * patches + 1, dim)
        last = x[:, -1 - gh * gw:-1]  # (B, patches, dim): the last past frame's tokens
        delta = self.out(last).reshape(-1, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(-1, c, h, w)
        base = past[:, -1].float().permute(0, 3, 1, 2) / 255.0 - 0.5  # (B, C, H, W): o_t
        return base + delta


class MLPFDM(nn.Module):
    """Past vectors ``(B, (history + 1) * D)`` + latent -> the next vector ``(B, D)``, as ``o_t`` plus a change."""

    def __init__(self, obs_dim: int, window: int, latent_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.net = MLP(obs_dim * window + latent_dim, hidden, obs_dim)

    def forward(self, past: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return past[:, -self.obs_dim:] + self.net(torch.cat([past, z], 1))


class LatentActionModel(nn.Module):
    """IDM + quantizer + FDM, trained on observations only to predict o_{t+1} from the past and the latent.

    Example:
        >>> cfg = LAMConfig(n_latents=1, code_dim=4, codebook_size=8, mlp_hidden=(16,))
        >>> lam = LatentActionModel((3,), False, cfg)
        >>> out = lam(torch.zeros(5, 3, 3))  # (B, history + 2, D)
        >>> out["latent"].shape, out["codes"].shape, out["prediction"].shape
        (torch.Size([5, 4]), torch.Size([5, 1]), torch.Size([5, 3]))
    """

    def __init__(self, obs_shape: tuple[int, ...], image: bool, cfg: LAMConfig) -> None:
        super().__init__()
        cfg.check()
        self.image, self.window = image, cfg.history + 2
        vit = image and cfg.backbone == "vit"
        self.vit = vit
        self.idm = ViTIDM(obs_shape, self.window, cfg, cfg.latent_dim) if vit else InverseDynamics(  # type: ignore[arg-type]
            obs_shape, image, self.window, cfg, cfg.latent_dim)
        self.quantizer = Quantizer(cfg)
        if vit:
            self.fdm = ViTFDM(obs_shape, self.window - 1, cfg.latent_dim, cfg)  # type: ignore[arg-type]
        elif image:
            self.fdm: nn.Module = UNetFDM(obs_shape, self.window - 1, cfg.latent_dim, cfg.unet_channels,  # type: ignore[arg-type]
                                          cfg.unet_residual)
        else:
            self.fdm = MLPFDM(math.prod(obs_shape), self.window - 1, cfg.latent_dim, cfg.mlp_hidden)

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(latent, quantized, codes, vq_loss)`` of a window ``(B, history + 2, *obs)``."""
        z = self.idm(frames)
        q, codes, loss = self.quantizer(z)
        return z, q, codes, loss

    def _past(self, past: torch.Tensor) -> torch.Tensor:
        return past if self.vit else stack_frames(past, self.image)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        z, q, codes, loss = self.encode(frames)
        out = {"latent": z, "quantized": q, "prediction": self.fdm(self._past(frames[:, :-1]), q), "vq_loss": loss}
        if codes is not None:
            out["codes"] = codes
        return out

    def rollout(self, frames: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """k-step prediction of a window ``(B, history + 1 + k, *obs)``: ``predictions`` ``(B, k, *target)``.

        Step ``j``'s latent comes from the real frames ``o_{t+j-history} .. o_{t+j+1}``; the FDM's input
        holds its own earlier predictions in place of the frames after ``o_t`` (open loop). The first
        step's outputs are :meth:`forward`'s.
        """
        h = self.window - 1  # history + 1 frames of past
        out = self.forward(frames[:, : h + 1])
        if k == 1:
            return {**out, "predictions": out["prediction"][:, None], "vq_losses": out["vq_loss"][None]}
        past = [f.float() if self.image else f for f in frames[:, :h].unbind(1)]  # real o_{t-history} .. o_t
        preds, losses = [out["prediction"]], [out["vq_loss"]]
        for j in range(1, k):
            past = [*past[1:], self._as_frame(preds[-1], frames.dtype)]
            _, q, _, loss = self.encode(frames[:, j: j + h + 1])
            preds.append(self.fdm(self._past(torch.stack(past, 1)), q))
            losses.append(loss)
        return {**out, "predictions": torch.stack(preds, 1), "vq_losses": torch.stack(losses)}

    def _as_frame(self, prediction: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """An FDM prediction as an input frame: images ``(B, C, H, W)`` in [-0.5, 0.5] back to ``(B, H, W, C)``
        on the 0-255 scale (float: gradients flow through the rollout), vectors as they are."""
        if self.image:
            return (prediction.float() + 0.5).permute(0, 2, 3, 1) * 255.0  # (B, H, W, C)
        return prediction


# ----------------------------------------------------------------------------- acting on latents
class LatentPolicy(nn.Module):
    """Latent behaviour cloning: o_t -> the IDM's (unquantized) latent action; ``features`` feed the decoder."""

    def __init__(self, obs_shape: tuple[int, ...], image: bool, cfg: LAMConfig, out_dim: int) -> None:
        super().__init__()
        if image:
            self.encoder: nn.Module = ImpalaCNN(obs_shape, cfg.cnn_channels, cfg.cnn_features)
        else:
            self.encoder = MLP(math.prod(obs_shape), cfg.mlp_hidden)
        self.feature_dim = cfg.cnn_features if image else self.encoder.out_dim
        self.head = nn.Linear(self.feature_dim, out_dim)  # type: ignore[arg-type]

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs))


class ActionDecoder(nn.Module):
    """Latent action (and optionally o_t's features) -> action logits (discrete) or a tanh action (continuous)."""

    def __init__(self, latent_dim: int, feature_dim: int, hidden: tuple[int, ...], n_out: int, discrete: bool) -> None:
        super().__init__()
        self.net = MLP(latent_dim + feature_dim, hidden, n_out)
        self.discrete = discrete

    def forward(self, z: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        x = z if features is None else torch.cat([z, features], 1)
        out = self.net(x)
        return out if self.discrete else torch.tanh(out)


class LatentActionNet(nn.Module):
    """Everything :class:`~tt_agents.latent.LatentActionPolicy` trains, one module per stage: ``lam``,
    ``policy`` (latent BC) and ``decoder``."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        image: bool,
        cfg: LAMConfig,
        decoder_hidden: tuple[int, ...],
        n_actions: int,
        discrete: bool,
        decoder_uses_obs: bool,
    ) -> None:
        super().__init__()
        self.lam = LatentActionModel(obs_shape, image, cfg)
        self.policy = LatentPolicy(obs_shape, image, cfg, cfg.latent_dim)
        feature_dim = self.policy.feature_dim if decoder_uses_obs else 0
        self.decoder = ActionDecoder(cfg.latent_dim, feature_dim, decoder_hidden, n_actions, discrete)
