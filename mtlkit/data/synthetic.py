"""Procedural indoor scenes with exact labels for every task (mtlkit's built-in dataset).

Each image is a ray-cast room (floor, four walls, ceiling) seen by a pinhole camera standing
inside it (random position, yaw, downward pitch and a little roll), furnished with boxes,
spheres, cylinders, a table (a top and four legs), pictures hanging on the walls and, in about
70 % of the images, a person built from primitives (head sphere, torso box, neck, upper / lower
arms and legs as capsules). Every class has its own procedural texture (checker floor, striped
wallpaper, ceiling tiles, diagonally striped boxes, dotted spheres, ringed cylinders, wood-grain
tables, colourful framed pictures, skin / clothes), every object a random colour variation
within its class's range; shading is Lambertian from a point light plus ambient; zero-mean
sensor noise (uniform, standard deviation 1.5-4 grey levels) is added.

Labels come from the same ray cast, so they are exact and geometrically consistent:

- ``semseg`` (H, W) uint8: :data:`CLASS_NAMES` ids (every pixel labelled, no 255);
- ``depth`` (H, W) float32: z-depth along the optical axis in metres (> 0 everywhere: the room
  is closed);
- ``normals`` (H, W, 3) float32: unit normals in the camera frame (x right, y down, z forward),
  facing the camera;
- ``edge`` (H, W) uint8: :func:`mtlkit.data.geometry.boundaries` of semseg and of the instance
  ids (each wall, floor, ceiling and object is its own instance);
- ``parts`` (H, W) uint8: 0 background, 1 head, 2 torso (incl. neck), 3 upper arms, 4 lower arms,
  5 upper legs, 6 lower legs; all 255 in images without a visible person;
- ``saliency`` (H, W) uint8: 1 on objects (box, sphere, cylinder, table, person, picture),
  0 on room surfaces.

Everything is vectorised over pixels with numpy; objects are culled by bounding spheres so each
primitive only tests the rays that can hit it. Image ``i`` of split ``s`` is rendered from
``np.random.default_rng([seed, crc32(s), i])``, so a dataset is a pure function of its
parameters.
"""

from __future__ import annotations

import colorsys
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.data.folders import progress_bar
from mtlkit.data.geometry import boundaries
from mtlkit.data.h5 import PARTS_CLASS_NAMES, H5Writer

GENERATOR_VERSION = 1
CLASS_NAMES = (
    "floor", "wall", "ceiling", "box", "sphere", "cylinder", "table", "person", "picture",
)
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER, TABLE, PERSON, PICTURE = range(len(CLASS_NAMES))
ROOM_CLASSES = (FLOOR, WALL, CEILING)
HFOV_DEG = 65.0
SYNTHETIC_TASKS = ("semseg", "depth", "normals", "edge", "parts", "saliency")
_EPS = 1e-6
_INF = np.float64(np.inf)


# --------------------------------------------------------------------------------------------
# ray / primitive intersection. Rays share the origin o (3,); unit directions are stored
# structure-of-arrays, d (3, M) (numpy reduces over a trailing axis of length 3 very slowly).
# Each function returns the distance t (M,) (inf = miss) and the outward normal n (3, M).
# --------------------------------------------------------------------------------------------
Intersect = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _finite(t: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(t), t, 0.0)


def _sphere(c: np.ndarray, r: float) -> Intersect:
    def hit(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = o - c
        b = oc @ d
        disc = b * b - (oc @ oc - r * r)
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        t = np.where((disc >= 0) & (t > _EPS), t, _INF)
        n = (oc[:, None] + _finite(t) * d) / r
        return t, n

    return hit


def _box(c: np.ndarray, rot: np.ndarray, half: np.ndarray) -> Intersect:
    """Oriented box: centre c, rotation columns = local axes in world, half extents."""

    def hit(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ol = (o - c) @ rot
        dl = rot.T @ d
        dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
        inv = 1.0 / dl
        t1 = (-half - ol)[:, None] * inv
        t2 = (half - ol)[:, None] * inv
        tn = np.minimum(t1, t2)
        tf = np.maximum(t1, t2)
        tmin = np.maximum(np.maximum(tn[0], tn[1]), tn[2])
        tmax = np.minimum(np.minimum(tf[0], tf[1]), tf[2])
        t = np.where((tmax >= tmin) & (tmin > _EPS), tmin, _INF)
        # entry face = the axis whose slab is entered last (ties: an edge; take the first)
        a0 = tn[0] == tmin
        a1 = ~a0 & (tn[1] == tmin)
        nl = -np.sign(dl) * np.stack([a0, a1, ~a0 & ~a1])
        return t, rot @ nl

    return hit


def _capsule(pa: np.ndarray, pb: np.ndarray, r: float) -> Intersect:
    ba = pb - pa
    baba = float(ba @ ba)

    def hit(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oa = o - pa
        ob = o - pb
        bard = ba @ d
        baoa = float(ba @ oa)
        rdoa = oa @ d
        a = np.maximum(baba - bard * bard, 1e-12)
        b = baba * rdoa - baoa * bard
        cc = baba * float(oa @ oa) - baoa * baoa - r * r * baba
        h = b * b - a * cc
        t = (-b - np.sqrt(np.maximum(h, 0.0))) / a
        y = baoa + t * bard
        body = (h >= 0) & (y > 0) & (y < baba)
        # end caps: spheres at pa (y <= 0) or pb
        low = y <= 0
        b2 = np.where(low, rdoa, ob @ d)
        c2 = np.where(low, float(oa @ oa), float(ob @ ob)) - r * r
        h2 = b2 * b2 - c2
        t2 = -b2 - np.sqrt(np.maximum(h2, 0.0))
        tt = np.where(body, t, np.where((h >= 0) & (h2 > 0), t2, _INF))
        tt = np.where(tt > _EPS, tt, _INF)
        q = oa[:, None] + _finite(tt) * d  # hit point relative to pa
        s = np.clip((ba @ q) / baba, 0.0, 1.0)
        n = (q - ba[:, None] * s) / r
        return tt, n

    return hit


def _cylinder(pa: np.ndarray, pb: np.ndarray, r: float) -> Intersect:
    """Capped cylinder between pa and pb."""
    ba = pb - pa
    baba = float(ba @ ba)
    axis = ba / np.sqrt(baba)

    def hit(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = o - pa
        bard = ba @ d
        baoc = float(ba @ oc)
        k2 = np.maximum(baba - bard * bard, 1e-12)
        k1 = baba * (oc @ d) - baoc * bard
        k0 = baba * float(oc @ oc) - baoc * baoc - r * r * baba
        h = k1 * k1 - k2 * k0
        sh = np.sqrt(np.maximum(h, 0.0))
        t = (-k1 - sh) / k2
        y = baoc + t * bard
        body = (h >= 0) & (y > 0) & (y < baba)
        safe = np.where(np.abs(bard) < 1e-12, 1e-12, bard)
        tc = (np.where(y < 0, 0.0, baba) - baoc) / safe
        cap = (h >= 0) & ~body & (np.abs(k1 + k2 * tc) < sh)
        tt = np.where(body, t, np.where(cap, tc, _INF))
        tt = np.where(tt > _EPS, tt, _INF)
        n_body = (oc[:, None] + t * d - ba[:, None] * (y / baba)) / r
        n_cap = axis[:, None] * np.sign(y)
        n = np.where(body, n_body, n_cap)
        return tt, n

    return hit


# --------------------------------------------------------------------------------------------
# textures: (points (3, M) world, normals (3, M) world, part ids (M,)) -> albedo (3, M) in [0, 1]
# --------------------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _noise(lattice: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] at lattice coordinates (u, v) (wraps around)."""
    g = lattice.shape[0]
    fu, fv = np.floor(u), np.floor(v)
    su, sv = u - fu, v - fv
    su = su * su * (3 - 2 * su)
    sv = sv * sv * (3 - 2 * sv)
    iu = fu.astype(np.int64) % g
    iv = fv.astype(np.int64) % g
    iu1, iv1 = (iu + 1) % g, (iv + 1) % g
    a = lattice[iv, iu] * (1 - su) + lattice[iv, iu1] * su
    b = lattice[iv1, iu] * (1 - su) + lattice[iv1, iu1] * su
    return a * (1 - sv) + b * sv


def _mix(c1: np.ndarray, c2: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(3, M): c1 where m == 0, c2 where m == 1 (linear in between)."""
    m = m.astype(np.float64)
    return c1[:, None] + (c2 - c1)[:, None] * m


Texture = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _Object:
    """A scene object: primitives (intersect fn, part id), class, texture, bounding sphere."""

    cls: int
    prims: list[tuple[Intersect, int, np.ndarray, float]]  # fn, part id, bounding sphere
    center: np.ndarray
    radius: float
    texture: Texture  # (points world (M, 3), normals world (M, 3), part (M,)) -> (M, 3)
    extra: dict[str, Any] = field(default_factory=dict)


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# scene construction
# --------------------------------------------------------------------------------------------
@dataclass
class _Room:
    x0: float
    x1: float
    height: float
    depth: float


class _Scene:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.lattice = rng.random((32, 32))
        self.objects: list[_Object] = []
        self.feet: list[tuple[float, float, float]] = []

    def noise(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _noise(self.lattice, u, v)

    # placement ------------------------------------------------------------------------------
    def place(self, rad: float, room: _Room, cam: np.ndarray, yaw: float,
              near: float = 1.3, far: float = 6.0) -> tuple[float, float] | None:
        """A free floor position (x, z) for a footprint of radius ``rad`` in the camera's view."""
        rng = self.rng
        half = np.radians(HFOV_DEG) * 0.55
        for _ in range(30):
            phi = yaw + rng.uniform(-half, half)
            dist = rng.uniform(near + rad, far)
            x = cam[0] + dist * np.sin(phi)
            z = cam[2] + dist * np.cos(phi)
            if not (room.x0 + rad + 0.05 < x < room.x1 - rad - 0.05
                    and rad + 0.05 < z < room.depth - rad - 0.05):
                continue
            if np.hypot(x - cam[0], z - cam[2]) < rad + 0.6:
                continue
            if any(np.hypot(x - fx, z - fz) < rad + fr + 0.05 for fx, fz, fr in self.feet):
                continue
            self.feet.append((x, z, rad))
            return x, z
        return None


def _room_texture(scene: _Scene, rng: np.random.Generator) -> dict[int, Texture]:
    """Textures of floor (checker), walls (vertical stripes) and ceiling (tile grid)."""
    f1 = _hsv(rng.uniform(0.04, 0.13), rng.uniform(0.2, 0.55), rng.uniform(0.5, 0.75))
    f2 = f1 * rng.uniform(0.6, 0.8)
    tile = rng.uniform(0.4, 0.7)
    w1 = _hsv(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95))
    w2 = w1 * rng.uniform(0.82, 0.92)
    stripe = rng.uniform(0.08, 0.2)
    c1 = _hsv(rng.uniform(0.1, 0.2), 0.03, rng.uniform(0.9, 1.0))
    c2 = c1 * 0.6
    cell = rng.uniform(0.5, 0.7)

    def floor(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        chk = (np.floor(p[0] / tile) + np.floor(p[2] / tile)) % 2
        base = _mix(f1, f2, chk)
        return base * (0.85 + 0.3 * scene.noise(p[0] * 3, p[2] * 3))

    def wall(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        along = np.where(np.abs(n[0]) > 0.5, p[2], p[0])
        base = _mix(w1, w2, np.floor(along / stripe) % 2)
        return base * (0.93 + 0.1 * scene.noise(along * 2 + 7, p[1] * 2))

    def ceiling(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        fx = np.abs((p[0] / cell) - np.round(p[0] / cell)) * cell
        fz = np.abs((p[2] / cell) - np.round(p[2] / cell)) * cell
        return _mix(c1, c2, (fx < 0.02) | (fz < 0.02))

    return {FLOOR: floor, WALL: wall, CEILING: ceiling}


def _local(p: np.ndarray, c: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """World points (3, M) -> the frame (centre c, axes = columns of rot)."""
    return rot.T @ (p - c[:, None])


def _make_box(scene: _Scene, room: _Room, cam: np.ndarray, yaw: float) -> _Object | None:
    rng = scene.rng
    half = np.array([rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.55), rng.uniform(0.15, 0.5)])
    rad = float(np.hypot(half[0], half[2]))
    pos = scene.place(rad, room, cam, yaw)
    if pos is None:
        return None
    c = np.array([pos[0], half[1], pos[1]])
    rot = _rot_y(rng.uniform(0, np.pi))
    col = _hsv(rng.uniform(-0.02, 0.1), rng.uniform(0.55, 0.85), rng.uniform(0.6, 0.9))
    col2 = col * rng.uniform(0.45, 0.65)
    width = rng.uniform(0.06, 0.12)

    def tex(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        q = _local(p, c, rot)
        diag = q[0] + q[1] + q[2]
        return _mix(col, col2, np.floor(diag / width) % 2)

    rb = float(np.linalg.norm(half))
    return _Object(BOX, [(_box(c, rot, half), 0, c, rb)], c, rb, tex)


def _sphere_texture(scene: _Scene, c: np.ndarray, r: float) -> Texture:
    rng = scene.rng
    col = _hsv(rng.uniform(0.52, 0.68), rng.uniform(0.5, 0.85), rng.uniform(0.55, 0.9))
    dot = _hsv(rng.uniform(0.1, 0.2), 0.1, 0.97)
    k = float(rng.integers(4, 8))

    def tex(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        q = (p - c[:, None]) / r
        theta = np.arccos(np.clip(q[1], -1, 1)) * k / np.pi
        phi = (np.arctan2(q[2], q[0]) + np.pi) * k / np.pi
        fu, fv = phi - np.floor(phi) - 0.5, theta - np.floor(theta) - 0.5
        return _mix(col, dot, fu * fu + fv * fv < 0.08)

    return tex


def _make_sphere(scene: _Scene, room: _Room, cam: np.ndarray, yaw: float,
                 on: tuple[np.ndarray, float] | None = None) -> _Object | None:
    rng = scene.rng
    if on is not None:  # resting on a table top at (centre, top height)
        r = rng.uniform(0.08, 0.18)
        c = on[0] + np.array([0.0, on[1] + r, 0.0])
    else:
        r = rng.uniform(0.15, 0.45)
        pos = scene.place(r, room, cam, yaw)
        if pos is None:
            return None
        c = np.array([pos[0], r, pos[1]])
    return _Object(SPHERE, [(_sphere(c, r), 0, c, r)], c, r, _sphere_texture(scene, c, r))


def _make_cylinder(scene: _Scene, room: _Room, cam: np.ndarray, yaw: float) -> _Object | None:
    rng = scene.rng
    r = rng.uniform(0.12, 0.35)
    if rng.random() < 0.25:  # lying on the floor
        length = rng.uniform(0.5, 1.2)
        pos = scene.place(length / 2 + r, room, cam, yaw)
        if pos is None:
            return None
        a = rng.uniform(0, np.pi)
        ax = np.array([np.cos(a), 0.0, np.sin(a)]) * length / 2
        c = np.array([pos[0], r, pos[1]])
        pa, pb = c - ax, c + ax
    else:
        height = rng.uniform(0.4, 1.4)
        pos = scene.place(r, room, cam, yaw)
        if pos is None:
            return None
        pa = np.array([pos[0], 0.0, pos[1]])
        pb = pa + np.array([0.0, height, 0.0])
        c = (pa + pb) / 2
    axis = (pb - pa) / np.linalg.norm(pb - pa)
    col = _hsv(rng.uniform(0.24, 0.4), rng.uniform(0.5, 0.85), rng.uniform(0.5, 0.85))
    col2 = _hsv(rng.uniform(0.13, 0.18), rng.uniform(0.6, 0.9), rng.uniform(0.8, 0.95))
    ring = rng.uniform(0.06, 0.12)

    def tex(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        y = axis @ (p - pa[:, None])
        return _mix(col, col2, (np.floor(y / ring) % 3) == 0)

    rad = float(np.linalg.norm(pb - pa) / 2 + r)
    return _Object(CYLINDER, [(_cylinder(pa, pb, r), 0, c, rad)], c, rad, tex)


def _make_table(scene: _Scene, room: _Room, cam: np.ndarray, yaw: float) -> _Object | None:
    rng = scene.rng
    hx, hz = rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.5)
    height = rng.uniform(0.65, 0.8)
    pos = scene.place(float(np.hypot(hx, hz)), room, cam, yaw)
    if pos is None:
        return None
    rot = _rot_y(rng.uniform(0, np.pi))
    base = np.array([pos[0], 0.0, pos[1]])
    top_c = base + np.array([0.0, height - 0.03, 0.0])
    top_half = np.array([hx, 0.03, hz])
    prims: list[tuple[Intersect, int, np.ndarray, float]] = [
        (_box(top_c, rot, top_half), 0, top_c, float(np.linalg.norm(top_half)))]
    leg_half = np.array([0.035, (height - 0.06) / 2, 0.035])
    for sx in (-1, 1):
        for sz in (-1, 1):
            off = rot @ np.array([sx * (hx - 0.08), 0.0, sz * (hz - 0.08)])
            lc = base + off + np.array([0.0, leg_half[1], 0.0])
            prims.append((_box(lc, rot, leg_half), 0, lc, float(np.linalg.norm(leg_half))))
    col = _hsv(rng.uniform(0.06, 0.1), rng.uniform(0.55, 0.75), rng.uniform(0.3, 0.5))
    col2 = col * 1.5
    freq = rng.uniform(25, 40)

    def tex(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        q = _local(p, base, rot)
        g = np.sin(q[2] * freq + 6 * scene.noise(q[0] * 3 + 11, q[2] * 3))
        return _mix(col, col2, (g + 1) / 2)

    c = base + np.array([0.0, height / 2, 0.0])
    obj = _Object(TABLE, prims, c, float(np.sqrt(hx**2 + hz**2 + (height / 2) ** 2)), tex)
    obj.extra["top"] = (base, height)
    return obj


def _make_picture(scene: _Scene, room: _Room, cam: np.ndarray) -> _Object:
    rng = scene.rng
    hw_, hh = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.45)
    yc = rng.uniform(1.2, min(2.0, room.height - hh - 0.15))
    th = 0.02
    wall = int(rng.integers(0, 3))  # 0 left, 1 right, 2 front
    if wall == 2:
        span = (room.x0 + hw_ + 0.1, room.x1 - hw_ - 0.1)
        c = np.array([rng.uniform(*span), yc, room.depth - th])
        rot = np.eye(3)
    else:
        span = (0.5 + hw_, room.depth - hw_ - 0.1)
        x = room.x0 + th if wall == 0 else room.x1 - th
        c = np.array([x, yc, rng.uniform(*span)])
        rot = _rot_y(np.pi / 2)
    half = np.array([hw_, hh, th])
    frame = rng.uniform(0.03, 0.06)
    cols = np.stack([_hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
                     for _ in range(3)])
    fcol = _hsv(rng.uniform(0.05, 0.1), 0.5, rng.uniform(0.05, 0.2))
    off = rng.uniform(0, 32, size=2)

    def tex(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        q = _local(p, c, rot)
        w = np.stack([scene.noise(q[0] * 6 + off[0] + 5 * k, q[1] * 6 + off[1])
                      for k in range(3)])
        w = w**3
        img = cols.T @ (w / w.sum(0))
        edge = (np.abs(q[0]) > hw_ - frame) | (np.abs(q[1]) > hh - frame)
        return np.where(edge, fcol[:, None], img)

    rb = float(np.linalg.norm(half))
    return _Object(PICTURE, [(_box(c, rot, half), 0, c, rb)], c, rb, tex)


def _make_person(scene: _Scene, room: _Room, cam: np.ndarray, yaw: float) -> _Object | None:
    """A standing person of capsules: parts 1 head, 2 torso, 3/4 upper/lower arms, 5/6 legs."""
    rng = scene.rng
    hp = rng.uniform(1.5, 1.9)
    s = hp / 1.75
    pos = scene.place(0.5 * s, room, cam, yaw, near=1.6)
    if pos is None:
        return None
    to_cam = np.arctan2(cam[0] - pos[0], cam[2] - pos[1])
    rot = _rot_y(to_cam + rng.uniform(-1.2, 1.2))  # local z = the person's forward
    knee_h, hip_h, sh_h = 0.28 * hp, 0.52 * hp, 0.81 * hp
    r_head = 0.11 * s
    local: list[tuple[str, int, np.ndarray, np.ndarray, float]] = []  # kind, part, a, b, r
    # legs
    for side in (-1, 1):
        hip = np.array([side * 0.1 * s, hip_h, 0.0])
        swing = rng.uniform(-0.5, 0.5)
        abd = rng.uniform(0.0, 0.15) * side
        d1 = _rot_z(abd) @ _rot_x(-swing) @ np.array([0.0, -1.0, 0.0])
        knee = hip + d1 * (hip_h - knee_h)
        bend = rng.uniform(0.0, 0.8)
        d2 = _rot_z(abd) @ _rot_x(-swing + bend) @ np.array([0.0, -1.0, 0.0])
        ankle = knee + d2 * knee_h
        local.append(("cap", 5, hip, knee, 0.075 * s))
        local.append(("cap", 6, knee, ankle, 0.055 * s))
    # arms
    for side in (-1, 1):
        sh = np.array([side * 0.2 * s, sh_h - 0.04 * s, 0.0])
        abd = rng.uniform(0.1, 1.3) * side
        flex = rng.uniform(-0.5, 1.4)
        d1 = _rot_x(-flex) @ _rot_z(abd) @ np.array([0.0, -1.0, 0.0])
        elbow = sh + d1 * 0.17 * hp
        bend = rng.uniform(0.0, 1.6)
        d2 = _rot_x(-flex - bend) @ _rot_z(abd) @ np.array([0.0, -1.0, 0.0])
        wrist = elbow + d2 * 0.15 * hp
        local.append(("cap", 3, sh, elbow, 0.05 * s))
        local.append(("cap", 4, elbow, wrist, 0.04 * s))
    neck_top = np.array([0.0, sh_h + 0.06 * s, 0.0])
    local.append(("cap", 2, np.array([0.0, sh_h - 0.02, 0.0]), neck_top, 0.05 * s))
    head_c = neck_top + np.array([0.0, 0.8 * r_head, 0.0])
    # lift so the lowest foot touches the floor
    low = min(min(a[1], b[1]) - r for _, _, a, b, r in local)
    lift = -low
    base = np.array([pos[0], lift, pos[1]])

    def w(q: np.ndarray) -> np.ndarray:
        return rot @ q + base

    prims: list[tuple[Intersect, int, np.ndarray, float]] = []
    for _, part, a, b, r in local:
        pa, pb = w(a), w(b)
        prims.append((_capsule(pa, pb, r), part, (pa + pb) / 2,
                      float(np.linalg.norm(pb - pa) / 2 + r)))
    torso_half = np.array([0.17 * s, (sh_h - hip_h) / 2 + 0.03, 0.1 * s])
    torso_c = w(np.array([0.0, (sh_h + hip_h) / 2, 0.0]))
    prims.append((_box(torso_c, rot, torso_half), 2, torso_c, float(np.linalg.norm(torso_half))))
    head_w = w(head_c)
    prims.append((_sphere(head_w, r_head), 1, head_w, r_head))

    skin = _hsv(rng.uniform(0.03, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.95))
    hair = _hsv(rng.uniform(0.03, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.35))
    shirt = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.9))
    shirt2 = shirt * rng.uniform(0.5, 0.8) if rng.random() < 0.5 else shirt
    pants = _hsv(rng.uniform(0.55, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.5))
    shoe = _hsv(0.05, 0.3, 0.1)
    foot_y = lift + 0.0

    def tex(p: np.ndarray, n: np.ndarray, part: np.ndarray) -> np.ndarray:
        q = rot.T @ (p - base[:, None])  # person-local
        hq = (p - head_w[:, None]) / r_head
        is_hair = (hq[1] > 0.25) | ((rot[:, 2] @ hq) < -0.3)
        head = np.where(is_hair, hair[:, None], skin[:, None])
        top = _mix(shirt, shirt2, np.floor(q[1] / 0.06) % 2)
        legs = np.where(p[1] - foot_y < 0.08 * s, shoe[:, None], pants[:, None])
        out = np.where(part == 1, head,
                       np.where((part == 2) | (part == 3), top,
                                np.where(part == 4, skin[:, None], legs)))
        return out * (0.9 + 0.2 * scene.noise(q[0] * 8 + 3, q[1] * 8))

    center = w(np.array([0.0, hp / 2, 0.0]))
    rad = max(float(np.linalg.norm(c - center)) + r for _, _, c, r in prims)
    return _Object(PERSON, prims, center, rad, tex)


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
def _cull(o: np.ndarray, d: np.ndarray, idx: np.ndarray, c: np.ndarray, r: float,
          best_t: np.ndarray) -> np.ndarray:
    """The entries of ``idx`` (rays ``d``) that hit the sphere (c, r) before ``best_t``."""
    oc = o - c
    b = oc @ d
    disc = b * b - (float(oc @ oc) - r * r)
    sq = np.sqrt(np.maximum(disc, 0.0))
    keep = (disc >= 0) & (sq - b > 0) & (-b - sq < best_t[idx])
    return idx[keep]


def _screen_rect(c: np.ndarray, r: float, cam: np.ndarray, R: np.ndarray,
                 intr: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """Flat pixel indices of the image rectangle holding the projection of the sphere (c, r).

    The projections of the 8 corners of the sphere's bounding cube bound it when all lie in
    front of the camera; otherwise every pixel is returned.
    """
    H, W = hw
    fx, fy, cx, cy = intr
    corners = c + r * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    pc = (corners - cam) @ R  # world -> camera frame
    if (pc[:, 2] < 1e-3).any():
        return np.arange(H * W)
    u = fx * pc[:, 0] / pc[:, 2] + cx
    v = fy * pc[:, 1] / pc[:, 2] + cy
    c0, c1 = max(0, int(np.floor(u.min()))), min(W - 1, int(np.ceil(u.max())))
    r0, r1 = max(0, int(np.floor(v.min()))), min(H - 1, int(np.ceil(v.max())))
    if c0 > c1 or r0 > r1:
        return np.zeros(0, dtype=np.int64)
    return (np.arange(r0, r1 + 1)[:, None] * W + np.arange(c0, c1 + 1)[None, :]).ravel()


def camera_intrinsics(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels of the synthetic camera (pixel (r, c) centre at (c, r))."""
    h, w = size
    f = w / (2 * np.tan(np.radians(HFOV_DEG) / 2))
    return float(f), float(f), (w - 1) / 2.0, (h - 1) / 2.0


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (128, 160)) -> dict[str, Any]:
    """Render one random scene.

    Returns a dict of numpy arrays: ``image`` (H, W, 3) uint8, ``semseg`` (H, W) uint8,
    ``depth`` (H, W) float32, ``normals`` (H, W, 3) float32, ``edge`` (H, W) uint8,
    ``parts`` (H, W) uint8, ``saliency`` (H, W) uint8, ``instance`` (H, W) int32 (1-6 room
    faces, >= 7 objects) and ``intrinsics`` (4,) float64 (fx, fy, cx, cy).
    """
    H, W = int(size[0]), int(size[1])
    scene = _Scene(rng)
    room = _Room(x0=0.0, x1=0.0, height=rng.uniform(2.5, 3.2), depth=rng.uniform(5.5, 9.0))
    width = rng.uniform(4.0, 7.0)
    room.x0, room.x1 = -width / 2, width / 2
    cam = np.array([rng.uniform(room.x0 + 0.7, room.x1 - 0.7), rng.uniform(1.1, 1.8),
                    rng.uniform(0.3, 1.0)])
    yaw = rng.uniform(-0.45, 0.45)
    pitch = rng.uniform(0.0, 0.45)
    roll = rng.uniform(-0.05, 0.05)
    flip_y = np.diag([1.0, -1.0, 1.0])  # camera y down -> world y up
    R = _rot_y(yaw) @ _rot_x(pitch) @ flip_y @ _rot_z(roll)  # camera -> world

    fx, fy, cx, cy = camera_intrinsics((H, W))
    u = (np.arange(W) - cx) / fx
    v = (np.arange(H) - cy) / fy
    dc = np.stack([np.broadcast_to(u[None, :], (H, W)).ravel(),
                   np.broadcast_to(v[:, None], (H, W)).ravel(), np.ones(H * W)])
    dw = R @ dc  # (3, N) world directions with camera-z component 1
    dlen = np.sqrt(dw[0] ** 2 + dw[1] ** 2 + dw[2] ** 2)
    d = dw / dlen  # unit directions; distance t along d is z-depth * dlen
    n_rays = H * W

    # room (camera inside an axis-aligned box): nearest exit face
    lo = np.array([room.x0, 0.0, 0.0])
    hi = np.array([room.x1, room.height, room.depth])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        # the camera is inside: per axis the exit is the larger of the two slab distances
        tface = np.nan_to_num(np.maximum((lo - cam)[:, None] * inv, (hi - cam)[:, None] * inv),
                              nan=_INF)
    ax = np.where(tface[0] <= tface[1], np.where(tface[0] <= tface[2], 0, 2),
                  np.where(tface[1] <= tface[2], 1, 2))
    onehot = ax[None, :] == np.arange(3)[:, None]
    best_t = np.where(onehot, tface, 0.0).sum(0)
    best_n = -np.sign(d) * onehot
    d_ax = np.where(onehot, d, 0.0).sum(0)
    inst = (1 + 2 * ax + (d_ax > 0)).astype(np.int32)  # 1..6
    part = np.zeros(n_rays, dtype=np.uint8)
    room_cls = {1: WALL, 2: WALL, 3: FLOOR, 4: CEILING, 5: WALL, 6: WALL}

    # objects
    objs: list[_Object] = []
    if rng.random() < 0.7:
        o = _make_person(scene, room, cam, yaw)
        if o is not None:
            objs.append(o)
    if rng.random() < 0.5:
        o = _make_table(scene, room, cam, yaw)
        if o is not None:
            objs.append(o)
            if rng.random() < 0.6:
                base, height = o.extra["top"]
                objs.append(_make_sphere(scene, room, cam, yaw, on=(base, height)))
    makers = ([_make_box] * int(rng.integers(1, 4)) + [_make_sphere] * int(rng.integers(0, 3))
              + [_make_cylinder] * int(rng.integers(0, 3)))
    for mk in makers:
        o = mk(scene, room, cam, yaw)
        if o is not None:
            objs.append(o)
    for _ in range(int(rng.integers(0, 3))):
        objs.append(_make_picture(scene, room, cam))

    cls_of = dict(room_cls)
    for k, obj in enumerate(objs):
        oid = 7 + k
        cls_of[oid] = obj.cls
        idx = _screen_rect(obj.center, obj.radius, cam, R, (fx, fy, cx, cy), (H, W))
        idx = _cull(cam, d[:, idx], idx, obj.center, obj.radius, best_t)
        if len(idx) == 0:
            continue
        for fn, pid, pc, pr in obj.prims:
            sel = _cull(cam, d[:, idx], idx, pc, pr, best_t) if len(obj.prims) > 1 else idx
            if len(sel) == 0:
                continue
            t, n = fn(cam, d[:, sel])
            closer = t < best_t[sel]
            if not closer.any():
                continue
            sel = sel[closer]
            best_t[sel] = t[closer]
            best_n[:, sel] = n[:, closer]
            inst[sel] = oid
            part[sel] = pid

    # shading
    points = cam[:, None] + best_t * d
    facing = (best_n * d).sum(0)
    best_n *= np.where(facing > 0, -1.0, 1.0)
    albedo = np.empty((3, n_rays))
    room_tex = _room_texture(scene, rng)
    # texture groups: room surfaces by class (-1 - class: the four walls share one call),
    # objects by instance id
    texture_of: dict[int, Texture] = {-1 - c: room_tex[c] for c in ROOM_CLASSES}
    for k, obj in enumerate(objs):
        texture_of[7 + k] = obj.texture
    room_lut = np.array([0, -1 - WALL, -1 - WALL, -1 - FLOOR, -1 - CEILING, -1 - WALL, -1 - WALL])
    group = np.where(inst <= 6, room_lut[np.minimum(inst, 6)], inst)
    order = np.argsort(group, kind="stable")
    ids, starts = np.unique(group[order], return_index=True)
    bounds = list(starts[1:]) + [n_rays]
    for oid, a, b_ in zip(ids, starts, bounds, strict=True):
        sel = order[a:b_]
        albedo[:, sel] = texture_of[int(oid)](points[:, sel], best_n[:, sel], part[sel])
    light = np.array([rng.uniform(room.x0 + 0.5, room.x1 - 0.5), room.height - 0.3,
                      rng.uniform(1.0, room.depth - 1.0)])
    to_l = light[:, None] - points
    dist = np.maximum(np.sqrt((to_l * to_l).sum(0)), 1e-6)
    lam = np.maximum((best_n * to_l).sum(0) / dist, 0.0)
    kd = rng.uniform(0.6, 0.9)
    amb = rng.uniform(0.25, 0.4)
    shade = amb + kd * lam * np.minimum(1.0, (3.0 / dist) ** 2) * 1.2
    rgb = (albedo * (255.0 * shade)).T.astype(np.float32)  # (N, 3)
    sigma = np.float32(rng.uniform(1.5, 4.0))
    # sensor noise: uniform, zero mean, standard deviation sigma (cheaper than Gaussian)
    rgb += (rng.random(rgb.shape, dtype=np.float32) - np.float32(0.5)) * (sigma * np.sqrt(12.0))
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(H, W, 3)

    # labels
    lut = np.zeros(7 + len(objs), dtype=np.uint8)
    for i, c in cls_of.items():
        lut[i] = c
    inst_map = inst.reshape(H, W)
    semseg = lut[inst_map]
    depth = (best_t / dlen).astype(np.float32).reshape(H, W)
    nc = R.T @ best_n  # world -> camera frame
    nc /= np.sqrt((nc * nc).sum(0))
    normals = np.ascontiguousarray(nc.T, dtype=np.float32).reshape(H, W, 3)
    person = semseg == PERSON
    if person.any():
        parts = np.where(person, part.reshape(H, W), 0).astype(np.uint8)
    else:
        parts = np.full((H, W), 255, dtype=np.uint8)
    saliency = np.isin(semseg, ROOM_CLASSES, invert=True).astype(np.uint8)
    # every instance has one class, so the boundaries of the instance map contain those of
    # semseg: boundaries([inst_map]) == boundaries([semseg, inst_map]), in one pass
    edge = boundaries([inst_map])
    return {
        "image": image, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge,
        "parts": parts, "saliency": saliency, "instance": inst_map,
        "intrinsics": np.array([fx, fy, cx, cy]),
    }


# --------------------------------------------------------------------------------------------
# dataset files
# --------------------------------------------------------------------------------------------
def scene_rng(seed: int, split: str, i: int) -> np.random.Generator:
    """The generator of image ``i`` of ``split``: a pure function of (seed, split, i)."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(i)])


def cache_dir() -> Path:
    """``$MTLKIT_CACHE`` or ``~/.cache/mtlkit``."""
    return Path(os.environ.get("MTLKIT_CACHE") or "~/.cache/mtlkit").expanduser()


def default_synthetic_path(*, train: int = 800, val: int = 200,
                           size: tuple[int, int] = (128, 160), seed: int = 0) -> Path:
    """Cache path of the synthetic file with these parameters (and generator version)."""
    h, w = size
    return cache_dir() / f"synthetic-v{GENERATOR_VERSION}-s{seed}-{h}x{w}-{train}-{val}.h5"


def build_synthetic_h5(out: str | os.PathLike[str], *, train: int = 800, val: int = 200,
                       size: tuple[int, int] = (128, 160), seed: int = 0,
                       progress: bool = True) -> Path:
    """Render ``train`` + ``val`` scenes at ``size`` and write them (all six tasks) to ``out``."""
    out = Path(out)
    size = (int(size[0]), int(size[1]))
    source = {"generator": "mtlkit.data.synthetic", "generator_version": GENERATOR_VERSION,
              "seed": int(seed), "train": int(train), "val": int(val), "size": list(size),
              "intrinsics": list(camera_intrinsics(size))}
    attrs = {"semseg_class_names": list(CLASS_NAMES), "parts_class_names": list(PARTS_CLASS_NAMES),
             "source": json.dumps(source, sort_keys=True)}
    splits = [(s, n) for s, n in (("train", train), ("val", val)) if n > 0]
    total = sum(n for _, n in splits)
    with H5Writer(out, dataset="synthetic", tasks=list(SYNTHETIC_TASKS), size=size,
                  attrs=attrs) as wr, \
            progress_bar(total, f"synthetic {out.name}", progress) as advance:
        for split, n in splits:
            wr.add_split(split, n)
        for split, n in splits:
            for i in range(n):
                sample = render_scene(scene_rng(seed, split, i), size)
                sample["index"] = i
                wr.write(split, i, sample)
                advance()
    return out


def ensure_synthetic(path: str | os.PathLike[str] | None = None, *, train: int = 800,
                     val: int = 200, size: tuple[int, int] = (128, 160), seed: int = 0,
                     progress: bool = True) -> Path:
    """Return the synthetic file, building it first if it does not exist.

    Safe when several processes race: the build runs under an exclusive lock on
    ``<path>.lock`` (the lock file stays), the file is re-checked once the lock is held, and
    the writer's tmp + rename makes the final file appear complete or not at all.
    """
    p = Path(path) if path is not None else default_synthetic_path(
        train=train, val=val, size=size, seed=seed)
    if p.exists():
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    lock_path = p.with_name(p.name + ".lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no lock, still atomic
        fcntl = None  # type: ignore[assignment]
    with open(lock_path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            if not p.exists():
                build_synthetic_h5(p, train=train, val=val, size=size, seed=seed,
                                   progress=progress)
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return p
