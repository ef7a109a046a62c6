"""XRayNeRF in the browser."""
