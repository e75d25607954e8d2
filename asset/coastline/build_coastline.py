"""Rebuild asset/coastline/gshhs_c_L1_polar.shp from GSHHS (GSHHG 2.2.0) coarse level-1 shorelines.

The project draws coastlines offline: cartopy would otherwise download Natural
Earth files the first time a map asks for coastlines. The source is the GSHHS
coarse level-1 (land/ocean) shapefile that Debian's `python-cartopy-data`
package (0.21.1+dfsg-1) carries:

    apt-get download python-cartopy-data
    dpkg -x python-cartopy-data_*_all.deb /tmp/cartopy-data
    python asset/coastline/build_coastline.py \
        /tmp/cartopy-data/usr/share/cartopy/data/shapefiles/gshhs/c/GSHHS_c_L1.shp

What it does: turns each land polygon into its shoreline (a polyline), drops the
artificial edges GSHHS adds where it splits polygons at the dateline (lon = +-180)
and the edges that touch the south pole (Antarctica is closed through the pole and
split in two along lon 0), and keeps the parts north of 25 N and south
of 30 S, which cover the Bremen n/s grids (their corners reach ~31 N and ~39 S).
Coordinates: longitude/latitude in degrees (WGS 84). Licence: LGPL-3 (see LICENSE).
"""
import os
import sys

import numpy as np
import shapefile
from shapely.geometry import LineString, box

NORTH_LIMIT, SOUTH_LIMIT = 25.0, -30.0
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "gshhs_c_L1_polar")
LAND = os.path.join(HERE, "gshhs_c_L1_polar_land")  # the land polygons, for generate_data.py's land mask


def shoreline_runs(ring):
    """Split a polygon ring (N, 2) lon/lat into runs without dateline/pole edges."""
    ring = np.asarray(ring, float)
    on_dateline = np.abs(np.abs(ring[:, 0]) - 180.0) < 1e-9
    at_pole = ring[:, 1] < -89.999  # Antarctica is closed through the pole, and split along lon 0
    artificial = (on_dateline[:-1] & on_dateline[1:]) | at_pole[:-1] | at_pole[1:]
    runs, current = [], [ring[0]]
    for cut, p in zip(artificial, ring[1:]):
        if cut:  # an artificial edge: end the run here
            if len(current) > 1:
                runs.append(np.array(current))
            current = [p]
        else:
            current.append(p)
    if len(current) > 1:
        runs.append(np.array(current))
    return runs


def main(src):
    reader = shapefile.Reader(src)
    keep = box(-180, NORTH_LIMIT, 180, 90).union(box(-180, -90, 180, SOUTH_LIMIT))
    writer = shapefile.Writer(OUT, shapeType=shapefile.POLYLINE)
    writer.field("id", "C", 16)
    writer.field("level", "N", 2)
    n_lines = n_points = 0
    for shape, record in zip(reader.shapes(), reader.records()):
        parts = list(shape.parts) + [len(shape.points)]
        for start, stop in zip(parts[:-1], parts[1:]):
            for run in shoreline_runs(shape.points[start:stop]):
                clipped = LineString(run).intersection(keep)
                lines = [clipped] if isinstance(clipped, LineString) else \
                    list(getattr(clipped, "geoms", []))
                lines = [line for line in lines if isinstance(line, LineString) and not line.is_empty]
                if not lines:
                    continue
                coords = [[(round(x, 4), round(y, 4)) for x, y in line.coords] for line in lines]
                writer.line(coords)
                writer.record(str(record["id"]), int(record["level"]))
                n_lines += 1
                n_points += sum(len(c) for c in coords)
    writer.close()
    with open(OUT + ".prj", "w") as fh:  # WGS 84 geographic, as in the GSHHS release
        fh.write('GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],'
                 'PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]')
    sizes = sum(os.path.getsize(OUT + ext) for ext in (".shp", ".shx", ".dbf", ".prj"))
    print(f"wrote {OUT}.shp: {n_lines} shorelines, {n_points} points, {sizes / 1024:.0f} KiB with .shx/.dbf/.prj")


def write_land(src):
    """The land polygons themselves, clipped to the same latitude bands (generate_data.py rasterises
    them into the synthetic land mask; the artificial dateline/pole edges do no harm in a mask)."""
    from shapely.geometry import shape as to_shape
    from shapely.geometry.polygon import orient

    keep = box(-180, NORTH_LIMIT, 180, 90).union(box(-180, -90, 180, SOUTH_LIMIT))
    writer = shapefile.Writer(LAND, shapeType=shapefile.POLYGON)
    writer.field("id", "C", 16)
    n_polygons = 0
    for shape, record in zip(shapefile.Reader(src).shapes(), shapefile.Reader(src).records()):
        clipped = to_shape(shape.__geo_interface__).buffer(0).intersection(keep)
        for polygon in getattr(clipped, "geoms", [clipped]):
            if polygon.geom_type != "Polygon" or polygon.is_empty:
                continue
            polygon = orient(polygon, sign=-1.0)  # shapefile order: exterior clockwise, holes anticlockwise
            rings = [[(round(x, 4), round(y, 4)) for x, y in polygon.exterior.coords]]
            rings += [[(round(x, 4), round(y, 4)) for x, y in hole.coords] for hole in polygon.interiors]
            writer.poly(rings)
            writer.record(str(record["id"]))
            n_polygons += 1
    writer.close()
    with open(LAND + ".prj", "w") as fh:
        fh.write(open(OUT + ".prj").read())
    sizes = sum(os.path.getsize(LAND + ext) for ext in (".shp", ".shx", ".dbf", ".prj"))
    print(f"wrote {LAND}.shp: {n_polygons} land polygons, {sizes / 1024:.0f} KiB with .shx/.dbf/.prj")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
    write_land(sys.argv[1])
