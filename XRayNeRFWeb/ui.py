"""The page: a drawer with the message line, the progress bar and three tabs; the views fill the rest.

Element ids (``#register``, ``#message``, ...) are the end-to-end tests' handles; keep them stable.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

from XRayNeRFMRML.choices import FOV_REGIONS, PATIENT_POSITIONS, RECONSTRUCTION_METHODS, RENDERERS, SIMILARITIES

UPLOAD_JS = (
    "trigger('{name}', [Array.from($event.target.files || []).map(f => f.size > max_upload_bytes ? {{name: f.name, size: f.size}} : f)])"
)


def _upload(app, label: str, handler, element_id: str, accept: str = "") -> None:
    name = app.ctrl.trigger_name(handler)
    v3.VFileInput(
        label=label,
        id=element_id,
        density="compact",
        hide_details=True,
        show_size=True,
        accept=accept or None,
        disabled=("busy",),
        classes="mb-2",
        change=UPLOAD_JS.format(name=name),
        prepend_icon="mdi-upload",
    )


def _path_loader(app, label: str, model: str, handler, element_id: str, args: str = "") -> None:
    with html.Div(classes="d-flex align-center mb-2"):
        v3.VTextField(
            v_model=(model,),
            label=label,
            density="compact",
            hide_details=True,
            id=f"{element_id}-path",
            placeholder="a file in the data folder",
        )
        v3.VBtn("Load", click=(handler, args or f"[{model}]"), id=f"{element_id}-load", size="small", classes="ml-2", disabled=("busy",))


def _slider(key: str, label: str, low: float, high: float, step: float) -> None:
    with html.Div(id=f"slider-{key}"):
        v3.VSlider(
            v_model=(key,),
            label=label,
            min=low,
            max=high,
            step=step,
            density="compact",
            hide_details=True,
            thumb_label=True,
            disabled=("busy || !reg_ready",),
        )


def _download(app, label: str, filename: str, handler, element_id: str, enabled: str, args: str = "") -> None:
    name = app.ctrl.trigger_name(handler)
    v3.VBtn(
        label,
        id=element_id,
        size="small",
        variant="tonal",
        classes="mr-2 mb-2",
        prepend_icon="mdi-download",
        disabled=(f"!({enabled})",),
        click=f"utils.download('{filename}', trigger('{name}', [{args}]), 'application/octet-stream')",
    )


def _registration_tab(app) -> None:
    v3.VBtn(
        "Load sample data",
        id="sample-registration",
        click=app.load_sample_registration,
        block=True,
        color="primary",
        variant="tonal",
        classes="mb-3",
        disabled=("busy",),
        prepend_icon="mdi-database",
    )
    html.Div("CT: {{ reg_ct || 'none' }} · X-ray: {{ reg_xray || 'none' }}", id="reg-inputs", classes="text-caption mb-2")
    _upload(app, "Upload a CT (NIfTI, NRRD, MHA)", app.upload_ct, "upload-ct")
    _path_loader(app, "CT in the data folder", "reg_ct_path", app.load_ct_path, "ct")
    _upload(app, "Upload an X-ray (DICOM XA/RF/DX)", app.upload_xray, "upload-xray")
    _path_loader(app, "X-ray in the data folder", "reg_xray_path", app.load_xray_path, "xray")
    _upload(app, "…or an X-ray image (MHA, NRRD, PNG, TIFF)", app.upload_xray_image, "upload-xray-image")
    _upload(app, "with its camera JSON (intrinsics + world_from_camera)", app.upload_camera, "upload-camera")
    _upload(app, "optional: landmarks JSON (CT mm <-> pixel; the pose is solved)", app.upload_landmarks, "upload-landmarks")
    _path_loader(
        app,
        "X-ray image in the data folder",
        "reg_xray_image_path",
        app.load_xray_image_path,
        "xray-image",
        "[reg_xray_image_path, reg_camera_path, reg_intensities, reg_landmarks_path]",
    )
    with html.Div(classes="d-flex align-center mb-2"):
        v3.VTextField(
            v_model=("reg_camera_path",), label="camera JSON in the data folder", density="compact", hide_details=True, id="camera-path"
        )
        v3.VCheckbox(v_model=("reg_intensities",), label="intensities (-log)", density="compact", hide_details=True, classes="ml-2")
    v3.VTextField(
        v_model=("reg_landmarks_path",),
        label="landmarks JSON in the data folder (optional)",
        density="compact",
        hide_details=True,
        id="landmarks-path",
        classes="mb-2",
    )
    _landmarks_section(app)
    html.Div("Move the CT (the overlay follows)", classes="text-subtitle-2 mt-2")
    _slider("tr", "R (mm)", -30, 30, 0.5)
    _slider("ta", "A (mm)", -30, 30, 0.5)
    _slider("ts", "S (mm)", -30, 30, 0.5)
    _slider("rx", "about R (°)", -15, 15, 0.5)
    _slider("ry", "about A (°)", -15, 15, 0.5)
    _slider("rz", "about S (°)", -15, 15, 0.5)
    with html.Div(classes="d-flex align-center"):
        v3.VSlider(v_model=("opacity",), label="DRR opacity", min=0, max=1, step=0.05, density="compact", hide_details=True)
        v3.VBtn("Reset", click=app.reset_pose, size="small", variant="text", id="reset-pose", disabled=("busy",))
    html.Div("overlay updates: {{ overlay_updates }}", id="overlay-updates", classes="text-caption")
    v3.VSelect(
        v_model=("loss",),
        items=("losses", list(SIMILARITIES)),
        label="similarity",
        density="compact",
        hide_details=True,
        classes="my-2",
        disabled=("busy",),
    )
    with html.Div(classes="d-flex flex-wrap"):
        v3.VBtn(
            "Register",
            id="register",
            click=(app.register, "[loss, opacity]"),
            color="primary",
            classes="mr-2 mb-2",
            v_if="!(busy && job_kind === 'registration')",
            disabled=("!reg_ready",),
        )
        v3.VBtn(
            "Cancel",
            id="cancel-registration",
            click=app.cancel,
            color="warning",
            classes="mr-2 mb-2",
            v_if="busy && job_kind === 'registration'",
        )
        v3.VBtn("Accept", id="accept", click=app.accept, classes="mr-2 mb-2", disabled=("busy || !reg_pending",))
        v3.VBtn("Revert", id="revert", click=app.revert, classes="mr-2 mb-2", disabled=("busy || !reg_pending",))
    html.Div("{{ reg_result }}", id="reg-result", classes="text-caption mb-2")
    _download(app, "pose JSON", "pose.json", app.download_pose, "download-pose", "reg_ready")
    _download(app, "ITK transform", "ct_pose.tfm", app.download_itk, "download-itk", "reg_ready")


def _landmarks_section(app) -> None:
    """Landmark start by clicks (XRayNeRFWeb/landmarks.py): CT points on the CT (Green view), the same points on the
    X-ray (Red view), then the solved start pose."""
    html.Div("Landmark start (click point pairs)", classes="text-subtitle-2 mt-2")
    with html.Div(classes="d-flex flex-wrap"):
        for which, label in (("ct", "CT points (Green view)"), ("xray", "X-ray points (Red view)")):
            v3.VBtn(
                label,
                id=f"lm-place-{which}",
                click=(app.place_landmarks, f"['{which}']"),
                size="small",
                classes="mr-2 mb-2",
                variant=(f"lm_placing === '{which}' ? 'flat' : 'tonal'",),
                color=(f"lm_placing === '{which}' ? 'primary' : undefined",),
                disabled=("busy || !reg_ready",),
                prepend_icon="mdi-map-marker-plus",
            )
        v3.VBtn("Stop", id="lm-stop", click=app.stop_landmarks, size="small", variant="text", classes="mb-2", disabled=("!lm_placing",))
        v3.VBtn("Clear", id="lm-clear", click=app.clear_landmarks, size="small", variant="text", classes="mb-2", disabled=("busy",))
    html.Div("CT points: {{ lm_ct }} · X-ray points: {{ lm_xray }}", id="lm-counts", classes="text-caption")
    v3.VBtn(
        "Landmark start",
        id="lm-start",
        click=app.landmark_start,
        size="small",
        color="primary",
        variant="tonal",
        classes="mb-2",
        disabled=("busy || !reg_ready",),
    )


def _recon_grid_fields(app) -> None:
    """The output grid: the field-of-view cylinder (the engine's regions), or an explicit size X Y Z (voxels along RAS,
    all > 0) with its voxel size, centred on the isocentre or with voxel (0, 0, 0)'s centre at the origin R A S, or the
    grid of a reference image in the data folder (uploaded or named; session.reconstruction_request)."""
    v3.VSelect(
        v_model=("rec_fov_region",),
        items=("fov_regions", list(FOV_REGIONS)),
        label="field of view (cylinder seen by every / any view)",
        density="compact",
        hide_details=True,
        id="rec-fov-region",
        classes="mb-2",
    )
    with html.Div(classes="d-flex"):
        for axis in ("x", "y", "z"):
            v3.VTextField(
                v_model=(f"rec_size_{axis}",),
                type="number",
                label=f"size {axis.upper()} (0: cylinder)",
                density="compact",
                hide_details=True,
                id=f"rec-size-{axis}",
                classes="mr-2",
            )
        v3.VTextField(
            v_model=("rec_spacing_mm",), type="number", label="voxel (mm)", density="compact", hide_details=True, id="rec-spacing"
        )
    with html.Div(classes="d-flex mb-2"):
        for axis in ("r", "a", "s"):
            v3.VTextField(
                v_model=(f"rec_origin_{axis}",),
                label=f"origin {axis.upper()} mm (empty: centred)",
                density="compact",
                hide_details=True,
                id=f"rec-origin-{axis}",
                classes="mr-2",
            )
    _upload(app, "…or upload a reference image: the output takes its grid (as --like)", app.upload_like, "upload-like")
    v3.VTextField(
        v_model=("rec_like_path",),
        label="reference image in the data folder (empty: the grid above)",
        density="compact",
        hide_details=True,
        id="rec-like-path",
        classes="mb-2",
    )


def _reconstruction_tab(app) -> None:
    v3.VBtn(
        "Load sample projections",
        id="sample-projections",
        click=app.load_sample_projections,
        block=True,
        color="primary",
        variant="tonal",
        classes="mb-3",
        disabled=("busy",),
        prepend_icon="mdi-database",
    )
    html.Div("{{ rec_projections || 'no projections' }}", id="rec-inputs", classes="text-caption mb-2")
    _upload(app, "Upload a projection stack or DICOM series file", app.upload_stack, "upload-stack")
    _upload(app, "Upload its geometry (.json / .xml)", app.upload_geometry, "upload-geometry")
    _path_loader(
        app,
        "stack or DICOM in the data folder",
        "rec_stack_path",
        app.load_projections_path,
        "stack",
        "[rec_stack_path, rec_geometry_path]",
    )
    v3.VTextField(
        v_model=("rec_geometry_path",),
        label="geometry in the data folder (empty for DICOM)",
        density="compact",
        hide_details=True,
        id="geometry-path",
        classes="mb-2",
    )
    v3.VSelect(
        v_model=("rec_method",),
        items=("methods", list(RECONSTRUCTION_METHODS)),
        label="method",
        density="compact",
        hide_details=True,
        id="rec-method",
        classes="mb-2",
    )
    with html.Div(classes="d-flex"):
        v3.VTextField(
            v_model=("rec_grid",),
            type="number",
            label="grid (voxels across)",
            density="compact",
            hide_details=True,
            id="rec-grid",
            classes="mr-2",
        )
        v3.VTextField(
            v_model=("rec_iterations",),
            type="number",
            label="iterations (0: default)",
            density="compact",
            hide_details=True,
            id="rec-iterations",
        )
    _recon_grid_fields(app)
    v3.VCheckbox(
        v_model=("rec_uncertainty",), label="uncertainty volume (overlay)", density="compact", hide_details=True, id="rec-uncertainty"
    )
    v3.VCheckbox(
        v_model=("rec_refine",),
        label="self-calibrate the views first (--refine-geometry)",
        density="compact",
        hide_details=True,
        id="rec-refine",
    )
    with html.Div(classes="d-flex flex-wrap"):
        v3.VBtn(
            "Reconstruct",
            id="reconstruct",
            click=(
                app.reconstruct,
                "[{method: rec_method, grid: rec_grid, iterations: rec_iterations, renderer: rec_renderer, uncertainty: rec_uncertainty, "
                "fov_region: rec_fov_region, size: [rec_size_x, rec_size_y, rec_size_z], spacing_mm: rec_spacing_mm, "
                "origin_ras: [rec_origin_r, rec_origin_a, rec_origin_s], like: rec_like_path, "
                "refine_geometry: rec_refine}]",
            ),
            color="primary",
            classes="mr-2 mb-2",
            v_if="!(busy && job_kind === 'reconstruction')",
        )
        v3.VBtn(
            "Cancel",
            id="cancel-reconstruction",
            click=app.cancel,
            color="warning",
            classes="mr-2 mb-2",
            v_if="busy && job_kind === 'reconstruction'",
        )
    html.Div("{{ rec_result }}", id="rec-result", classes="text-caption mb-2")
    _download(app, "NIfTI", "reconstruction.nii.gz", app.download_volume, "download-nifti", "rec_done", "'.nii.gz'")
    _download(app, "NRRD", "reconstruction.nrrd", app.download_volume, "download-nrrd", "rec_done", "'.nrrd'")
    _download(
        app,
        "uncertainty (NIfTI)",
        "reconstruction_uncertainty.nii.gz",
        app.download_volume,
        "download-uncertainty",
        "rec_done && rec_has_uncertainty",
        "'.nii.gz', 'uncertainty'",
    )
    _download(
        app,
        "refined geometry (JSON)",
        "refined_geometry.json",
        app.download_refined_geometry,
        "download-refined-geometry",
        "rec_done && rec_has_refined",
    )


def _drr_tab(app) -> None:
    v3.VBtn(
        "Load sample CT",
        id="sample-ct",
        click=app.load_sample_ct,
        block=True,
        color="primary",
        variant="tonal",
        classes="mb-3",
        disabled=("busy",),
        prepend_icon="mdi-database",
    )
    html.Div("CT: {{ reg_ct || 'none' }}", classes="text-caption mb-2")
    fields = [
        ("drr_primary", "LAO(+)/RAO(-) °"),
        ("drr_secondary", "CRA(+)/CAU(-) °"),
        ("drr_sid", "source-isocentre mm"),
        ("drr_sdd", "source-detector mm"),
        ("drr_cols", "columns"),
        ("drr_rows", "rows"),
        ("drr_spacing", "pixel spacing mm"),
    ]
    with html.Div(classes="d-flex flex-wrap"):
        for key, label in fields:
            v3.VTextField(
                v_model=(key,),
                type="number",
                label=label,
                density="compact",
                hide_details=True,
                id=key.replace("_", "-"),
                style="max-width: 48%",
                classes="mr-1 mb-2",
            )
    v3.VSelect(
        v_model=("drr_position",),
        items=("positions", list(PATIENT_POSITIONS)),
        label="patient position",
        density="compact",
        hide_details=True,
        classes="mb-2",
    )
    v3.VSelect(
        v_model=("drr_renderer",),
        items=("renderers", list(RENDERERS)),
        label="renderer",
        density="compact",
        hide_details=True,
        classes="mb-2",
    )
    v3.VBtn(
        "Render DRR",
        id="render-drr",
        click=(
            app.render_drr,
            "[{primary: drr_primary, secondary: drr_secondary, sid: drr_sid, sdd: drr_sdd, "
            "cols: drr_cols, rows: drr_rows, spacing: drr_spacing, position: drr_position, "
            "renderer: drr_renderer}]",
        ),
        color="primary",
        classes="mr-2 mb-2",
    )
    _download(app, "DRR (NRRD)", "drr.nrrd", app.download_drr, "download-drr", "drr_done")
    v3.VBtn(
        "Use as the Registration X-ray",
        id="drr-as-xray",
        click=app.use_drr_as_xray,
        size="small",
        variant="tonal",
        classes="mb-2",
        disabled=("busy || !drr_done",),
    )


def build(app) -> None:
    with SinglePageWithDrawerLayout(app.server, full_height=True) as layout:
        layout.title.set_text("XRayNeRF")
        layout.drawer.width = 420
        with layout.toolbar:
            v3.VSpacer()
            html.Div("data folder: {{ data_dir }}", classes="text-caption mr-4", id="data-dir")
        with layout.drawer:
            with html.Div(classes="pa-3"):
                v3.VAlert(
                    text=("message",),
                    type=("message_type",),
                    v_show="message",
                    density="compact",
                    id="message",
                    classes="mb-2",
                    closable=False,
                )
                with html.Div(v_show="busy", id="busy"):
                    html.Div("busy: {{ job_kind }} {{ progress_text }}", classes="text-caption")
                    v3.VProgressLinear(model_value=("progress",), height=8, color="primary", id="progress")
                with v3.VTabs(v_model=("tab",), density="compact", grow=True):
                    v3.VTab("Register", value="registration", id="tab-registration")
                    v3.VTab("Reconstruct", value="reconstruction", id="tab-reconstruction")
                    v3.VTab("DRR", value="drr", id="tab-drr")
                with v3.VWindow(v_model=("tab",), classes="mt-3"):
                    with v3.VWindowItem(value="registration"):
                        _registration_tab(app)
                    with v3.VWindowItem(value="reconstruction"):
                        _reconstruction_tab(app)
                    with v3.VWindowItem(value="drr"):
                        _drr_tab(app)
        with layout.content:
            app.layout_manager.initialize_layout_grid(layout)
    app.ui = layout
