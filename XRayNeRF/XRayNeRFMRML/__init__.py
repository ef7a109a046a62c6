"""Slicer-side layer shared by the XRayNeRF modules (and any other front end on an MRML scene): MRML nodes
<-> engine tensors, one file per job.

- ``nodes``: volume nodes -> ``Volume``, detector images <-> 1-slice nodes with their camera, the C-arm model;
- ``drr``: C-arm cameras and the DRR of a CT node (``render_drr`` -> ``DRROutput``);
- ``registration``: CT-to-X-ray registration moving a transform node, to one X-ray or several at once (biplane),
  with the live overlay (``register_ct_to_xrays`` / ``register_ct_to_xray`` -> ``RegistrationOutput``, ``OverlayView``);
- ``reconstruction``: projections from nodes, reconstruction into volume nodes (``run_reconstruction``);
- ``inputs``: DICOM X-rays (the one DICOM route of the modules);
- ``overlay``: slice views (the detector-plane overlay, saving and restoring a view);
- ``choices``: the engine's choice lists; ``engine``: dependencies installed on demand; ``sampledata``: the
  Sample Data entries; ``widgets``: the module Widgets' shared behaviour.

Runs in Slicer and on the Qt-free ``slicer-core`` (tests); never imports qt or ctk. torch and XRayNeRFLib are
imported only when a function is called, so that Slicer can load the modules at startup before torch is
installed (``engine.ensure_engine``). Functions that create nodes put them in the input node's scene (or a
given ``scene``); runs return a result dataclass and leave the scene as it was when they fail.
"""
