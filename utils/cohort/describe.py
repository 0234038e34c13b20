"""Describing a cohort: the Table 1 analogue and example-exam figures (data notebook)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import SimpleITK as sitk

from utils.cohort.manifest import cohort_sequences, exam_files, patient_table, read_image
from utils.config import COHORTS, REFERENCE_SEQUENCE, TIMEPOINTS
from utils.figures import show_slice
from utils.measures import auc_or_nan, largest_slice, volume_ml, volume_reduction


def mask_volumes(manifest: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth tumour volume (mL) of each patient's pre and post exam
    (:func:`utils.measures.volume_ml`: foreground voxels, non-zero whatever the label value,
    e.g. {0, 1} or {0, 255}, x voxel volume) and the volume-reduction score
    (:func:`utils.measures.volume_reduction`, the evaluation's own rule, floor included)."""
    rows = []
    for patient_id in manifest["patient_id"].unique():
        exams = exam_files(manifest, patient_id)
        row = {"patient_id": patient_id}
        for timepoint in TIMEPOINTS:
            row[f"vol_{timepoint}_ml"] = volume_ml(read_image(exams[timepoint]["mask"]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["volume_reduction"] = volume_reduction(table["vol_pre_ml"], table["vol_post_ml"])
    return table


def cohort_table(manifest: pd.DataFrame, volumes: pd.DataFrame,
                 oracle: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cohort: patients, pCR rate, centres, marker medians, volumes and baseline AUCs.

    The volume-reduction AUC uses the ground-truth masks (1 - V_post / V_pre as the
    score); the oracle AUC uses the phantom's true probabilities (phantom only).
    """
    patients = patient_table(manifest).merge(volumes, on="patient_id")
    if oracle is not None:
        patients = patients.merge(oracle[["patient_id", "p_true"]], on="patient_id")
    rows = []
    for cohort in COHORTS:
        group = patients[patients["cohort"] == cohort]
        if group.empty:
            continue
        row = {
            "cohort": cohort, "patients": len(group), "pCR": int(group["pcr"].sum()),
            "pCR rate": group["pcr"].mean(),
            "centres": ", ".join(f"{c} ({n})" for c, n in group["centre"].value_counts()
                                 .sort_index().items()),
            "CEA pre (median)": group["cea_pre"].median(),
            "CEA post (median)": group["cea_post"].median(),
            "CA19-9 pre (median)": group["ca199_pre"].median(),
            "CA19-9 post (median)": group["ca199_post"].median(),
            "tumour pre mL (median)": group["vol_pre_ml"].median(),
            "tumour post mL (median)": group["vol_post_ml"].median(),
            "volume-reduction AUC": auc_or_nan(group["pcr"], group["volume_reduction"]),
        }
        if oracle is not None:
            row["oracle AUC"] = auc_or_nan(group["pcr"], group["p_true"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("cohort")


def pick_examples(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One pCR and one non-pCR patient per centre (first by id, for stability)."""
    patients = patient_table(manifest)
    picks = patients.sort_values("patient_id").groupby(["centre", "pcr"]).head(1)
    return picks.sort_values(["centre", "pcr"]).reset_index(drop=True)


def _slice_at(image: sitk.Image, reference: sitk.Image, z_index: int) -> np.ndarray:
    """The slice of ``image`` (resampled onto ``reference``'s grid) at ``z_index``."""
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(resampled)[z_index]


def _show_exam_slice(ax: plt.Axes, exam: dict[str, str], sequence: str, title: str = "",
                     reference: str = REFERENCE_SEQUENCE) -> None:
    """One exam's ``sequence`` through the tumour's largest slice on the reference grid,
    with the mask contour (:func:`utils.figures.show_slice`)."""
    t2w = read_image(exam[reference])
    mask = sitk.GetArrayFromImage(read_image(exam["mask"]))
    z_index = largest_slice(mask)
    pixels = _slice_at(read_image(exam[sequence]), t2w, z_index)
    show_slice(ax, pixels, [(mask[z_index], "tab:red")], title,
               window=(0.0, float(np.percentile(pixels, 99.5))))


def plot_example_exams(manifest: pd.DataFrame, examples: pd.DataFrame) -> plt.Figure:
    """Pre/post slices of every sequence through the tumour, with the mask contours."""
    columns = [(tp, seq) for tp in TIMEPOINTS for seq in cohort_sequences(manifest)]
    fig, axes = plt.subplots(len(examples), len(columns),
                             figsize=(2.1 * len(columns), 2.1 * len(examples)), squeeze=False)
    for index, (row_axes, (_, patient)) in enumerate(zip(axes, examples.iterrows(),
                                                         strict=True)):
        exams = exam_files(manifest, patient["patient_id"])
        for ax, (timepoint, sequence) in zip(row_axes, columns, strict=True):
            title = f"{timepoint} {sequence}" if index == 0 else ""
            _show_exam_slice(ax, exams[timepoint], sequence, title)
        row_axes[0].text(-0.08, 0.5, f"{patient['patient_id']} ({patient['centre']})\n"
                         f"{'pCR' if patient['pcr'] else 'non-pCR'}",
                         transform=row_axes[0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


def exam_panels(manifest: pd.DataFrame, patient_id: str,
                reference: str = REFERENCE_SEQUENCE) -> dict:
    """Slice-browser panels (:func:`utils.viewer.slice_browser`) of one patient's exams:
    each sequence resampled onto its exam's reference grid, with the tumour mask."""
    panels = {}
    for timepoint, exam in exam_files(manifest, patient_id).items():
        grid = read_image(exam[reference])
        mask = sitk.GetArrayFromImage(read_image(exam["mask"]))
        for sequence in cohort_sequences(manifest, reference):
            image = sitk.Resample(read_image(exam[sequence]), grid, sitk.Transform(),
                                  sitk.sitkLinear, 0.0)
            panels[f"{timepoint} {sequence}"] = (sitk.GetArrayFromImage(image),
                                                  {"tumour": mask})
    return panels


def acquisition_table(centres: dict) -> pd.DataFrame:
    """Per centre and sequence: voxel spacing, matrix, field of view, SNR, scale."""
    rows = []
    for centre, sequences in centres.items():
        for sequence, acq in sequences.items():
            rows.append({
                "centre": centre, "sequence": sequence,
                "spacing x,y,z (mm)": " x ".join(f"{s:g}" for s in acq.spacing),
                "matrix": " x ".join(str(n) for n in acq.size),
                "FOV x,y,z (mm)": " x ".join(f"{s * n:g}" for s, n in zip(acq.spacing, acq.size,
                                                                          strict=True)),
                "SNR": acq.snr, "intensity scale": acq.scale,
            })
    return pd.DataFrame(rows).set_index(["centre", "sequence"])


def files_exist(paths: list[Path]) -> bool:
    return all(Path(p).exists() for p in paths)
