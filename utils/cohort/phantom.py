"""The phantom patient: analytic pelvic anatomy, response biology and MRI acquisition.

Each patient is an analytic anatomy in patient coordinates (mm): an elliptic body of
fat, two pelvic side-wall muscles, a bladder, a rectum (a tube with wall and lumen)
and a lobulated, heterogeneous tumour arising from the rectal wall. Every exam
samples that anatomy on its own scanner grid, after a rigid repositioning of the
patient, with a smooth multiplicative bias field, Rician noise and a centre-specific
intensity scale. Because the anatomy is analytic, T2W (fine voxels) and DWI (coarse
voxels) are consistent, and boundaries get partial-volume blur from the voxel size.

Response biology: a latent imaging response ``z_img`` and a latent marker response
``z_mark`` (both standard normal) give the true pCR probability
``p = sigmoid(A * (z_img + W_MARK * z_mark - B))``; the label is drawn from it.
After treatment the lesion shrinks (noisily related to ``z_img``) and becomes
low-T2 fibrosis; non-responders keep islands of viable tumour with restricted
diffusion (bright on high-b DWI) whose extent falls with ``z_img``. CEA and CA19-9
fall with ``z_mark``. :mod:`utils.cohort.generate` writes whole cohorts of these patients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from utils.config import Profile
from utils.measures import sigmoid
from utils.repro import derive_seed

# Response model (calibrated so the oracle AUC is ~0.94, the pCR rate ~25%, and the
# volume-reduction AUC ~0.7; see tests/test_cohort.py and the data notebook).
RESPONSE_SLOPE = 3.5
RESPONSE_OFFSET = 0.75
W_MARK = 0.3

# Relative tissue signal: (T2W, high-b DWI)
TISSUE = {
    "fat": (0.95, 0.04),
    "muscle": (0.30, 0.10),
    "bladder": (1.00, 0.05),
    "wall": (0.42, 0.18),
    "lumen": (0.12, 0.04),
    "tumour": (0.58, 0.85),
    "fibrosis": (0.20, 0.14),
}
SEQUENCE_INDEX = {"T2W": 0, "DWI": 1}


@dataclass(frozen=True)
class Acquisition:
    """One sequence's scanner grid and signal at one centre (x, y, z order, mm)."""

    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    scale: float  # scanner intensity units per unit of relative signal
    snr: float  # signal (fat or tumour level) over noise sigma
    bias: float  # amplitude of the log bias field

    def scaled(self, resolution: float) -> Acquisition:
        """Same field of view with voxels ``1/resolution`` times larger (coarser)."""
        spacing = (*(s / resolution for s in self.spacing[:2]), self.spacing[2])
        size = (*(max(8, round(n * resolution)) for n in self.size[:2]), self.size[2])
        return Acquisition(spacing, size, self.scale, self.snr, self.bias)


CENTRES: dict[str, dict[str, Acquisition]] = {
    "A": {"T2W": Acquisition((1.25, 1.25, 3.0), (176, 176, 28), 1000.0, 22.0, 0.30),
          "DWI": Acquisition((2.5, 2.5, 4.0), (88, 88, 21), 800.0, 10.0, 0.20)},
    "B": {"T2W": Acquisition((1.1, 1.1, 3.5), (192, 192, 24), 2600.0, 16.0, 0.40),
          "DWI": Acquisition((2.2, 2.2, 5.0), (96, 96, 17), 1800.0, 8.0, 0.25)},
    "C": {"T2W": Acquisition((1.4, 1.4, 2.5), (160, 160, 34), 650.0, 28.0, 0.25),
          "DWI": Acquisition((2.8, 2.8, 4.0), (80, 80, 21), 500.0, 12.0, 0.15)},
}
COHORT_PREFIX = {"training": "TR", "internal_validation": "IV", "external_validation": "EV"}


@dataclass(frozen=True)
class Waves:
    """A smooth random field: a normalised sum of plane waves (grid independent)."""

    k: np.ndarray  # (n, 3) wave vectors in rad/mm
    phase: np.ndarray  # (n,)

    @staticmethod
    def draw(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> Waves:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        length = rng.uniform(*wavelength, size=(n, 1))
        return Waves(2 * np.pi * direction / length, rng.uniform(0, 2 * np.pi, size=n))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field with unit variance at ``points`` (..., 3)."""
        total = np.zeros(points.shape[:-1])
        for k, phase in zip(self.k, self.phase, strict=True):
            total += np.cos(points @ k + phase)
        return total * np.sqrt(2.0 / len(self.phase))


@dataclass(frozen=True)
class Anatomy:
    """One patient's analytic pelvis, tumour and response, in patient mm."""

    body_axes: tuple[float, float]
    muscle_offset: float
    bladder_centre: np.ndarray
    bladder_radius: float
    rectum_centre: tuple[float, float]
    rectum_bend: tuple[float, float]
    rectum_radius: float
    lobe_centres: np.ndarray  # (n, 3)
    lobe_radii: np.ndarray  # (n, 3)
    lobulation: Waves
    texture: Waves
    islands: Waves
    shrink: float  # linear post/pre scale of the lesion
    viable_fraction: float  # fraction of the post lesion that is viable tumour

    @property
    def tumour_centre(self) -> np.ndarray:
        return self.lobe_centres.mean(axis=0)


@dataclass(frozen=True)
class PatientDraw:
    """Everything random about one patient, drawn from its own stream."""

    patient_id: str
    cohort: str
    centre: str
    anatomy: Anatomy
    z_img: float
    z_mark: float
    p_true: float
    pcr: int
    markers: dict[str, float]
    poses: dict[str, tuple[np.ndarray, np.ndarray]]  # timepoint -> (rotation, translation)
    fov_offsets: dict[str, np.ndarray]


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_anatomy(rng: np.random.Generator, z_img: float) -> Anatomy:
    """Pelvis, tumour (volume typical of locally advanced disease) and response."""
    rectum_centre = (rng.uniform(-6, 6), rng.uniform(18, 28))
    rectum_radius = rng.uniform(11, 15)
    angle = rng.uniform(0, 2 * np.pi)
    z0 = rng.uniform(-8, 8)
    volume_ml = float(np.clip(rng.lognormal(np.log(22.0), 0.45), 7.0, 70.0))
    radius = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    wall_point = np.array([rectum_centre[0] + rectum_radius * np.cos(angle),
                           rectum_centre[1] + rectum_radius * np.sin(angle), z0])
    n_lobes = int(rng.integers(3, 6))
    lobe_centres = wall_point + rng.normal(scale=0.35 * radius, size=(n_lobes, 3)) * [1, 1, 1.2]
    lobe_radii = radius * rng.uniform(0.55, 0.85, size=(n_lobes, 3)) * [1, 1, 1.15]
    volume_signal = 0.45 * z_img + rng.normal(0, 0.9)
    volume_ratio = float(np.clip(np.exp(-(1.0 + 0.45 * volume_signal)), 0.04, 0.9))
    viable = 0.55 * sigmoid(-2.2 * (z_img - 0.6)) + rng.normal(0, 0.02)
    return Anatomy(
        body_axes=(rng.uniform(95, 115), rng.uniform(78, 92)),
        muscle_offset=rng.uniform(55, 65),
        bladder_centre=np.array([rng.uniform(-5, 5), rng.uniform(-45, -35), rng.uniform(15, 30)]),
        bladder_radius=rng.uniform(22, 30),
        rectum_centre=rectum_centre,
        rectum_bend=(rng.uniform(-6, 6), rng.uniform(-6, 6)),
        rectum_radius=rectum_radius,
        lobe_centres=lobe_centres,
        lobe_radii=lobe_radii,
        lobulation=Waves.draw(rng, 10, (15, 30)),
        texture=Waves.draw(rng, 10, (5, 12)),
        islands=Waves.draw(rng, 10, (10, 20)),
        shrink=volume_ratio ** (1 / 3),
        viable_fraction=float(np.clip(viable, 0.0, 0.6)),
    )


def draw_markers(rng: np.random.Generator, z_img: float, z_mark: float) -> dict[str, float]:
    """CEA (ng/mL) and CA19-9 (U/mL) before and after; ~5% missing (NaN)."""
    cea_pre = rng.lognormal(np.log(4.5), 0.8)
    ca_pre = rng.lognormal(np.log(14.0), 0.7)
    fall = 0.5 + 0.55 * z_mark + 0.1 * z_img
    markers = {
        "cea_pre": cea_pre,
        "cea_post": cea_pre * np.exp(-fall + rng.normal(0, 0.35)),
        "ca199_pre": ca_pre,
        "ca199_post": ca_pre * np.exp(-0.6 * fall + rng.normal(0, 0.45)),
    }
    for key in markers:
        if rng.random() < 0.05:
            markers[key] = np.nan
    return {k: (round(float(v), 2) if np.isfinite(v) else np.nan) for k, v in markers.items()}


def draw_patient(profile: Profile, patient_id: str, cohort: str, centre: str) -> PatientDraw:
    rng = np.random.default_rng(derive_seed(profile.seed, "patient", patient_id))
    z_img, z_mark = rng.normal(size=2)
    p_true = float(sigmoid(RESPONSE_SLOPE * (z_img + W_MARK * z_mark - RESPONSE_OFFSET)))
    pcr = int(rng.random() < p_true)
    anatomy = draw_anatomy(rng, z_img)
    markers = draw_markers(rng, z_img, z_mark)
    poses = {
        "pre": (rotation_matrix(rng.uniform(-1.5, 1.5, 3)), rng.uniform(-2, 2, 3)),
        "post": (rotation_matrix(rng.uniform(-4, 4, 3)), _random_shift(rng, 10.0)),
    }
    fov = {timepoint: rng.uniform(-8, 8, 3) * [1, 1, 0.5] for timepoint in ("pre", "post")}
    return PatientDraw(patient_id, cohort, centre, anatomy, float(z_img), float(z_mark),
                       p_true, pcr, markers, poses, fov)


def _random_shift(rng: np.random.Generator, max_mm: float) -> np.ndarray:
    direction = rng.normal(size=3)
    return direction / np.linalg.norm(direction) * rng.uniform(0.3, 1.0) * max_mm


# ---------------------------------------------------------------- rendering


def soft_inside(distance: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume membership from a signed distance (negative inside)."""
    return sigmoid(-distance / width)


def ellipsoid_distance(points: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid."""
    scaled = np.linalg.norm((points - centre) / radii, axis=-1)
    return (scaled - 1.0) * radii.min()


def tumour_distance(anatomy: Anatomy, points: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Signed distance to the lobulated lesion, shrunk about its centre by ``scale``."""
    centre = anatomy.tumour_centre
    local = centre + (points - centre) / scale
    dist = np.full(points.shape[:-1], np.inf)
    for lobe_centre, lobe_radii in zip(anatomy.lobe_centres, anatomy.lobe_radii, strict=True):
        dist = np.minimum(dist, ellipsoid_distance(local, lobe_centre, lobe_radii))
    lobulation = 2.5 * anatomy.lobulation(local)
    return (dist + lobulation) * scale


def rectum_distances(anatomy: Anatomy, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances to the outer wall and to the lumen of a gently curved tube."""
    z = points[..., 2]
    cx = anatomy.rectum_centre[0] + anatomy.rectum_bend[0] * np.sin(z / 40.0)
    cy = anatomy.rectum_centre[1] + anatomy.rectum_bend[1] * (z / 50.0) ** 2
    radial = np.hypot(points[..., 0] - cx, points[..., 1] - cy)
    return radial - anatomy.rectum_radius, radial - (anatomy.rectum_radius - 4.0)


def paint(image: np.ndarray, membership: np.ndarray, value: float) -> None:
    image *= 1.0 - membership
    image += membership * value


def render_signal(anatomy: Anatomy, points: np.ndarray, timepoint: str, sequence: str,
                  width: float) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free relative signal and the tumour membership at ``points`` (patient mm)."""
    idx = SEQUENCE_INDEX[sequence]
    x, y = points[..., 0], points[..., 1]
    ax, ay = anatomy.body_axes
    body = soft_inside((np.hypot(x / ax, y / ay) - 1.0) * min(ax, ay), width)
    image = body * TISSUE["fat"][idx]
    for side in (-1.0, 1.0):
        muscle = ellipsoid_distance(points, np.array([side * anatomy.muscle_offset, 5.0, 0.0]),
                                    np.array([14.0, 35.0, 400.0]))
        paint(image, soft_inside(muscle, width), TISSUE["muscle"][idx])
    bladder = ellipsoid_distance(points, anatomy.bladder_centre, np.full(3, anatomy.bladder_radius))
    paint(image, soft_inside(bladder, width), TISSUE["bladder"][idx])
    outer, lumen = rectum_distances(anatomy, points)
    paint(image, soft_inside(outer, width), TISSUE["wall"][idx])
    paint(image, soft_inside(lumen, width), TISSUE["lumen"][idx])
    lesion = render_lesion(anatomy, points, timepoint, idx, width)
    if lesion is not None:
        near, membership, signal = lesion
        region = image[near]
        paint(region, membership, 0.0)
        region += membership * signal
        image[near] = region
        full_membership = np.zeros(image.shape)
        full_membership[near] = membership
        return image, full_membership
    return image, np.zeros(image.shape)


def render_lesion(anatomy: Anatomy, points: np.ndarray, timepoint: str, idx: int,
                  width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Membership and signal of the lesion, evaluated only near it (for speed)."""
    scale = 1.0 if timepoint == "pre" else anatomy.shrink
    reach = scale * (np.linalg.norm(anatomy.lobe_centres - anatomy.tumour_centre, axis=1).max()
                     + anatomy.lobe_radii.max() * 1.1 + 8.0)
    near = np.linalg.norm(points - anatomy.tumour_centre, axis=-1) < reach
    if not near.any():
        return None
    local = points[near]
    membership = soft_inside(tumour_distance(anatomy, local, scale), width)
    texture = anatomy.texture(local)
    tumour = TISSUE["tumour"][idx] * (1.0 + 0.08 * texture)
    if timepoint == "pre":
        return near, membership, tumour
    island_quantile = 0.5 * (1.0 + np.tanh(0.8 * anatomy.islands(local)))
    viable = soft_inside(island_quantile - anatomy.viable_fraction, 0.05)
    fibrosis = TISSUE["fibrosis"][idx] * (1.0 + 0.05 * texture)
    return near, membership, viable * tumour + (1.0 - viable) * fibrosis


def bias_field(points_scanner: np.ndarray, amplitude: float,
               rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field in scanner coordinates (a low-order polynomial)."""
    coeffs = rng.uniform(-1, 1, size=6) * amplitude
    u = points_scanner / 100.0
    log_field = (coeffs[0] * u[..., 0] + coeffs[1] * u[..., 1] + coeffs[2] * u[..., 2]
                 + coeffs[3] * u[..., 0] ** 2 + coeffs[4] * u[..., 1] ** 2
                 + coeffs[5] * u[..., 0] * u[..., 1])
    return np.exp(log_field)


def grid_points(acq: Acquisition, origin: np.ndarray) -> np.ndarray:
    """Physical coordinates (z, y, x, 3) of every voxel centre, identity direction."""
    axes = [origin[i] + acq.spacing[i] * np.arange(acq.size[i]) for i in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([xx, yy, zz], axis=-1)


def acquire(draw: PatientDraw, timepoint: str, sequence: str,
            acq: Acquisition) -> tuple[sitk.Image, sitk.Image]:
    """One exam's image (int16, scanner units) and its tumour mask on that grid."""
    rng = np.random.default_rng(derive_seed(0, draw.patient_id, timepoint, sequence))
    extent = np.array(acq.spacing) * (np.array(acq.size) - 1)
    centre = np.array([*draw.anatomy.rectum_centre, 0.0]) + draw.fov_offsets[timepoint]
    origin = np.round(centre - extent / 2, 3)
    scanner = grid_points(acq, origin)
    rotation, translation = draw.poses[timepoint]
    patient = (scanner - translation) @ rotation  # inverse rigid pose: R^T (p - t)
    width = 0.3 * min(acq.spacing)
    signal, lesion = render_signal(draw.anatomy, patient, timepoint, sequence, width)
    signal *= bias_field(scanner - centre, acq.bias, rng)
    sigma = TISSUE["tumour"][SEQUENCE_INDEX[sequence]] / acq.snr
    real = signal + rng.normal(0, sigma, signal.shape)
    noisy = np.hypot(real, rng.normal(0, sigma, signal.shape))
    pixels = np.clip(np.rint(noisy * acq.scale), 0, 32767).astype(np.int16)
    return to_image(pixels, acq, origin), to_image((lesion >= 0.5).astype(np.uint8), acq, origin)


def to_image(array: np.ndarray, acq: Acquisition, origin: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(acq.spacing)
    image.SetOrigin(tuple(float(o) for o in origin))
    return image
