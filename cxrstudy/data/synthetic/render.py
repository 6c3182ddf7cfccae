"""Procedural chest-radiograph renderer (vectorised numpy, float32).

Everything is drawn in resolution-independent coordinates: x (left to right) and y (top to
bottom) in [-1, 1], the patient's right on the image's left as on a real PA film. Random
textures are low-resolution Gaussian fields interpolated to the pixel grid, so one seed gives
the same picture at 32, 64 or 224 px (up to pixel noise).

An image is composed in three layers:

1. anatomy (per patient, with per-image pose, rotation and breathing): body outline and
   habitus, lungs over domed hemidiaphragms, mediastinum with aortic knob and heart, hila,
   trachea, spine, clavicles, posterior and anterior ribs, branching lung markings, gastric
   bubble; plus label-independent look-alikes of the signs (basal soft tissue, diffuse haze,
   a fissure line, a nipple shadow, a skin fold);
2. disease signs (only for the labels present, each with its own random size, place and
   intensity, scaled by ``sign_strength``): cardiomegaly enlarges the cardiac silhouette
   (whose normal size varies too), effusion fills the lung base with a meniscus that blunts
   the costophrenic angle, pneumothorax leaves a lucent rim without markings and a pleural
   line, pneumonia and consolidation add patchy / denser airspace opacity, edema a bilateral
   perihilar haze with prominent markings, atelectasis linear bands and volume loss. As with
   report-derived labels, a positive shows no sign with probability 1 - ``SIGN_SHOWN``;
3. acquisition (per hospital, independent of the labels): intensity curve, heel-effect
   gradient, noise level, sharpness/blur, collimation border and a burned-in text marker at a
   site-specific place. ``shortcut_strength`` interpolates each continuous site parameter
   toward the four sites' mean, and mixes each discrete site style (border colour, marker
   text and place) with the common uniform mixture of the four; at 0 every hospital draws
   its acquisition from the same distribution.

Randomness is drawn in a fixed order and amount whatever the labels, so for a given seed a
positive and a negative image differ only by the sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cxrstudy.errors import UsageError
from cxrstudy.hospitals import HOSPITALS, canonical_hospital
from cxrstudy.labels import DISEASES, LABELS

#: Bump whenever the pixels for a given (config, row, size) could change.
RENDERER_VERSION = "2"

F32 = np.float32
_ZERO, _ONE = F32(0.0), F32(1.0)
try:  # the clip ufunc itself (np.clip adds ~2 us of Python per call)
    from numpy._core.umath import clip as _clip
except ImportError:  # pragma: no cover - older numpy
    try:
        from numpy.core.umath import clip as _clip
    except ImportError:
        _clip = np.clip
_ENV_INDEX = {e: i for i, e in enumerate(HOSPITALS)}
_DIS_INDEX = {d: i for i, d in enumerate(DISEASES)}

# ---------------------------------------------------------------------------------------
# acquisition signatures


@dataclass(frozen=True)
class Site:
    # continuous parameters (interpolated toward the mean by shortcut_strength)
    log_gamma: float  # intensity curve: out = in ** exp(log_gamma)
    contrast: float  # window width multiplier around mid-grey
    level: float  # brightness offset
    noise: float  # pixel noise sd at 64 px
    sharpen: float  # unsharp-mask amount; < 0 blurs
    heel: float  # top-to-bottom intensity gradient
    border: tuple  # collimation border widths (left, right, top, bottom), image units
    marker_p: float  # probability that the burned-in marker is present
    # discrete style (mixed with the other sites' styles by shortcut_strength)
    border_value: float  # 0 black digital shutter, 1 white unexposed field
    marker_text: str
    marker_xy: tuple  # top-left corner of the marker block


SITES = {
    "mimic": Site(0.0, 1.15, -0.02, 0.020, 0.9, 0.05, (0.06, 0.06, 0.0, 0.0), 0.9, 0.0, "PORT", (0.50, -0.93)),
    "cxp": Site(-0.30, 0.95, 0.06, 0.034, -0.7, -0.05, (0.0, 0.0, 0.08, 0.08), 0.85, 0.0, "AP R", (-0.94, -0.86)),
    "nih": Site(0.28, 1.05, -0.05, 0.010, 0.0, 0.0, (0.0, 0.0, 0.0, 0.0), 0.8, 1.0, "L", (0.80, 0.78)),
    "pad": Site(0.02, 0.80, 0.03, 0.026, 0.4, 0.09, (0.07, 0.07, 0.07, 0.07), 0.9, 1.0, "RX2", (-0.86, 0.74)),
}

# 3x5 bitmap font for the marker texts
_FONT = {
    "A": ("010", "101", "111", "101", "101"),
    "L": ("100", "100", "100", "100", "111"),
    "O": ("111", "101", "101", "101", "111"),
    "P": ("110", "101", "110", "100", "100"),
    "R": ("110", "101", "110", "101", "101"),
    "T": ("111", "010", "010", "010", "010"),
    "X": ("101", "101", "010", "101", "101"),
    "2": ("110", "001", "010", "100", "111"),
    " ": ("000", "000", "000", "000", "000"),
}
_MARKER_H = 0.10  # glyph height in image units (2 = full image)


@lru_cache(maxsize=None)
def _glyph(text: str) -> np.ndarray:
    cols = []
    for i, ch in enumerate(text):
        if i:
            cols.append(np.zeros((5, 1), bool))
        cols.append(np.array([[c == "1" for c in row] for row in _FONT[ch]], bool))
    return np.concatenate(cols, axis=1)


_STYLES = tuple((SITES[e].border_value, SITES[e].marker_text, SITES[e].marker_xy) for e in HOSPITALS)


@lru_cache(maxsize=64)
def _site_params(env: str, strength: float):
    """Continuous parameters of ``env`` at ``strength`` (1 = the site's own, 0 = the mean)."""
    site = SITES[env]
    out = {}
    for name in ("log_gamma", "contrast", "level", "noise", "sharpen", "heel", "marker_p"):
        mean = float(np.mean([getattr(SITES[e], name) for e in HOSPITALS]))
        out[name] = mean + strength * (getattr(site, name) - mean)
    mean_b = np.mean([SITES[e].border for e in HOSPITALS], axis=0)
    out["border"] = mean_b + strength * (np.asarray(site.border) - mean_b)
    # strengths above 1 exaggerate the differences, within sane limits
    limits = {"log_gamma": (-1.0, 1.0), "contrast": (0.4, 2.0), "level": (-0.25, 0.25), "noise": (0.002, 0.12),
              "sharpen": (-1.0, 3.0), "heel": (-0.3, 0.3), "marker_p": (0.0, 1.0)}
    for name, (lo, hi) in limits.items():
        out[name] = float(min(max(out[name], lo), hi))
    out["border"] = np.clip(out["border"], 0.0, 0.3)
    out["border"].flags.writeable = False
    return out


# ---------------------------------------------------------------------------------------
# grids, interpolation and blur matrices (cached per size)


@lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0).astype(F32)


@lru_cache(maxsize=32)
def _interp(size: int, g: int) -> np.ndarray:
    """(size, g) Gaussian-RBF interpolation from a g-point lattice on [-1.2, 1.2] to pixels."""
    centers = np.linspace(-1.2, 1.2, g)
    h = (centers[1] - centers[0]) * 0.75
    w = np.exp(-0.5 * ((_axis(size)[:, None] - centers[None, :]) / h) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))  # unit variance field for N(0,1) weights
    return w.astype(F32)


def _field(rng_normals: np.ndarray, size: int) -> np.ndarray:
    a = _interp(size, rng_normals.shape[0])
    return a @ rng_normals.astype(F32) @ a.T


# polar lung-marking table: rows = angle (right lung, then left), columns = radius
_VT_RMAX = 0.75


def _vt_shape(size: int) -> tuple:
    """Angle and radius samples of the marking table: fine enough for ``size`` px, no finer."""
    return int(min(384, max(96, 2 * size))), int(min(48, max(16, size // 4)))


@lru_cache(maxsize=32)
def _polar_basis(size: int, n_th_in: int, n_r_in: int):
    """Block-diagonal angle interpolation (both lungs) and radius interpolation with the
    radius weighting folded in."""
    n_th, n_r = _vt_shape(size)

    def interp(n_out, n_in):
        centers = np.linspace(0.0, 1.0, n_in)
        pos = (np.arange(n_out) + 0.5) / n_out
        h = (centers[1] - centers[0]) * 0.8
        w = np.exp(-0.5 * ((pos[:, None] - centers[None, :]) / h) ** 2)
        return w / np.sqrt((w**2).sum(axis=1, keepdims=True))

    a = interp(n_th, n_th_in)
    block = np.zeros((2 * n_th, 2 * n_th_in))
    block[:n_th, :n_th_in] = a
    block[n_th:, n_th_in:] = a
    return block.astype(F32), interp(n_r, n_r_in).T.astype(F32)


def _vessel_table(coarse: np.ndarray, fine: np.ndarray, size: int) -> np.ndarray:
    """Flattened (2*n_th, n_r) field: few trunks near the hila, more branches outward."""
    n_th, n_r = _vt_shape(size)
    bc, rc = _polar_basis(size, coarse.shape[0] // 2, coarse.shape[1])
    bf, rf = _polar_basis(size, fine.shape[0] // 2, fine.shape[1])
    r = ((np.arange(n_r) + 0.5) / n_r).astype(F32)
    rf = rf * (F32(0.25) + F32(0.75) * r)[None, :]
    out = bc @ (coarse.astype(F32) @ (rc * F32(0.7)))
    out += bf @ (fine.astype(F32) @ rf)
    return out.ravel()


_BLUR_SIGMA = 0.016  # image units


@lru_cache(maxsize=16)
def _blur_matrix(size: int) -> np.ndarray:
    u = _axis(size).astype(np.float64)
    k = np.exp(-0.5 * ((u[:, None] - u[None, :]) / _BLUR_SIGMA) ** 2)
    k /= k.sum(axis=1, keepdims=True)
    k[k < 1e-6] = 0.0
    return k.astype(F32)


def _blur(img: np.ndarray) -> np.ndarray:
    k = _blur_matrix(img.shape[0])
    return k @ img @ k.T


def _ramp(v, k):
    """clip(v * k, 0, 1), in place on v (a fresh array)."""
    v *= k
    _clip(v, _ZERO, _ONE, out=v)
    return v


# ---------------------------------------------------------------------------------------
# label parsing


def disease_vector(labels) -> np.ndarray:
    """The seven disease flags (order of :data:`cxrstudy.labels.DISEASES`) from a mapping /
    Series with label names, or a vector of 7 (diseases), 8 (No Finding + diseases) or 9
    (:data:`cxrstudy.labels.LABELS`) values."""
    if hasattr(labels, "keys"):
        return np.array([1 if float(labels.get(d, 0) or 0) > 0.5 else 0 for d in DISEASES], np.uint8)
    v = np.asarray(labels, dtype=float).ravel()
    if v.size == len(DISEASES):
        d = v
    elif v.size == len(DISEASES) + 1:
        d = v[1:]
    elif v.size == len(LABELS):
        d = v[1 : 1 + len(DISEASES)]
    else:
        raise UsageError(
            f"render: labels must be a mapping or a vector of 7, 8 or 9 values, got {v.size} values"
        )
    return (d > 0.5).astype(np.uint8)


def _seed_words(seed) -> list:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seed = [int(seed)]
    words = [int(s) for s in seed]
    if not words or any(w < 0 for w in words):
        raise UsageError(f"render: seeds must be non-negative integers, got {seed!r}")
    return words


_TAG_PATIENT, _TAG_IMAGE = 0x5EED_0001, 0x5EED_0002


# ---------------------------------------------------------------------------------------
# the renderer


@lru_cache(maxsize=16)
def _patient(words: tuple, size: int):
    """The patient's anatomy draws and lung-marking table (cached: a patient's images are
    usually rendered one after another). Read-only."""
    rp = np.random.default_rng([_TAG_PATIENT, *words])
    pa = rp.random(24)  # anatomy
    vcoarse = rp.standard_normal((2 * 14, 5))  # lung markings (polar fields, both lungs)
    vfine = rp.standard_normal((2 * 44, 8))
    tissue = rp.standard_normal((6, 6))  # smooth soft-tissue thickness variation
    table = _vessel_table(vcoarse, vfine, size)
    for a in (pa, table, tissue):
        a.flags.writeable = False
    return pa, table, tissue


def _band(X, Y, cx, cy, angle_deg, half_len, width):
    """A straight band (0..1) of half-width ``width`` and half-length ``half_len``."""
    a = np.deg2rad(angle_deg)
    c, sn = F32(np.cos(a)), F32(np.sin(a))
    dx, dy = X - F32(cx), Y - F32(cy)
    band = _ramp(F32(width) - np.abs(dy * c - dx * sn), F32(1.0 / width))
    band *= _ramp(F32(half_len) - np.abs(dx * c + dy * sn), F32(12.0))
    return band


def _blob(u, cx, cy, rx, ry):
    """A separable Gaussian blob (0..1) centred at (cx, cy)."""
    gx = np.exp(F32(-0.5) * ((u - F32(cx)) * F32(1.0 / rx)) ** 2)
    gy = np.exp(F32(-0.5) * ((u - F32(cy)) * F32(1.0 / ry)) ** 2)
    return gy[:, None] * gx[None, :]


#: Probability that a positive label has a visible sign. Report-derived labels are noisy
#: (NLP labelers, reader disagreement): some positives show nothing on the film.
SIGN_SHOWN = 0.88
#: Per-disease multiplier of ``sign_strength``: rare, subtle signs are drawn more visibly so every
#: label is learnable by the cpu preset (val AUROC >= 0.75 on cxp+nih at 32 px; README "Labels").
SIGN_GAIN = {d: 1.0 for d in DISEASES} | {"Pneumonia": 8.0, "Consolidation": 2.0, "Atelectasis": 3.0, "Pneumothorax": 3.0}


def render(
    labels,
    env: str,
    image_seed,
    size: int,
    *,
    patient_seed=None,
    shortcut_strength: float = 1.0,
    sign_strength: float = 1.0,
    sex: str = "O",
) -> np.ndarray:
    """A ``(size, size)`` uint8 chest-radiograph-like image of hospital ``env``.

    labels: mapping/Series with label names, or a 7/8/9-vector (see :func:`disease_vector`).
    image_seed: int or tuple of ints; draws pose, signs, acquisition and noise.
    patient_seed: int or tuple of ints; draws the patient's anatomy (default: image_seed).
    shortcut_strength: how distinct the hospital's acquisition is (0 = same for all four).
    sign_strength: scales the disease signs (0 = invisible).
    sex: "F" gives a slightly smaller habitus and more basal soft tissue.
    Pure and deterministic: the same arguments give the same bytes in any process.
    """
    env = canonical_hospital(env)
    size = int(size)
    if not 8 <= size <= 4096:
        raise UsageError(f"render: size {size} out of range 8..4096")
    st = float(shortcut_strength)
    s = s0 = float(sign_strength)
    if not (np.isfinite(st) and st >= 0 and np.isfinite(s) and s >= 0):
        raise UsageError("render: shortcut_strength and sign_strength must be finite and >= 0")
    dis = disease_vector(labels)
    img_words = _seed_words(image_seed)
    pat_words = _seed_words(patient_seed) if patient_seed is not None else img_words
    ri = np.random.default_rng([_TAG_IMAGE, *img_words])

    # ---- random draws: fixed order and amount, whatever the labels --------------------
    pa, table, tissue = _patient(tuple(pat_words), size)
    po = ri.standard_normal(12)  # pose, breathing, exposure
    lk = ri.random(16)  # normal look-alikes (fissure, skin fold, nipple shadow)
    dz = ri.random((7, 12))  # disease sign parameters, one row per disease
    patch = ri.standard_normal((11, 11))  # patchy-opacity field
    ac = ri.random(16)  # acquisition jitter
    noise = ri.standard_normal((size, size), dtype=F32)

    shown = dis.astype(bool) & (dz[:, 11] < SIGN_SHOWN) & (s > 0)
    has = {d: bool(shown[i]) for i, d in enumerate(DISEASES)}
    dp = {d: dz[i] for i, d in enumerate(DISEASES)}
    female = sex == "F"

    # ---- anatomy parameters ---------------------------------------------------------------
    body_w = 1.02 + 0.14 * (pa[0] - 0.5) - (0.05 if female else 0.0)
    lung_cx = 0.345 + 0.03 * (pa[1] - 0.5)
    lung_ax = 0.355 + 0.04 * (pa[2] - 0.5)
    lung_ay = (0.80 + 0.08 * (pa[3] - 0.5)) * (1.0 + 0.02 * po[0])  # breathing
    lung_cy = 0.04 + 0.04 * (pa[4] - 0.5)
    dome_y = 0.56 + 0.08 * (pa[5] - 0.5) + 0.02 * po[1]
    dome_k = 0.5 + 1.0 * pa[6]
    heart_w = 0.33 + 0.06 * (pa[7] - 0.5) + 0.012 * po[2]  # normal variation overlaps mild cardiomegaly
    heart_h = 0.29 + 0.03 * (pa[8] - 0.5)
    axial = 0.02 * po[10]  # axial rotation: the mediastinum shifts against the lungs
    heart_cx = 0.09 + 0.04 * (pa[9] - 0.5) + axial
    heart_cy = 0.44 + 0.04 * (pa[10] - 0.5)
    rib_period = 0.165 + 0.02 * (pa[11] - 0.5)
    rib_curv = 1.1 + 0.5 * pa[12]
    rib_phase = pa[13]
    rib_c = 0.04 + 0.06 * pa[14]
    vessel_c = 0.08 + 0.10 * pa[15]
    lung_dark = 0.52 + 0.12 * (pa[16] - 0.5)
    soft = 0.95 + 0.1 * (pa[17] - 0.5)
    hilum_x, hilum_y = 0.17 + 0.03 * (pa[18] - 0.5), -0.02 + 0.06 * (pa[19] - 0.5)
    # normal look-alikes of disease: basal soft-tissue density (breasts, habitus) and a
    # diffuse lung haze (shallow inspiration, exposure)
    basal = 0.28 * pa[20] ** 1.5 + (0.08 if female else 0.0) + 0.05 * abs(po[8])
    haze = 0.07 * abs(po[9])

    s = s0 * SIGN_GAIN["Cardiomegaly"]
    if has["Cardiomegaly"]:  # enlarged silhouette; mild cases overlap the normal range
        d = dp["Cardiomegaly"]
        grow = s * (0.03 + 0.16 * d[0])
        heart_w *= 1.0 + grow
        heart_h *= 1.0 + 0.4 * grow
        heart_cx += 0.03 * s * d[1]
    ate_side = -1.0 if dp["Atelectasis"][0] < 0.5 else 1.0
    lift_r = lift_l = 0.0
    s = s0 * SIGN_GAIN["Atelectasis"]
    if has["Atelectasis"]:  # volume loss raises one hemidiaphragm
        lift = s * (0.01 + 0.04 * dp["Atelectasis"][1])
        lift_r, lift_l = (lift, 0.0) if ate_side < 0 else (0.0, lift)

    # ---- coordinates: small tilt, shift and magnification ----------------------------------
    ang = np.deg2rad(2.5 * po[3])
    scale = 1.0 + 0.035 * po[4]
    tx, ty = 0.03 * po[5], 0.03 * po[6]
    ca, sa = np.cos(ang) / scale, np.sin(ang) / scale
    u = _axis(size)
    ur, uc = u[None, :], u[:, None]
    X = (ur - F32(tx)) * F32(ca) + ((uc - F32(ty)) * F32(sa))
    Y = (uc - F32(ty)) * F32(ca) - ((ur - F32(tx)) * F32(sa))
    AX = np.abs(X)
    right = X < 0  # patient's right (image left)

    # ---- anatomy -------------------------------------------------------------------------
    # body: soft tissue below the shoulder line, thicker toward the middle
    bx = X * F32(1.0 / body_w)
    by = (Y - F32(0.25)) * F32(1.0 / 1.35)
    body = _ramp(F32(1.0) - (bx * bx + by * by), F32(3.0))
    shoulder = F32(-1.02) + np.maximum(AX - F32(0.16), F32(0.0)) * F32(0.75)
    body *= _ramp(Y - shoulder, F32(6.0))

    # lungs: mirrored egg shapes (wider at the base) cut by the domes
    ly0 = Y - F32(lung_cy)
    lx = (AX - F32(lung_cx) - ly0 * F32(0.06)) * F32(1.0 / lung_ax)
    lx *= F32(1.0) - ly0 * F32(0.22)
    ly = ly0 * F32(1.0 / lung_ay)
    lung_d = lx * lx + ly * ly
    lung_core = np.maximum(F32(1.0) - lung_d, F32(0.0))  # deepest in the middle
    lungs = _ramp(F32(1.0) - lung_d, F32(6.0))
    dd = AX - F32(0.36)
    dome = dd * dd * np.where(dd > 0, F32(dome_k), F32(0.25)) + F32(dome_y)
    dome += np.where(right, F32(-0.03 - lift_r), F32(0.02 - lift_l))
    lungs *= _ramp(dome - Y, F32(25.0))

    # heart (tilted ellipse, left of midline) and upper mediastinum with the aortic knob
    hx = X - F32(heart_cx)
    hy = Y - F32(heart_cy)
    hu = (hx * F32(0.96) + hy * F32(0.28)) * F32(1.0 / heart_w)
    hv = (hy * F32(0.96) - hx * F32(0.28)) * F32(1.0 / heart_h)
    heart = _ramp(F32(1.0) - (hu * hu + hv * hv), F32(5.0))
    knob = _ramp(F32(1.0) - ((Y + F32(0.30)) * F32(1.0 / 0.11)) ** 2, F32(1.5)) * F32(0.075)
    mx = X - F32(0.015 + axial) - Y * F32(0.03)
    widen = _ramp(Y + F32(0.12), F32(2.5)) * F32(0.13)  # lower mediastinum flares into the heart
    med = _ramp(F32(0.095) + knob + widen - mx, F32(25.0)) * _ramp(mx + F32(0.095) + widen * F32(0.5), F32(25.0))
    lungs *= F32(1.0) - np.maximum(heart, med)

    A = body * (F32(soft) + _field(tissue, size) * F32(0.05))  # habitus varies smoothly
    A -= lungs * (lung_core * F32(0.45 * lung_dark) + F32(0.72 * lung_dark))
    hl = _ramp(F32(1.0) - ((AX - F32(hilum_x + 0.03)) ** 2 + (Y - F32(hilum_y + 0.04)) ** 2 * F32(0.5)) * F32(45.0), F32(1.0))
    A += hl * F32(0.12)  # hila
    A += _ramp(F32(0.065) - AX, F32(14.0)) * F32(0.07)  # spine
    A -= _ramp(F32(0.03) - AX, F32(60.0)) * _ramp(F32(-0.25) - Y, F32(6.0)) * F32(0.10)  # trachea
    cy = F32(-0.62 + 0.02 * po[7]) - F32(0.20) * AX
    clav = _ramp(F32(0.03) - np.abs(Y - cy), F32(35.0)) * ((AX > 0.06) & (AX < 0.62))
    A += clav * F32(0.12)  # clavicles
    # gastric air bubble under the left hemidiaphragm (size varies, sometimes absent)
    if pa[21] < 0.7:
        gb = _blob(u, 0.36 + 0.08 * (pa[22] - 0.5), dome_y + 0.2, 0.06 + 0.04 * pa[23], 0.035 + 0.02 * pa[23])
        A -= gb * body * F32(0.25)

    # posterior ribs (arcs rising from the spine, curving down laterally) and fainter
    # anterior ribs running down toward the sternum
    rr = AX - F32(0.12)
    t = (Y + rr * F32(0.45) - rr * rr * F32(rib_curv)) * F32(1.0 / rib_period) + F32(rib_phase)
    t -= np.floor(t)
    ribs = _ramp(F32(0.2) - np.abs(t - F32(0.5)), F32(7.0))
    t = (Y + AX * F32(0.55) + AX * AX * F32(0.3)) * F32(1.0 / (rib_period * 1.15)) + F32(rib_phase * 0.7)
    t -= np.floor(t)
    ribs += _ramp(F32(0.16) - np.abs(t - F32(0.5)), F32(6.0)) * F32(0.45)
    ribs *= lungs * F32(0.8) + F32(0.2) * body
    A += ribs * F32(rib_c)

    # lung markings: vessels branching out from each hilum (zero lines of a polar field)
    vx = AX - F32(hilum_x)
    vy = Y - F32(hilum_y)
    vr = np.sqrt(vx * vx + vy * vy)
    vth = np.arctan2(vy, vx)
    n_th, n_r = _vt_shape(size)
    ti = (vth * F32(n_th / (2 * np.pi)) + F32(n_th / 2)).astype(np.intp)
    np.clip(ti, 0, n_th - 1, out=ti)
    ti += np.where(right, 0, n_th)
    tj = (vr * F32(n_r / _VT_RMAX)).astype(np.intp)
    np.minimum(tj, n_r - 1, out=tj)
    ti *= n_r
    ti += tj
    fv = np.take(table, ti)
    taper = _ramp(F32(_VT_RMAX) - vr, F32(1.0 / _VT_RMAX))
    width = taper * F32(0.55) + F32(0.08)
    ridge = _ramp(width - np.abs(fv), F32(1.0) / width)
    markings = ridge * taper * lungs
    vcoef = vessel_c

    # ---- normal look-alikes (label independent) ----------------------------------------------
    # airspace / fluid opacity (0..~1) inside the lungs, starting from basal soft tissue and haze
    opac = _ramp(Y - F32(dome_y - 0.45), F32(1.0 / 0.45))
    opac *= opac
    opac *= F32(basal)
    opac += F32(haze)
    if lk[0] < 0.35:  # minor fissure / plate-like scar: a thin line like atelectasis
        opac += _band(X, Y, -(0.2 + 0.25 * lk[1]), -0.05 + 0.45 * lk[2], -12 + 24 * lk[3],
                      0.08 + 0.12 * lk[4], 0.012 + 0.015 * lk[5]) * F32(0.2 + 0.4 * lk[6])
    if lk[7] < 0.3:  # nipple shadow / end-on vessel: a small round opacity like pneumonia
        side = -1.0 if lk[8] < 0.5 else 1.0
        opac += _blob(u, side * (0.3 + 0.2 * lk[9]), 0.2 + 0.3 * lk[10], 0.04, 0.04) * F32(0.2 + 0.3 * lk[11])
    skin_fold = lk[12] < 0.25  # skin fold: a curved line near the chest wall like a pleural line

    # ---- disease signs ----------------------------------------------------------------------
    s = s0 * SIGN_GAIN["Edema"]
    if has["Edema"]:  # bilateral perihilar haze, prominent markings
        d = dp["Edema"]
        vcoef *= 1.0 + s * (0.1 + 0.35 * d[0])
        bat = _ramp(F32(1.0) - ((AX - F32(0.2)) ** 2 * F32(3.5) + (Y - F32(0.1)) ** 2 * F32(2.0)), F32(1.2))
        opac += bat * F32(s * (0.03 + 0.25 * d[1] ** 1.5))
        opac += F32(0.03 * s)

    s = s0 * SIGN_GAIN["Effusion"]
    if has["Effusion"]:  # basal fluid with a meniscus that blunts the costophrenic angle
        d = dp["Effusion"]
        for side in ((-1.0,), (1.0,), (-1.0, 1.0))[min(int(d[0] * 3), 2)]:
            height = s * (0.01 + 0.2 * (d[1] if side < 0 else d[2]) ** 2)
            sx = X if side > 0 else -X
            lateral = np.maximum(sx - F32(0.15), F32(0.0))
            level = F32(dome_y + 0.06 - height) - lateral * lateral * F32(s * (0.3 + 0.9 * d[3]))
            fluid = _ramp(Y - level, F32(1.0 / (0.05 + 0.07 * d[4])))
            fluid *= sx > 0
            opac += fluid * F32(s * (0.2 + 0.5 * d[5]))

    for name in ("Pneumonia", "Consolidation"):  # patchy vs denser, sharper airspace opacity
        if not has[name]:
            continue
        s = s0 * SIGN_GAIN[name]
        d = dp[name]
        side = -1.0 if d[0] < 0.5 else 1.0
        cx0, cy0 = side * (0.24 + 0.24 * d[1]), -0.35 + 0.8 * d[2]
        rad = 0.08 + 0.10 * d[3]
        blob = _blob(u, cx0, cy0, rad, rad * 1.25)
        pf = _field(patch, size)
        if name == "Consolidation":
            blob = _ramp(blob + pf * F32(0.12) - F32(0.3), F32(2.5))
            if d[6] < 0.5:  # lobar: bounded by a fissure
                blob *= _ramp(Y - F32(cy0 - 0.05 - 0.1 * d[7]), F32(40.0))
            amp = s * (0.15 + 0.45 * d[4] ** 1.5)
        else:
            blob *= _ramp(pf + F32(0.5), F32(0.9))
            amp = s * (0.15 + 0.4 * d[4] ** 1.5)
        opac += blob * F32(amp)

    s = s0 * SIGN_GAIN["Atelectasis"]
    if has["Atelectasis"]:  # linear (plate-like) bands in the lower zones
        d = dp["Atelectasis"]
        for k in range(1 + int(d[2] > 0.6)):
            band = _band(X, Y, ate_side * (0.24 + 0.18 * d[5]), 0.22 + 0.2 * d[6] - 0.14 * k,
                         -20 + 40 * d[3 + k], 0.08 + 0.10 * d[7], 0.015 + 0.02 * d[8])
            opac += band * F32(s * (0.25 + 0.55 * d[9] ** 1.5))

    ptx = has["Pneumothorax"]
    s = s0 * SIGN_GAIN["Pneumothorax"]
    if ptx or skin_fold:
        # pneumothorax: the lung shrunk toward the hilum, a lucent rim without markings and a
        # thin pleural line; a skin fold draws a similar line without the rest
        d = dp["Pneumothorax"] if ptx else lk[13:16]
        side = -1.0 if d[0] < 0.5 else 1.0
        frac = min(0.8, s * (0.04 + 0.30 * d[1] ** 1.5)) if ptx else 0.08 + 0.15 * d[1]
        in_ax = lung_ax * (1.0 - frac)
        in_ay = lung_ay * (1.0 - 0.75 * frac)
        ix = (AX - F32(lung_cx - lung_ax * frac * 0.8)) * F32(1.0 / in_ax)
        iy = (Y - F32(lung_cy + lung_ay * frac * 0.5)) * F32(1.0 / in_ay)
        idd = ix * ix + iy * iy
        on_side = (X > 0) if side > 0 else right
        line = _ramp(F32(0.06) - np.abs(idd - F32(1.0)), F32(1.0 / 0.06)) * lungs * on_side
        if ptx:
            rim = lungs * (F32(1.0) - _ramp(F32(1.0) - idd, F32(12.0))) * on_side
            markings *= F32(1.0) - rim
            A -= rim * F32(s * (0.02 + 0.06 * d[2]))
            A += line * F32(s * (0.04 + 0.05 * d[3]))
        else:
            A += line * F32(0.03 + 0.05 * d[2])

    A += markings * F32(vcoef)
    np.minimum(opac, F32(1.0), out=opac)
    A += opac * lungs * F32(lung_dark * 0.9)  # opacities restore density toward soft tissue

    # ---- acquisition (independent of the labels) ------------------------------------------
    sp = _site_params(env, st)
    own = ac[0] < min(st, 1.0)
    border_value, marker_text, marker_xy = _STYLES[_ENV_INDEX[env]] if own else _STYLES[int(ac[1] * 4) % 4]

    img = A
    img *= F32(0.86)
    # pixel noise: per-pixel sd grows with resolution (about the same after resizing to 64 px)
    img += noise * F32(sp["noise"] * (0.8 + 0.4 * ac[2]) * (size / 64.0) ** 0.5)
    sharpen = sp["sharpen"] + 0.15 * (ac[3] - 0.5)
    if abs(sharpen) > 1e-3:  # unsharp mask (edge enhancement) or blur
        bl = _blur(img)
        img += (img - bl) * F32(sharpen) if sharpen > 0 else (bl - img) * F32(-sharpen)
    # intensity curve: window (contrast, level), heel-effect gradient, gamma
    img -= F32(0.45)
    img *= F32(sp["contrast"] * (1.0 + 0.08 * (ac[4] - 0.5)))
    img += F32(0.45 + sp["level"] + 0.06 * (ac[5] - 0.5))
    img += uc * F32(sp["heel"] * (0.7 + 0.6 * ac[6]))
    _clip(img, _ZERO, _ONE, out=img)
    gamma = float(np.exp(sp["log_gamma"] + 0.08 * (ac[7] - 0.5)))
    if abs(gamma - 1.0) > 1e-4:
        np.power(img, F32(gamma), out=img)

    # collimation border
    bw = sp["border"] + 0.02 * (ac[8:12] - 0.3) * (sp["border"] > 0.005)
    cols = (u < -1.0 + bw[0]) | (u > 1.0 - bw[1])
    if cols.any():
        img[:, cols] = F32(border_value)
    rows = (u < -1.0 + bw[2]) | (u > 1.0 - bw[3])
    if rows.any():
        img[rows, :] = F32(border_value)

    # burned-in text marker (digital: drawn after the noise)
    if ac[12] < sp["marker_p"]:
        glyph = _glyph(marker_text)
        gh, gw = glyph.shape
        cell = _MARKER_H / gh
        x0 = marker_xy[0] + 0.03 * (ac[13] - 0.5)
        y0 = marker_xy[1] + 0.03 * (ac[14] - 0.5)
        ci = np.floor((u - F32(x0)) * F32(1.0 / cell)).astype(np.int64)
        rj = np.floor((u - F32(y0)) * F32(1.0 / cell)).astype(np.int64)
        cols = np.nonzero((ci >= 0) & (ci < gw))[0]
        rows = np.nonzero((rj >= 0) & (rj < gh))[0]
        if cols.size and rows.size:
            on = glyph[rj[rows][:, None], ci[cols][None, :]]
            block = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            block[on] = F32(0.97 if border_value < 0.5 else 0.9)

    img *= F32(255.0)
    img += F32(0.5)
    return img.astype(np.uint8)
