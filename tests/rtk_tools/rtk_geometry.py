"""RTK side of tests/test_geometry_io.py, run in a subprocess (itk-rtk may clash with other modules).

usage: python rtk_geometry.py JOB.json RESULT.json

JOB: {"write": [{"path": str, "projections": [{9 RTK parameters, degrees/mm}, ...]}, ...],
      "read": [str, ...]}
Writes each "write" geometry with RTK's own XML writer, then reads each "read" file with RTK's own
XML reader and reports, per file, RTK's projection matrices (ITK physical mm -> detector mm), source
positions and parameters (degrees, mm), or the error RTK raised.
"""

import json
import math
import sys

import itk
from itk import RTK as rtk


def write(path, projections):
    geometry = rtk.ThreeDCircularProjectionGeometry.New()
    for p in projections:
        geometry.AddProjection(
            p["SourceToIsocenterDistance"], p["SourceToDetectorDistance"], p["GantryAngle"],
            p["ProjectionOffsetX"], p["ProjectionOffsetY"], p["OutOfPlaneAngle"], p["InPlaneAngle"],
            p["SourceOffsetX"], p["SourceOffsetY"],
        )
    writer = rtk.ThreeDCircularProjectionGeometryXMLFileWriter.New()
    writer.SetFilename(path)
    writer.SetObject(geometry)
    writer.WriteFile()


def read(path):
    reader = rtk.ThreeDCircularProjectionGeometryXMLFileReader.New()
    reader.SetFilename(path)
    try:
        reader.GenerateOutputInformation()
    except RuntimeError as exc:  # RTK reports bad files through ITK exceptions
        return {"error": str(exc)}
    g = reader.GetOutputObject()
    n = len(g.GetGantryAngles())
    deg = 180.0 / math.pi
    params = {
        "SourceToIsocenterDistance": list(g.GetSourceToIsocenterDistances()),
        "SourceToDetectorDistance": list(g.GetSourceToDetectorDistances()),
        "GantryAngle": [a * deg for a in g.GetGantryAngles()],
        "ProjectionOffsetX": list(g.GetProjectionOffsetsX()),
        "ProjectionOffsetY": list(g.GetProjectionOffsetsY()),
        "OutOfPlaneAngle": [a * deg for a in g.GetOutOfPlaneAngles()],
        "InPlaneAngle": [a * deg for a in g.GetInPlaneAngles()],
        "SourceOffsetX": list(g.GetSourceOffsetsX()),
        "SourceOffsetY": list(g.GetSourceOffsetsY()),
    }
    matrices = [itk.array_from_matrix(g.GetMatrix(i)).tolist() for i in range(n)]
    sources = [[float(g.GetSourcePosition(i)[k]) for k in range(3)] for i in range(n)]
    return {"matrices": matrices, "sources": sources, "params": params}


def main():
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    for item in job.get("write", []):
        write(item["path"], item["projections"])
    result = {path: read(path) for path in job.get("read", [])}
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
