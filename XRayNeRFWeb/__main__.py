"""``python -m XRayNeRFWeb [--data-dir DIR] [--host H] [--port P] [--max-upload-mb N]`` (= ``xraynerf web``)."""

import sys

from .cli import main

sys.exit(main())
