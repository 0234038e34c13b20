"""The localiser: component choice, grid geometry, training on a small phantom cohort, ROIs
placed without the validation masks (deleting them changes nothing), and the scoring."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tests.conftest import tiny_profile
from utils.config import Paths
from utils.localisation.coarse import LocaliserConfig, coarse_grid
from utils.localisation.locate import component_centre, locate
from utils.localisation.report import localisation_summary
from utils.localisation.run import run_localisation
from utils.preprocessing.params import roi_placements
from utils.preprocessing.run import run_preprocessing


def _blob(shape, centre, radius, peak) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return peak * (np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius)


def test_the_most_probable_component_wins_and_its_weighted_centroid_is_the_centre():
    shape = (12, 20, 20)
    big_faint = _blob(shape, (6, 5, 5), 2.5, 0.55)
    small_sure = _blob(shape, (6, 14, 14), 1.5, 0.99)
    prob = np.maximum(big_faint, small_sure)
    index, component = component_centre(prob)
    mass_big, mass_small = big_faint.sum(), small_sure.sum()
    expected = (6, 5, 5) if mass_big > mass_small else (6, 14, 14)
    np.testing.assert_allclose(index, expected, atol=1e-6)
    assert component is not None and component[expected] and not component[6, 10, 10]


def test_nothing_above_threshold_is_reported_as_not_found():
    prob = np.full((8, 8, 8), 0.1)
    prob[2, 3, 4] = 0.3
    grid = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    grid.SetSpacing((2.0, 3.0, 4.0))
    grid.SetOrigin((10.0, 20.0, 30.0))
    row = locate(prob, grid)
    assert row["found"] is False and row["component_ml"] == 0
    assert (row["centre_x_mm"], row["centre_y_mm"], row["centre_z_mm"]) == (18.0, 29.0, 38.0)


def test_the_coarse_grid_is_centred_on_the_field_of_view_with_its_orientation():
    image = sitk.Image([100, 80, 20], sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.2, 3.0))
    image.SetOrigin((-40.0, 15.0, 7.0))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0,
                        0, 0, 1))
    cfg = LocaliserConfig((6.0, 6.0, 6.0), (8, 16, 24), depth=3, base_filters=4, epochs=1,
                          batch_size=1, learning_rate=1e-3)
    grid = coarse_grid(image, cfg)
    assert grid.GetSize() == (24, 16, 8) and grid.GetDirection() == image.GetDirection()
    np.testing.assert_allclose(_fov_centre(grid), _fov_centre(image), atol=1e-6)


def _fov_centre(image: sitk.Image) -> tuple[float, ...]:
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


# ---------------------------------------------------------------- on a phantom cohort
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from utils.cohort.generate import generate_cohort

    out = tmp_path_factory.mktemp("localiser")
    profile = tiny_profile(n_training=12, n_internal=2, n_external=2)
    return generate_cohort(profile, out / "cohort", workers=2, progress=False)


def _paths(manifest, root) -> Paths:
    return Paths(manifest, root / "cache", root / "run", root / "results")


@pytest.fixture(scope="module")
def localised(cohort, tmp_path_factory):
    paths = _paths(cohort, tmp_path_factory.mktemp("run"))
    return paths, run_localisation(paths, "smoke", workers=2, progress=False)


def test_localisation_reads_no_validation_mask(cohort, localised, tmp_path):
    """Deleting every validation mask before localising gives the identical table."""
    copy = tmp_path / "cohort"
    shutil.copytree(cohort.parent, copy)
    manifest = pd.read_csv(copy / cohort.name)
    validation = manifest[manifest["cohort"] != "training"]
    for mask in validation["mask_path"].dropna().unique():
        (copy / mask).unlink()
    _, table = localised
    again = run_localisation(_paths(copy / cohort.name, tmp_path), "smoke", workers=2,
                             progress=False)
    pd.testing.assert_frame_equal(again, table)
    assert set(table["cohort"]) == {"internal_validation", "external_validation"}


def test_the_localiser_places_every_validation_roi_around_its_tumour(localised):
    paths, table = localised
    processed = run_preprocessing(paths.manifest, paths.cache_dir, "smoke", workers=2,
                                  placements=roi_placements(table), progress=False)
    assert (processed["status"] == "ok").all(), processed["error"].tolist()
    sources = processed.set_index("patient_id")["roi_source"]
    assert set(sources[table["patient_id"]]) == {"roi_center_mm"}
    assert set(sources.drop(table["patient_id"])) == {"mask"}  # training: the targets
    summary = localisation_summary(processed, table)
    assert summary["patients"].sum() == 4 and summary["found"].sum() == 4
    assert summary["max_error_mm"].max() < 15.0  # smoke ROI: 80 mm; coarse voxels 8 mm
    assert summary["whole_tumour_in_roi"].min() == 1.0
    assert paths.localiser_model.exists() and paths.localisation_csv.exists()


def test_the_preprocessing_cli_names_a_missing_or_malformed_localisation_table(tmp_path,
                                                                              capsys):
    from utils.preprocessing.cli import main

    missing = tmp_path / "localisation.csv"
    args = ["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "cache"),
            "--profile", "smoke", "--localisation", str(missing)]
    assert main(args) == 1
    assert f"localisation table {missing} does not exist" in capsys.readouterr().err
    missing.write_text("patient_id,centre_x_mm\nIV001,1.0\n")
    assert main(args) == 1
    assert "lacks the columns" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_the_localisation_command_writes_the_table_of_its_run_folder(cohort, tmp_path):
    from utils.localisation.__main__ import main

    with pytest.raises(SystemExit):  # another manifest without --out: refused
        main(["--profile", "smoke", "--manifest", str(cohort)])
    assert main(["--profile", "smoke", "--manifest", str(cohort), "--out", str(tmp_path),
                 "--workers", "2"]) == 0
    table = pd.read_csv(Paths(cohort, tmp_path, tmp_path, tmp_path).localisation_csv)
    assert len(table) == 4 and table["found"].all()


def test_placements_of_patients_outside_the_manifest_are_refused(cohort, tmp_path):
    from utils.preprocessing.params import RoiPlacement

    with pytest.raises(ValueError, match=r"patients not in .*XX999"):
        run_preprocessing(cohort, tmp_path, "smoke", workers=1, progress=False,
                          placements={"XX999": RoiPlacement((0.0, 0.0, 0.0))})
    assert not any(tmp_path.glob("*.npz"))


def test_a_training_patient_without_a_mask_is_named_and_nothing_is_written(cohort, tmp_path):
    from utils.errors import InputError

    manifest = pd.read_csv(cohort)
    manifest.loc[manifest["patient_id"] == "TR002", "mask_path"] = ""
    broken = cohort.parent / "no_mask_manifest.csv"
    manifest.to_csv(broken, index=False)
    paths = _paths(broken, tmp_path)
    with pytest.raises(InputError, match=r"TR002.*pre_mask"):
        run_localisation(paths, "smoke", workers=1, progress=False)
    assert not paths.localiser_model.exists() and not paths.localisation_csv.exists()

