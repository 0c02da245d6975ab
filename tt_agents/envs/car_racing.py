"""CarRacing-v3 with its road's corners computed by numpy: the same frames, bit for bit, in about half the time.

Gymnasium's ``CarRacing`` redraws the whole map on every step: for each of its 400 grass patches and hundreds
of road tiles it rotates and shifts the four corners one ``pygame.math.Vector2`` at a time in Python, tests
them against the screen, and draws the dozen or so that are on it. That loop is about half of an env step
(gymnasium 1.4, pygame-ce 2.5: 5.9 ms per bare step, 3.1 ms with this class; benchmarks.md,
``world-model-speed-fast``), and CMA-ES on the real env, the rollouts and every evaluation of a World Models
agent are made of env steps.

:class:`FastCarRacing` overrides only that loop (``_render_road``): the corners of every patch and tile are
transformed at once in numpy with the same arithmetic as pygame's ``Vector2.rotate_rad`` (its angle reduced to
[0, 2 pi) by ``fmod``, its exact quarter turns within 1e-6 rad, its ``cos`` and ``sin``), the same polygons
are culled, and the survivors are drawn by the same ``pygame.gfxdraw`` calls in the same order with the same
coordinates. Physics, rewards and everything else are gymnasium's. ``tests/envs/test_car_racing.py`` checks
the frames against ``CarRacing-v3`` over whole episodes; and every instance checks itself on the first frame
of each track, drawn both ways: if they ever differ (another gymnasium or pygame), it warns once and draws
the road gymnasium's way from then on.

``import tt_agents`` registers it as ``tt_agents/CarRacing-v3`` (``CarRacing-v3``'s step limit and reward
threshold; this module is imported only when such an env is made). The world-model scripts use it by default.

Example:
    >>> import gymnasium as gym, numpy as np
    >>> import tt_agents  # registers tt_agents/CarRacing-v3
    >>> fast, slow = gym.make("tt_agents/CarRacing-v3"), gym.make("CarRacing-v3")
    >>> a, _ = fast.reset(seed=3); b, _ = slow.reset(seed=3)
    >>> for _ in range(5):
    ...     a = fast.step(np.array([0.3, 0.5, 0.0], np.float32))[0]
    ...     b = slow.step(np.array([0.3, 0.5, 0.0], np.float32))[0]
    >>> bool(np.array_equal(a, b))
    True
"""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np

try:
    import pygame
    from gymnasium.envs.box2d import car_racing as _cr
    from pygame import gfxdraw
except ImportError as e:  # pragma: no cover - box2d is an extra
    raise ImportError(
        f"tt_agents.envs.car_racing needs gymnasium's box2d extra ({e}): pip install 'tt-agents[box2d]'"
    ) from e

__all__ = ["ENV_ID", "FastCarRacing"]

ENV_ID = "tt_agents/CarRacing-v3"

_EPS = 1e-6  # pygame.math.Vector2's default epsilon: rotations this close to a quarter turn are made exact
_QUARTER_TURNS = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # (cos, sin) of 0, 90, 180, 270 degrees


def _rotation(angle: float) -> tuple[float, float, bool]:
    """``(cos, sin, exact)`` of ``angle`` as ``pygame.math.Vector2.rotate_rad`` takes them."""
    a = math.fmod(angle, 2 * math.pi)
    if a < 0:
        a += 2 * math.pi
    if math.fmod(a + _EPS, math.pi / 2) < 2 * _EPS:
        c, s = _QUARTER_TURNS[int((a + _EPS) / (math.pi / 2)) % 4]
        return c, s, True
    return math.cos(a), math.sin(a), False


def transform(points: np.ndarray, zoom: float, translation: tuple[float, float], angle: float) -> np.ndarray:
    """World points ``(..., 2)`` to screen points: rotate by ``angle``, scale by ``zoom``, shift.

    Float for float what gymnasium's CarRacing computes for one corner at a time with ``Vector2.rotate_rad``
    (each product and sum rounded once, in float64).
    """
    c, s, exact = _rotation(angle)
    x, y = points[..., 0], points[..., 1]
    if exact:  # pygame swaps and negates coordinates here instead of multiplying by 0 and 1
        rx, ry = {(1.0, 0.0): (x, y), (0.0, 1.0): (-y, x), (-1.0, 0.0): (-x, -y), (0.0, -1.0): (y, -x)}[(c, s)]
    else:
        rx, ry = c * x - s * y, s * x + c * y
    return np.stack([rx * zoom + translation[0], ry * zoom + translation[1]], axis=-1)


class FastCarRacing(_cr.CarRacing):
    """Gymnasium's ``CarRacing`` (same arguments) whose road and grass are transformed in numpy.

    Only ``_render_road`` differs; see the module docstring for why the frames are the same.
    """

    _grass: np.ndarray | None = None
    _road: np.ndarray | None = None
    _road_of: object = None  # the road_poly list (the track) that _road was made from
    _fallback = False  # set when a check failed: draw gymnasium's way

    def _render_road(self, zoom: float, translation: tuple[float, float], angle: float) -> None:
        if self._fallback:
            return super()._render_road(zoom, translation, angle)
        if self._road_of is self.road_poly:
            self._draw_road(zoom, translation, angle)
            return None
        # a new track: its first frame drawn both ways, and compared
        before = self.surf.copy()
        super()._render_road(zoom, translation, angle)
        reference, self.surf = self.surf, before
        self._draw_road(zoom, translation, angle)  # makes _road from this track
        if pygame.image.tobytes(reference, "RGB") != pygame.image.tobytes(self.surf, "RGB"):
            warnings.warn(
                "FastCarRacing's road differs from gymnasium's CarRacing on this installation (gymnasium "
                f"{gym.__version__}, pygame {pygame.version.ver}); drawing it gymnasium's way from now on "
                "(the same frames, at gymnasium's speed)",
                RuntimeWarning,
                stacklevel=2,
            )
            self._fallback = True
            self.surf = reference
        return None

    def _draw_road(self, zoom: float, translation: tuple[float, float], angle: float) -> None:
        b = _cr.PLAYFIELD
        field = np.array([[(b, b), (b, -b), (-b, -b), (-b, b)]], np.float64)  # (1, 4, 2)
        if self._grass is None:
            g = _cr.GRASS_DIM
            self._grass = np.array(
                [[(g * x + g, g * y), (g * x, g * y), (g * x, g * y + g), (g * x + g, g * y + g)]
                 for x in range(-20, 20, 2) for y in range(-20, 20, 2)], np.float64)  # (400, 4, 2)
        if self._road_of is not self.road_poly:  # a new track (reset): its tiles' corners, once
            self._road_of = self.road_poly
            self._road = np.array([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly],
                                  np.float64).reshape(-1, 4, 2)  # (tiles, 4, 2)
        self._draw(transform(field, zoom, translation, angle), lambda i: self.bg_color, clip=False)
        self._draw(transform(self._grass, zoom, translation, angle), lambda i: self.grass_color)
        # a tile's colour changes when the car first visits it: read it at draw time
        self._draw(transform(self._road, zoom, translation, angle),
                   lambda i: [int(c) for c in self.road_poly[i][1]])

    def _draw(self, polys: np.ndarray, color, clip: bool = True) -> None:
        """Draw ``polys`` ``(n, 4, 2)`` (screen points) as gymnasium does, skipping those far off the screen."""
        if clip:  # gymnasium's test: some corner within MAX_SHAPE_DIM of the window
            m = _cr.MAX_SHAPE_DIM
            x, y = polys[..., 0], polys[..., 1]
            on = ((x >= -m) & (x <= _cr.WINDOW_W + m) & (y >= -m) & (y <= _cr.WINDOW_H + m)).any(-1)
            idx = np.flatnonzero(on).tolist()
        else:
            idx = range(len(polys))
        for i in idx:
            poly = [tuple(p) for p in polys[i].tolist()]
            c = color(i)
            gfxdraw.aapolygon(self.surf, poly, c)
            gfxdraw.filled_polygon(self.surf, poly, c)
