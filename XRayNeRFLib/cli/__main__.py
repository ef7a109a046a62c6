"""``python -m XRayNeRFLib.cli ...``: the same as the ``xraynerf`` console script."""

import sys

from .main import main

sys.exit(main())
