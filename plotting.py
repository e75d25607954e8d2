"""Shared figure code: every PNG of the project is drawn here (matplotlib Agg, no screen).

Sea ice (maps on the file's own projection, offline coastlines):
    plot_sea_ice_map(z, grid, out_path)                 one day, % (NaN grey)
    plot_land_mask(land_mask, nan_frequency, grid, out_path)
    plot_comparison(original, consolidated, fill_flag, grid, out_path)
    plot_roi_map(z, grid, roi, out_path)                full grid, ROI outlined in red
Nowcasting:
    plot_forecast_panels(inputs, target, prediction, lead_minutes, out_path)
    plot_forecast_maps(prediction, lead_minutes, out_path)  a forecast file alone (evaluate.py --predict)
    plot_reconstruction(inputs, visible, reconstruction, out_path)   pretrain.py's masked patches
    plot_training_curves(log, out_path)                 train_log.csv of training.py
    plot_verification(metrics, score, out_path)         metrics.json of evaluate.py
Downscaling:
    plot_downscaling_panels(lr, hr, predictions, out_path)   LR | HR | SR ... | difference, per crop

A `grid` is read from a file by `read_grid(ds, var)`: cell-centre x, y in metres
(ascending) and the cartopy CRS built from the file's CF grid mapping, so the
image lands where the data is on the Earth. Maps are drawn in that CRS (no
re-projection of the pixels) and shown at most MAX_DISPLAY_PIXELS on the long
side (every k-th pixel; the caption says so): a full n3125 frame takes seconds.

Coastlines come from asset/coastline/ (GSHHS coarse shorelines, LGPL-3), never
from the network: nothing here calls ax.coastlines() or NaturalEarthFeature,
which would download Natural Earth on first use. Without that file, maps are
drawn without coastlines and one warning says so. Map functions return a
MapResult(path, coastlines, stride); the others return the path written.

Every figure has a fixed size (FIGSIZE[name] inches at DPI dots per inch), is
titled, has units on its colour bars and axes, and is written under a
temporary name, then renamed.
"""
import json
import math
import os
import warnings
from collections import namedtuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from atomic import atomic_path  # noqa: E402
from config import UserError, ensure_folder  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
COASTLINE_FILE = os.path.join(ROOT, "asset", "coastline", "gshhs_c_L1_polar.shp")
DPI = 100
MAX_DISPLAY_PIXELS = 1200  # long side of a displayed map, pixels of the data
FIGSIZE = {  # inches; PNG size = FIGSIZE * DPI
    "map": (7.0, 8.5),
    "mask": (11.0, 8.0),
    "comparison": (17.0, 8.0),
    "roi": (7.0, 8.5),
    "curves": (11.0, 4.5),
    "verification_panel": (4.2, 3.8),  # per panel; the figure grows with the panels
    "forecast_panel": (2.6, 2.5),  # per panel
    "downscaling_panel": (2.4, 2.4),  # per panel
}

MapResult = namedtuple("MapResult", "path coastlines stride")
Grid = namedtuple("Grid", "x y crs name")  # x (W,), y (H,) metres ascending; cartopy CRS; mapping name

# --------------------------------------------------------------------------- colours
NAN_COLOUR = "0.62"  # grey: no data (land, pole hole, swath gaps)
LAND_COLOUR = "#b8a27a"  # tan


def sea_ice_cmap():
    """0 % open water (dark blue) .. 100 % (white); NaN grey."""
    return plt.get_cmap("Blues_r").with_extremes(bad=NAN_COLOUR)


FILL_FLAGS = (  # consolidate_data.py fill_flag values: (value, label, colour)
    (0, "observed", "#f2f2f2"),
    (1, "time-linear", "#1f77b4"),
    (2, "Gaussian (space-time)", "#ff7f0e"),
    (3, "no neighbour (set to 0)", "#d62728"),
    (4, "land", LAND_COLOUR),
    (5, "pole hole (rim mean)", "#9467bd"),  # POLE_HOLE_COLOUR
)


def rain_cmap_norm(vmax):
    """Rain rate colour map on a log scale from 0.1 mm/h; below: white (no rain), NaN: grey."""
    cmap = plt.get_cmap("viridis").with_extremes(under="white", bad=NAN_COLOUR)
    return cmap, mcolors.LogNorm(vmin=0.1, vmax=max(float(vmax), 1.0))


METHOD_STYLE = {"model": ("C0", "o"), "persistence": ("C1", "s"), "extrapolation": ("C2", "^")}


# --------------------------------------------------------------------------- files
FIGURE_FORMATS = ("png", "pdf", "svg")  # the file name's suffix picks one


def save_figure(fig, out_path):
    """Write fig under a temporary name, rename it to out_path, close fig; returns out_path.
    The format follows the suffix (FIGURE_FORMATS). UserError (one line) when out_path is a folder,
    has another suffix or cannot be written."""
    try:
        if os.path.isdir(out_path):
            raise UserError(f"{out_path}: is a folder, expected a PNG file name")
        suffix = os.path.splitext(out_path)[1][1:].lower()
        if suffix not in FIGURE_FORMATS:
            raise UserError(f"{out_path}: expected a figure file name ending in "
                            f"{', '.join('.' + f for f in FIGURE_FORMATS)}")
        ensure_folder(os.path.dirname(os.path.abspath(out_path)), "output folder")
        try:
            with atomic_path(out_path) as tmp:
                fig.savefig(tmp, dpi=DPI, format=suffix)
        except OSError as exc:
            raise UserError(f"{out_path}: cannot write the figure ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out_path


def default_output(outputs_dir, name):
    """<outputs_dir>/plots/<name>: where a plot goes when --output_file is not given."""
    return os.path.join(outputs_dir, "plots", name)


def open_dataset(path):
    """xarray Dataset of a NetCDF file or a Zarr store (lazy); UserError when it cannot be opened."""
    import xarray as xr

    if not os.path.exists(path):
        raise UserError(f"{path}: file not found")
    try:
        if path.rstrip("/").endswith(".zarr") or os.path.isdir(path):
            with warnings.catch_warnings():  # zarr 3 notes that consolidated metadata is not in its spec
                warnings.filterwarnings("ignore", message="Consolidated metadata")
                return xr.open_zarr(path, consolidated=None)
        return xr.open_dataset(path)
    except Exception as exc:  # any reader error is a bad input file for the user
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"{path}: cannot open as NetCDF/Zarr ({type(exc).__name__}: {first_line})") from None


def require_var(ds, name, path, dims=None):
    """ds[name], checking that it exists (and its dims); UserError naming the file otherwise."""
    if name not in ds.variables:
        raise UserError(f"{path}: no variable {name!r} (variables: {', '.join(map(str, ds.variables))})")
    var = ds[name]
    if dims is not None and tuple(var.dims) != tuple(dims):
        raise UserError(f"{path}: variable {name!r} has dims {var.dims}, expected {dims}")
    return var


# --------------------------------------------------------------------------- projection
BREMEN_NORTH = {"grid_mapping_name": "polar_stereographic", "latitude_of_projection_origin": 90.0,
                "standard_parallel": 70.0, "straight_vertical_longitude_from_pole": -45.0,
                "semi_major_axis": 6378273.0, "inverse_flattening": 298.279411123064}


def crs_from_grid_mapping(attrs):
    """cartopy CRS from CF grid-mapping attributes (polar_stereographic or lambert_azimuthal_equal_area)."""
    import cartopy.crs as ccrs

    if "semi_major_axis" in attrs:
        globe_args = {"semimajor_axis": float(attrs["semi_major_axis"])}
        if "inverse_flattening" in attrs:
            globe_args["inverse_flattening"] = float(attrs["inverse_flattening"])
        elif "semi_minor_axis" in attrs:
            globe_args["semiminor_axis"] = float(attrs["semi_minor_axis"])
        else:
            globe_args["semiminor_axis"] = globe_args["semimajor_axis"]
        globe = ccrs.Globe(ellipse=None, **globe_args)
    elif "earth_radius" in attrs:
        radius = float(attrs["earth_radius"])
        globe = ccrs.Globe(ellipse=None, semimajor_axis=radius, semiminor_axis=radius)
    else:
        globe = ccrs.Globe(ellipse="WGS84")
    name = attrs.get("grid_mapping_name")
    offsets = {"false_easting": float(attrs.get("false_easting", 0.0)),
               "false_northing": float(attrs.get("false_northing", 0.0))}
    if name == "polar_stereographic":
        lat0 = float(attrs.get("latitude_of_projection_origin", 90.0))
        lon0 = float(attrs.get("straight_vertical_longitude_from_pole",
                               attrs.get("longitude_of_projection_origin", 0.0)))
        if "standard_parallel" in attrs:
            return ccrs.Stereographic(central_latitude=lat0, central_longitude=lon0, globe=globe,
                                      true_scale_latitude=float(attrs["standard_parallel"]), **offsets)
        return ccrs.Stereographic(central_latitude=lat0, central_longitude=lon0, globe=globe,
                                  scale_factor=float(attrs.get("scale_factor_at_projection_origin", 1.0)),
                                  **offsets)
    if name == "lambert_azimuthal_equal_area":
        return ccrs.LambertAzimuthalEqualArea(
            central_longitude=float(attrs.get("longitude_of_projection_origin", 0.0)),
            central_latitude=float(attrs.get("latitude_of_projection_origin", 90.0)), globe=globe, **offsets)
    raise UserError(f"grid mapping {name!r} is not supported for maps "
                    "(expected polar_stereographic or lambert_azimuthal_equal_area)")


def read_grid(ds, var_name, path="input"):
    """Grid(x, y, crs, mapping name) of ds[var_name] from its CF `grid_mapping` and x/y coordinates.

    x, y: cell centres in metres as stored. Without a grid mapping in the file, the
    Bremen north grid (NSIDC polar stereographic, EPSG:3411) is assumed, with a warning.
    """
    var = ds[var_name]
    mapping_name = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
    attrs = None
    if mapping_name and mapping_name in ds.variables:
        attrs = dict(ds[mapping_name].attrs)
    else:
        for name in ds.variables:
            if "grid_mapping_name" in ds[name].attrs:
                mapping_name, attrs = name, dict(ds[name].attrs)
                break
    if attrs is None:
        warnings.warn(f"{path}: no grid mapping; assuming NSIDC polar stereographic north (EPSG:3411)",
                      stacklevel=2)
        mapping_name, attrs = "polar_stereographic", BREMEN_NORTH
    try:
        crs = crs_from_grid_mapping(attrs)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    y_dim, x_dim = var.dims[-2:]
    if x_dim not in ds.variables or y_dim not in ds.variables:
        raise UserError(f"{path}: variable {var_name!r} has no coordinate variables {y_dim!r}, {x_dim!r}")
    x = np.asarray(ds[x_dim].values, dtype=np.float64)
    y = np.asarray(ds[y_dim].values, dtype=np.float64)
    return Grid(x, y, crs, mapping_name)


def display_stride(shape, max_pixels=MAX_DISPLAY_PIXELS):
    """Smallest k such that every k-th pixel of a (H, W) field fits max_pixels on the long side."""
    return max(1, math.ceil(max(shape) / max_pixels))


def _display_field(field, grid, stride):
    """(field[::k, ::k] with rows/cols in ascending y/x order, extent (x0, x1, y0, y1) in metres)."""
    x, y = grid.x, grid.y
    if x.size > 1 and x[0] > x[-1]:
        field, x = field[:, ::-1], x[::-1]
    if y.size > 1 and y[0] > y[-1]:
        field, y = field[::-1, :], y[::-1]
    dx = (x[-1] - x[0]) / (x.size - 1) if x.size > 1 else 1.0
    dy = (y[-1] - y[0]) / (y.size - 1) if y.size > 1 else 1.0
    extent = (x[0] - dx / 2, x[-1] + dx / 2, y[0] - dy / 2, y[-1] + dy / 2)
    if stride > 1:  # keep the cells whose centres are closest to the display pixel centres
        field = field[stride // 2::stride, stride // 2::stride]
    return field, extent


# --------------------------------------------------------------------------- coastlines
_COASTLINES = {}  # path -> list of shapely geometries (read once per process)
_WARNED_NO_COASTLINE = []


def coastline_geometries(path=None):
    """Shorelines (lon/lat shapely lines) from the project's offline file; None when it is missing."""
    path = path or COASTLINE_FILE
    if path not in _COASTLINES:
        if not os.path.exists(path):
            return None
        from cartopy.io import shapereader

        _COASTLINES[path] = list(shapereader.Reader(path).geometries())
    return _COASTLINES[path]


def add_coastlines(ax, path=None):
    """Draw the offline coastlines on a cartopy GeoAxes; True when drawn.

    Missing file: nothing is drawn and one warning (per process) says so. Never downloads.
    """
    import cartopy.crs as ccrs
    from cartopy.feature import ShapelyFeature

    geometries = coastline_geometries(path)
    if geometries is None:
        if not _WARNED_NO_COASTLINE:
            _WARNED_NO_COASTLINE.append(True)
            warnings.warn(f"coastline file {path or COASTLINE_FILE} not found: maps are drawn without "
                          "coastlines (see asset/coastline/README.md)", stacklevel=2)
        return False
    feature = ShapelyFeature(geometries, ccrs.PlateCarree(), facecolor="none", edgecolor="black",
                             linewidth=0.5)
    ax.add_feature(feature, zorder=3)
    return True


def map_axes(fig, position, grid, extent, label_size=7):
    """A GeoAxes in the grid's own CRS covering `extent` (metres), with a labelled lat/lon grid.

    Meridians every 30 deg, labelled along the 60th parallel; parallels every 10 deg, labelled
    along the meridian opposite the grid's central one (labels placed by hand: cartopy's
    gridline labeller costs about half the drawing time of a map).
    """
    import cartopy.crs as ccrs
    import matplotlib.ticker as mticker

    ax = fig.add_subplot(position, projection=grid.crs)
    ax.set_extent(extent, crs=grid.crs)
    sign = -1 if grid.crs.proj4_params.get("lat_0", 90) < 0 else 1
    parallels = sign * np.arange(30, 81, 10)
    meridians = np.arange(-180, 180, 30)
    ax.gridlines(crs=ccrs.PlateCarree(), draw_labels=False, xlocs=mticker.FixedLocator(meridians),
                 ylocs=mticker.FixedLocator(parallels), linewidth=0.4, color="0.3", alpha=0.5, linestyle="--",
                 zorder=2)
    geodetic = ccrs.PlateCarree()
    style = {"transform": geodetic, "fontsize": label_size, "color": "0.1", "clip_on": True, "zorder": 5,
             "ha": "center", "va": "center",
             "bbox": {"boxstyle": "round,pad=0.12", "facecolor": "white", "alpha": 0.6, "linewidth": 0}}
    lon0 = grid.crs.proj4_params.get("lon_0", 0.0)
    hemisphere = "N" if sign > 0 else "S"
    for lat in parallels[2:]:
        ax.text(lon0 + 180, lat, f"{abs(lat)}°{hemisphere}", **style)
    for lon in meridians:
        name = "180°" if lon == -180 else f"{abs(lon)}°{'E' if lon > 0 else 'W' if lon < 0 else ''}"
        ax.text(lon, sign * 60, name, **style)
    return ax


def draw_map(ax, field, grid, extent, cmap, norm, coastline_path=None):
    """imshow a (H', W') display field (rows ascending y) on a map axes; returns (image, coastlines drawn)."""
    image = ax.imshow(field, origin="lower", extent=extent, transform=grid.crs, cmap=cmap, norm=norm,
                      interpolation="nearest", zorder=1)
    drawn = add_coastlines(ax, coastline_path)
    ax.set_extent(extent, crs=grid.crs)
    return image, drawn


def _grid_caption(shape, stride, grid):
    """'grid 3584 x 2432 (3.12 km), polar stereographic ...; shown: 1 pixel in 3 ...' for a figure."""
    n_y, n_x = shape
    dx_km = abs(grid.x[-1] - grid.x[0]) / max(n_x - 1, 1) / 1000
    p = grid.crs.proj4_params
    if p.get("proj") == "stere":
        projection = f"polar stereographic (true scale {p.get('lat_ts', p.get('lat_0')):g}, lon {p.get('lon_0', 0):g})"
    else:
        projection = f"{p.get('proj', '')} projection"
    text = f"grid {n_y} x {n_x} ({dx_km:.3g} km), {projection}"
    if stride > 1:
        text += (f"; shown: 1 pixel in {stride} along each axis "
                 f"({len(range(stride // 2, n_y, stride))} x {len(range(stride // 2, n_x, stride))})")
    return text


def _caption(fig, text):
    """A small caption at the bottom of fig, wrapped to its width."""
    import textwrap

    width_chars = int(fig.get_figwidth() * 15)
    fig.text(0.5, 0.01, "\n".join(textwrap.wrap(text, width_chars)), ha="center", va="bottom", fontsize=8)


def _figure(name, size=None):
    return plt.figure(figsize=size or FIGSIZE[name], dpi=DPI)


# --------------------------------------------------------------------------- sea-ice maps
def plot_sea_ice_map(z, grid, out_path, title="Sea-ice concentration", coastline_path=None, land=None,
                     no_data_label="no data (NaN)"):
    """One concentration field on its projection: z (H, W) float in %, NaN = no data (grey).

    land: optional bool (H, W), drawn in LAND_COLOUR whatever z holds there (a consolidated
    file stores 0 on land: without this it would look like open water).
    no_data_label: legend text of the grey pixels.
    Returns MapResult(path, coastlines drawn, display stride).
    """
    z = np.asarray(z, dtype=np.float32)
    if land is not None:
        land = np.asarray(land, dtype=bool)
        z = np.where(land, np.float32(np.nan), z)
    stride = display_stride(z.shape)
    field, extent = _display_field(z, grid, stride)
    fig = _figure("map")
    ax = map_axes(fig, fig.add_gridspec(1, 1, left=0.04, right=0.84, top=0.93, bottom=0.1)[0], grid, extent)
    image, drawn = draw_map(ax, field, grid, extent, sea_ice_cmap(), mcolors.Normalize(0, 100), coastline_path)
    handles = [Patch(color=NAN_COLOUR, label=no_data_label)]
    if land is not None:
        shown_land, _ = _display_field(np.where(land, 1.0, np.nan).astype(np.float32), grid, stride)
        ax.imshow(shown_land, origin="lower", extent=extent, transform=grid.crs, interpolation="nearest", zorder=1.5,
                  cmap=mcolors.ListedColormap([LAND_COLOUR]).with_extremes(bad=(0, 0, 0, 0)), vmin=0, vmax=2)
        handles.insert(0, Patch(color=LAND_COLOUR, label="land"))
    cax = fig.add_axes([0.87, 0.2, 0.03, 0.6])
    fig.colorbar(image, cax=cax, label="sea-ice concentration (%)")
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    nan_pct = 100 * np.isnan(z).mean() - (0 if land is None else 100 * land.mean())
    land_text = "" if land is None else f"; land {100 * land.mean():.1f}%"
    ax.set_title(title, fontsize=11)
    _caption(fig, f"{_grid_caption(z.shape, stride, grid)}; no data {nan_pct:.1f}% of pixels{land_text}")
    return MapResult(save_figure(fig, out_path), drawn, stride)


POLE_HOLE_COLOUR = "#9467bd"


def plot_land_mask(land_mask, nan_frequency, grid, out_path, title="Land mask", threshold=None,
                   coastline_path=None, pole_hole=None):
    """Binary mask (H, W) uint8 (1 land) and NaN frequency (H, W) fraction of days, side by side.

    threshold: the create_mask.py threshold, drawn as a contour on the frequency panel.
    pole_hole: optional bool (H, W), create_mask.py's pole_hole, drawn in its own colour.
    Returns MapResult.
    """
    land_mask = np.asarray(land_mask)
    nan_frequency = np.asarray(nan_frequency, dtype=np.float32)
    pole = np.zeros(land_mask.shape, bool) if pole_hole is None else np.asarray(pole_hole, dtype=bool)
    stride = display_stride(land_mask.shape)
    classes = np.where(pole, 2, land_mask == 1).astype(np.float32)  # 0 ocean, 1 land, 2 pole hole
    mask_field, extent = _display_field(classes, grid, stride)
    freq_field, _ = _display_field(nan_frequency, grid, stride)
    fig = _figure("mask")
    spec = fig.add_gridspec(1, 2, left=0.02, right=0.9, top=0.9, bottom=0.08, wspace=0.08)
    ax_mask = map_axes(fig, spec[0], grid, extent)
    mask_cmap = mcolors.ListedColormap(["#cfe3f5", LAND_COLOUR, POLE_HOLE_COLOUR])
    _, drawn = draw_map(ax_mask, mask_field, grid, extent, mask_cmap, mcolors.Normalize(-0.5, 2.5), coastline_path)
    n_land = int((land_mask == 1).sum())
    ax_mask.set_title(f"land mask: {n_land} land pixels ({100 * n_land / land_mask.size:.1f}%)"
                      + (f", pole hole {int(pole.sum())}" if pole.any() else ""), fontsize=10)
    handles = [Patch(color=LAND_COLOUR, label="land (1)"), Patch(color="#cfe3f5", label="ocean (0)")]
    if pole.any():
        handles.append(Patch(color=POLE_HOLE_COLOUR, label="pole hole (not land)"))
    ax_mask.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    ax_freq = map_axes(fig, spec[1], grid, extent)
    freq_cmap = plt.get_cmap("YlGnBu").with_extremes(bad=NAN_COLOUR)
    image, drawn_freq = draw_map(ax_freq, freq_field, grid, extent, freq_cmap, mcolors.Normalize(0, 1),
                                 coastline_path)
    if threshold is not None and np.nanmin(freq_field) <= threshold <= np.nanmax(freq_field):
        y_c = np.linspace(extent[2], extent[3], freq_field.shape[0] + 1)
        x_c = np.linspace(extent[0], extent[1], freq_field.shape[1] + 1)
        ax_freq.contour(0.5 * (x_c[1:] + x_c[:-1]), 0.5 * (y_c[1:] + y_c[:-1]), freq_field, levels=[threshold],
                        colors="red", linewidths=0.8, transform=grid.crs, zorder=2)
        ax_freq.legend(handles=[Patch(facecolor="none", edgecolor="red", label=f"threshold {threshold:g}")],
                       loc="lower left", fontsize=8, framealpha=0.9)
    ax_freq.set_title("NaN frequency", fontsize=10)
    cax = fig.add_axes([0.915, 0.2, 0.015, 0.6])
    fig.colorbar(image, cax=cax, label="NaN frequency (fraction of days)")
    fig.suptitle(title, fontsize=12)
    _caption(fig, _grid_caption(land_mask.shape, stride, grid))
    return MapResult(save_figure(fig, out_path), drawn and drawn_freq, stride)


def plot_comparison(original, consolidated, fill_flag, grid, out_path, title="Before / after gap filling",
                    coastline_path=None):
    """Original day (H, W) % with gaps, consolidated (H, W) %, and fill_flag (H, W) uint8, side by side.

    fill_flag: values of FILL_FLAGS, or None (then the third panel shows where the
    consolidated field filled a NaN of the original). Returns MapResult.
    """
    original = np.asarray(original, dtype=np.float32)
    consolidated = np.asarray(consolidated, dtype=np.float32)
    if fill_flag is None:
        flag = np.where(np.isnan(original) & np.isfinite(consolidated), 2, 0).astype(np.uint8)
        flag[np.isnan(consolidated)] = 4
        flags = ((0, "observed", FILL_FLAGS[0][2]), (2, "filled", FILL_FLAGS[2][2]), (4, "NaN", LAND_COLOUR))
    else:
        flag, flags = np.asarray(fill_flag, dtype=np.uint8), FILL_FLAGS
    land = flag == 4
    shown_consolidated = np.where(land, np.float32(np.nan), consolidated)  # land: grey, whatever its value
    stride = display_stride(original.shape)
    fig = _figure("comparison")
    spec = fig.add_gridspec(2, 3, left=0.01, right=0.99, top=0.9, bottom=0.1, wspace=0.05,
                            height_ratios=[1, 0.035], hspace=0.06)
    cmap, norm = sea_ice_cmap(), mcolors.Normalize(0, 100)
    drawn_all = True
    panels = ((original, f"original (with gaps): NaN {100 * np.isnan(original).mean():.1f}%"),
              (shown_consolidated, f"consolidated: land {100 * land.mean():.1f}%, "
                                   f"NaN elsewhere {100 * (np.isnan(consolidated) & ~land).mean():.1f}%"))
    for column, (field, name) in enumerate(panels):
        shown, extent = _display_field(field, grid, stride)
        ax = map_axes(fig, spec[0, column], grid, extent)
        image, drawn = draw_map(ax, shown, grid, extent, cmap, norm, coastline_path)
        drawn_all &= drawn
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, cax=fig.add_subplot(spec[1, 0:2]), orientation="horizontal",
                 label="sea-ice concentration (%); grey: NaN (original), land or NaN (consolidated)")
    values = [v for v, _, _ in flags]
    flag_cmap = mcolors.ListedColormap([c for _, _, c in flags])
    flag_norm = mcolors.BoundaryNorm(np.arange(len(values) + 1) - 0.5, len(values))
    index = np.searchsorted(values, flag).astype(np.float32)  # flag value -> colour index
    index[~np.isin(flag, values)] = np.nan
    shown, extent = _display_field(index, grid, stride)
    ax = map_axes(fig, spec[0, 2], grid, extent)
    _, drawn = draw_map(ax, shown, grid, extent, flag_cmap, flag_norm, coastline_path)
    drawn_all &= drawn
    ax.set_title("where each value came from (fill_flag)", fontsize=10)
    legend_ax = fig.add_subplot(spec[1, 2])
    legend_ax.axis("off")
    legend_ax.legend(handles=[Patch(facecolor=c, edgecolor="0.4", label=f"{v} {n}: {100 * np.mean(flag == v):.1f}%")
                              for v, n, c in flags], loc="center", ncol=3, fontsize=7, frameon=False)
    observed = (flag == 0) & np.isfinite(original) & np.isfinite(consolidated)
    check = (f"observed pixels: max |consolidated - original| = "
             f"{np.max(np.abs(consolidated[observed] - original[observed])):.3g} %" if observed.any() else "")
    fig.suptitle(title, fontsize=12)
    _caption(fig, "; ".join(t for t in (_grid_caption(original.shape, stride, grid), check) if t))
    return MapResult(save_figure(fig, out_path), drawn_all, stride)


def plot_roi_map(z, grid, roi, out_path, title="Region of interest", coastline_path=None):
    """The full grid z (H, W) % with roi = (ymin, ymax, xmin, xmax) outlined in red.

    roi: array indices, end exclusive, rows/cols as stored in the file
    (z[ymin:ymax, xmin:xmax]). Returns MapResult.
    """
    z = np.asarray(z, dtype=np.float32)
    ymin, ymax, xmin, xmax = (int(v) for v in roi)
    n_y, n_x = z.shape
    if not (0 <= ymin < ymax <= n_y and 0 <= xmin < xmax <= n_x):
        raise UserError(f"ROI [{ymin}:{ymax}, {xmin}:{xmax}] is outside the {n_y} x {n_x} grid")
    stride = display_stride(z.shape)
    field, extent = _display_field(z, grid, stride)
    fig = _figure("roi")
    ax = map_axes(fig, fig.add_gridspec(1, 1, left=0.04, right=0.84, top=0.93, bottom=0.1)[0], grid, extent)
    image, drawn = draw_map(ax, field, grid, extent, sea_ice_cmap(), mcolors.Normalize(0, 100), coastline_path)
    dx = abs(grid.x[-1] - grid.x[0]) / max(n_x - 1, 1)
    dy = abs(grid.y[-1] - grid.y[0]) / max(n_y - 1, 1)
    x_lo, x_hi = sorted((grid.x[xmin], grid.x[xmax - 1]))
    y_lo, y_hi = sorted((grid.y[ymin], grid.y[ymax - 1]))
    ax.add_patch(Rectangle((x_lo - dx / 2, y_lo - dy / 2), x_hi - x_lo + dx, y_hi - y_lo + dy, fill=False,
                           edgecolor="red", linewidth=2, transform=grid.crs, zorder=4,
                           label=f"ROI y {ymin}:{ymax}, x {xmin}:{xmax}"))
    ax.legend(handles=[Patch(facecolor="none", edgecolor="red", label=f"ROI rows {ymin}:{ymax}, cols {xmin}:{xmax}"),
                       Patch(color=NAN_COLOUR, label="no data (NaN)")], loc="lower left", fontsize=8,
              framealpha=0.9)
    fig.colorbar(image, cax=fig.add_axes([0.87, 0.2, 0.03, 0.6]), label="sea-ice concentration (%)")
    ax.set_title(title, fontsize=11)
    _caption(fig, _grid_caption(z.shape, stride, grid))
    return MapResult(save_figure(fig, out_path), drawn, stride)


def plot_roi_pixels(frame, roi, title, out_path):
    """The full frame (H, W) in % on pixel axes (row 0 = south edge) with roi = (ymin, ymax, xmin, xmax),
    end exclusive, outlined in red: the figure of find_several_data_in_target_area.py, where the user
    reads pixel indices. Returns out_path."""
    ymin, ymax, xmin, xmax = roi
    n_y, n_x = frame.shape
    stride = display_stride(frame.shape)
    shown = frame[::stride, ::stride]
    extent = (-0.5, shown.shape[1] * stride - 0.5, -0.5, shown.shape[0] * stride - 0.5)  # pixel units
    fig, ax = plt.subplots(figsize=(7.0, float(np.clip(6.0 * n_y / n_x, 4.0, 11.0))))
    image = ax.imshow(shown, origin="lower", extent=extent, cmap=sea_ice_cmap(), vmin=0, vmax=100,
                      interpolation="nearest")
    ax.set_xlim(-0.5, n_x - 0.5)
    ax.set_ylim(-0.5, n_y - 0.5)
    ax.add_patch(Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin,
                           fill=False, edgecolor="red", linewidth=2))
    ax.set_xlabel("x (pixel column)")
    ax.set_ylabel("y (pixel row, 0 = south edge)")
    ax.set_title(title + (f" (shown at 1/{stride} resolution)" if stride > 1 else ""), fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="sea-ice concentration (%), grey: NaN")
    fig.tight_layout()
    return save_figure(fig, out_path)


# --------------------------------------------------------------------------- nowcasting
def check_forecast_shapes(inputs, target, prediction, lead_minutes):
    """ValueError unless inputs (T_in, H, W), target = prediction (T_out, H, W), T_out lead times."""
    inputs, target, prediction = np.shape(inputs), np.shape(target), np.shape(prediction)
    if len(inputs) != 3 or len(target) != 3 or prediction != target or inputs[1:] != target[1:]:
        raise ValueError(f"expected inputs (T_in, H, W), target and prediction (T_out, H, W); got "
                         f"{inputs}, {target}, {prediction}")
    if len(lead_minutes) != target[0]:
        raise ValueError(f"{len(lead_minutes)} lead times for {target[0]} target frames")


def plot_forecast_panels(inputs, target, prediction, lead_minutes, out_path, coverage=None,
                         input_minutes=None, max_inputs=4, max_leads=4, title="Forecast"):
    """Last input frames, then per lead time: target, prediction, prediction - target.

    inputs (T_in, H, W), target (T_out, H, W), prediction (T_out, H, W): rain rate in mm/h.
    lead_minutes: T_out lead times (min) of the target frames.
    coverage: optional bool (H, W) (or (T, H, W) per frame), False outside the radar range (grey).
    input_minutes: optional T_in times (min) of the inputs relative to the forecast time (e.g. -25..0).
    One log colour scale (LogNorm from 0.1 mm/h) for every rain panel; the difference uses a
    symmetric log scale in mm/h. Returns out_path.
    """
    check_forecast_shapes(inputs, target, prediction, lead_minutes)
    inputs = np.array(inputs, dtype=np.float32, copy=True)
    target = np.array(target, dtype=np.float32, copy=True)
    prediction = np.array(prediction, dtype=np.float32, copy=True)
    lead_minutes = list(lead_minutes)
    if coverage is not None:
        outside = ~np.broadcast_to(np.asarray(coverage, dtype=bool), target.shape[1:])
        for stack in (inputs, target, prediction):
            stack[:, outside] = np.nan
    difference = prediction - target
    show_in = list(range(max(0, inputs.shape[0] - max_inputs), inputs.shape[0]))
    leads = list(range(min(max_leads, target.shape[0])))
    n_cols = max(len(show_in), 3)
    n_rows = 1 + len(leads)
    width, height = FIGSIZE["forecast_panel"]
    fig = _figure("forecast_panel", (width * n_cols + 1.2, height * n_rows + 0.6))
    spec = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[1] * n_cols + [0.06], left=0.02, right=0.93,
                            top=1 - 0.6 / (height * n_rows + 0.6), bottom=0.02, wspace=0.08, hspace=0.25)
    vmax = np.nanmax([np.nanmax(a) if np.isfinite(a).any() else 0.0 for a in (inputs, target, prediction)])
    cmap, norm = rain_cmap_norm(vmax)
    diff_max = max(float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 0.0, 1.0)
    diff_cmap = plt.get_cmap("RdBu_r").with_extremes(bad=NAN_COLOUR)
    diff_norm = mcolors.SymLogNorm(linthresh=0.1, vmin=-diff_max, vmax=diff_max, base=10)

    def panel(row, col, field, label, cm, nm):
        if isinstance(nm, mcolors.LogNorm):  # 0 mm/h is 'under' (white), not 'bad' (log of 0)
            field = np.where(np.isfinite(field) & (field < nm.vmin), nm.vmin / 10, field)
        ax = fig.add_subplot(spec[row, col])
        image = ax.imshow(field, cmap=cm, norm=nm, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=9)
        return image

    rain_image = None
    for col, t in enumerate(show_in):
        when = f"t{input_minutes[t]:+g} min" if input_minutes is not None else f"{t + 1}/{inputs.shape[0]}"
        rain_image = panel(0, col, inputs[t], f"input {when}", cmap, norm)
    for row, k in enumerate(leads, start=1):
        lead = f"+{lead_minutes[k]:g} min"
        missing = "" if np.isfinite(target[k]).any() else " (not available)"
        panel(row, 0, target[k], f"target {lead}{missing}", cmap, norm)
        panel(row, 1, prediction[k], f"prediction {lead}", cmap, norm)
        diff_image = panel(row, 2, difference[k], f"prediction - target {lead}", diff_cmap, diff_norm)
    fig.colorbar(rain_image, cax=fig.add_subplot(spec[0, n_cols]), label="rain rate (mm/h)", extend="min")
    if leads:
        fig.colorbar(diff_image, cax=fig.add_subplot(spec[1:, n_cols]), label="difference (mm/h)")
    extra = f"; first {len(leads)} of {target.shape[0]} lead times" if len(leads) < target.shape[0] else ""
    fig.suptitle(f"{title} (white: < 0.1 mm/h, grey: no coverage{extra})", fontsize=10)
    return save_figure(fig, out_path)


def plot_forecast_maps(prediction, lead_minutes, out_path, coverage=None, max_leads=6, title="Forecast"):
    """A forecast file on its own (no inputs, no target): one panel per lead time, rain rate in mm/h.

    prediction (T_out, H, W) mm/h, NaN where there is no forecast (grey); lead_minutes: T_out
    lead times (min); coverage: optional bool (H, W) or (T_out, H, W), False = outside radar
    coverage (grey too). At most max_leads panels, spread over the lead times. Returns out_path.
    """
    prediction = np.array(prediction, dtype=np.float32, copy=True)
    if prediction.ndim != 3 or len(lead_minutes) != prediction.shape[0]:
        raise ValueError(f"expected prediction (T_out, H, W) with T_out lead times; got {prediction.shape} and "
                         f"{len(lead_minutes)} lead times")
    if coverage is not None:
        prediction[~np.broadcast_to(np.asarray(coverage, dtype=bool), prediction.shape)] = np.nan
    shown = sorted(set(np.linspace(0, prediction.shape[0] - 1, min(max_leads, prediction.shape[0])).round().astype(int)))
    finite = np.isfinite(prediction)
    cmap, norm = rain_cmap_norm(float(prediction[finite].max()) if finite.any() else 1.0)
    width, height = FIGSIZE["forecast_panel"]
    fig = _figure("forecast_panel", (width * len(shown) + 1.2, height + 0.9))
    spec = fig.add_gridspec(1, len(shown) + 1, width_ratios=[1] * len(shown) + [0.06], left=0.02, right=0.93,
                            top=0.8, bottom=0.04, wspace=0.08)
    for col, k in enumerate(shown):
        field = prediction[k]
        field = np.where(np.isfinite(field) & (field < norm.vmin), norm.vmin / 10, field)  # 0 mm/h: white
        ax = fig.add_subplot(spec[0, col])
        image = ax.imshow(field, cmap=cmap, norm=norm, interpolation="nearest", origin="upper")
        ax.set_xticks([])
        ax.set_yticks([])
        empty = "" if np.isfinite(prediction[k]).any() else " (no value)"
        ax.set_title(f"+{float(lead_minutes[k]):g} min{empty}", fontsize=9)
    fig.colorbar(image, cax=fig.add_subplot(spec[0, len(shown)]), label="rain rate (mm/h)", extend="min")
    extra = f"; {len(shown)} of {prediction.shape[0]} lead times" if len(shown) < prediction.shape[0] else ""
    fig.suptitle(f"{title}\n(white: < 0.1 mm/h, grey: no forecast / no coverage{extra})", fontsize=10)
    return save_figure(fig, out_path)


def plot_reconstruction(inputs, visible, reconstruction, out_path, units="mm/h", title="Masked pretraining"):
    """One row per sample: the input frame, the same with its masked patches hatched out, the
    reconstruction (input at visible pixels, model output at masked ones).

    inputs, reconstruction: (N, H, W) (rain rate in mm/h, or normalised values with units
    "normalised"); visible: bool (N, H, W), True = the encoder saw the pixel. One colour scale
    for every panel (log from 0.1 mm/h for mm/h). ValueError for mismatched shapes. Returns out_path.
    """
    inputs, reconstruction = np.asarray(inputs, dtype=np.float32), np.asarray(reconstruction, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    if inputs.ndim != 3 or inputs.shape != reconstruction.shape or inputs.shape != visible.shape:
        raise ValueError(f"expected inputs, visible and reconstruction (N, H, W) of one shape; got "
                         f"{inputs.shape}, {visible.shape}, {reconstruction.shape}")
    n = inputs.shape[0]
    width, height = FIGSIZE["forecast_panel"]
    fig = _figure("forecast_panel", (width * 3 + 1.2, height * n + 0.7))
    spec = fig.add_gridspec(n, 4, width_ratios=[1, 1, 1, 0.06], left=0.02, right=0.92,
                            top=1 - 0.6 / (height * n + 0.7), bottom=0.02, wspace=0.08, hspace=0.2)
    finite = np.concatenate([inputs[np.isfinite(inputs)], reconstruction[np.isfinite(reconstruction)], [0.0]])
    if units == "mm/h":
        cmap, norm = rain_cmap_norm(finite.max())
    else:
        cmap, norm = plt.get_cmap("viridis").with_extremes(bad=NAN_COLOUR), mcolors.Normalize(finite.min(), finite.max())
    image = None
    for row in range(n):
        masked = np.where(visible[row], inputs[row], np.nan)
        for col, (field, label) in enumerate([(inputs[row], "input"), (masked, "encoder sees (grey: masked)"),
                                              (reconstruction[row], "reconstruction")]):
            if isinstance(norm, mcolors.LogNorm):
                field = np.where(np.isfinite(field) & (field < norm.vmin), norm.vmin / 10, field)
            ax = fig.add_subplot(spec[row, col])
            image = ax.imshow(field, cmap=cmap, norm=norm, interpolation="nearest")
            if col == 2:
                ax.contour(visible[row].astype(float), levels=[0.5], colors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=9)
    fig.colorbar(image, cax=fig.add_subplot(spec[:, 3]), label=f"rain rate ({units})" if units == "mm/h" else units)
    fig.suptitle(f"{title}\n(red outline: masked patches, filled by the model)", fontsize=10)
    return save_figure(fig, out_path)


TRAIN_LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "samples_per_s")


def read_train_log(path):
    """Columns of training.py's train_log.csv as {name: float array (epochs,)}; empty cells are NaN."""
    import csv

    if not os.path.isfile(path):
        raise UserError(f"{path}: training log not found (training.py writes <paths.outputs>/train_log.csv)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read as a CSV text file ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise UserError(f"{path}: no epochs in the training log")
    missing = [c for c in ("epoch", "train_loss", "val_loss", "lr") if c not in rows[0]]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(TRAIN_LOG_COLUMNS)}")
    log = {}
    for name in rows[0]:
        values = []
        for line, row in enumerate(rows, start=2):
            cell = (row.get(name) or "").strip()
            try:
                values.append(float(cell) if cell else np.nan)
            except ValueError:
                raise UserError(f"{path}: line {line}, column {name}: expected a number, got {cell!r}") from None
        log[name] = np.array(values)
    return log


def plot_training_curves(log, out_path, title="Training"):
    """Train and validation loss per epoch (left) and learning rate on a log axis (right).

    log: {column: array (epochs,)} (see read_train_log) or a path to train_log.csv. Returns out_path.
    """
    if isinstance(log, (str, os.PathLike)):
        log = read_train_log(log)
    epoch = log["epoch"]
    fig = _figure("curves")
    spec = fig.add_gridspec(1, 2, width_ratios=[1.6, 1], left=0.07, right=0.98, top=0.86, bottom=0.13, wspace=0.25)
    ax = fig.add_subplot(spec[0])
    ax.plot(epoch, log["train_loss"], "o-", color="C0", ms=3, label="train")
    ax.plot(epoch, log["val_loss"], "s-", color="C1", ms=3, label="validation")
    losses = np.concatenate([log["train_loss"], log["val_loss"]])
    losses = losses[np.isfinite(losses)]
    if losses.size and losses.min() > 0 and losses.max() / losses.min() > 20:
        ax.set_yscale("log")
    if np.isfinite(log["val_loss"]).any():
        best = int(np.nanargmin(log["val_loss"]))
        ax.plot(epoch[best], log["val_loss"][best], "*", color="C3", ms=12, zorder=3,
                label=f"best validation {log['val_loss'][best]:.4g} (epoch {epoch[best]:g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss per epoch", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_lr = fig.add_subplot(spec[1])
    ax_lr.plot(epoch, log["lr"], "o-", color="C2", ms=3)
    if np.all(log["lr"][np.isfinite(log["lr"])] > 0):
        ax_lr.set_yscale("log")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("learning rate", fontsize=10)
    ax_lr.grid(alpha=0.3, which="both")
    summary = f"{len(epoch)} epochs"
    if "seconds" in log and np.isfinite(log["seconds"]).any():
        summary += f", {np.nansum(log['seconds']):.0f} s"
    if "samples_per_s" in log and np.isfinite(log["samples_per_s"]).any():
        summary += f", {np.nanmedian(log['samples_per_s']):.3g} samples/s (median)"
    fig.suptitle(f"{title}: {summary}", fontsize=11)
    return save_figure(fig, out_path)


SCORES = {  # name: (long name, per threshold, unit/direction)
    "csi": ("critical success index", True, "1 is perfect"),
    "pod": ("probability of detection", True, "1 is perfect"),
    "far": ("false alarm ratio", True, "0 is perfect"),
    "hss": ("Heidke skill score", True, "1 is perfect, 0 no skill"),
    "fss": ("fractions skill score", True, "1 is perfect"),
    "mse": ("mean squared error", False, "(mm/h)^2"),
    "mae": ("mean absolute error", False, "mm/h"),
}


def read_metrics(path):
    """metrics.json of evaluate.py as a dict; UserError when missing or malformed."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: metrics file not found (evaluate.py writes metrics.json)")
    try:
        with open(path, encoding="utf-8") as fh:
            metrics = json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read as a JSON text file ({type(exc).__name__}: {exc})") from None
    for key in ("lead_minutes", "methods"):
        if not isinstance(metrics, dict) or key not in metrics:
            raise UserError(f"{path}: no {key!r}; expected {{'thresholds', 'lead_minutes', 'methods'}}")
    return metrics


def _threshold_key(scores, threshold):
    """Key of `threshold` in a per-threshold score dict ('1.0', or '1' written by hand)."""
    for key in scores:
        try:
            if float(key) == float(threshold):
                return key
        except ValueError:
            continue
    return None


def _score_curves(methods, score, thresholds):
    """{(method, threshold or None, window or None): float array (n_lead,)} of one score (None -> NaN)."""
    curves = {}
    for method, scores in methods.items():
        values = scores[score]
        by_threshold = [(None, values)] if not isinstance(values, dict) else \
            [(t, values[k]) for t in thresholds if (k := _threshold_key(values, t)) is not None]
        for threshold, value in by_threshold:
            for window, curve in (value.items() if isinstance(value, dict) else [(None, value)]):
                curves[method, threshold, window] = np.asarray([np.nan if v is None else v for v in curve], float)
    return curves


def _verification_panel(ax, methods, curves, styles, lead, panel, thresholds, against_threshold):
    """One panel of plot_verification: each method's curves against lead time (or threshold); returns
    the legend handles {method: Line2D}."""
    legend = {}
    for m_index, method in enumerate(methods):
        colour, marker = METHOD_STYLE.get(method, (f"C{3 + m_index}", "d"))
        for (m, threshold, window), curve in curves.items():
            if m == method and (panel is None or threshold == panel) and not against_threshold:
                ax.plot(lead[:curve.size], curve, color=colour, marker=marker, ms=4, linestyle=styles[window])
        if against_threshold:  # one point per threshold, joined across thresholds
            for window in styles:
                x = [t for t in thresholds if (method, t, window) in curves]
                if x:
                    ax.plot(x, [curves[method, t, window][0] for t in x], color=colour, marker=marker, ms=4,
                            linestyle=styles[window])
        legend[method] = Line2D([], [], color=colour, marker=marker, ms=4, label=method)
    if against_threshold:
        ax.set_xscale("log")
        ax.set_xticks(thresholds, [f"{t:g}" for t in thresholds])
        ax.minorticks_off()
        ax.set_xlabel("threshold (mm/h)")
        ax.set_title(f"lead time {lead[0]:g} min", fontsize=10)
        return legend
    if panel is not None:
        ax.set_title(f"threshold {panel:g} mm/h", fontsize=10)
    ax.set_xlabel("lead time (min)")
    if lead.size <= 12:
        ax.set_xticks(lead)
    if lead.size == 1:
        ax.set_xlim(lead[0] - 5, lead[0] + 5)
    return legend


def plot_verification(metrics, score, out_path, title="Verification", thresholds=None):
    """A score against lead time, one line per method, one panel per threshold (categorical scores, FSS).

    thresholds: the thresholds (mm/h) to draw a panel for (default: every one in the metrics).

    metrics: dict of metrics.json (or its path): {"thresholds": [mm/h], "lead_minutes": [min],
    "methods": {method: {"csi": {"1.0": [per lead]}, ..., "mse": [per lead]}}}. FSS may
    hold one list per threshold or {window: [per lead]} per threshold (one line style per window).
    With a single lead time, a per-threshold score is drawn against the threshold instead
    (one panel). Returns out_path.
    """
    if isinstance(metrics, (str, os.PathLike)):
        metrics = read_metrics(metrics)
    score = score.lower()
    methods = {m: s for m, s in metrics["methods"].items() if isinstance(s, dict) and score in s}
    if not methods:
        available = sorted({k for s in metrics["methods"].values() if isinstance(s, dict) for k in s})
        raise UserError(f"score {score!r} not in the metrics (available: {', '.join(available) or 'none'})")
    lead = np.asarray(metrics["lead_minutes"], dtype=float)
    long_name, _, unit = SCORES.get(score, (score, None, ""))
    per_threshold = isinstance(next(iter(methods.values()))[score], dict)
    wanted = thresholds
    thresholds = [float(t) for t in metrics.get("thresholds") or []]
    if wanted is not None:
        thresholds = [t for t in thresholds if t in [float(w) for w in wanted]]
    if per_threshold and not thresholds:
        thresholds = sorted({float(k) for s in methods.values() for k in s[score]})
    if per_threshold and not thresholds:
        raise UserError(f"score {score!r}: no threshold to draw (the metrics' thresholds {wanted or []} and its "
                        f"{score} values are empty)")
    curves = _score_curves(methods, score, thresholds)
    against_threshold = per_threshold and lead.size == 1
    panels = thresholds if per_threshold and not against_threshold else [None]
    n_cols = min(len(panels), 3)
    n_rows = math.ceil(len(panels) / n_cols)
    width, height = FIGSIZE["verification_panel"]
    fig_height = height * n_rows + 0.9
    fig = _figure("verification_panel", (max(width * n_cols, 6.5), fig_height))
    spec = fig.add_gridspec(n_rows, n_cols, left=0.08 if n_cols > 1 else 0.16, right=0.98,
                            bottom=1.1 / fig_height, top=1 - 0.6 / fig_height, wspace=0.28, hspace=0.45)
    styles = {w: ["-", "--", ":", "-."][i % 4] for i, w in enumerate(dict.fromkeys(k[2] for k in curves))}
    legend = {}
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(spec[i // n_cols, i % n_cols])
        legend.update(_verification_panel(ax, methods, curves, styles, lead, panel, thresholds, against_threshold))
        ax.set_ylabel(f"{score.upper()} ({unit})" if unit else score.upper())
        if per_threshold and score in SCORES:
            ax.set_ylim(-0.05 if score != "hss" else None, 1.05)
        ax.grid(alpha=0.3)
    for window, style in styles.items():
        if window is not None:
            legend[f"w{window}"] = Line2D([], [], color="0.3", linestyle=style, label=f"FSS window {window} px")
    fig.legend(handles=list(legend.values()), loc="lower center", fontsize=8, frameon=False,
               ncol=min(len(legend), max(2, int(fig.get_figwidth() / 2.0))))
    against = "threshold" if against_threshold else "lead time"
    fig.suptitle(f"{title}: {long_name} ({score.upper()}) against {against}", fontsize=11)
    return save_figure(fig, out_path)


# --------------------------------------------------------------------------- downscaling
def _field_norms(fields, delta, units):
    """(cmap, norm) shared by the fields and (cmap, norm) of the difference `delta` (or None)."""
    finite = [f[np.isfinite(f)] for f in fields]
    vmax = max(float(f.max()) if f.size else 0.0 for f in finite)
    if units == "mm/h":
        cmap, norm = rain_cmap_norm(vmax)
    else:
        vmin = min(float(f.min()) if f.size else 0.0 for f in finite)
        cmap, norm = plt.get_cmap("viridis").with_extremes(bad=NAN_COLOUR), mcolors.Normalize(vmin, max(vmax, vmin + 1e-6))
    if delta is None:
        return (cmap, norm), None
    limit = max(float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.0, 1e-6)
    diff_norm = mcolors.SymLogNorm(linthresh=0.1, vmin=-limit, vmax=limit, base=10) if units == "mm/h" \
        else mcolors.Normalize(-limit, limit)
    return (cmap, norm), (plt.get_cmap("RdBu_r"), diff_norm)


def _image_panel(fig, cell, field, cmap, norm, title, extent=None):
    if isinstance(norm, mcolors.LogNorm):  # 0 mm/h is 'under' (white), not 'bad' (log of 0)
        field = np.where(np.isfinite(field) & (field < norm.vmin), norm.vmin / 10, field)
    ax = fig.add_subplot(cell)
    image = ax.imshow(field, cmap=cmap, norm=norm, interpolation="nearest", extent=extent)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return image


def plot_downscaling_panels(lr, hr, predictions, out_path, units="mm/h", title="Downscaling",
                            difference=None):
    """One row per crop: LR | HR | each prediction | difference of two predictions.

    lr (N, h, w), hr (N, H, W) and every predictions[label] (N, H, W) in physical units; H = f h.
    difference: (label a, label b) draws a - b in the last column (default: the last prediction minus
    the first when there are two or more; none with one). The fields share one colour scale: for
    mm/h a log scale from 0.1 mm/h (white below), otherwise linear from the smallest to the largest
    value; the difference has a symmetric scale of its own (symmetric log for mm/h). The LR field
    is drawn over the same extent as the HR one (each LR pixel a block). Returns out_path.
    """
    lr, hr = np.asarray(lr, dtype=np.float32), np.asarray(hr, dtype=np.float32)
    predictions = {k: np.asarray(v, dtype=np.float32) for k, v in predictions.items()}
    if lr.ndim != 3 or hr.ndim != 3 or lr.shape[0] != hr.shape[0] or \
            any(p.shape != hr.shape for p in predictions.values()):
        raise ValueError(f"expected lr (N, h, w), hr and predictions (N, H, W); got {lr.shape}, {hr.shape}, "
                         f"{ {k: v.shape for k, v in predictions.items()} }")
    labels = list(predictions)
    if difference is None and len(labels) >= 2:
        difference = (labels[-1], labels[0])
    delta = None if difference is None else predictions[difference[0]] - predictions[difference[1]]
    fields, names = [lr, hr, *predictions.values()], ["LR", "HR", *labels]
    (cmap, norm), diff_style = _field_norms(fields, delta, units)
    n_rows, n_cols = hr.shape[0], len(fields) + (delta is not None)
    width, height = FIGSIZE["downscaling_panel"]
    fig = _figure("downscaling_panel", (width * n_cols + 1.4, height * n_rows + 0.7))
    spec = fig.add_gridspec(n_rows, n_cols + 3, width_ratios=[1] * n_cols + [0.06, 0.45, 0.06], left=0.02,
                            right=0.92, top=1 - 0.7 / (height * n_rows + 0.7), bottom=0.02, wspace=0.1, hspace=0.15)
    for row in range(n_rows):
        for col, (name, stack) in enumerate(zip(names, fields)):
            image = _image_panel(fig, spec[row, col], stack[row], cmap, norm, name if row == 0 else None,
                                 extent=(0, hr.shape[2], hr.shape[1], 0))
        if delta is not None:
            diff_image = _image_panel(fig, spec[row, n_cols - 1], delta[row], *diff_style,
                                      f"{difference[0]} - {difference[1]}" if row == 0 else None)
    fig.colorbar(image, cax=fig.add_subplot(spec[:, n_cols]), label=units,
                 extend="min" if units == "mm/h" else "neither")
    if delta is not None:
        fig.colorbar(diff_image, cax=fig.add_subplot(spec[:, n_cols + 2]), label=f"difference ({units})")
    note = " (white: < 0.1 mm/h)" if units == "mm/h" else ""
    fig.suptitle(f"{title}{note}", fontsize=10)
    return save_figure(fig, out_path)
