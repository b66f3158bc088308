"""A synthetic DVS128 Gesture dataset, deterministic from a seed, in the IBM release layout.

Each recording shows one subject facing a 128x128 DVS: a static body silhouette (torso in the
background image, a nearly still head) and two arms made of textured capsules -- upper arm,
forearm, hand -- that perform the 11 gestures of the release, one labelled segment after another
with idle gaps between them. The subject's right arm is on the image's left, as in the real data.

Events come from a pixel model of the sensor: the scene's log intensity is rendered every
``slice_us`` (1 ms by default); a pixel emits an ON (OFF) event each time its log intensity rises
(falls) by its contrast threshold from the level of its last event, with per-pixel threshold
mismatch, and the event time is interpolated linearly inside the slice. Only pixels under a moving
limb are re-rendered, so a slice costs in proportion to the moving area (Numba). Sensor noise is
added on top: background activity, a few hot pixels, and flicker at the static scene's edges
(what makes the silhouette faintly visible). Per recording, the subject's position, size, tempo,
phases, clothing and the lighting (contrast, noise) vary.

Layout written by `write_synthetic_dataset` (as in ``DvsGesture.tar.gz``):
``userNN_<lighting>.aedat`` (AEDAT 3.1), ``userNN_<lighting>_labels.csv`` (1-based classes,
times on the recording's microsecond clock), ``trials_to_train.txt``, ``trials_to_test.txt`` and
``gesture_mapping.csv``. Users are split between train and test (no user in both), as in the
release.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from eventformer.classes import DVS_GESTURE_CLASSES
from eventformer.events.aedat3_writer import write_aedat31, write_labels_csv, write_trials_list
from eventformer.events.readers import EVENT_DTYPE

from ..jit import kernel

__all__ = [
    "GESTURE_CLASSES",
    "N_CLASSES",
    "LIGHTINGS",
    "Subject",
    "SyntheticRecording",
    "SyntheticDataset",
    "random_subject",
    "generate_gesture",
    "generate_recording",
    "write_synthetic_dataset",
    "segment_stats",
    "compare_to_real",
    "format_comparison",
]

GESTURE_CLASSES = DVS_GESTURE_CLASSES
N_CLASSES = len(GESTURE_CLASSES)

#: The release's lighting conditions -> (log-contrast range, background activity Hz/pixel,
#: static-edge flicker scale). Fluorescent light flickers, so static edges fire more under it.
LIGHTINGS: dict[str, tuple[tuple[float, float], float, float]] = {
    "fluorescent": ((0.85, 1.05), 0.12, 1.6),
    "fluorescent_led": ((0.90, 1.10), 0.12, 1.2),
    "lab": ((0.95, 1.15), 0.09, 0.8),
    "led": ((0.80, 1.00), 0.14, 0.8),
    "natural": ((1.00, 1.20), 0.10, 0.6),
}

# gesture_mapping.csv exactly as the release has it (trailing spaces included)
_GESTURE_MAPPING = (
    "action,label\n" + "".join(
        f"{name}{' ' if 3 <= i <= 6 else ''},{i + 1}\n" for i, name in enumerate(
            ("hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
             "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
             "arm_roll", "air_drums", "air_guitar", "other_gestures"))))

_SOFT = 1.0  # half-width (pixels) of a limb's blurred rim
_TEX = 16  # texture tiles are _TEX x _TEX cells, wrapped
# primitives, in drawing order: head, upper arms, forearms, hands (R = subject's right = image left)
_HEAD, _UPPER_R, _UPPER_L, _FORE_R, _FORE_L, _HAND_R, _HAND_L = range(7)
_N_PRIMS = 7
_N_PARAMS = 7  # ax, ay, dirx, diry, length, radius, shade
# joints (body units, relative to the neck, y down): head centre, R elbow, R hand, L elbow, L hand
_J_HEAD, _J_ER, _J_HR, _J_EL, _J_HL = range(5)
_SHOULDER_R = np.array([-1.05, 0.3])
_SHOULDER_L = np.array([1.05, 0.3])
_ARM_SEGMENT = 1.45


# --------------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One recording's subject, scene and lighting. Positions in pixels, levels in log intensity.

    ``scale`` is pixels per body unit (about half the shoulder width); ``speed`` multiplies every
    gesture's tempo; ``contrast`` multiplies every log-intensity difference (so the event rate);
    ``threshold`` is the mean contrast threshold; noise rates are per pixel (Hz).
    """

    cx: float = 64.0
    cy: float = 62.0
    scale: float = 15.0
    speed: float = 1.0
    contrast: float = 1.0
    threshold: float = 0.2
    threshold_sigma: float = 0.03
    wall: float = -2.0
    shirt: float = 0.6
    sleeve: float = 0.7
    skin: float = 1.0
    hair: float = 0.5
    texture: float = 0.3
    texture_cell: float = 0.16
    floor_y: float = 108.0
    floor_step: float = 0.3
    noise_hz: float = 0.1
    hot_pixels: int = 3
    flicker: float = 0.5
    seed: int = 0  # for textures and noise placement


def _lighting(name: str) -> tuple[tuple[float, float], float, float]:
    try:
        return LIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown lighting {name!r} (known: {', '.join(LIGHTINGS)})") from None


def random_subject(rng: np.random.Generator | int | None = None, lighting: str = "natural",
                   *, identity: np.random.Generator | int | None = None,
                   width: int = 128, height: int = 128) -> Subject:
    """Draw a subject. ``identity`` (a second generator or seed) fixes who the person is --
    build, clothing, tempo -- so one user keeps them across lightings; ``rng`` draws the rest
    (placement in the frame, lighting, noise)."""
    rng = np.random.default_rng(rng)
    ident = np.random.default_rng(identity) if identity is not None else rng
    (c_lo, c_hi), noise_hz, flicker = _lighting(lighting)
    size = min(width, height) / 128.0
    scale = float(ident.uniform(13.5, 16.5)) * size
    shirt = float(ident.uniform(0.35, 0.85))
    people = dict(
        scale=scale,
        speed=float(ident.uniform(0.85, 1.15)),
        shirt=shirt,
        sleeve=float(np.clip(shirt + ident.normal(0.15, 0.12), 0.3, 1.1)),
        skin=float(ident.uniform(0.8, 1.2)),
        hair=float(ident.uniform(0.2, 0.7)),
        texture=float(ident.uniform(0.35, 0.45)),
    )
    return Subject(
        cx=float(width / 2 + rng.uniform(-7, 7) * size),
        cy=float(height * 0.5 + rng.uniform(-5, 5) * size),
        contrast=float(rng.uniform(c_lo, c_hi)),
        threshold=float(rng.uniform(0.14, 0.17)),
        wall=float(rng.uniform(-2.5, -1.5)),
        floor_y=float(rng.uniform(0.78, 0.92) * height),
        floor_step=float(rng.uniform(0.15, 0.45)),
        noise_hz=float(noise_hz * rng.uniform(0.7, 1.3)),
        hot_pixels=int(rng.integers(1, 6)),
        flicker=float(flicker * rng.uniform(0.7, 1.3)),
        seed=int(rng.integers(0, 2**31 - 1)),
        speed=people.pop("speed") * float(rng.uniform(0.95, 1.05)),
        **people,
    )


# --------------------------------------------------------------------------------------------------
# Kinematics: joints over time in body units (relative to the neck, y down)
# --------------------------------------------------------------------------------------------------


def _elbow(shoulder: np.ndarray, hand: np.ndarray, side: float) -> np.ndarray:
    """An elbow between shoulder and hand for two segments of `_ARM_SEGMENT`, bent outwards and
    down; the bend passes smoothly through zero instead of flipping."""
    d = hand - shoulder
    length = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) / length[:, None]
    bend = np.sqrt(np.maximum(_ARM_SEGMENT**2 - (length / 2) ** 2, 0.0))
    outward = normal[:, 0] * side + normal[:, 1] * 0.5
    return shoulder + d / 2 + normal * (bend * np.tanh(4 * outward))[:, None]


def _rest_joints(t: np.ndarray, drift: np.ndarray) -> np.ndarray:
    """Arms hanging at the sides, head still, with a slow sub-pixel sway (few events)."""
    n = len(t)
    j = np.empty((n, 5, 2))
    j[:, _J_HEAD] = (0.0, -1.15)
    j[:, _J_ER] = _SHOULDER_R + (-0.2, 1.4)
    j[:, _J_HR] = _SHOULDER_R + (-0.15, 2.75)
    j[:, _J_EL] = _SHOULDER_L + (0.2, 1.4)
    j[:, _J_HL] = _SHOULDER_L + (0.15, 2.75)
    for k in range(5):
        amp, f, ph = drift[k]
        j[:, k, 0] += amp * np.sin(2 * np.pi * f * t + ph)
        j[:, k, 1] += 0.7 * amp * np.sin(2 * np.pi * 0.8 * f * t + 1.3 * ph)
    return j


def _gesture_params(cls: int, rng: np.random.Generator, speed: float) -> dict:
    """Per-instance tempo, phase, amplitude (and the random paths of class 10)."""
    tempo = {0: (1.9, 2.5), 1: (1.4, 1.9), 2: (1.4, 1.9), 3: (0.6, 0.85), 4: (0.6, 0.85),
             5: (0.6, 0.85), 6: (0.6, 0.85), 7: (1.5, 2.0), 8: (2.0, 2.7), 9: (2.7, 3.4),
             10: (0.2, 0.7)}[cls]
    p = dict(f=float(rng.uniform(*tempo)) * speed, phase=float(rng.uniform(0, 2 * np.pi)),
             amp=float(rng.uniform(0.9, 1.1)), shift=rng.normal(0, 0.08, size=2))
    if cls == 10:
        p["anchor"] = np.stack([rng.uniform(-0.6, 0.6, 2) + (0, rng.uniform(-1.6, 0.0))
                                for _ in range(2)])
        p["paths"] = np.stack([np.stack([rng.uniform(0.3, 0.7, 3), rng.uniform(0.2, 0.7, 3) * speed,
                                         rng.uniform(0, 2 * np.pi, 3)], axis=1)
                               for _ in range(4)])  # (hand R x, R y, L x, L y) x 3 sinusoids
    return p


def _gesture_joints(cls: int, t: np.ndarray, p: dict, rest: np.ndarray) -> np.ndarray:
    """Joints of gesture ``cls`` at times ``t`` (seconds since its start). ``rest`` is the rest
    pose at the same times (unused arms stay there)."""
    j = rest.copy()
    phi = p["phase"] + 2 * np.pi * p["f"] * t
    a = p["amp"]
    s, c = np.sin(phi), np.cos(phi)
    one = np.ones_like(t)

    def put(k, x, y):
        j[:, k, 0] = x
        j[:, k, 1] = y

    if cls == 0:  # hand clapping: hands meet at the centre of the chest
        gap = 0.08 + 1.0 * a * (0.5 - 0.5 * c)
        put(_J_HR, -(0.3 + gap), 1.5 * one)
        put(_J_HL, 0.3 + gap, 1.5 * one)
        put(_J_ER, -1.3 - 0.5 * gap, 1.7 + 0.2 * gap)
        put(_J_EL, 1.3 + 0.5 * gap, 1.7 + 0.2 * gap)
    elif cls in (1, 2):  # hand wave: forearm up, swinging about the raised elbow
        side = -1.0 if cls == 1 else 1.0
        shoulder = _SHOULDER_R if cls == 1 else _SHOULDER_L
        theta = side * (0.2 + 0.7 * a * s)
        ex = shoulder[0] + side * (0.75 + 0.25 * a * s)
        ey = shoulder[1] - 0.15 + 0.1 * a * c
        put(_J_ER if cls == 1 else _J_EL, ex, ey)
        put(_J_HR if cls == 1 else _J_HL, ex + 1.7 * np.sin(theta), ey - 1.7 * np.cos(theta))
    elif cls in (3, 4, 5, 6):  # arm circles beside the body (on screen: 3, 5 clockwise)
        right = cls in (3, 4)
        side = -1.0 if right else 1.0
        shoulder = _SHOULDER_R if right else _SHOULDER_L
        direction = 1.0 if cls in (3, 5) else -1.0  # y is down: growing angle turns clockwise
        ang = p["phase"] + direction * 2 * np.pi * p["f"] * t
        centre = shoulder + (1.2 * side, 0.8)
        radius = 2.4 * a
        hand = np.stack([centre[0] + radius * np.cos(ang), centre[1] + radius * np.sin(ang)], axis=1)
        put(_J_HR if right else _J_HL, hand[:, 0], hand[:, 1])
        elbow = _elbow(shoulder, hand, side)
        put(_J_ER if right else _J_EL, elbow[:, 0], elbow[:, 1])
    elif cls == 7:  # arm roll: forearms across the chest rolling round each other
        put(_J_HR, -0.25 + 0.2 * c, 1.5 + 0.6 * a * s)
        put(_J_HL, 0.25 - 0.2 * c, 1.5 - 0.6 * a * s)
        put(_J_ER, -1.35 * one, 1.75 + 0.35 * a * s)
        put(_J_EL, 1.35 * one, 1.75 - 0.35 * a * s)
    elif cls == 8:  # air drums: hands beating down alternately at the sides
        g_r = 0.5 * (1 + c) ** 2 - 1
        g_l = 0.5 * (1 - c) ** 2 - 1
        put(_J_HR, -1.0 * one, 1.9 + 0.7 * a * g_r)
        put(_J_HL, 1.0 * one, 1.9 + 0.7 * a * g_l)
        put(_J_ER, -1.45 * one, 1.3 + 0.3 * a * g_r)
        put(_J_EL, 1.45 * one, 1.3 + 0.3 * a * g_l)
    elif cls == 9:  # air guitar: right hand strums at the hip, left hand holds the neck
        put(_J_HR, -0.45 + 0.15 * s, 2.5 + 0.6 * a * s)
        put(_J_ER, -1.45 * one, 1.9 * one)
        f2 = 2 * np.pi * 2.7 * t
        put(_J_HL, 2.1 + 0.1 * np.sin(f2), 1.2 + 0.1 * np.cos(f2))
        elbow = _elbow(_SHOULDER_L, j[:, _J_HL], 1.0)
        put(_J_EL, elbow[:, 0], elbow[:, 1])
    elif cls == 10:  # other: slow random motion of both hands and the head
        for h, (hand, elb, shoulder, side) in enumerate(((_J_HR, _J_ER, _SHOULDER_R, -1.0),
                                                         (_J_HL, _J_EL, _SHOULDER_L, 1.0))):
            base = rest[:, hand] + p["anchor"][h]
            for axis in range(2):
                amp, f, ph = p["paths"][2 * h + axis].T
                base[:, axis] += (amp[None] * np.sin(2 * np.pi * f[None] * t[:, None] + ph[None])).sum(1)
            put(hand, base[:, 0], base[:, 1])
            elbow = _elbow(shoulder, base, side)
            put(elb, elbow[:, 0], elbow[:, 1])
        j[:, _J_HEAD, 0] += 0.12 * np.sin(2 * np.pi * 0.3 * t + p["phase"])
    else:
        raise ValueError(f"gesture class must be 0..{N_CLASSES - 1}, got {cls}")
    if cls != 10:  # where in front of the body this instance happens
        j[:, _J_HR:] += p["shift"]
    return j


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@dataclass(frozen=True)
class _Segment:
    cls: int
    start_us: int
    end_us: int
    params: dict = field(compare=False)


def _timeline_joints(times_s: np.ndarray, segments: Sequence[_Segment], drift: np.ndarray,
                     ramp_s: float) -> np.ndarray:
    """Joints at every slice time: rest pose, blended into each gesture over ``ramp_s`` at its
    start and end (the labelled segment spans the whole gesture, ramps included)."""
    joints = _rest_joints(times_s, drift)
    for seg in segments:
        a, b = seg.start_us / 1e6, seg.end_us / 1e6
        lo, hi = np.searchsorted(times_s, [a, b])
        if hi <= lo:
            continue
        t = times_s[lo:hi] - a
        rest = joints[lo:hi]
        g = _gesture_joints(seg.cls, t, seg.params, rest)
        if ramp_s > 0:
            w = (_smoothstep(t / ramp_s) * _smoothstep((b - a - t) / ramp_s))[:, None, None]
            g = rest + w * (g - rest)
        joints[lo:hi] = g
    return joints


def _primitives(joints: np.ndarray, subj: Subject) -> np.ndarray:
    """Capsules (ax, ay, dirx, diry, length, radius, shade) in pixels for every time."""
    n = len(joints)
    S = subj.scale
    px = joints * S + np.array([subj.cx, subj.cy])
    shoulder_r = _SHOULDER_R * S + (subj.cx, subj.cy)
    shoulder_l = _SHOULDER_L * S + (subj.cx, subj.cy)
    prims = np.zeros((n, _N_PRIMS, _N_PARAMS))
    level = lambda rel: subj.wall + subj.contrast * rel  # noqa: E731

    def capsule(k, a, b, radius, shade):
        d = b - a
        length = np.hypot(d[:, 0], d[:, 1])
        safe = np.maximum(length, 1e-9)
        prims[:, k, 0:2] = a
        prims[:, k, 2] = np.where(length > 1e-9, d[:, 0] / safe, 0.0)
        prims[:, k, 3] = np.where(length > 1e-9, d[:, 1] / safe, 1.0)
        prims[:, k, 4] = length
        prims[:, k, 5] = radius * S
        prims[:, k, 6] = level(shade)

    head = px[:, _J_HEAD]
    capsule(_HEAD, head - (0, 0.22 * S), head + (0, 0.22 * S), 0.6, subj.hair)
    for upper, fore, hand_k, jel, jh, sh in ((_UPPER_R, _FORE_R, _HAND_R, _J_ER, _J_HR, shoulder_r),
                                             (_UPPER_L, _FORE_L, _HAND_L, _J_EL, _J_HL, shoulder_l)):
        elbow, hand = px[:, jel], px[:, jh]
        capsule(upper, np.broadcast_to(sh, (n, 2)), elbow, 0.4, subj.sleeve)
        capsule(fore, elbow, hand, 0.34, subj.sleeve)
        # the hand: a disc whose texture turns with the forearm
        prims[:, hand_k, 0:2] = hand
        prims[:, hand_k, 2:4] = prims[:, fore, 2:4]
        prims[:, hand_k, 4] = 0.0
        prims[:, hand_k, 5] = 0.46 * S
        prims[:, hand_k, 6] = level(subj.skin)
    # positions only matter to 1/256 pixel; rounding makes "did it move" exact and cheap
    prims[:, :, :2] = np.round(prims[:, :, :2] * 256) / 256
    return prims


def _background(subj: Subject, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The static scene's log intensity: textured wall, a floor edge, the torso and neck."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rel = np.zeros((height, width))
    for _ in range(4):  # soft wall texture
        kx, ky = rng.uniform(-0.12, 0.12, 2)
        rel += rng.uniform(0.02, 0.06) * np.sin(kx * xx + ky * yy + rng.uniform(0, 2 * np.pi))
    rel += np.where(yy > subj.floor_y, subj.floor_step, 0.0)
    S = subj.scale
    u = (xx - subj.cx) / S
    v = (yy - subj.cy) / S
    # torso: shoulders as a horizontal capsule, then the trunk straight down
    seg_x = np.clip(u, -0.95, 0.95)
    shoulders = (u - seg_x) ** 2 + (v - 0.45) ** 2 <= 0.42**2
    trunk = (np.abs(u) <= 1.2 - 0.08 * np.clip(v - 1.0, 0, None)) & (v >= 0.45)
    torso = shoulders | trunk
    cells = rng.normal(0, 0.08, (height // 4 + 1, width // 4 + 1))
    shirt = subj.shirt + cells[(yy // 4).astype(int), (xx // 4).astype(int)]
    rel = np.where(torso, shirt, rel)
    neck = (np.abs(u) <= 0.28) & (v >= -0.7) & (v <= 0.3)
    rel = np.where(neck & ~torso, subj.skin * 0.9, rel)
    return (subj.wall + subj.contrast * rel).reshape(-1)


# --------------------------------------------------------------------------------------------------
# The pixel model (Numba)
# --------------------------------------------------------------------------------------------------


@kernel
def _bbox(pr, width, height):
    ax = pr[0]
    ay = pr[1]
    bx = ax + pr[2] * pr[4]
    by = ay + pr[3] * pr[4]
    r = pr[5] + _SOFT
    x0 = max(int(math.ceil(min(ax, bx) - r)), 0)
    y0 = max(int(math.ceil(min(ay, by) - r)), 0)
    x1 = min(int(math.floor(max(ax, bx) + r)), width - 1)
    y1 = min(int(math.floor(max(ay, by) + r)), height - 1)
    return x0, y0, x1, y1


@kernel
def _paint(pr, tex, cell, out, x0, y0, x1, y1, width, stamp, tag):
    """Draw capsule ``pr`` with texture ``tex`` into ``out`` over the rectangle, only at pixels
    whose stamp equals ``tag`` (all of them when tag < 0)."""
    ax = pr[0]
    ay = pr[1]
    dx = pr[2]
    dy = pr[3]
    length = pr[4]
    r = pr[5]
    shade = pr[6]
    outer = r + _SOFT
    inner = max(r - _SOFT, 0.0)
    outer2 = outer * outer
    inner2 = inner * inner
    inv = 1.0 / cell
    for yy in range(y0, y1 + 1):
        py = yy - ay
        for xx in range(x0, x1 + 1):
            idx = yy * width + xx
            if tag >= 0 and stamp[idx] != tag:
                continue
            px = xx - ax
            u = px * dx + py * dy
            v = py * dx - px * dy
            uc = min(max(u, 0.0), length)
            du = u - uc
            d2 = du * du + v * v
            if d2 < outer2:
                iu = int((u + outer) * inv) & 15
                iv = int((v + outer) * inv) & 15
                value = shade + tex[iu, iv]
                if d2 <= inner2:
                    out[idx] = value
                else:  # soft rim: optics and motion blur spread an edge over ~2 pixels
                    a = (outer - math.sqrt(d2)) / (2.0 * _SOFT)
                    a = a * a * (3.0 - 2.0 * a)
                    out[idx] += a * (value - out[idx])


@kernel
def _render(prims_t, tex, cells, bg, width, height):
    out = bg.copy()
    dummy = np.zeros(1, np.int64)
    for k in range(prims_t.shape[0]):
        x0, y0, x1, y1 = _bbox(prims_t[k], width, height)
        if x1 >= x0 and y1 >= y0:
            _paint(prims_t[k], tex[k], cells[k], out, x0, y0, x1, y1, width, dummy, -1)
    return out


@kernel
def _simulate(prims, tex, cells, bg, level, ref, thr_on, thr_off, slice_us, width, height):
    """Run the pixel model over ``prims`` (slices+1, K, 7); ``level`` and ``ref`` (log intensity
    now and at each pixel's last event) are updated in place. Returns time-sorted (t, pixel, p)
    with t relative to the first slice."""
    n_slices = prims.shape[0] - 1
    n_prims = prims.shape[1]
    n_pix = width * height
    stamp = np.zeros(n_pix, np.int64)
    dirty = np.empty(n_pix, np.int64)
    new = bg.copy()
    cap = 1 << 16
    out_t = np.empty(cap, np.int64)
    out_i = np.empty(cap, np.int32)
    out_p = np.empty(cap, np.uint8)
    n = 0
    boxes = np.empty((n_prims, 4), np.int64)
    for s in range(n_slices):
        tag = s + 1
        nd = 0
        rx0 = width
        ry0 = height
        rx1 = -1
        ry1 = -1
        for k in range(n_prims):
            x0, y0, x1, y1 = _bbox(prims[s + 1, k], width, height)
            boxes[k, 0] = x0
            boxes[k, 1] = y0
            boxes[k, 2] = x1
            boxes[k, 3] = y1
            moved = False
            for j in range(prims.shape[2]):
                if prims[s, k, j] != prims[s + 1, k, j]:
                    moved = True
                    break
            if not moved:
                continue
            ox0, oy0, ox1, oy1 = _bbox(prims[s, k], width, height)
            x0 = min(x0, ox0)
            y0 = min(y0, oy0)
            x1 = max(x1, ox1)
            y1 = max(y1, oy1)
            if x1 < x0 or y1 < y0:
                continue
            rx0 = min(rx0, x0)
            ry0 = min(ry0, y0)
            rx1 = max(rx1, x1)
            ry1 = max(ry1, y1)
            for yy in range(y0, y1 + 1):
                for xx in range(x0, x1 + 1):
                    idx = yy * width + xx
                    if stamp[idx] != tag:
                        stamp[idx] = tag
                        dirty[nd] = idx
                        nd += 1
                        new[idx] = bg[idx]
        if nd == 0:
            continue
        for k in range(n_prims):
            x0 = max(boxes[k, 0], rx0)
            y0 = max(boxes[k, 1], ry0)
            x1 = min(boxes[k, 2], rx1)
            y1 = min(boxes[k, 3], ry1)
            if x1 >= x0 and y1 >= y0:
                _paint(prims[s + 1, k], tex[k], cells[k], new, x0, y0, x1, y1, width, stamp, tag)
        t_s = s * slice_us
        first = n
        for i in range(nd):
            idx = dirty[i]
            l0 = level[idx]
            l1 = new[idx]
            if l1 == l0:
                continue
            level[idx] = l1
            r = ref[idx]
            dl = l1 - l0
            pol = -1
            step = 0.0
            if l1 - r >= thr_on[idx]:
                pol = 1
                step = thr_on[idx]
            elif r - l1 >= thr_off[idx]:
                pol = 0
                step = -thr_off[idx]
            if pol < 0:
                continue
            while (pol == 1 and l1 - r >= step) or (pol == 0 and l1 - r <= step):
                r += step
                frac = (r - l0) / dl
                dt = int(frac * slice_us)
                if dt < 0:
                    dt = 0
                elif dt >= slice_us:
                    dt = slice_us - 1
                if n == cap:
                    cap *= 2
                    nt = np.empty(cap, np.int64)
                    ni = np.empty(cap, np.int32)
                    npol = np.empty(cap, np.uint8)
                    nt[:n] = out_t[:n]
                    ni[:n] = out_i[:n]
                    npol[:n] = out_p[:n]
                    out_t = nt
                    out_i = ni
                    out_p = npol
                out_t[n] = t_s + dt
                out_i[n] = idx
                out_p[n] = pol
                n += 1
            ref[idx] = r
        if n - first > 1:
            order = np.argsort(out_t[first:n], kind="mergesort")
            tt = out_t[first:n].copy()
            ii = out_i[first:n].copy()
            pp = out_p[first:n].copy()
            for m in range(n - first):
                out_t[first + m] = tt[order[m]]
                out_i[first + m] = ii[order[m]]
                out_p[first + m] = pp[order[m]]
    return out_t[:n], out_i[:n], out_p[:n]


# --------------------------------------------------------------------------------------------------
# Sensor noise (numpy)
# --------------------------------------------------------------------------------------------------


def _poisson_events(rng: np.random.Generator, rates: np.ndarray, duration_us: int):
    """Poisson events at per-pixel ``rates`` (Hz) over ``duration_us``: (t, pixel), unsorted."""
    total = float(rates.sum()) * duration_us / 1e6
    count = int(rng.poisson(total)) if total > 0 else 0
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cdf = np.cumsum(rates)
    pix = np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right")
    pix = np.minimum(pix, len(rates) - 1)
    t = rng.integers(0, duration_us, count)
    return t, pix


def _noise(subj: Subject, rng: np.random.Generator, bg: np.ndarray, duration_us: int,
           width: int, height: int):
    """Background activity, hot pixels and flicker at the static scene's edges, time-sorted."""
    n_pix = width * height
    rates = subj.noise_hz * rng.lognormal(0.0, 0.6, n_pix) / math.exp(0.18)
    hot = rng.choice(n_pix, size=subj.hot_pixels, replace=False)
    rates[hot] += rng.uniform(3.0, 25.0, subj.hot_pixels)
    t1, p1 = _poisson_events(rng, rates, duration_us)
    img = bg.reshape(height, width)
    grad = np.zeros_like(img)
    grad[:, 1:] += np.abs(np.diff(img, axis=1))
    grad[1:, :] += np.abs(np.diff(img, axis=0))
    edge = np.where(grad > 0.1, grad, 0.0).reshape(-1) * subj.flicker * 10.0
    t2, p2 = _poisson_events(rng, edge, duration_us)
    t = np.concatenate([t1, t2])
    pix = np.concatenate([p1, p2])
    pol = (rng.random(len(t)) < 0.5).astype(np.uint8)
    order = np.argsort(t, kind="stable")
    return t[order], pix[order].astype(np.int32), pol[order]


# --------------------------------------------------------------------------------------------------
# Recordings
# --------------------------------------------------------------------------------------------------


def _render_events(subj: Subject, segments: Sequence[_Segment], duration_us: int, *,
                   ramp_s: float, slice_us: int, width: int, height: int, noise: bool,
                   drift_scale: float = 1.0) -> np.ndarray:
    """Simulate one continuous stream of ``duration_us`` (time 0 = start) -> EVENT_DTYPE."""
    if slice_us < 1:
        raise ValueError(f"slice_us must be at least 1, got {slice_us}")
    rng = np.random.default_rng(subj.seed)
    n_slices = max(int(math.ceil(duration_us / slice_us)), 1)
    times = np.arange(n_slices + 1, dtype=np.float64) * (slice_us / 1e6)
    drift = np.stack([rng.uniform(0.03, 0.07, 5) * drift_scale, rng.uniform(0.1, 0.4, 5),
                      rng.uniform(0, 2 * np.pi, 5)], axis=1)
    prims = _primitives(_timeline_joints(times, segments, drift, ramp_s), subj)
    bg = _background(subj, rng, width, height)
    tex = rng.normal(0.0, 1.0, (_N_PRIMS, _TEX, _TEX)) * subj.texture * subj.contrast
    tex[_HEAD] *= 0.5
    cells = np.full(_N_PRIMS, subj.texture_cell * subj.scale)
    cells[_HAND_R] = cells[_HAND_L] = 0.25 * subj.scale
    thr_on = np.clip(rng.normal(subj.threshold, subj.threshold_sigma, width * height), 0.05, None)
    thr_off = np.clip(rng.normal(subj.threshold, subj.threshold_sigma, width * height), 0.05, None)
    level = _render(prims[0], tex, cells, bg, width, height)
    ref = level + rng.uniform(-1.0, 1.0, width * height) * 0.5 * np.minimum(thr_on, thr_off)
    t, pix, pol = _simulate(prims, tex, cells, bg, level, ref, thr_on, thr_off, int(slice_us),
                            width, height)
    keep = t < duration_us
    t, pix, pol = t[keep], pix[keep], pol[keep]
    if noise:
        nt, npix, npol = _noise(subj, rng, bg, duration_us, width, height)
        t = np.concatenate([t, nt])
        order = np.argsort(t, kind="stable")  # two sorted runs: linear time
        t = t[order]
        pix = np.concatenate([pix, npix])[order]
        pol = np.concatenate([pol, npol])[order]
    events = np.empty(len(t), dtype=EVENT_DTYPE)
    events["t"] = t
    events["x"] = pix % width
    events["y"] = pix // width
    events["p"] = pol
    return events


def generate_gesture(cls: int, rng: np.random.Generator | int | None = None, *,
                     duration_us: int = 1_450_000, subject: Subject | None = None,
                     lighting: str = "natural", t0_us: int = 0, slice_us: int = 1000,
                     width: int = 128, height: int = 128, noise: bool = True) -> np.ndarray:
    """Events (EVENT_DTYPE, sorted, times ``t0_us .. t0_us + duration_us``) of one subject
    performing gesture ``cls`` (0-based, see `GESTURE_CLASSES`) in steady state for the whole
    clip -- like the 1.45 s cuts of the real data. ``rng`` draws the subject (unless given), the
    tempo, phase and amplitude, and the noise."""
    if not 0 <= int(cls) < N_CLASSES:
        raise ValueError(f"gesture class must be 0..{N_CLASSES - 1}, got {cls}")
    rng = np.random.default_rng(rng)
    subj = subject if subject is not None else random_subject(rng, lighting, width=width, height=height)
    subj = replace(subj, seed=int(rng.integers(0, 2**31 - 1)))
    seg = _Segment(int(cls), 0, int(duration_us) + slice_us, _gesture_params(int(cls), rng, subj.speed))
    events = _render_events(subj, [seg], int(duration_us), ramp_s=0.0, slice_us=slice_us,
                            width=width, height=height, noise=noise)
    events["t"] += int(t0_us)
    return events


def _recording_plan(rng: np.random.Generator, subj: Subject, gesture_seconds, gap_seconds,
                    repeat_probability: float) -> tuple[list[_Segment], int]:
    """The release's order (classes 1..11) with a few neighbours swapped and maybe one repeated."""
    order = list(range(N_CLASSES))
    for i in range(N_CLASSES - 1):
        if rng.random() < 0.15:
            order[i], order[i + 1] = order[i + 1], order[i]
    if rng.random() < repeat_probability:
        k = int(rng.integers(0, N_CLASSES))
        order.insert(k + 1, order[k])
    segments = []
    t = int(rng.uniform(*gap_seconds) * 1e6)
    for cls in order:
        length = int(rng.uniform(*gesture_seconds) * 1e6)
        segments.append(_Segment(cls, t, t + length, _gesture_params(cls, rng, subj.speed)))
        t += length + int(rng.uniform(*gap_seconds) * 1e6)
    return segments, t


def generate_recording(seed: int = 0, user: int = 1, lighting: str = "natural", *,
                       gesture_seconds: tuple[float, float] = (3.0, 6.0),
                       gap_seconds: tuple[float, float] = (0.5, 1.5),
                       repeat_probability: float = 0.2, slice_us: int = 1000,
                       width: int = 128, height: int = 128, noise: bool = True):
    """One recording: (events on the recording's clock, [(0-based class, start_us, end_us)]).

    Deterministic from (seed, user, lighting) alone: the same user looks the same under every
    lighting, and adding users or lightings to a dataset leaves the others unchanged.
    """
    light_key = zlib.crc32(lighting.encode("utf-8"))
    identity = np.random.default_rng([int(seed), int(user), 0])
    rng = np.random.default_rng([int(seed), int(user), 1, light_key])
    subj = random_subject(rng, lighting, identity=identity, width=width, height=height)
    segments, end = _recording_plan(rng, subj, gesture_seconds, gap_seconds, repeat_probability)
    clock = int(rng.integers(1_000_000, 30_000_000))  # recordings do not start at time 0
    events = _render_events(subj, segments, end, ramp_s=0.3, slice_us=slice_us,
                            width=width, height=height, noise=noise)
    events["t"] += clock
    labels = [(s.cls, s.start_us + clock, s.end_us + clock) for s in segments]
    return events, labels, (clock, clock + end)


# --------------------------------------------------------------------------------------------------
# The dataset on disk
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticRecording:
    name: str  # file name of the .aedat
    user: int
    lighting: str
    n_events: int
    start_us: int
    end_us: int
    segments: tuple[tuple[int, int, int], ...]  # (0-based class, start_us, end_us)
    split: str  # "train" or "test"


@dataclass(frozen=True)
class SyntheticDataset:
    out_dir: str
    seed: int
    recordings: tuple[SyntheticRecording, ...]
    train: tuple[str, ...]
    test: tuple[str, ...]
    seconds: float  # wall-clock generation time

    @property
    def n_events(self) -> int:
        return sum(r.n_events for r in self.recordings)

    def as_dict(self) -> dict:
        return asdict(self)


def _users(users: int | Iterable[int]) -> list[int]:
    if isinstance(users, (int, np.integer)):
        if users < 1:
            raise ValueError(f"need at least one user, got {users}")
        return list(range(1, int(users) + 1))
    out = sorted({int(u) for u in users})
    if not out or out[0] < 1:
        raise ValueError(f"users must be positive integers, got {out}")
    return out


def write_synthetic_dataset(out_dir: str | os.PathLike[str], *, seed: int = 0,
                            users: int | Iterable[int] = 4,
                            lightings: Sequence[str] = ("fluorescent", "natural"),
                            trials_test_fraction: float = 0.25,
                            gesture_seconds: tuple[float, float] = (3.0, 6.0),
                            gap_seconds: tuple[float, float] = (0.5, 1.5),
                            repeat_probability: float = 0.2, slice_us: int = 1000,
                            packet_events: int = 4096, workers: int | None = None) -> SyntheticDataset:
    """Write a synthetic DVS Gesture release into ``out_dir`` (created if needed).

    ``users`` is a count (users 1..n) or explicit user numbers; the last
    ``round(n * trials_test_fraction)`` users (at least one when the fraction is positive and
    there are two or more users) go to ``trials_to_test.txt``, the others to
    ``trials_to_train.txt``. Files are byte-identical for the same arguments; ``workers``
    (default: CPU count) only changes the speed.
    """
    t_start = time.perf_counter()
    user_list = _users(users)
    lightings = list(lightings)
    if not lightings:
        raise ValueError("need at least one lighting")
    for name in lightings:
        _lighting(name)
    if len(set(lightings)) != len(lightings):
        raise ValueError(f"lightings repeat: {lightings}")
    if not 0.0 <= trials_test_fraction <= 1.0:
        raise ValueError(f"trials_test_fraction must be in [0, 1], got {trials_test_fraction}")
    n_test = int(round(len(user_list) * trials_test_fraction))
    if trials_test_fraction > 0 and len(user_list) > 1:
        n_test = max(n_test, 1)
    if trials_test_fraction < 1 and len(user_list) > 1:
        n_test = min(n_test, len(user_list) - 1)
    test_users = set(user_list[len(user_list) - n_test:]) if n_test else set()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    jobs = [(u, light) for u in user_list for light in lightings]

    def make(job):
        user, light = job
        events, labels, (start, end) = generate_recording(
            seed, user, light, gesture_seconds=gesture_seconds, gap_seconds=gap_seconds,
            repeat_probability=repeat_probability, slice_us=slice_us)
        name = f"user{user:02d}_{light}.aedat"
        write_aedat31(out / name, events, packet_events=packet_events)
        write_labels_csv(out / f"user{user:02d}_{light}_labels.csv",
                         [(c + 1, a, b) for c, a, b in labels])
        return SyntheticRecording(name, user, light, len(events), start, end, tuple(labels),
                                  "test" if user in test_users else "train")

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if n_workers == 1:
        recordings = [make(j) for j in jobs]
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            recordings = list(pool.map(make, jobs))
    train = tuple(r.name for r in recordings if r.split == "train")
    test = tuple(r.name for r in recordings if r.split == "test")
    write_trials_list(out / "trials_to_train.txt", train)
    write_trials_list(out / "trials_to_test.txt", test)
    (out / "gesture_mapping.csv").write_bytes(_GESTURE_MAPPING.encode("ascii"))
    # marks the folder as synthetic, so a loader never reports it as the real release
    (out / SYNTHETIC_MARKER).write_text(
        f'{{"generator": "eventformer.events.synth", "seed": {int(seed)}}}\n')
    return SyntheticDataset(str(out), int(seed), tuple(recordings), train, test,
                            time.perf_counter() - t_start)


# --------------------------------------------------------------------------------------------------
# Statistics: synthetic against real
# --------------------------------------------------------------------------------------------------

SYNTHETIC_MARKER = "SYNTHETIC.json"

_STATS = ("rate_eps", "on_fraction", "x_mean", "x_std", "y_mean", "y_std", "active_fraction")


def segment_stats(events: np.ndarray, *, width: int = 128, height: int = 128,
                  duration_us: int | None = None) -> dict:
    """Event rate (events/s over the span of the timestamps, or ``duration_us``), ON fraction,
    x/y mean and std, and the fraction of pixels with at least one event."""
    n = len(events)
    if duration_us is None:
        duration_us = int(events["t"].max() - events["t"].min()) if n > 1 else 0
    x = events["x"].astype(np.float64)
    y = events["y"].astype(np.float64)
    active = np.zeros(width * height, bool)
    if n:
        active[events["y"].astype(np.int64) * width + events["x"].astype(np.int64)] = True
    return dict(
        events=n,
        duration_s=duration_us / 1e6,
        rate_eps=n / (duration_us / 1e6) if duration_us > 0 else float("nan"),
        on_fraction=float(events["p"].mean()) if n else float("nan"),
        x_mean=float(x.mean()) if n else float("nan"),
        x_std=float(x.std()) if n else float("nan"),
        y_mean=float(y.mean()) if n else float("nan"),
        y_std=float(y.std()) if n else float("nan"),
        active_fraction=float(active.mean()),
    )


def _side(items, width, height, load) -> dict:
    segments = [segment_stats(load(item), width=width, height=height) for item in items]
    summary = {}
    for key in _STATS:
        values = np.array([s[key] for s in segments], dtype=np.float64)
        summary[key] = dict(min=float(values.min()), max=float(values.max()),
                            mean=float(values.mean())) if len(values) else {}
    return dict(segments=segments, summary=summary)


def compare_to_real(real_files: Iterable[str | os.PathLike[str] | np.ndarray],
                    synthetic_segments: Iterable[np.ndarray | str | os.PathLike[str]], *,
                    width: int = 128, height: int = 128) -> dict:
    """Statistics of real recordings (paths read with `read_events`, or event arrays) and of
    synthetic segments (event arrays or paths), per segment and summarised (min/max/mean):
    ``{"real": {"segments": [...], "summary": {...}}, "synthetic": {...}, "stats": [...]}``.
    Compare segments of similar length: the active-pixel fraction grows with duration."""
    from eventformer.events.readers import read_events

    def load(item):
        if isinstance(item, np.ndarray):
            return item
        return read_events(item).events

    return dict(real=_side(list(real_files), width, height, load),
                synthetic=_side(list(synthetic_segments), width, height, load),
                stats=list(_STATS))


def format_comparison(comparison: dict) -> str:
    """A plain-text side-by-side table of `compare_to_real`'s summary (min / mean / max)."""
    fmt = {"rate_eps": "{:,.0f}", "on_fraction": "{:.3f}", "active_fraction": "{:.3f}"}
    lines = [f"{'statistic':<16} {'real (min / mean / max)':>32} {'synthetic (min / mean / max)':>34}"]
    for key in comparison["stats"]:
        cells = []
        for side in ("real", "synthetic"):
            s = comparison[side]["summary"].get(key)
            f = fmt.get(key, "{:.1f}")
            cells.append(" / ".join(f.format(s[k]) for k in ("min", "mean", "max")) if s else "-")
        lines.append(f"{key:<16} {cells[0]:>32} {cells[1]:>34}")
    n_real = len(comparison["real"]["segments"])
    n_syn = len(comparison["synthetic"]["segments"])
    lines.append(f"{'segments':<16} {n_real:>32} {n_syn:>34}")
    return "\n".join(lines)
