"""2D/3D registration of a CT to one X-ray: pose parametrization (pose.py), similarity losses
(losses.py), the landmark start (landmarks.py), X-ray intensity handling (intensity.py), the optimiser
(optimize.py), the X-ray's blur as a fitted nuisance (psf.py), the CT-coverage mask (coverage.py), NeTT appearance
tuning (nett.py), the mNeRF DRR source (mnerf.py), ITK transform files for Slicer (transform_io.py) and simulated
cases (simulate.py)."""

from .coverage import ct_coverage_mask  # noqa: F401
from .landmarks import LandmarkPairs, LandmarkPose, read_landmarks_json, solve_landmark_pose  # noqa: F401
from .losses import (  # noqa: F401
    LOSS_NAMES,
    gradient_ncc,
    make_loss,
    mean_squared_error,
    multiscale_ncc,
    mutual_information,
    ncc,
    patch_ncc,
    ssim,
)
from .mnerf import MNeRF, MNeRFSettings, fit_mnerf  # noqa: F401
from .nett import NeTT, load_nett, save_nett, train_nett  # noqa: F401
from .optimize import RegistrationResult, RegistrationSettings, pooled_volume, register  # noqa: F401
from .pose import PoseParametrization, check_rigid, pose_errors, so3_exp, so3_log, target_registration_error  # noqa: F401
from .transform_io import read_ct_correction, write_ct_correction  # noqa: F401
