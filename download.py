"""Download Bremen ASI AMSR2 daily sea-ice concentration files for a range of days.

    python download.py --start_date 20240401 --end_date 20240430 -o data
    python download.py --start_date 20230101 --end_date 20230110 --output-dir ./data -f

Each day is fetched from `<base_url>/<YYYY>/asi-AMSR2-<product>-<YYYYMMDD>-v5.4.nc` and saved
flat as `<out>/asi-AMSR2-<product>-<YYYYMMDD>-v5.4.nc` (layout:
`../shared/docs/bremen-asi-format.md`). What a careful user can rely on:

* A day whose file is already there and is a complete Bremen ASI day (NetCDF-4 that passes
  the format check of asi_files.DayFile and whose z decodes to the end) is skipped (unless
  `-f`); anything else under that name (damaged, truncated, HTML, another NetCDF) is fetched again.
* Bytes go to `<name>.part`. A `.part` left by an interrupted run (or by a connection cut) is
  resumed with an HTTP Range request; a server that answers 200 instead of 206 is read from
  the start again. The finished file must have the announced length and be a complete Bremen
  ASI day; only then is it renamed. A truncated file never carries the final name.
* Transient failures are retried with exponential backoff (backoff, 2*backoff, 4*backoff, ...
  seconds): cuts mid-body, timeouts, HTTP 5xx/408/429, a damaged file. Permanent ones are not:
  a host that does not resolve (DNS), a port that refuses connections, HTTP 403 and other 4xx,
  a 200 answer that is not NetCDF (e.g. an HTML page) or not a Bremen ASI day. HTTP 404 means
  the day is absent upstream (it happens, e.g. 2013-05-11..13 on the 6.25 km grids): recorded,
  not retried, not a failure.
* When the first 3 days to finish all failed the same way (e.g. "connection refused by
  host:port") and none succeeded, the run stops: the remaining days are "not done".
* One summary line at the end: downloaded / already present / absent upstream / failed (/ not
  done), with the dates. Exit status 0 unless some day failed or was not done (then 1); a user
  error (bad date, bad flag value, -o under a file) exits 2 with one line.

Defaults come from params.json: sea_ice.product, sea_ice.base_url ("{product}" is
substituted), sea_ice.start_date, sea_ice.end_date, and paths.sea_ice_data for the folder.
Tests and the demo point --base_url at mirror_server.py, a loopback copy of the archive.
"""
import argparse
import collections
import concurrent.futures
import http.client
import math
import os
import re
import socket
import sys
import threading

import requests
import urllib3
from tqdm import tqdm

from asi_files import BadDay, BadValues, DayFile, NoData, Unreadable, asi_filename, date_range, to_date
from config import UserError, add_config_arg, ensure_folder, load_params, run_main

PRODUCTS = ("n3125", "n6250", "s3125", "s6250")
FIRST_DAY = 20120702  # the AMSR2 ASI record starts here
CHUNK_BYTES = 1 << 16
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 300.0
HDF5_MAGIC, CDF_MAGIC = b"\x89HDF\r\n\x1a\n", b"CDF"
# HDF5 (under netCDF4) is not thread-safe: every netCDF4 call in this process holds this lock.
NETCDF_LOCK = threading.Lock()


class Failure(Exception):
    """A failed attempt; `kind` names the way it failed, the same for every day that fails alike
    (e.g. "connection refused by 127.0.0.1:9"), so that a run can stop when every day fails alike."""

    def __init__(self, text, kind=None):
        super().__init__(text)
        self.kind = kind or text


class Retry(Failure):
    """A transient failure of one attempt (cut, timeout, 5xx, damaged file): try again."""


class Fatal(Failure):
    """A failure that retrying will not fix: the host does not resolve or refuses connections, HTTP 403,
    an answer that is not a Bremen ASI NetCDF file. Give up on this day."""


class Stopped(Exception):
    """The run was interrupted (Ctrl-C, or an early stop): leave the .part for the next run."""


Result = collections.namedtuple("Result", "state detail kind")  # state: downloaded/present/absent/failed/stopped


# --------------------------------------------------------------------------- checking a file
def check_asi_file(path):
    """None when `path` is a complete Bremen ASI day, else (kind, reason).

    Complete: it is NetCDF, passes the header check of asi_files.DayFile (z with dims (y, x),
    x/y, units) and every chunk of z decodes (a truncated or damaged file does not). Its values
    are not judged here: a day with values out of range or no data is what the archive holds;
    consolidate_data.py and create_mask.py report it. kind: "not NetCDF" (e.g. an HTML page),
    "unreadable" (damaged, truncated: worth fetching again), "not a Bremen ASI day".
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        return "unreadable", f"cannot read ({exc.strerror})"
    if not (head.startswith(HDF5_MAGIC) or head.startswith(CDF_MAGIC)):
        return "not NetCDF", f"not a NetCDF file (it begins with {head!r})"
    with NETCDF_LOCK:
        try:
            DayFile(path).read()
        except (BadValues, NoData):
            return None
        except Unreadable as exc:
            return "unreadable", str(exc)
        except BadDay as exc:
            return "not a Bremen ASI day", f"not a Bremen ASI day ({exc})"
    return None


# --------------------------------------------------------------------------- one HTTP attempt
_thread_state = threading.local()


def _session():
    """One requests.Session per worker thread (a Session is not thread-safe)."""
    if not hasattr(_thread_state, "session"):
        _thread_state.session = requests.Session()
        _thread_state.session.headers["User-Agent"] = "sea-ice-toolbox download.py"
    return _thread_state.session


def _content_range(header):
    """(start, total) from 'bytes START-END/TOTAL', or None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", header or "")
    if not match:
        return None
    return int(match.group(1)), (None if match.group(3) == "*" else int(match.group(3)))


def fetch_once(url, part, timeout, stop):
    """One attempt at `url` into `part`, resuming from the .part's current size.

    Returns "absent" (404) or "complete" (part holds the whole announced body).
    Raises Retry, Fatal or Stopped. A .part the server cannot resume (416, or a 206 that
    starts elsewhere) is deleted and the file requested whole, within the same attempt.
    """
    result = _get(url, part, timeout, stop)
    if result == "restart":
        result = _get(url, part, timeout, stop)  # no .part now: no Range, so no second restart
    return result


def _get(url, part, timeout, stop):
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Accept-Encoding": "identity"}  # Content-Length must be the length of the file
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with _session().get(url, headers=headers, stream=True, timeout=timeout) as resp:
            code = resp.status_code
            if code == 404:
                return "absent"
            if code in RETRY_STATUS or code >= 500:
                raise Retry(f"HTTP {code}")
            span = _content_range(resp.headers.get("Content-Range"))
            if offset and (code == 416 or (code == 206 and (span is None or span[0] != offset))):
                os.remove(part)  # the .part is as long as the file, or the server resumes elsewhere
                return "restart"
            if code == 206 and offset:
                mode, total = "ab", span[1]
            elif code == 200:
                mode, offset = "wb", 0  # no Range support (or no .part): whole body from the start
                length = resp.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
            else:
                raise Fatal(f"HTTP {code}")
            written = 0
            with open(part, mode) as fh:
                while True:
                    # read1 hands over whatever has arrived, so bytes received before a cut or a
                    # timeout reach the .part and the next attempt resumes after them
                    chunk = resp.raw.read1(CHUNK_BYTES, decode_content=False)
                    if not chunk:
                        break
                    fh.write(chunk)
                    fh.flush()  # what arrived is on disk, even if the process is killed
                    written += len(chunk)
                    if stop.is_set():
                        raise Stopped()
    except (urllib3.exceptions.ReadTimeoutError, requests.exceptions.Timeout, TimeoutError):
        raise Retry(f"timed out after {timeout:g} s") from None
    except (urllib3.exceptions.HTTPError, requests.exceptions.ChunkedEncodingError,
            http.client.HTTPException, ConnectionError):
        raise Retry("connection cut mid-body") from None
    except requests.exceptions.InvalidURL as exc:
        raise Fatal(f"invalid URL ({exc})") from None
    except requests.exceptions.RequestException as exc:
        raise _connection_failure(exc, url, timeout) from None
    size = offset + written
    if total is not None and size != total:
        raise Retry(f"short body: {size} of {total} bytes")
    return "resumed" if mode == "ab" else "complete"


def _causes(exc):
    """exc and every exception it wraps (reason, cause, context, exception args), breadth first."""
    seen, queue = set(), [exc]
    while queue:
        item = queue.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        queue.extend([getattr(item, "reason", None), item.__cause__, item.__context__,
                      *(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))])


def _connection_failure(exc, url, timeout):
    """Fatal for what retrying cannot fix (the host does not resolve, the port refuses), else Retry."""
    host = urllib3.util.parse_url(url)
    where = f"{host.host}:{host.port or (443 if host.scheme == 'https' else 80)}"
    causes = list(_causes(exc))
    if any(isinstance(c, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for c in causes):
        return Fatal(f"host {host.host} does not resolve (DNS); check --base_url and the network",
                     kind=f"host {host.host} does not resolve")
    if any(isinstance(c, ConnectionRefusedError) for c in causes):  # urllib3 wraps it in a "timeout" class
        return Fatal(f"connection refused by {where}: no server listens there; check --base_url",
                     kind=f"connection refused by {where}")
    if any(isinstance(c, (TimeoutError, socket.timeout, urllib3.exceptions.TimeoutError)) for c in causes):
        return Retry(f"timed out after {timeout:g} s")
    reason = str(exc.args[0]) if exc.args else type(exc).__name__
    if "timed out" in reason.lower():  # a connect/read timeout wrapped as ConnectionError
        return Retry(f"timed out after {timeout:g} s")
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", reason)  # e.g. "Network is unreachable"
    return Retry(f"connection error ({errno_text.group(1) if errno_text else type(exc).__name__})")


# --------------------------------------------------------------------------- one day
def download_day(day, out_dir, base_url, product, force, retries, timeout, backoff, stop):
    """Fetch one day. Returns Result(state, detail, kind): state downloaded / present / absent / failed /
    stopped (the run stopped before this day finished); kind names how a failed day failed."""
    name = asi_filename(day, product)
    final = os.path.join(out_dir, name)
    part = final + ".part"
    url = f"{base_url}/{day:%Y}/{name}"
    if os.path.exists(final) and not force:
        problem = check_asi_file(final)
        if problem is None:
            return Result("present", "", "")
        tqdm.write(f"{final}: {problem[1]}; fetching it again", file=sys.stderr)
    if force and os.path.exists(part):
        os.remove(part)  # -f: a fresh copy, nothing resumed from an earlier run
    last = None
    for attempt in range(retries + 1):
        if attempt and stop.wait(min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)):
            return Result("stopped", "interrupted", "")
        try:
            how = fetch_once(url, part, timeout, stop)
            if how == "absent":
                if os.path.exists(part):
                    os.remove(part)
                return Result("absent", "", "")
            accept_part(part, final, fresh=how == "complete")
            return Result("downloaded", "", "")
        except Retry as exc:
            last = exc
        except Fatal as exc:
            return Result("failed", f"{exc} ({url})", exc.kind)
        except Stopped:
            return Result("stopped", "interrupted (the .part is kept and resumed next run)", "")
        except OSError as exc:  # the disk, not the network (requests' errors are handled in fetch_once)
            return Result("failed", f"cannot write {part} ({exc.strerror or exc})", "cannot write")
    attempts = f"{retries + 1} attempt{'s' if retries else ''}"
    return Result("failed", f"{last} ({attempts}) from {url}", last.kind)


def accept_part(part, final, fresh):
    """Rename a complete .part to its final name when it is a Bremen ASI day (check_asi_file); else remove it
    and raise Fatal when the server sent it whole and it is not NetCDF or not an ASI day (fetching again
    gives the same), Retry when it was resumed from an earlier .part or cannot be read (damaged)."""
    problem = check_asi_file(part)
    if problem is None:
        os.replace(part, final)
        return
    os.remove(part)
    kind, reason = problem
    if fresh and kind != "unreadable":
        what = "not NetCDF" if kind == "not NetCDF" else "not Bremen ASI days"
        raise Fatal(f"the server answered 200 with a file that is {reason}", kind=f"the server sends files that are {what}")
    raise Retry(f"downloaded file {reason}", kind=f"downloaded file {kind}")


# --------------------------------------------------------------------------- command line
def _date(flag, value, params_key, params_value):
    """The flag's date, or the params.json one; a UserError names whichever was wrong."""
    source, value = (flag, value) if value is not None else (f"params {params_key}", params_value)
    try:
        return to_date(value)
    except UserError as exc:
        raise UserError(f"{source} {exc}") from None


def _positive(kind, minimum):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a value >= {minimum}, got {text}")
        return value
    return parse


def build_parser():
    parser = argparse.ArgumentParser(
        description="Download Bremen ASI AMSR2 daily sea-ice concentration NetCDF files "
                    "(asi_daygrid_swath) for a range of days.",
        epilog="Defaults marked 'params' come from params.json (sea_ice.* and paths.sea_ice_data).")
    add_config_arg(parser, builtin_defaults=True)
    parser.add_argument("--start_date", metavar="YYYYMMDD",
                        help="first day (default: params sea_ice.start_date)")
    parser.add_argument("--end_date", metavar="YYYYMMDD",
                        help="last day, inclusive (default: params sea_ice.end_date)")
    parser.add_argument("-o", "--output-dir", "--output_dir", dest="output_dir", metavar="DIR",
                        help="folder the files are saved in, flat (default: params paths.sea_ice_data)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="download again even when a valid file is already there (default: skip it)")
    parser.add_argument("--product", choices=PRODUCTS,
                        help="grid: n3125/n6250 Arctic 3.125/6.25 km, s3125/s6250 Antarctic "
                             "(default: params sea_ice.product)")
    parser.add_argument("--base_url", metavar="URL",
                        help="archive folder holding <YYYY>/<name>; {product} is substituted "
                             "(default: params sea_ice.base_url, the Bremen netcdf folder)")
    parser.add_argument("--workers", type=_positive(int, 1), default=4, metavar="N",
                        help="days downloaded at the same time (default: 4)")
    parser.add_argument("--retries", type=_positive(int, 0), default=5, metavar="N",
                        help="extra attempts per day after a transient failure (default: 5)")
    parser.add_argument("--timeout", type=_positive(float, 0.001), default=60.0, metavar="S",
                        help="seconds to wait for a connection or for the next bytes (default: 60 s)")
    parser.add_argument("--backoff", type=_positive(float, 0.0), default=1.0, metavar="S",
                        help="first retry delay in seconds, doubled after each failed attempt "
                             "(default: 1.0 s)")
    return parser


def check_base_url(base_url):
    """UserError naming --base_url unless it is an http(s) URL with a valid host and port."""
    problem = None
    if not re.match(r"^https?://[^/\s]+", base_url):
        problem = "expected an http:// or https:// URL"
    else:
        try:
            parts = urllib3.util.parse_url(base_url)
            requests.Request("GET", base_url).prepare()
            if not parts.host:
                problem = "no host name"
        except (urllib3.exceptions.LocationParseError, requests.exceptions.RequestException, ValueError) as exc:
            problem = f"not a valid URL ({str(exc).splitlines()[0]})"
    if problem:
        raise UserError(f"--base_url {base_url!r}: {problem}")


EARLY_STOP_DAYS = 3  # when the first days to finish all failed the same way, the run stops


def same_failure(results, n_days):
    """The kind shared by every finished day when at least min(EARLY_STOP_DAYS, n_days) have finished and
    all of them failed that same way (none downloaded, present or absent); else None."""
    finished = [r for r in results.values() if r.state != "stopped"]
    if len(finished) < min(EARLY_STOP_DAYS, n_days) or any(r.state != "failed" for r in finished):
        return None
    kinds = {r.kind for r in finished}
    return kinds.pop() if len(kinds) == 1 else None


def fetch_all(days, args, out_dir, base_url, product):
    """Download every day with a pool of workers; returns ({day: Result}, the shared failure kind when the
    run stopped early, else None). Each worker records its day's result and decides the early stop
    itself, so no day starts once EARLY_STOP_DAYS days have all failed alike."""
    stop, lock = threading.Event(), threading.Lock()
    results, stopped_by = {}, []

    def run_day(day):
        if stop.is_set():
            return Result("stopped", "not tried", "")
        result = download_day(day, out_dir, base_url, product, args.force, args.retries, args.timeout,
                              args.backoff, stop)
        with lock:
            results[day] = result
            kind = None if stopped_by or result.state != "failed" else same_failure(results, len(days))
            if kind is not None:
                stopped_by.append(kind)
                stop.set()  # days in flight stop at their next chunk or retry; the others never start
        return result

    bar = tqdm(total=len(days), desc=f"download {product}", unit="day")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(args.workers, len(days)))
    try:
        futures = {pool.submit(run_day, day): day for day in days}
        for future in concurrent.futures.as_completed(futures):
            day, result = futures[future], future.result()
            if result.state == "failed":
                tqdm.write(f"{day:%Y%m%d}: failed: {result.detail}", file=sys.stderr)
            bar.update(1)
            with lock:
                counts = [sum(1 for r in results.values() if r.state == k) for k in ("downloaded", "failed")]
            bar.set_postfix(new=counts[0], failed=counts[1], refresh=False)
    except KeyboardInterrupt:
        stop.set()  # workers stop at the next chunk; their .part files are resumed next run
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    return results, (stopped_by[0] if stopped_by else None)


def main(argv=None):
    args = build_parser().parse_args(argv)
    params = load_params(args.config, overrides={"sea_ice.product": args.product,
                                                 "sea_ice.base_url": args.base_url,
                                                 "paths.sea_ice_data": args.output_dir}, builtin_defaults=True)
    ice = params["sea_ice"]
    start = _date("--start_date", args.start_date, "sea_ice.start_date", ice["start_date"])
    end = _date("--end_date", args.end_date, "sea_ice.end_date", ice["end_date"])
    days = date_range(start, end)
    product, out_dir = ice["product"], params["paths"]["sea_ice_data"]
    base_url = ice["base_url"].replace("{product}", product).rstrip("/")
    check_base_url(base_url)
    if not out_dir:
        raise UserError("-o: expected a folder name, got an empty string")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"-o {out_dir}: exists and is not a folder")
    ensure_folder(out_dir, "-o")
    if int(f"{start:%Y%m%d}") < FIRST_DAY:
        tqdm.write(f"note: the AMSR2 ASI record starts {FIRST_DAY}; earlier days will be absent",
                   file=sys.stderr)

    results, stopped_by = fetch_all(days, args, out_dir, base_url, product)

    def dates_of(*states):
        return [f"{d:%Y%m%d}" for d in days if (results[d].state if d in results else "stopped") in states]

    absent, failed, not_tried = dates_of("absent"), dates_of("failed"), dates_of("stopped")
    if stopped_by is not None and not_tried:
        print(f"stopped early: the first {len(failed)} days all failed the same way ({stopped_by}); "
              f"{len(not_tried)} days not done", file=sys.stderr)
    print(f"download: {len(dates_of('downloaded'))} downloaded, {len(dates_of('present'))} already present, "
          f"{len(absent)} absent upstream{' (' + ', '.join(absent) + ')' if absent else ''}, "
          f"{len(failed)} failed{' (' + ', '.join(failed) + ')' if failed else ''}"
          f"{f', {len(not_tried)} not done (stopped early)' if not_tried else ''} "
          f"-> {os.path.join(out_dir, '')} ({len(days)} days {start:%Y%m%d}..{end:%Y%m%d}, {product})")
    return 1 if failed or not_tried else 0


if __name__ == "__main__":
    run_main(main)
