"""Generate realistic stand-in data: Bremen ASI AMSR2 days and raw nowcasting cases.

No real AMSR2 or NWP data can be downloaded here, so the demo and the tests use
files that this script writes in exactly the real layouts:

* Sea ice (`../shared/docs/bremen-asi-format.md`): one NetCDF-4 file per day,
  `asi-AMSR2-<product>-<YYYYMMDD>-v5.4.nc`, float32 `z (y, x)` in %, NaN fill,
  ascending `x`/`y` in metres, a `polar_stereographic` grid mapping. Land (the real
  GSHHS coastlines of asset/coastline, rasterised on the grid) is NaN every day, the pole hole is NaN, swath gaps move from day to day, the ice edge
  moves slowly with the season, and chosen days are absent.
* Nowcasting (`../shared/docs/raw-case-layout.md`): `<case>/<source>/<YYYYmmddHHMM>.npy`
  with a 5-minute `radar` source (rain cells that move, grow and decay, mm/h,
  NaN outside radar range), an hourly 3-channel `nwp` source related to the
  rain (t2m in K, tcwv in kg m-2, cape in J kg-1) and a 5-minute `label`
  source (a smoothed rain-rate analysis, mm/h); some files are missing.

Everything is deterministic for a given seed, and one day (or case) does not
depend on which other days are generated.

    python generate_data.py sea_ice --out data --start 20240401 --end 20240430 --size 896x608
    python generate_data.py sea_ice          # into paths.sea_ice_data, sea_ice.start_date .. end_date
    python generate_data.py nowcast --out data/raw_dataset --cases 6 --size 128x128 --steps 72
"""
import argparse
import datetime as dt
import os
import sys

import numpy as np

from asi_files import asi_filename, date_flag, date_range, to_date  # noqa: F401 (re-exported)
from atomic import atomic_path
from config import UserError, add_config_arg, ensure_folder, load_params, path_arg, run_main

# --------------------------------------------------------------------------- the ASI grid
# rows (y), cols (x), spacing (m), first x centre, first y centre: bremen-asi-format.md
ASI_GRIDS = {
    "n3125": (3584, 2432, 3125.0, -3848437.5, -5348437.5),
    "n6250": (1792, 1216, 6250.0, -3846875.0, -5346875.0),
}
FULL_SHAPE = ASI_GRIDS["n3125"][:2]
HUGHES_1980 = {"semi_major_axis": 6378273.0, "inverse_flattening": 298.279411123064}
WGS_84 = {"semi_major_axis": 6378137.0, "inverse_flattening": 298.257223563}
WGS_84_FROM = dt.date(2018, 11, 2)  # files from this day on declare EPSG:3413


def asi_grid(shape=FULL_SHAPE):
    """Cell-centre coordinates (x (W,), y (H,)) in metres, ascending.

    The n3125 extent is kept for any shape: (3584, 2432) is n3125 exactly,
    (1792, 1216) is n6250 exactly, other shapes use a proportionally coarser grid.
    """
    n_y0, n_x0, step0, x0, y0 = ASI_GRIDS["n3125"]
    n_y, n_x = shape
    west, south = x0 - step0 / 2, y0 - step0 / 2
    dx, dy = step0 * n_x0 / n_x, step0 * n_y0 / n_y
    x = west + dx * (np.arange(n_x) + 0.5)
    y = south + dy * (np.arange(n_y) + 0.5)
    return x, y


# --------------------------------------------------------------------------- smooth fields
def _lattice_noise(rng, x, y, spacing):
    """Bilinear interpolation of white noise on a lattice of `spacing` metres.

    Resolution independent: the same rng draws give the same field at any grid.
    x (W,), y (H,) in metres; returns float32 (H, W) of roughly unit variance.
    """
    west, south = -4.0e6, -5.5e6  # lattice origin, beyond the grid corner
    n_x = int(np.ceil(8.0e6 / spacing)) + 2
    n_y = int(np.ceil(11.5e6 / spacing)) + 2
    nodes = rng.standard_normal((n_y, n_x)).astype(np.float32)
    fx, fy = (x - west) / spacing, (y - south) / spacing
    ix, iy = np.floor(fx).astype(int), np.floor(fy).astype(int)
    wx, wy = (fx - ix).astype(np.float32), (fy - iy).astype(np.float32)
    wx = wx * wx * (3 - 2 * wx)  # smoothstep: no visible lattice creases
    wy = wy * wy * (3 - 2 * wy)
    rows0, rows1 = nodes[iy], nodes[iy + 1]  # (H, n_x)
    top = rows0[:, ix] * (1 - wx) + rows0[:, ix + 1] * wx
    bottom = rows1[:, ix] * (1 - wx) + rows1[:, ix + 1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


LAND_POLYGONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "asset", "coastline",
                             "gshhs_c_L1_polar_land.shp")


def real_land(x, y, path=LAND_POLYGONS):
    """Bool (H, W): cell centres on land (GSHHS level-1 polygons, north polar stereographic).

    x (W,), y (H,) in metres on the NSIDC north grid. None when the polygon file is absent.
    """
    if not os.path.exists(path):
        return None
    import pyproj
    import shapefile
    import shapely
    from shapely.geometry import shape as to_shape

    to_grid = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True)
    polygons = []
    for record in shapefile.Reader(path).shapes():
        polygon = to_shape(record.__geo_interface__)
        if polygon.bounds[3] > 0:  # the north polar grid only
            polygons.append(shapely.transform(polygon, lambda c: np.column_stack(to_grid.transform(c[:, 0], c[:, 1]))))
    land = shapely.union_all(polygons)
    shapely.prepare(land)
    land_mask = np.empty((len(y), len(x)), dtype=bool)
    for i, row_y in enumerate(y):  # row by row: memory stays at one row of points
        land_mask[i] = shapely.contains_xy(land, x, np.full_like(x, row_y))
    return land_mask


class SyntheticArctic:
    """A made-up Arctic on the ASI grid: real land, seasonal ice, daily swath gaps.

    seed: int; shape: (H, W) grid (n3125 extent, see asi_grid).
    truth(date) -> float32 (H, W) concentration in %, NaN on land only.
    observed(date) -> truth with the pole hole and that day's swath gaps as NaN.
    """

    pole_hole_m = 100e3

    def __init__(self, seed=0, shape=FULL_SHAPE):
        self.seed, self.shape = int(seed), tuple(shape)
        self.x, self.y = asi_grid(self.shape)
        rng = np.random.default_rng([self.seed, 1])
        r = np.hypot(self.x[None, :], self.y[:, None]).astype(np.float32)
        self.r = r
        # longitude on the EPSG:3413 grid (central meridian -45); the ice reaches further south on the
        # Pacific side and retreats on the warm Atlantic side
        lon = np.degrees(np.arctan2(self.x[None, :], -self.y[:, None])) - 45.0
        self.edge_shift = (-5.5e5 * np.cos(np.radians(lon - 20.0))).astype(np.float32)
        relief = 0.7 * _lattice_noise(rng, self.x, self.y, 900e3) + 0.3 * _lattice_noise(rng, self.x, self.y, 250e3)
        self.land = real_land(self.x, self.y)
        if self.land is None:  # no polygon file: a made-up ring of continents
            self.land = (relief + 1.6 * np.clip((r - 2.0e6) / 2.5e6, 0, None) > 1.0) & (r > 1.3e6)
        # two slowly alternating patterns perturb the ice edge and the pack
        self.edge_a = _lattice_noise(rng, self.x, self.y, 700e3)
        self.edge_b = _lattice_noise(rng, self.x, self.y, 700e3)
        self.pack_a = _lattice_noise(rng, self.x, self.y, 150e3)
        self.pack_b = _lattice_noise(rng, self.x, self.y, 150e3)

    def truth(self, date):
        date = to_date(date)
        day = date.toordinal()
        phase = 2 * np.pi * day / 45.0  # the perturbation pattern turns over in ~45 days
        c, s = np.float32(np.cos(phase)), np.float32(np.sin(phase))
        season = np.cos(2 * np.pi * (date.timetuple().tm_yday - 75) / 365.25)  # max ice mid-March
        edge_radius = 2.2e6 + 0.6e6 * season
        edge = edge_radius + self.edge_shift + 3.5e5 * (c * self.edge_a + s * self.edge_b)
        marginal = np.clip((edge - self.r) / 3.0e5, 0, 1)  # 0 open water .. 1 pack ice
        pack = 1 - 0.12 * np.abs(c * self.pack_a + s * self.pack_b)
        conc = np.clip(100 * marginal * pack, 0, 100).astype(np.float32)
        conc[self.land] = np.nan
        return conc

    def gaps(self, date):
        """Bool (H, W): the pole hole and the day's swath gaps (equatorward of 1.4e6 m)."""
        date = to_date(date)
        rng = np.random.default_rng([self.seed, 2, date.toordinal()])
        gap = self.r < self.pole_hole_m
        for _ in range(rng.integers(3, 7)):
            angle = rng.uniform(0, np.pi)
            offset = rng.uniform(-3.0e6, 3.0e6)
            width = rng.uniform(40e3, 120e3)
            dist = np.abs(np.cos(angle) * self.x[None, :] + np.sin(angle) * self.y[:, None] - offset)
            gap |= (dist < width / 2) & (self.r > 1.4e6)
        return gap

    def observed(self, date):
        conc = self.truth(date)
        conc[self.gaps(date)] = np.nan
        return conc


def write_asi_day(path, z, x, y, date, product="n3125"):
    """Write one day in the Bremen ASI layout (temporary name, then rename).

    z: float32 (H, W) in %, NaN fill; x (W,), y (H,) ascending, metres.
    """
    import netCDF4

    ellipsoid = WGS_84 if to_date(date) >= WGS_84_FROM else HUGHES_1980
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.setncatts({"title": f"ASI AMSR2 sea ice concentration {product} (synthetic stand-in)",
                      "Conventions": "CF-1.6", "product": f"asi_daygrid_swath {product} v5.4",
                      "date": f"{to_date(date):%Y%m%d}"})
        nc.createDimension("y", len(y))
        nc.createDimension("x", len(x))
        for name, values, axis in (("x", x, "X"), ("y", y, "Y")):
            var = nc.createVariable(name, "f8", (name,))
            var.setncatts({"standard_name": f"projection_{name}_coordinate", "units": "m", "axis": axis,
                           "long_name": f"{name} coordinate of projection"})
            var[:] = values
        crs = nc.createVariable("polar_stereographic", "i4")
        crs.setncatts({"grid_mapping_name": "polar_stereographic", "latitude_of_projection_origin": 90.0,
                       "standard_parallel": 70.0, "straight_vertical_longitude_from_pole": -45.0,
                       "false_easting": 0.0, "false_northing": 0.0, **ellipsoid,
                       "spatial_ref": "EPSG:3413" if ellipsoid is WGS_84 else "EPSG:3411"})
        var = nc.createVariable("z", "f4", ("y", "x"), fill_value=np.float32(np.nan),
                                zlib=True, complevel=1, shuffle=True,
                                chunksizes=(min(len(y), 512), min(len(x), 512)))
        var.setncatts({"long_name": "sea ice concentration", "standard_name": "sea_ice_area_fraction",
                       "units": "%", "valid_min": np.float32(0), "valid_max": np.float32(100),
                       "grid_mapping": "polar_stereographic"})
        var[:] = z


def write_asi_days(out_dir, start, end, shape=FULL_SHAPE, seed=0, absent=(), product="n3125",
                   return_truth=False, progress=False):
    """Write every day from start to end (inclusive) except `absent` into out_dir, flat.

    Returns {"files": [paths], "dates": [date], "absent": [date], "x": x, "y": y,
    "land": bool (H, W), "truth": float32 (T, H, W) in % over all days of the range
    (absent ones included) when return_truth}.
    """
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    world = SyntheticArctic(seed, shape)
    days = date_range(start, end)
    absent = {to_date(d) for d in absent}
    files, truth = [], []
    for day in tqdm(days, desc="generate ASI days", unit="day", disable=not progress):
        if return_truth:
            truth.append(world.truth(day))
        if day in absent:
            continue
        path = os.path.join(out_dir, asi_filename(day, product))
        write_asi_day(path, world.observed(day), world.x, world.y, day, product)
        files.append(path)
    result = {"files": files, "dates": days, "absent": sorted(absent & set(days)),
              "x": world.x, "y": world.y, "land": world.land}
    if return_truth:
        result["truth"] = np.stack(truth)
    return result


# --------------------------------------------------------------------------- nowcasting cases
NWP_CHANNELS = ("t2m", "tcwv", "cape")


def _rain_field(cells, t, yy, xx):
    """Rain rate (H, W) in mm/h at step t from a list of cell dicts."""
    rain = np.zeros(yy.shape, np.float32)
    for cell in cells:
        age = t - cell["birth"]
        if not 0 <= age <= cell["life"]:
            continue
        amp = cell["peak"] * np.sin(np.pi * age / cell["life"])  # grows, then decays
        sigma = cell["size"] * (0.6 + 0.8 * age / cell["life"])
        cy, cx = cell["y"] + cell["vy"] * t, cell["x"] + cell["vx"] * t
        rain += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    rain[rain < 0.05] = 0.0
    return rain


def _blur(field, passes=3):
    """Cheap smoothing (box filter passes) for the NWP and label sources."""
    out = field.astype(np.float32)
    for _ in range(passes):
        out = (out + np.roll(out, 1, 0) + np.roll(out, -1, 0) + np.roll(out, 1, 1) + np.roll(out, -1, 1)) / 5
    return out


def write_raw_cases(out_dir, n_cases=4, shape=(96, 96), n_steps=48, seed=0, step_minutes=5,
                    nwp_every=12, missing=True, first_time=dt.datetime(2024, 6, 1, 12, 0)):
    """Write n_cases raw nowcasting cases into out_dir in the raw case layout.

    shape: (H, W) grid of every source; n_steps: radar/label steps of `step_minutes`;
    nwp_every: NWP step in radar steps (12 = hourly). With `missing`, each case
    lacks one single radar file and one label file, and case 0 lacks a run of 5
    consecutive radar files (longer than the default max_gap_steps of 3).
    Returns {case_id: {"times": [datetime], "missing": {source: [datetime]}}}.
    """
    n_y, n_x = shape
    yy, xx = np.meshgrid(np.arange(n_y, dtype=np.float32), np.arange(n_x, dtype=np.float32), indexing="ij")
    radius = 0.5 * np.hypot(n_y, n_x) * 0.9  # radar range: the corners are outside
    dist = np.hypot(yy - (n_y - 1) / 2, xx - (n_x - 1) / 2)
    summary = {}
    for case in range(n_cases):
        rng = np.random.default_rng([seed, 3, case])
        start = first_time + dt.timedelta(days=case)
        case_id = f"case_{start:%Y%m%d%H%M}"
        times = [start + dt.timedelta(minutes=step_minutes * i) for i in range(n_steps)]
        vy, vx = rng.uniform(-0.8, 0.8, 2)  # case-wide steering flow, pixels per step
        cells = [{"y": rng.uniform(0, n_y), "x": rng.uniform(0, n_x), "vy": vy + rng.normal(0, 0.1),
                  "vx": vx + rng.normal(0, 0.1), "peak": rng.uniform(5, 45), "size": rng.uniform(3, 9),
                  "birth": rng.uniform(-n_steps / 2, n_steps), "life": rng.uniform(n_steps / 3, n_steps)}
                 for _ in range(rng.integers(6, 14))]
        rain = [_rain_field(cells, t, yy, xx) for t in range(n_steps + nwp_every)]
        gone = {"radar": set(), "label": set(), "nwp": set()}
        if missing and n_steps >= 6:  # too short a case keeps every file
            gone["radar"].add(int(rng.integers(2, n_steps - 2)))
            gone["label"].add(int(rng.integers(2, n_steps - 2)))
            if case == 0 and n_steps > 20:
                first = n_steps // 2
                gone["radar"].update(range(first, first + 5))
        with atomic_path(os.path.join(out_dir, case_id)) as case_dir:  # a case from before is replaced whole
            for source in ("radar", "label", "nwp"):
                os.makedirs(os.path.join(case_dir, source), exist_ok=True)
            for t, time in enumerate(times):
                stamp = f"{time:%Y%m%d%H%M}"
                if t not in gone["radar"]:
                    frame = rain[t].copy()
                    frame[dist > radius + rng.uniform(-1, 1)] = np.nan  # coverage edge jitters
                    np.save(os.path.join(case_dir, "radar", stamp + ".npy"), frame)
                if t not in gone["label"]:
                    np.save(os.path.join(case_dir, "label", stamp + ".npy"), _blur(rain[t], 2))
                if t % nwp_every == 0:
                    ahead = _blur(np.mean(rain[t:t + nwp_every], axis=0), 6)  # the model "knows" the next hour
                    scale = float(ahead.max()) + 1.0
                    base = np.linspace(-1.5, 1.5, n_y, dtype=np.float32)[:, None]
                    t2m = 291.0 + base - 4.0 * ahead / scale
                    tcwv = 22.0 + 18.0 * ahead / scale + 0.5 * base
                    cape = 300.0 + 1800.0 * ahead / scale
                    nwp = np.stack([np.broadcast_to(t2m, shape), tcwv, cape]).astype(np.float32)
                    np.save(os.path.join(case_dir, "nwp", stamp + ".npy"), nwp)
        summary[case_id] = {"times": times,
                            "missing": {s: [times[i] for i in sorted(g)] for s, g in gone.items()}}
    return summary


# --------------------------------------------------------------------------- command line
def parse_shape(text, largest=None):
    """(rows, cols) of a ROWSxCOLS flag, at least 8x8 and at most `largest` (rows, cols) when given."""
    try:
        n_y, n_x = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: expected ROWSxCOLS, e.g. 896x608") from None
    if n_y < 8 or n_x < 8:
        raise UserError(f"--size {text!r}: expected at least 8x8")
    if largest is not None and (n_y > largest[0] or n_x > largest[1]):
        raise UserError(f"--size {text!r}: expected at most {largest[0]}x{largest[1]}")
    return n_y, n_x


def non_negative(text):
    """argparse `type`: an integer >= 0 (a random seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    ice = add_config_arg(sub.add_parser("sea_ice", help="Bremen ASI AMSR2 daily NetCDF files"), builtin_defaults=True)
    ice.add_argument("--out", type=path_arg, help="output folder, files written flat (default: paths.sea_ice_data in params.json)")
    ice.add_argument("--start", help="first day, YYYYMMDD (default: sea_ice.start_date)")
    ice.add_argument("--end", help="last day, YYYYMMDD, inclusive (default: sea_ice.end_date)")
    ice.add_argument("--size", default="3584x2432",
                     help="grid ROWSxCOLS on the n3125 extent, at most the full n3125 grid "
                          "(default: full n3125, 3584x2432)")
    ice.add_argument("--absent", default="", help="comma-separated days (YYYYMMDD) to leave out (default: none)")
    ice.add_argument("--seed", type=non_negative, default=0, help="random seed, >= 0 (default: 0)")
    now = add_config_arg(sub.add_parser("nowcast", help="raw nowcasting cases (radar, nwp, label)"), builtin_defaults=True)
    now.add_argument("--out", type=path_arg, help="raw dataset folder, one sub-folder per case (default: paths.raw_dataset)")
    now.add_argument("--cases", type=int, default=6, help="number of cases (default: 6)")
    now.add_argument("--size", default="128x128", help="grid ROWSxCOLS (default: 128x128)")
    now.add_argument("--steps", type=int, default=72, help="5-minute steps per case (default: 72)")
    now.add_argument("--seed", type=non_negative, default=0, help="random seed, >= 0 (default: 0)")
    args = parser.parse_args(argv)
    params = load_params(args.config, builtin_defaults=True)
    if args.kind == "sea_ice":
        out = args.out or params["paths"]["sea_ice_data"]
        start = date_flag("--start", args.start) or params["sea_ice"]["start_date"]
        end = date_flag("--end", args.end) or params["sea_ice"]["end_date"]
        absent = [to_date(date_flag("--absent", d)) for d in args.absent.split(",") if d.strip()]
        shape = parse_shape(args.size, FULL_SHAPE)
        ensure_folder(out, "--out")
        result = write_asi_days(out, start, end, shape, args.seed, absent, progress=True)
        print(f"wrote {len(result['files'])} days to {out} "
              f"({len(result['absent'])} absent: {', '.join(f'{d:%Y%m%d}' for d in result['absent']) or 'none'})")
    else:
        if args.cases < 1 or args.steps < 2:
            raise UserError("--cases must be >= 1 and --steps >= 2")
        out = args.out or params["paths"]["raw_dataset"]
        shape = parse_shape(args.size, (4096, 4096))
        ensure_folder(out, "--out")
        cases = write_raw_cases(out, args.cases, shape, args.steps, args.seed)
        print(f"wrote {len(cases)} cases to {out}: {', '.join(cases)}")
        others = [n for n in os.listdir(out) if n not in cases and os.path.isdir(os.path.join(out, n))]
        if others:
            print(f"note: {out} also holds {len(others)} folder(s) from before that preproc.py will read as cases: "
                  f"{', '.join(sorted(others))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
