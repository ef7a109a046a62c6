"""RTK side of tests/test_recon_truncation.py, run in a subprocess (itk-rtk may clash with other modules).

usage: python rtk_filters.py JOB.json RESULT.json

JOB: {"ramp": {"rows": [[...], ...], "truncation_correction": [0.0, 0.25, ...]},
      "displaced": {"width": W, "height": H, "spacing": s, "views": V, "sid": R, "sdd": D, "offsets_x": [...]}}
RESULT: {"ramp": {"<tc>": [[filtered row], ...]}, "displaced": {"<offset>": [weights of one row]}}: RTK's
FFTRampImageFilter (Ram-Lak, unit spacing) with each TruncationCorrection, and the weights of RTK's
DisplacedDetectorImageFilter (applied to a stack of ones, no padding) for each ProjectionOffsetX (mm).
"""

import json
import sys

import itk
import numpy as np
from itk import RTK as rtk

IMG = itk.Image[itk.F, 3]


def ramp(job):
    rows = np.asarray(job["rows"], dtype=np.float32)
    out = {}
    for tc in job["truncation_correction"]:
        img = itk.image_from_array(np.ascontiguousarray(rows[None]))
        img.SetSpacing([1.0, 1.0, 1.0])
        f = rtk.FFTRampImageFilter[IMG, IMG, itk.D].New()
        f.SetInput(img)
        f.SetTruncationCorrection(float(tc))
        f.Update()
        out[str(tc)] = itk.array_from_image(f.GetOutput())[0].tolist()
    return out


def displaced(job):
    w, h, v, s = job["width"], job["height"], job["views"], job["spacing"]
    out = {}
    for off in job["offsets_x"]:
        g = rtk.ThreeDCircularProjectionGeometry.New()
        for k in range(v):
            g.AddProjection(job["sid"], job["sdd"], k * 360.0 / v, float(off), 0.0)
        img = itk.image_from_array(np.ones((v, h, w), np.float32))
        img.SetSpacing([s, s, 1.0])
        img.SetOrigin([-(w - 1) / 2 * s, -(h - 1) / 2 * s, 0.0])
        f = rtk.DisplacedDetectorImageFilter[IMG].New()
        f.SetInput(img)
        f.SetGeometry(g)
        f.SetPadOnTruncatedSide(False)
        f.Update()
        out[str(off)] = itk.array_from_image(f.GetOutput())[0, h // 2].tolist()
    return out


def main():
    job = json.load(open(sys.argv[1]))
    result = {}
    if "ramp" in job:
        result["ramp"] = ramp(job["ramp"])
    if "displaced" in job:
        result["displaced"] = displaced(job["displaced"])
    json.dump(result, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
