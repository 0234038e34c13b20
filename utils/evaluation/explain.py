"""Which voxels drive a prediction (notebook 04): 3D Grad-CAM of a backbone feature map,
input x gradient attribution, the patients shown, their cached network inputs and the
overlay figure. TensorFlow backend only (``tf.GradientTape``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage

from utils.config import SEQUENCES, TIMEPOINTS, processed_csv
from utils.evaluation.labels import MAIN_MODEL, VALIDATION_COHORTS
from utils.evaluation.plots import empty_panel, tumour_slice_panel
from utils.preprocessing.cache import load_cached


# ----------------------------------------------------------------------------- Grad-CAM
def branch_feature_tensors(model, key: str = "encoder") -> dict[str, object]:
    """Symbolic ``key`` feature map ("encoder", "bottleneck" or "deep_supervision") of each
    branch of an RP-Net, keyed by input name ("pre", "post"), found from the backbone
    calls (one shared backbone called twice, or one backbone per branch). A model whose pCR
    head is detached from the backbone (the default tumour head) has no such gradient path:
    use :func:`input_attribution` for it."""
    import keras

    if any(layer.name.endswith("_detached") for layer in model.layers):
        raise ValueError(f"model {model.name}: the pCR head is detached from the backbone "
                         "(no gradient reaches its features); use input_attribution")
    found = {}
    for layer in model.layers:
        if not isinstance(layer, keras.Model):
            continue
        for node in layer._inbound_nodes:  # Keras 3 internals: one node per call
            outputs = keras.tree.pack_sequence_as(layer.output, node.output_tensors)
            if isinstance(outputs, dict) and key in outputs:
                found[node.input_tensors[0].name] = outputs[key]
    if not found:
        raise ValueError(f"no backbone with a {key!r} output found in model {model.name}")
    return found


def _require_tensorflow(what: str) -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(f"{what} here needs the TensorFlow backend; Keras is "
                                  f"using {keras.backend.backend()!r}")


def _signed_logit(probability, target_class: int):
    """The logit of a probability tensor, negated for ``target_class=0``."""
    import tensorflow as tf

    p = tf.clip_by_value(tf.reshape(probability, [-1])[0], 1e-7, 1 - 1e-7)
    score = tf.math.log(p) - tf.math.log(1 - p)
    return score if target_class == 1 else -score


def grad_cam_3d(model, inputs: Mapping[str, np.ndarray],
                features: Mapping[str, object] | None = None, key: str = "encoder",
                output: str = "pcr", target_class: int = 1) -> dict[str, np.ndarray]:
    """3D Grad-CAM (Selvaraju et al. 2017) of a sigmoid output for one patient.

    For each branch's feature map A (z, y, x, k): weights w_k = mean over voxels of
    d logit / d A_k (the logit of ``output``; negated for ``target_class=0``, i.e. evidence
    for non-pCR), map = ReLU(sum_k w_k A_k), trilinearly resized to the input's (z, y, x)
    and divided by the maximum over all branches (so branches are comparable; all-zero maps
    stay zero). ``inputs`` maps input names to (z, y, x, C) arrays; ``features`` maps them to
    symbolic feature tensors (default :func:`branch_feature_tensors` with ``key``).
    TensorFlow backend only (``tf.GradientTape``); other backends raise NotImplementedError.
    """
    _require_tensorflow("Grad-CAM")
    import keras
    import tensorflow as tf

    features = dict(features or branch_feature_tensors(model, key))
    probe = keras.Model(model.input, {"features": features, "out": model.output[output]})
    batch = {name: tf.constant(np.asarray(x, np.float32)[None]) for name, x in inputs.items()}
    if not isinstance(model.input, dict):  # a single-input model takes a bare tensor
        batch = batch[model.input.name] if hasattr(model.input, "name") else list(
            batch.values())
    with tf.GradientTape() as tape:
        result = probe(batch, training=False)
        score = _signed_logit(result["out"], target_class)
    grads = tape.gradient(score, result["features"])
    maps = {}
    for name, fmap in result["features"].items():
        fmap, grad = fmap.numpy()[0], grads[name].numpy()[0]
        cam = np.maximum(np.tensordot(fmap, grad.mean(axis=(0, 1, 2)), axes=([3], [0])), 0)
        maps[name] = _resize(cam, np.asarray(inputs[name]).shape[:3])
    return _scaled(maps)


def input_attribution(model, inputs: Mapping[str, np.ndarray], output: str = "pcr",
                      target_class: int = 1) -> dict[str, np.ndarray]:
    """Input x gradient of the pCR logit, summed over channels and rectified, per exam:
    which voxels push the score towards ``target_class``. For the tumour-guided readout the
    masked-mean terms make this exact: a voxel's share of a masked mean times the readout's
    coefficient. Scaled by the maximum over both exams. TensorFlow backend only."""
    _require_tensorflow("input attribution")
    import tensorflow as tf

    batch = {name: tf.constant(np.asarray(x, np.float32)[None]) for name, x in inputs.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(batch.values()))
        score = _signed_logit(model(batch, training=False)[output], target_class)
    grads = tape.gradient(score, batch, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    maps = {name: np.maximum((batch[name].numpy()[0] * grads[name].numpy()[0]).sum(-1), 0)
            for name in batch}
    return _scaled(maps)


def _scaled(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps divided by their common maximum (all-zero maps stay zero)."""
    top = max(float(m.max()) for m in maps.values())
    return {name: m / top if top > 0 else m for name, m in maps.items()}


def _resize(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resize (scipy ``zoom``, grid_mode so voxel areas align) to exactly
    ``shape``; non-negative input stays non-negative."""
    factors = [t / s for t, s in zip(shape, volume.shape, strict=True)]
    out = ndimage.zoom(volume.astype(float), factors, order=1, mode="nearest", grid_mode=True)
    pad = [(0, max(0, t - s)) for t, s in zip(shape, out.shape, strict=True)]
    out = np.pad(out, pad, mode="edge")[tuple(slice(0, t) for t in shape)]
    return np.maximum(out, 0.0)


# ----------------------------------------------------------------------------- inputs
def pick_gradcam_patients(scores: pd.DataFrame, model: str = MAIN_MODEL,
                          cohorts: Sequence[str] = VALIDATION_COHORTS) -> pd.DataFrame:
    """The pCR patient with the highest and the non-pCR patient with the lowest ``model``
    score in ``cohorts`` (the most confident correct calls); fewer if a class is absent."""
    rows = scores[(scores["model"] == model) & scores["cohort"].isin(cohorts)].dropna(
        subset=["score"])
    picks = []
    for label, ascending in ((1, False), (0, True)):
        group = rows[rows["pcr"] == label].sort_values(["score", "patient_id"],
                                                        ascending=[ascending, True])
        picks.append(group.head(1))
    return pd.concat(picks, ignore_index=True)


def attribution_panels(network: Any, patients: pd.DataFrame, cache_files: Mapping[str, Path],
                       channel: int) -> tuple[list[dict], pd.DataFrame]:
    """Attribution maps of ``patients`` (rows of ``patient_id, pcr, score``) for
    :func:`plot_grad_cam`, showing input ``channel``, and each map's share inside the
    pre-treatment tumour."""
    panels, shares = [], []
    for _, patient in patients.iterrows():
        cached = load_cached(cache_files[patient["patient_id"]])
        x = {b: cached[f"image_{b}"].astype(np.float32) for b in ("pre", "post")}
        maps = input_attribution(network, x, target_class=int(patient["pcr"]))
        masks = {t: cached[f"mask_{t}"] for t in ("pre", "post")}
        label = "pCR" if patient["pcr"] else "non-pCR"
        panels.append({"title": f"{patient['patient_id']} ({label}, p={patient['score']:.2f})",
                       "images": {b: v[..., channel] for b, v in x.items()}, "masks": masks,
                       "maps": maps})
        shares.append({"patient_id": patient["patient_id"], "label": label, **{
            f"inside_tumour_{b}": float(maps[b][masks["pre"] > 0].sum() / max(maps[b].sum(),
                                                                            1e-12))
            for b in maps}})
    return panels, pd.DataFrame(shares)


def cached_inputs(cache_file: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Network inputs ``{"pre": image_pre, "post": image_post}`` (z, y, x, C) from a cache file."""
    cached = load_cached(cache_file)
    return {name: cached[f"image_{name}"].astype(np.float32) for name in names}


def cached_sequences(cache_dir: str | Path) -> list[str]:
    """The input channels of a preprocessed cohort (``processed.csv``), in order."""
    table = pd.read_csv(processed_csv(cache_dir))
    if "sequences" not in table.columns:  # a cache from before sequences were recorded
        return list(SEQUENCES)
    names = table.loc[table["status"] == "ok", "sequences"].dropna()
    return str(names.iloc[0]).split() if len(names) else list(SEQUENCES)


# ----------------------------------------------------------------------------- figure
def plot_grad_cam(panels: Sequence[Mapping]) -> plt.Figure:
    """Attribution overlays (Grad-CAM or input x gradient): one row per patient, pre and post
    image through the largest tumour slice with the map (jet, 40% opacity) and the
    ground-truth contour. Each panel mapping has ``title``, ``images`` {branch: (z, y, x)},
    ``masks`` and ``maps``."""
    fig, axes = plt.subplots(max(len(panels), 1), 2, figsize=(5.2, 2.6 * max(len(panels), 1)),
                             squeeze=False)
    for row_axes, panel in zip(axes, panels, strict=False):
        for ax, branch in zip(row_axes, TIMEPOINTS, strict=True):
            if branch not in panel["maps"]:
                empty_panel(ax, branch, "branch not in model")
                continue
            tumour_slice_panel(ax, panel["images"][branch], panel["masks"]["pre"], None,
                               f"{panel['title']}: {branch}", heat=panel["maps"][branch])
    fig.tight_layout()
    return fig
