"""Quality-control figures for the preprocessing notebook (N4, registration, normalisation, ROI).

Each function recomputes the one step it shows with :mod:`utils.preprocessing.pipeline`'s own
functions, so the figure shows exactly what the cached pipeline did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort.manifest import exam_files, read_image
from utils.figures import show_slice
from utils.geometry import reference_grid, resample
from utils.measures import largest_slice as tumour_slice  # notebook 01's name for it
from utils.preprocessing import pipeline as pp
from utils.preprocessing.cache import load_cached
from utils.preprocessing.intensity import body_mask, n4_correct, normalise
from utils.preprocessing.params import PreprocessParams


def exam_images(manifest: pd.DataFrame, patient_id: str, timepoint: str) -> dict[str, sitk.Image]:
    """The raw sequences of one exam, keyed by sequence name."""
    files = exam_files(manifest, patient_id)[timepoint]
    return {name: read_image(path) for name, path in files.items() if name != "mask"}


def _show(ax: plt.Axes, pixels: np.ndarray, title: str, cmap: str = "gray", **kwargs) -> None:
    image = ax.imshow(pixels, cmap=cmap, **kwargs)
    ax.set_title(title)
    ax.set_axis_off()
    return image


def plot_bias_correction(t2w: sitk.Image, params: PreprocessParams, z_index: int
                         ) -> tuple[plt.Figure, dict[str, float]]:
    """T2W before N4, the fitted bias field, and after; plus the body's coefficient of variation."""
    corrected, bias = n4_correct(t2w, params)
    body = sitk.GetArrayFromImage(body_mask(t2w, params.body_threshold_factor)) > 0
    raw = sitk.GetArrayFromImage(sitk.Cast(t2w, sitk.sitkFloat32))
    fixed = sitk.GetArrayFromImage(corrected)
    field = sitk.GetArrayFromImage(bias)
    fat = body & (raw > np.percentile(raw[body], 60))  # the bright fat that fills the body
    cv = {"before": float(raw[fat].std() / raw[fat].mean()),
          "after": float(fixed[fat].std() / fixed[fat].mean())}
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    vmax = np.percentile(raw[body], 99)
    _show(axes[0], raw[z_index], f"T2W before N4 (CV of fat {cv['before']:.3f})", vmin=0, vmax=vmax)
    shown = _show(axes[1], np.where(body[z_index], field[z_index], np.nan), "bias field",
                  cmap="magma")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    _show(axes[2], fixed[z_index], f"after N4 (CV of fat {cv['after']:.3f})", vmin=0,
          vmax=np.percentile(fixed[body], 99))
    fig.tight_layout()
    return fig, cv


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate tiles of two equally shaped 2D images (``SimpleITK.CheckerBoard``)."""
    images = [sitk.GetImageFromArray(np.asarray(x, dtype=np.float32)) for x in (a, b)]
    return sitk.GetArrayFromImage(sitk.CheckerBoard(*images, [tiles, tiles]))


def _robust(pixels: np.ndarray) -> np.ndarray:
    low, high = np.percentile(pixels, [1, 99])
    return np.clip((pixels - low) / max(high - low, 1e-6), 0, 1)


def plot_registration(pre_t2w: sitk.Image, post_t2w: sitk.Image, transform: sitk.Transform,
                      params: PreprocessParams, z_index: int) -> plt.Figure:
    """Checkerboards of pre and post T2W on the pre grid, before and after registration."""
    reference = reference_grid(pre_t2w, params.spacing_zyx)
    fixed = sitk.GetArrayFromImage(resample(pre_t2w, reference))
    before = sitk.GetArrayFromImage(resample(post_t2w, reference))
    after = sitk.GetArrayFromImage(resample(post_t2w, reference, transform))
    ratio = pre_t2w.GetSpacing()[2] / params.spacing_zyx[0]
    z_ref = round(z_index * ratio)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
    for ax, moving, title in ((axes[0], before, "before registration"),
                              (axes[1], after, "after rigid registration")):
        _show(ax, checkerboard(_robust(fixed[z_ref]), _robust(moving[z_ref])), title)
    fig.suptitle("pre / post T2W checkerboard (pre grid)")
    fig.tight_layout()
    return fig


def body_intensities(image: sitk.Image, params: PreprocessParams, n4: bool = False,
                     sample: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """A fixed sample of body voxels before and after robust z-score normalisation."""
    if n4:
        image = n4_correct(image, params)[0]
    body = body_mask(image, params.body_threshold_factor)
    normalised, _ = normalise(image, body, params.clip_percentiles, params.scale_percentiles,
                                 params.clip_z_max)
    inside = sitk.GetArrayViewFromImage(body) > 0
    raw = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))[inside]
    after = np.asarray(normalised)[inside]
    index = np.random.default_rng(0).choice(raw.size, size=min(sample, raw.size), replace=False)
    return raw[index], after[index]


def plot_intensity_histograms(manifest: pd.DataFrame, patients: pd.DataFrame,
                              params: PreprocessParams,
                              sequences: Sequence[str] = ("T2W", "DWI")) -> plt.Figure:
    """Per-centre intensity histograms inside the body, before and after normalisation."""
    fig, axes = plt.subplots(len(sequences), 2, figsize=(8, 2.8 * len(sequences)), squeeze=False)
    for row, sequence in zip(axes, sequences, strict=True):
        for centre, group in patients.groupby("centre"):
            values = [body_intensities(exam_images(manifest, pid, "pre")[sequence], params,
                                       n4=sequence == "T2W") for pid in group["patient_id"]]
            raw = np.concatenate([v[0] for v in values])
            after = np.concatenate([v[1] for v in values])
            row[0].hist(raw, bins=80, histtype="step", density=True, label=f"centre {centre}")
            row[1].hist(after, bins=80, histtype="step", density=True, label=f"centre {centre}")
        row[0].set_title(f"{sequence}: scanner units (body)")
        row[1].set_title(f"{sequence}: after robust z-score")
        row[1].legend(frameon=False)
        for ax in row:
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_crop_montage(cache_files: Sequence[Path], sequences: Sequence[str] = ("T2W", "DWI")
                      ) -> plt.Figure:
    """Final ROI crops (pre/post x sequences) through the tumour, with mask contours."""
    columns = [(tp, i, name) for tp in ("pre", "post") for i, name in enumerate(sequences)]
    fig, axes = plt.subplots(len(cache_files), len(columns),
                             figsize=(1.9 * len(columns), 1.9 * len(cache_files)), squeeze=False)
    for index, (row, path) in enumerate(zip(axes, cache_files, strict=True)):
        cached = load_cached(path)
        z = tumour_slice(cached["mask_pre"])
        for ax, (timepoint, channel, name) in zip(row, columns, strict=True):
            title = f"{timepoint} {name}" if index == 0 else ""
            show_slice(ax, cached[f"image_{timepoint}"][z, ..., channel],
                       [(cached[f"mask_{timepoint}"][z], "tab:red")], title)
        row[0].text(-0.08, 0.5, Path(path).stem, transform=row[0].transAxes, rotation=90,
                    va="center", ha="right")
    fig.tight_layout()
    return fig


def qc_summary(processed: pd.DataFrame) -> pd.DataFrame:
    """Per cohort: patients, QC status counts and registration quality (medians)."""
    numeric = [c for c in ("reg_metric_before", "reg_metric_after", "reg_dice_before",
                           "reg_dice_after", "reg_local_ncc_after", "reg_translation_mm",
                           "reg_rotation_deg") if c in processed.columns]
    flagged, warned = (processed.get(c, pd.Series("", index=processed.index)).astype(object)
                       .fillna("") for c in ("reg_flags", "warnings"))
    return processed.assign(reg_flagged=flagged.ne(""), warned=warned.ne("")).groupby(
        "cohort").agg(
        patients=("patient_id", "size"),
        ok=("status", lambda s: int((s == "ok").sum())),
        flagged=("reg_flagged", "sum"), warned=("warned", "sum"),
        padded=("padded", lambda s: int(s.fillna(False).astype(bool).sum())),
        **{f"{c.removeprefix('reg_')} (median)": (c, "median") for c in numeric})


def dwi_clip_comparison(manifest: pd.DataFrame, patient_ids: Sequence[str],
                        params: PreprocessParams,
                        old_clip: Sequence[float] = (0.5, 99.5)) -> pd.DataFrame:
    """Normalised post-treatment DWI inside the post-treatment tumour mask under the current
    clip rule and under the former percentile clip, for a few patients.

    One row per patient, rule and voxel: ``patient_id, rule, value, at_ceiling``.
    """
    rules = {"current": params, f"former ({old_clip[0]}-{old_clip[1]} percentile)":
             dataclasses.replace(params, clip_percentiles=tuple(old_clip),
                                 clip_z_max=float("inf"))}
    frames = []
    for patient_id in patient_ids:
        rows = manifest[manifest["patient_id"] == patient_id]
        for rule, rule_params in rules.items():
            pair = pp.preprocess_patient(rows, rule_params)
            channel = list(pair.meta["sequences"]).index("DWI")
            values = pair.image_post[..., channel][pair.mask_post > 0]
            ceiling = pair.meta["normalisation"]["post"]["DWI"]["clip_hi"]
            frames.append(pd.DataFrame({"patient_id": patient_id, "rule": rule,
                                        "value": values, "at_ceiling": values >= ceiling}))
    return pd.concat(frames, ignore_index=True)


def plot_dwi_clip(table: pd.DataFrame) -> plt.Figure:
    """Histograms of post-treatment tumour DWI under each clip rule (the output of
    :func:`dwi_clip_comparison`), with the share of voxels sitting at the ceiling."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    bins = np.linspace(table["value"].min(), table["value"].max(), 50)
    for rule, group in table.groupby("rule", sort=False):
        share = 100 * group["at_ceiling"].mean()
        ax.hist(group["value"], bins=bins, histtype="step", linewidth=1.5,
                label=f"{rule}: {share:.0f}% of voxels at the ceiling")
    ax.set_xlabel("normalised post-treatment DWI inside the post-treatment tumour (robust SD)")
    ax.set_ylabel("voxels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
