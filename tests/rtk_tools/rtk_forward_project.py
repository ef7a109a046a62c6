"""RTK's Joseph forward projector, run in a subprocess by tests/test_rtk_reference.py.

usage: python rtk_forward_project.py VOLUME.mha [GEOMETRY.xml OUT.mha COLUMNS ROWS SPACING_U SPACING_V ORIGIN_U ORIGIN_V]...

Reads the volume (ITK physical frame) once; for each group of 8 arguments reads RTK's geometry XML
with RTK's own reader, projects onto a zero projection stack of COLUMNS x ROWS x V pixels with the
given spacing and origin (mm) and writes the line integrals in RTK's layout (one process, so that
itk is imported once).
"""

import sys

import itk
from itk import RTK as rtk


def main():
    volume_path, jobs = sys.argv[1], sys.argv[2:]
    if not jobs or len(jobs) % 8:
        sys.exit(__doc__)
    volume = itk.imread(volume_path, itk.F)
    for start in range(0, len(jobs), 8):
        project(volume, *jobs[start : start + 8])


def project(volume, geometry_path, out_path, cols, rows, su, sv, ou, ov):
    cols, rows = int(cols), int(rows)
    su, sv, ou, ov = float(su), float(sv), float(ou), float(ov)
    image_type = itk.Image[itk.F, 3]
    reader = rtk.ThreeDCircularProjectionGeometryXMLFileReader.New()
    reader.SetFilename(geometry_path)
    reader.GenerateOutputInformation()
    geometry = reader.GetOutputObject()
    n = len(geometry.GetGantryAngles())
    source = rtk.ConstantImageSource[image_type].New()
    source.SetOrigin([ou, ov, 0.0])
    source.SetSpacing([su, sv, 1.0])
    source.SetSize([cols, rows, n])
    source.SetConstant(0.0)
    projector = rtk.JosephForwardProjectionImageFilter[image_type, image_type].New()
    projector.SetInput(0, source.GetOutput())
    projector.SetInput(1, volume)
    projector.SetGeometry(geometry)
    projector.Update()
    itk.imwrite(projector.GetOutput(), out_path)


if __name__ == "__main__":
    main()
