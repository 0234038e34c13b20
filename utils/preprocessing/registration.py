"""Rigid post-to-pre registration of one patient's exams, and its quality control.

Method: an Euler3D transform ``T`` maps a pre (fixed) physical point to the post (moving)
one, as ITK resampling expects. From the MOMENTS centring (or GEOMETRY, identity, or
``"best"`` of the three) regular-step gradient descent optimises Mattes mutual information
inside the pre body mask over a shrink/smoothing pyramid, whose factors are capped so that
every level keeps :data:`MIN_LEVEL_VOXELS` voxels per axis (thin slabs). Seeded sampling
and one ITK thread make re-runs bit-identical. Before ITK runs, the fields of view (post
through the initial transform) must overlap; that failure and any ITK exception raise
:class:`~utils.errors.RegistrationError` naming the patient and files in plain words.

QC (the ``qc`` dict; :func:`registration_flags` lists the reasons to reject a result):

* identity is kept if its metric is within ``qc_metric_tolerance`` of the optimised one
  (``kept_identity``), so an aligned pair is neither moved nor rejected (on the phantoms'
  aligned pairs sub-voxel shifts blur the interpolated image and gain up to 0.025 in MI; a
  real 1 mm in-plane shift costs ~0.1);
* the metric must not end worse than at the initial transform (``metric_initial``);
* local check: the Pearson correlation of the edges (:func:`edges`) of pre and registered
  post T2W in a box around the tumour (bounding box grown by ``reg_local_margin_mm``, else
  the ROI box): it catches a result that fits the body outline but not the rectum, and
  ignores the intensity changes of treatment (``local_ncc_before/after``,
  ``qc_min_local_ncc``; ``local_coverage_after``: the share of the box inside the post
  exam). On the phantoms: correct results 0.92-1.0, another patient's post exam 0.17-0.79,
  a 15 mm error at most 0.62;
* body-mask Dice only where both fields of view overlap (fewer post slices do not count);
* ``translation_mm`` (total) and ``translation_from_init_mm`` (beyond the initial centring,
  which absorbs table offsets): ``qc_max_translation_mm`` applies to the smaller; rotation.

A flagged result is retried once with :data:`FALLBACK_REGISTRATION`; then mode
``"strict"`` raises, ``"flag"`` records the flags and continues (``params.registration``;
``"identity"`` skips the optimisation and records the QC of the identity transform).
The QC measures and flags are :mod:`utils.preprocessing.registration_qc`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from utils.cohort.imageerrors import itk_words
from utils.errors import RegistrationError
from utils.preprocessing import registration_qc
from utils.preprocessing.registration_qc import (
    edges,
    fov_overlap,
    transform_measures,
    transform_summary,
)

if TYPE_CHECKING:
    from utils.preprocessing.params import PreprocessParams

MODES = ("strict", "flag", "identity")
MIN_LEVEL_VOXELS = 4  # every pyramid level keeps at least this many voxels per axis
FALLBACK_REGISTRATION = {"reg_scales": "physical", "reg_shrink": (2, 1),
                         "reg_sigmas_vox": (1.0, 0.0), "reg_sampling": (0.25, 0.05)}
Level = tuple[int, float, float]  # shrink factor, smoothing sigma (voxels), sampling fraction
Evaluator = Callable[[sitk.Transform], float]


@dataclasses.dataclass(frozen=True)
class Names:
    """Who is registered, for error messages: the patient and the two images (or files)."""

    patient_id: str = "new"
    fixed: str = "pre T2W"
    moving: str = "post T2W"

    @classmethod
    def of(cls, patient_id: str, sequence: str = "T2W",
           files: Mapping[str, Any] | None = None) -> Names:
        """Labels ``"pre T2W (file)"`` from ``input_files``-style keys (``pre_T2W``)."""
        paths = {timepoint: (files or {}).get(f"{timepoint}_{sequence}")
                 for timepoint in ("pre", "post")}
        return cls(patient_id, *(f"{timepoint} {sequence}" + (f" ({path})" if path else "")
                                 for timepoint, path in paths.items()))

    def error(self, message: str, detail: str = "") -> RegistrationError:
        itk = f" (ITK: {detail})" if detail else ""
        return RegistrationError(self.patient_id,
                                 f"{message} [{self.fixed} vs {self.moving}]{itk}")


# --------------------------------------------------------------------------- set-up
def pyramid(params: PreprocessParams, *images: sitk.Image) -> list[Level]:
    """Levels of ``params``, shrink factors capped so that each level keeps
    :data:`MIN_LEVEL_VOXELS` along every axis of every image (fixed and moving: thin slabs);
    of levels left with equal factors only the last (finest smoothing) is kept. Unchanged
    on ordinary grids (at least 16 voxels along every axis)."""
    smallest = min(min(image.GetSize()) for image in images)
    cap = max(1, smallest // MIN_LEVEL_VOXELS)
    levels = [(min(int(f), cap), float(s), float(p)) for f, s, p in zip(
        params.reg_shrink, params.reg_sigmas_vox, params.reg_sampling, strict=True)]
    return [lv for lv, nxt in zip(levels, [*levels[1:], None], strict=True)
            if nxt is None or nxt[0] != lv[0]]


def _registration_method(params: PreprocessParams, fixed_mask: sitk.Image | None,
                         threads: int, levels: Sequence[Level] | None = None
                         ) -> sitk.ImageRegistrationMethod:
    """Mattes MI, seeded random sampling, regular-step gradient descent, pyramid ``levels``.

    ``levels=None`` gives the single-level, all-voxel set-up of the QC metric values.
    """
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params.reg_bins)
    if levels is None:
        reg.SetMetricSamplingStrategy(reg.NONE)
        levels = [(1, 0.0, 1.0)]
    else:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentagePerLevel([lv[2] for lv in levels], params.reg_seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=params.reg_learning_rate, minStep=params.reg_min_step,
        numberOfIterations=params.reg_iterations, relaxationFactor=params.reg_relaxation,
        gradientMagnitudeTolerance=1e-8)
    if params.reg_scales == "index":  # z (coarse slices, weak gradient) gets larger steps
        reg.SetOptimizerScalesFromIndexShift()
    else:
        reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([lv[0] for lv in levels])
    reg.SetSmoothingSigmasPerLevel([lv[1] for lv in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetNumberOfThreads(threads)
    return reg


def _run_itk(call: Callable[[], Any], names: Names) -> Any:
    """``call()``, its ITK ``RuntimeError`` re-raised as a plain RegistrationError."""
    try:
        return call()
    except RuntimeError as exc:
        raise names.error(*itk_words(exc, "registration failed")) from exc


# --------------------------------------------------------------------------- transforms
def _identity_about(center: Sequence[float]) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in center])
    return tx


def _candidate_transform(fixed: sitk.Image, moving: sitk.Image, kind: str
                         ) -> sitk.Euler3DTransform:
    if kind == "identity":  # about the centre of the fixed image
        centre = (np.array(fixed.GetSize()) - 1) / 2
        return _identity_about(fixed.TransformContinuousIndexToPhysicalPoint(centre.tolist()))
    mode = {"geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY,
            "moments": sitk.CenteredTransformInitializerFilter.MOMENTS}[kind]
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode)
    return sitk.Euler3DTransform(init)


def _metric_evaluator(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams,
                      fixed_mask: sitk.Image | None, threads: int) -> Evaluator:
    """``transform -> Mattes MI`` on copies shrunk to ~2 voxels (all voxels, no sampling);
    ``inf`` where the images do not overlap. ``MetricEvaluate`` prepares the whole image on
    every call, hence half resolution (4x cheaper) rather than the registration grid."""
    sizes = np.minimum(fixed.GetSize(), moving.GetSize())
    factors = np.round(2 * min(fixed.GetSpacing()) / np.array(fixed.GetSpacing())).astype(int)
    factors = [int(max(1, min(f, s // 4 or 1))) for f, s in zip(factors, sizes, strict=True)]
    fixed_s, moving_s = sitk.Shrink(fixed, factors), sitk.Shrink(moving, factors)
    mask_s = None if fixed_mask is None else sitk.Shrink(fixed_mask, factors)
    method = _registration_method(params, mask_s, threads)

    def evaluate(tx: sitk.Transform) -> float:
        method.SetInitialTransform(tx, inPlace=False)
        try:
            return float(method.MetricEvaluate(fixed_s, moving_s))
        except RuntimeError:  # no overlap at this transform
            return math.inf

    return evaluate


def _initial_transform(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams,
                       evaluate: Evaluator) -> tuple[sitk.Euler3DTransform, str]:
    """Starting pose: identity (both exams in scanner coordinates), the GEOMETRY or MOMENTS
    centring of ``sitk.CenteredTransformInitializer``, or for ``"best"`` whichever of the
    three has the lowest metric. Mode ``"identity"`` always starts (and stays) at identity."""
    if params.registration == "identity":
        return _candidate_transform(fixed, moving, "identity"), "identity"
    if params.reg_init != "best":
        return _candidate_transform(fixed, moving, params.reg_init), params.reg_init
    scores = {}
    for kind in ("identity", "geometry", "moments"):
        tx = _candidate_transform(fixed, moving, kind)
        scores[kind] = (evaluate(tx), tx)
    kind = min(scores, key=lambda k: scores[k][0])
    return scores[kind][1], kind


def _as_euler(tx: sitk.Transform) -> sitk.Euler3DTransform:
    """The Euler3D transform inside a registration result (possibly a 1-element composite)."""
    tx = tx.Downcast()
    if isinstance(tx, sitk.CompositeTransform):
        if tx.GetNumberOfTransforms() != 1:
            raise ValueError(f"expected one transform, got {tx.GetNumberOfTransforms()}")
        tx = tx.GetNthTransform(0).Downcast()
    return sitk.Euler3DTransform(tx)


def transform_to_meta(tx: sitk.Euler3DTransform) -> dict[str, Any]:
    return {"type": "Euler3DTransform", "parameters": list(tx.GetParameters()),
            "fixed_parameters": list(tx.GetFixedParameters()),
            "maps": "pre (fixed) physical point -> post (moving) physical point"}


def transform_from_meta(meta: Mapping[str, Any]) -> sitk.Euler3DTransform:
    """The registration transform stored in a pair's ``meta`` (or its ``transform`` entry)."""
    entry = meta.get("transform", meta)
    tx = sitk.Euler3DTransform()
    tx.SetFixedParameters([float(v) for v in entry["fixed_parameters"]])
    tx.SetParameters([float(v) for v in entry["parameters"]])
    return tx


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- registration
def _check_overlap(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
                   kind: str, params: PreprocessParams, names: Names) -> float:
    """The fields of view's overlap after the initial transform; an error below the limit."""
    overlap = fov_overlap(fixed, moving, initial)
    if overlap < params.qc_min_overlap:
        raise names.error(f"the two exams do not overlap in physical space after the initial "
                          f"{kind} alignment ({overlap:.0%} of the smaller field of view, at "
                          f"least {params.qc_min_overlap:.0%} needed): check the image "
                          "headers (origin, orientation) or the reg_init setting")
    return overlap


def _optimise(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams,
              initial: sitk.Euler3DTransform, fixed_mask: sitk.Image | None, threads: int,
              names: Names) -> tuple[sitk.Euler3DTransform, dict[str, Any]]:
    """The ITK optimisation from ``initial``; also iterations, stop condition and levels."""
    levels = pyramid(params, fixed, moving)
    reg = _registration_method(params, fixed_mask, threads, levels)
    reg.SetInitialTransform(initial, inPlace=False)
    result = _as_euler(_run_itk(lambda: reg.Execute(fixed, moving), names))
    return result, {"iterations": int(reg.GetOptimizerIteration()),
                    "stop_condition": reg.GetOptimizerStopConditionDescription(),
                    "shrink_factors": [lv[0] for lv in levels]}


def register_rigid(fixed: sitk.Image, moving: sitk.Image, params: PreprocessParams,
                   fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                   threads: int = 1, local_mask: sitk.Image | None = None,
                   names: Names | None = None) -> tuple[sitk.Euler3DTransform, dict[str, Any]]:
    """Rigid Mattes-MI registration; returns the transform (fixed -> moving points) and QC.

    ``fixed_mask`` / ``moving_mask``: body masks (metric mask and Dice); ``local_mask``: the
    local QC box on the fixed grid (:func:`local_region`). In mode ``"identity"`` the
    optimisation is skipped. QC: see :func:`_quality`, plus the initialisation, field-of-view
    overlap, iterations, stop condition and pyramid.
    """
    names = names or Names()
    fixed, moving = (sitk.Cast(im, sitk.sitkFloat32) for im in (fixed, moving))
    evaluate = _metric_evaluator(fixed, moving, params, fixed_mask, threads)
    initial, init_kind = _initial_transform(fixed, moving, params, evaluate)
    qc = {"init": init_kind,
          "overlap": _check_overlap(fixed, moving, initial, init_kind, params, names)}
    if params.registration == "identity":
        result, run = initial, {"iterations": 0, "stop_condition": "not registered (identity)"}
    else:
        result, run = _optimise(fixed, moving, params, initial, fixed_mask, threads, names)
    local = None if local_mask is None else (edges(fixed), edges(moving), local_mask)
    chosen, quality = _quality(evaluate, initial, result, params.qc_metric_tolerance,
                               (fixed_mask, moving_mask), local)
    return chosen, {**qc, **run, **quality}


def _quality(evaluate: Evaluator, initial: sitk.Euler3DTransform,
             result: sitk.Euler3DTransform, tolerance: float,
             masks: tuple[sitk.Image | None, sitk.Image | None],
             local: tuple[sitk.Image, sitk.Image, sitk.Image] | None
             ) -> tuple[sitk.Euler3DTransform, dict[str, Any]]:
    """Identity or the result, whichever is kept, and the QC values: metric at identity
    (``before``), the initial transform, the optimised result and the one kept (``after``);
    Dice and local correlation before and after; ``kept_identity``; motion size."""
    identity = _identity_about(result.GetCenter())
    metric = {"before": evaluate(identity), "initial": evaluate(initial),
              "optimised": evaluate(result)}
    kept = metric["before"] <= metric["optimised"] + tolerance
    chosen = identity if kept else result
    before = transform_measures(identity, masks, local)
    after = before if kept else transform_measures(chosen, masks, local)
    return chosen, {**{f"metric_{k}": _finite(v) for k, v in metric.items()},
                    "metric_after": _finite(metric["before" if kept else "optimised"]),
                    "kept_identity": kept, **{f"{k}_before": v for k, v in before.items()},
                    **{f"{k}_after": v for k, v in after.items()},
                    **transform_summary(chosen, initial)}


# what a failed registration QC most often means, said with its error
LIKELY_CAUSES = ("likely causes: the post exam belongs to another patient (swapped file?), "
                 "an intensity-inverted or saturated image, or a very different field of view")


def register_exams(patient_id: str, pre: Mapping[str, Any], post: Mapping[str, Any],
                   params: PreprocessParams, threads: int = 1, check: bool = True,
                   local: sitk.Image | None = None, files: Mapping[str, Any] | None = None
                   ) -> tuple[sitk.Euler3DTransform, dict[str, Any]]:
    """Post-to-pre rigid registration of the resampled reference sequence, with QC flags.

    ``pre`` / ``post``: prepared exams (``reference_image`` and ``body`` mask on each exam's
    reference grid); ``local``: the local QC box; ``files``: ``input_files`` of the patient
    (named in errors). A flagged result is retried once with :data:`FALLBACK_REGISTRATION`
    if ``params.reg_fallback`` (physical-shift scales, no 4x level: slower in z but it cannot
    run away along a thin slab); ``qc["attempt"]`` says which one was used. Mode
    ``"strict"`` (``check=False`` makes it ``"flag"``) then raises RegistrationError.
    """
    if params.registration not in MODES:
        raise ValueError(f"registration mode must be one of {MODES}, not "
                         f"{params.registration!r}")
    mode = "flag" if params.registration == "strict" and not check else params.registration
    names = Names.of(patient_id, params.reference_sequence, files)
    attempts = [params]
    if params.reg_fallback and mode != "identity":
        attempts.append(dataclasses.replace(params, **FALLBACK_REGISTRATION))
    failed: list[list[str]] = []
    for number, setting in enumerate(attempts, start=1):
        tx, qc = register_rigid(pre["reference_image"], post["reference_image"], setting,
                                pre["body"], post["body"], threads, local, names)
        qc.update(flags=registration_qc.registration_flags(qc, params), attempt=number,
                  earlier_flags=[f for f_list in failed for f in f_list])
        if not qc["flags"]:
            break
        failed.append(qc["flags"])
    qc.update(mode=mode, status="failed" if qc["flags"] else "ok")
    if qc["flags"] and mode == "strict":
        raise names.error("registration QC failed: " + "; ".join(qc["flags"]) + "; "
                          + LIKELY_CAUSES)
    return tx, qc
