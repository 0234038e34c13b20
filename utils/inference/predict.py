"""Predict one new patient: pCR probability and both tumour masks in each exam's original space.

:func:`predict_patient` reads both exams' images (the sequences the model was trained on, as
recorded in its card) in any geometry (NIfTI, NRRD/MHA, DICOM folder), each after manifest
validation's checks of a file (:func:`utils.cohort.filecheck.read_checked`), runs the training
preprocessing (:func:`utils.preprocessing.pipeline.preprocess_pair`: N4, resampling,
post-to-pre registration, normalisation, ROI crop), the model, and maps each predicted ROI mask
back onto the ORIGINAL reference-sequence (T2W) grid of its exam
(:func:`utils.preprocessing.pipeline.roi_to_original`).

Where the ROI goes: on ``roi_center_mm`` if given (a physical x, y, z point in the pre exam,
e.g. clicked in a viewer), else on the tumour mask if one is given (as in training), else on
the trained localiser's prediction (:mod:`utils.localisation`, ``runs/<profile>/localiser/``
beside the model's folder, or ``--localiser``; ``localiser_found`` says whether it found a
component), else, without a localiser, a coarse pass: the whole pre-exam field of view is
preprocessed once, the model's segmentation head slides over it (half-overlapping windows of
the ROI size, probabilities averaged), and the ROI is centred on the most probable predicted
component; the pair is then preprocessed again around that centre. Variants without a
segmentation head fall back to the field-of-view centre. The coarse pass sees whole pelves
although the model was trained on tumour-centred crops, so it can lock onto a wrong structure:
check the returned masks, or give a centre.

The pCR probability is the model output corrected for the balanced sampling of training
(:func:`utils.training.modelcard.correct_prior`, from the ``<model>.json`` card written beside
the model).

CLI::

    python -m utils.predict --pre T2W=A --pre DWI=B --post T2W=C --post DWI=D \\
        --model runs/demo/models/full.keras --out DIR [--center x,y,z] [--pre-mask M]

One ``--pre``/``--post`` per sequence, named as in the training manifest; a set that differs
from the model's is refused with both lists.

writes ``DIR/mask_pre.nii.gz``, ``DIR/mask_post.nii.gz`` and ``DIR/prediction.json``; when
an exam's reference sequence was given as a DICOM series folder, also ``DIR/mask_<tp>.dcm``, a
DICOM Segmentation object referencing that series (:mod:`utils.inference.dicomseg`). Every
output is built before the first is written, so a failure leaves the folder as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from utils.cohort.filecheck import read_checked
from utils.cohort.imageerrors import ImageFileError
from utils.config import SEQUENCE_NAME, SEQUENCES, Profile, get_profile, localiser_model
from utils.errors import PreprocessError
from utils.geometry import reference_grid
from utils.io import atomic_path, write_json_atomic
from utils.localisation.locate import component_centre
from utils.preprocessing.cli import add_params_arguments, params_from_arguments
from utils.preprocessing.params import PreprocessParams
from utils.preprocessing.pipeline import preprocess_pair, roi_to_original
from utils.preprocessing.registration import MODES as REGISTRATION_MODES

PathLike = str | os.PathLike
_MODELS: dict[tuple[str, float], Any] = {}


def load_model(model_path: PathLike) -> Any:
    """Load a saved RP-Net once per process (keyed by path and modification time)."""
    import keras

    path = Path(model_path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist (train it in notebook 03)")
    key = (str(path), path.stat().st_mtime)
    if key not in _MODELS:
        _MODELS[key] = keras.saving.load_model(path, compile=False, safe_mode=True)
    return _MODELS[key]


def _read_exam(files: Mapping[str, PathLike], label: str, sequences: Sequence[str]
               ) -> dict[str, sitk.Image]:
    """The exam's images, exactly the model's sequences; errors name the file."""
    if set(files) != set(sequences):
        raise ValueError(f"{label} exam: given sequences {sorted(files)}, but the model was "
                         f"trained on {list(sequences)}")
    return {seq: _read_checked(files[seq], f"{label} {seq}") for seq in sequences}


def _read_checked(file: PathLike, label: str, mask: bool = False) -> sitk.Image:
    """Read one input after manifest validation's own checks of a file
    (:func:`utils.cohort.filecheck.read_checked`: header size, data length, DICOM slice
    spacing, NaN/inf voxels (also those ITK zero-fills in NIfTI), blank or constant images,
    mask labels); errors (``ImageFileError``, a ``ValueError``) name the input and the file."""
    try:
        return read_checked(file, mask=mask)
    except ImageFileError as error:
        raise ImageFileError(f"{label}: {error}") from error


def _as_mask(mask: PathLike | sitk.Image | None, label: str) -> sitk.Image | None:
    if mask is None or isinstance(mask, sitk.Image):
        return mask
    return _read_checked(mask, label, mask=True)


def _params(profile: Profile | str | None, card: Mapping[str, Any] | None) -> PreprocessParams:
    """Preprocessing parameters: the model card's (those of its training cache), or the
    profile's grid and ROI if a profile is given; the sequences are always the model's."""
    card = card or {}
    sequences = tuple(card.get("sequences", SEQUENCES))
    stored = card.get("preprocessing") or {}
    if profile is None and stored:
        known = {f.name for f in dataclasses.fields(PreprocessParams)}
        return PreprocessParams(**{k: v for k, v in stored.items() if k in known})
    if profile is None and card:
        return PreprocessParams(spacing_zyx=card["spacing_zyx"], roi_zyx=card["roi_zyx"],
                                sequences=sequences)
    base = PreprocessParams.from_profile(profile if profile is not None else get_profile())
    return dataclasses.replace(base, sequences=sequences, reference_sequence=stored.get(
        "reference_sequence", base.reference_sequence))


def _model_inputs(model: Any) -> list[str]:
    return [t.name.split(":")[0] for t in model.inputs]


def _predict(model: Any, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = model.predict({k: x[k] for k in _model_inputs(model)}, verbose=0, batch_size=1)
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------- coarse pass
def window_starts(length: int, window: int) -> list[int]:
    """Start indices of half-overlapping windows covering ``length`` (length >= window)."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / (window / 2)) + 1
    return sorted({round(float(v)) for v in np.linspace(0, length - window, n)})


def sliding_window_mask(model: Any, image_pre: np.ndarray, image_post: np.ndarray,
                        roi_zyx: Sequence[int]) -> np.ndarray | None:
    """Average tumour probability over half-overlapping windows (pre head, else post head)."""
    names = [n for n in ("mask_pre", "mask_post") if n in model.output_names]
    if not names:
        return None
    starts = [window_starts(n, w) for n, w in zip(image_pre.shape[:3], roi_zyx, strict=True)]
    boxes = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    crop = [lambda v, b=b: v[tuple(slice(s, s + w) for s, w in zip(b, roi_zyx, strict=True))]
            for b in boxes]
    x = {"pre": np.stack([c(image_pre) for c in crop]),
         "post": np.stack([c(image_post) for c in crop])}
    pred = _predict(model, x)[names[0]][..., 0]
    total = np.zeros(image_pre.shape[:3], np.float32)
    count = np.zeros_like(total)
    for box, prob in zip(boxes, pred, strict=True):
        region = tuple(slice(s, s + w) for s, w in zip(box, roi_zyx, strict=True))
        total[region] += prob
        count[region] += 1
    return total / np.maximum(count, 1)


def locate_tumour(pre: Mapping[str, sitk.Image], post: Mapping[str, sitk.Image], model: Any,
                  params: PreprocessParams, check_registration: bool = True
                  ) -> tuple[list[float], str]:
    """ROI centre (physical mm) from a sliding-window pass over the whole pre field of view."""
    ref = reference_grid(pre[params.reference_sequence], params.spacing_zyx)
    size_zyx = np.asarray(ref.GetSize()[::-1])
    centre_index = (size_zyx - 1) / 2.0
    fov_centre = list(ref.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in centre_index[::-1]]))
    big_roi = tuple(int(max(s, r)) for s, r in zip(size_zyx, params.roi_zyx, strict=True))
    big = preprocess_pair(pre, post, None, None, _replace_roi(params, big_roi),
                          roi_center_mm=fov_centre, patient_id="coarse",
                          check_registration=check_registration)
    prob = sliding_window_mask(model, big.image_pre, big.image_post, params.roi_zyx)
    if prob is None:
        return fov_centre, "field-of-view centre (variant has no segmentation head)"
    index = np.asarray(big.meta["roi"]["start_zyx"], float) + component_centre(prob)[0]
    point = ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in index[::-1]])
    return list(point), "coarse sliding-window pass"


def _replace_roi(params: PreprocessParams, roi_zyx: tuple[int, ...]) -> PreprocessParams:
    return dataclasses.replace(params, roi_zyx=roi_zyx)


def default_localiser(model_path: PathLike) -> Path:
    """Where training put the localiser of a model: ``runs/<profile>/localiser/``
    beside ``runs/<profile>/models/`` (:attr:`utils.config.Paths.localiser_model`)."""
    return localiser_model(Path(model_path).resolve().parent.parent)


def localise(pre: Mapping[str, sitk.Image], localiser_path: PathLike,
             params: PreprocessParams) -> dict[str, Any]:
    """The trained localiser on the pre exam: ``locate``'s row (centre, found, extent)."""
    from utils.localisation.coarse import coarse_exam
    from utils.localisation.locate import locate
    from utils.localisation.model import config_from_card, load_localiser, predict_maps

    model, card = load_localiser(localiser_path)
    cfg = config_from_card(card)
    x, _, grid = coarse_exam(pre, params.sequences, cfg, params)
    return locate(predict_maps(model, x[None])[0], grid, cfg.threshold)


# --------------------------------------------------------------------------- prediction
def predict_patient(pre_files: Mapping[str, PathLike], post_files: Mapping[str, PathLike],
                    model_path: PathLike, profile: Profile | str | None = None,
                    roi_center_mm: Sequence[float] | None = None,
                    pre_mask: PathLike | sitk.Image | None = None,
                    post_mask: PathLike | sitk.Image | None = None,
                    check_registration: bool = True,
                    params: PreprocessParams | None = None,
                    registration: str | None = None,
                    localiser: PathLike | None = None) -> dict[str, Any]:
    """pCR probability and tumour masks (uint8 ``sitk.Image`` on each exam's original
    reference-sequence grid).

    ``pre_files`` / ``post_files`` map each of the model's sequences (its card's
    ``sequences``, e.g. ``T2W``, ``DWI``) to a file or DICOM folder. ``profile`` sets the
    preprocessing grid and ROI (default: the model card's); ``params`` overrides both.
    ``registration`` (``"strict"``, ``"flag"`` or ``"identity"``) overrides the parameters'
    registration mode (:mod:`utils.preprocessing.registration`). Without a mask or centre the
    ROI comes from ``localiser`` (default :func:`default_localiser`) if it exists, else from
    the coarse sliding-window pass. Returns ``pcr_probability``,
    ``mask_pre``, ``mask_post`` (None for a variant without that head), ``pcr_raw`` (model
    output before the prior correction), ``roi_center_mm`` and ``roi_source``.
    """
    from utils.training.modelcard import read_model_card, score_from_card

    model, card = load_model(model_path), read_model_card(model_path)
    params = params or _params(profile, card)
    if registration is not None:  # "strict" | "flag" | "identity" (preprocessing.registration)
        params = dataclasses.replace(params, registration=registration)
    pre = _read_exam(pre_files, "pre", params.sequences)
    post = _read_exam(post_files, "post", params.sequences)
    pre_mask, post_mask = _as_mask(pre_mask, "pre mask"), _as_mask(post_mask, "post mask")
    source = "given centre" if roi_center_mm is not None else "tumour mask"
    extent, found = None, None
    localiser = Path(localiser) if localiser is not None else default_localiser(model_path)
    if pre_mask is None and roi_center_mm is None and localiser.exists():
        row = localise(pre, localiser, params)
        roi_center_mm = [row[c] for c in ("centre_x_mm", "centre_y_mm", "centre_z_mm")]
        extent = [row[c] for c in ("extent_x_mm", "extent_y_mm", "extent_z_mm")]
        source, found = "localiser", bool(row["found"])
        extent = extent if found else None
    elif pre_mask is None and roi_center_mm is None:
        roi_center_mm, source = locate_tumour(pre, post, model, params, check_registration)
    pair = preprocess_pair(pre, post, pre_mask, post_mask, params, roi_center_mm=roi_center_mm,
                           patient_id="new", check_registration=check_registration,
                           roi_extent_mm=extent)
    pred = _predict(model, {"pre": pair.image_pre[None], "post": pair.image_post[None]})
    raw = float(pred["pcr"][0, 0])
    masks = {f"mask_{tp}": roi_to_original(pred[f"mask_{tp}"][0, ..., 0], pair, tp)
             if f"mask_{tp}" in pred else None for tp in ("pre", "post")}
    return {"pcr_probability": float(score_from_card(np.array([raw]), card)[0]),
            "pcr_raw": raw, **masks,
            "roi_center_mm": None if roi_center_mm is None else [float(v) for v in roi_center_mm],
            "roi_source": source, "localiser_found": found,
            "reference_sequence": params.reference_sequence}


def write_outputs(result: Mapping[str, Any], out_dir: PathLike, extra: Mapping[str, Any],
                  sources: Mapping[str, PathLike] | None = None) -> list[Path]:
    """NIfTI masks, DICOM-SEG masks for exams whose reference sequence in ``sources``
    (``{"pre": path, "post": path}``) is a DICOM folder, and ``prediction.json`` into
    ``out_dir``, each written atomically, after all of them were built."""
    from utils.inference import dicomseg

    out = Path(out_dir)
    masks = {key: result[key] for key in ("mask_pre", "mask_post") if result.get(key) is not None}
    segs = {key: dicomseg.segmentation(mask, sources[key[5:]]) for key, mask in masks.items()
            if sources and Path(sources[key[5:]]).is_dir()}
    written = []
    for key, mask in masks.items():
        target = out / f"{key}.nii.gz"
        with atomic_path(target) as tmp:
            sitk.WriteImage(mask, str(tmp), useCompression=True)
        written.append(target)
    for key, seg in segs.items():
        target = out / f"{key}.dcm"
        with atomic_path(target) as tmp:
            seg.save_as(tmp)
        written.append(target)
    summary = {k: v for k, v in result.items() if not isinstance(v, sitk.Image)}
    written.append(write_json_atomic(out / "prediction.json", {**summary, **extra}))
    return written


def _centre(text: str | None) -> list[float] | None:
    if text is None:
        return None
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--center needs x,y,z in mm, got {text!r}")
    return values


def _named_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not SEQUENCE_NAME.fullmatch(name) or not path:
        raise argparse.ArgumentTypeError(f"expected SEQUENCE=PATH (e.g. T2W=pre_t2w.nii.gz), "
                                          f"not {text!r}")
    return name, path


def _exam_files(pairs: Sequence[tuple[str, str]], label: str) -> dict[str, str]:
    names = [name for name, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--{label} names {repeated} more than once")
    return dict(pairs)


def _cli_params(args: argparse.Namespace) -> PreprocessParams | None:
    """The card's (or profile's) parameters with the CLI's geometry options, if any."""
    if args.spacing is None and args.roi is None and not args.reference_sequence:
        return None
    from utils.training.modelcard import read_model_card

    return params_from_arguments(args, _params(args.profile, read_model_card(args.model)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Predict pCR and tumour masks for one patient.")
    for tp in ("pre", "post"):
        parser.add_argument(f"--{tp}", type=_named_file, action="append", required=True,
                            metavar="SEQUENCE=PATH",
                            help=f"a {tp}-treatment image (once per sequence of the model)")
        parser.add_argument(f"--{tp}-mask", default=None, help=f"optional {tp} tumour mask")
    parser.add_argument("--model", required=True, help="trained .keras model")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--center", default=None, help="ROI centre x,y,z (mm, pre exam)")
    parser.add_argument("--localiser", default=None, help="trained localiser .keras (default: "
                        "runs/<profile>/localiser/localiser.keras beside the model's folder)")
    parser.add_argument("--profile", default=None, help="preprocessing profile (default: model's)")
    parser.add_argument("--registration", choices=REGISTRATION_MODES, default=None,
                        help="strict: stop if the registration fails QC; flag: record the "
                        "QC flags and continue; identity: do not register (default: model's)")
    add_params_arguments(parser)
    args = parser.parse_args(argv)
    try:
        files = {tp: _exam_files(getattr(args, tp), tp) for tp in ("pre", "post")}
        result = predict_patient(files["pre"], files["post"], args.model, args.profile,
                                 _centre(args.center), args.pre_mask, args.post_mask,
                                 params=_cli_params(args), registration=args.registration,
                                 localiser=args.localiser)
    except (ValueError, OSError, PreprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    extra = {"model": Path(args.model).name,  # file names only: no machine paths in outputs
             "inputs": {tp: {seq: Path(f).name for seq, f in exam.items()}
                        for tp, exam in files.items()}}
    sources = {tp: exam[result["reference_sequence"]] for tp, exam in files.items()}
    try:
        written = write_outputs(result, args.out, extra, sources)
    except ValueError as exc:  # a DICOM series the mask cannot reference
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"pCR probability {result['pcr_probability']:.3f} (ROI: {result['roi_source']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
