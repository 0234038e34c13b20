"""Stage 01 (before the crops): find the tumour on the whole pre-treatment field of view,
without ground truth.

Reads the manifest's pre-treatment images (and the training cohort's masks, its training
targets); writes the trained localiser (``runs/<profile>/localiser/localiser.keras`` and
its ``.json`` card) and ``localisation.csv`` beside it: each validation patient's ROI
centre (physical mm), whether a component was found, its volume and extent. A coarse 3D
U-Net (the RP-Net backbone, one branch) segments the tumour at low resolution
(:mod:`utils.localisation.coarse`, :mod:`utils.localisation.model`), as the first stage of
nnU-Net's cascade; its most probable component centres the ROI and sizes the registration's
local QC box (:mod:`utils.localisation.locate`, :mod:`utils.localisation.run`); ground-truth
masks of validation patients are only cropped for scoring
(:mod:`utils.localisation.report`). ``python -m utils.localisation`` runs it on a manifest.
"""
