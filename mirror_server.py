"""A loopback HTTP mirror of the Bremen ASI archive, for download.py's tests and the demo.

The real server (data.seaice.uni-bremen.de) cannot be reached from these machines, so this
serves a local folder of daily files in exactly the real URL layout
(`../shared/docs/bremen-asi-format.md`):

    <base_url>/<YYYY>/asi-AMSR2-<product>-<YYYYMMDD>-v5.4.nc

The folder may be flat (as download.py and generate_data.py write it) or hold one
sub-folder per year (<root>/<YYYY>/<name>). Any path prefix before /<YYYY>/ is accepted, so
a base_url such as http://127.0.0.1:PORT/amsr2/asi_daygrid_swath/n3125/netcdf works. The
year in the URL must be the year of the file's date; everything else is a 404, as upstream.

HEAD, Content-Length and Range requests (`bytes=N-`, `bytes=N-M`, `bytes=-N`; 206 with
Content-Range, 416 when N is past the end) are supported; `honour_range=False` answers every
request with 200 and the whole file, as a server without Range support would.

Fault injection (tests): `srv.add_fault(name, "cut", "500")` queues faults for one file; each
request for that file consumes the next one:
    cut     headers with the full Content-Length, then half the body, then close
    drop    close the connection without answering
    500/503/404/...  that HTTP status instead of the file
    slow    the body in `slow_chunk`-byte pieces, `slow_delay` seconds apart
    norange ignore this request's Range header (200, whole file)

    with MirrorServer("data") as srv:
        srv.add_fault("asi-AMSR2-n3125-20240401-v5.4.nc", "cut")
        ...download from srv.base_url...
        srv.requests  # [(method, path, range header or None, status), ...]

    python mirror_server.py --root data --port 8000     # prints the base URL on stdout, Ctrl-C stops
"""
import argparse
import collections
import http.server
import os
import re
import sys
import threading

from config import UserError, run_main

PRODUCTS = ("n3125", "n6250", "s3125", "s6250")
NAME_RE = re.compile(r"^asi-AMSR2-(n3125|n6250|s3125|s6250)-(\d{4})(\d{2})(\d{2})-v5\.4\.nc$")
URL_PREFIX = "/amsr2/asi_daygrid_swath/{product}/netcdf"  # the upstream folder, for realism
STATUS_FAULTS = {"400", "403", "404", "408", "429", "500", "502", "503", "504"}
FAULTS = {"cut", "drop", "slow", "norange"} | STATUS_FAULTS


class QuietServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client hangs up mid-request
    (download.py closes a connection once it knows a file is already complete)."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class MirrorServer:
    """Serve `root` on http://host:port in the Bremen layout, in a background thread.

    root: folder of asi-AMSR2-*.nc files (flat, or <root>/<YYYY>/<name>).
    port: 0 picks a free port. product: serve only this grid (None: any).
    honour_range: False answers Range requests with 200 and the whole file.
    slow_chunk (bytes) / slow_delay (s): pacing of the "slow" fault.
    """

    def __init__(self, root, host="127.0.0.1", port=0, product="n3125", honour_range=True,
                 slow_chunk=1024, slow_delay=1.0):
        if not os.path.isdir(root):
            raise UserError(f"{root}: mirror root folder not found")
        if product is not None and product not in PRODUCTS:
            raise UserError(f"product {product!r}: expected one of {', '.join(PRODUCTS)}")
        self.root, self.product, self.honour_range = root, product, honour_range
        self.slow_chunk, self.slow_delay = int(slow_chunk), float(slow_delay)
        self.requests = []  # (method, path, range header or None, status or None for "drop")
        self._faults = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = QuietServer((host, port), MirrorHandler)
        self._httpd.mirror = self
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = None

    # ---------------------------------------------------------------- public API
    @property
    def base_url(self):
        """URL of the netcdf folder: files are at <base_url>/<YYYY>/<name>."""
        prefix = URL_PREFIX.format(product=self.product) if self.product else ""
        return f"http://{self.host}:{self.port}{prefix}"

    def url_for(self, name):
        """Full URL of one file name (asi-AMSR2-<product>-<YYYYMMDD>-v5.4.nc)."""
        match = NAME_RE.match(name)
        if not match:
            raise ValueError(f"{name!r} is not an ASI day file name")
        return f"{self.base_url}/{match.group(2)}/{name}"

    def add_fault(self, name, *faults):
        """Queue faults for file `name`; each request for it consumes one (see module doc)."""
        for fault in faults:
            if str(fault) not in FAULTS:
                raise ValueError(f"fault {fault!r}: expected one of {', '.join(sorted(FAULTS))}")
        with self._lock:
            self._faults[name].extend(str(f) for f in faults)

    def pending_faults(self, name):
        with self._lock:
            return list(self._faults[name])

    def start(self):
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mirror-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()  # wakes "slow" responses so their threads end
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_forever(self):
        """Serve in the calling thread until KeyboardInterrupt (the CLI)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._stopping.set()
            self._httpd.server_close()

    # ---------------------------------------------------------------- internals
    def _take_fault(self, name):
        with self._lock:
            queue = self._faults.get(name)
            return queue.popleft() if queue else None

    def _log(self, method, path, range_header, status):
        with self._lock:
            self.requests.append((method, path, range_header, status))

    def resolve(self, url_path):
        """File path on disk for a URL path, or None (-> 404)."""
        parts = url_path.split("?", 1)[0].rstrip("/").split("/")
        if len(parts) < 3:
            return None
        year, name = parts[-2], parts[-1]
        match = NAME_RE.match(name)
        if not match or year != match.group(2):
            return None
        if self.product is not None and match.group(1) != self.product:
            return None
        for path in (os.path.join(self.root, name), os.path.join(self.root, year, name)):
            if os.path.isfile(path):
                return path
        return None


def _parse_range(header, size):
    """(start, end inclusive) for a single-range `bytes=` header; "bad" when unsatisfiable; None to ignore."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match or (match.group(1) == "" and match.group(2) == ""):
        return None  # absent, malformed or multi-range: serve the whole file (allowed by RFC 9110)
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return "bad"
        return max(size - n, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "bad"
    return start, end


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET/HEAD like the Bremen server: files by name, Range requests, the injected faults of
    the MirrorServer at self.server.mirror."""
    protocol_version = "HTTP/1.1"  # keep-alive like a real server; Content-Length always sent
    server_version = "ASIMirror/1.0"

    def log_message(self, *args):  # quiet: the request log is server.requests
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _status_only(self, status, method, range_header, extra=None):
        self.server.mirror._log(method, self.path, range_header, status)
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    def _serve(self, head):
        mirror, method = self.server.mirror, "HEAD" if head else "GET"
        range_header = self.headers.get("Range")
        name = self.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        path = mirror.resolve(self.path)
        fault = mirror._take_fault(name) if path is not None else None
        if fault == "drop":
            mirror._log(method, self.path, range_header, None)
            self.close_connection = True
            return
        if fault in STATUS_FAULTS:
            return self._status_only(int(fault), method, range_header)
        if path is None:
            return self._status_only(404, method, range_header)
        size = os.path.getsize(path)
        wanted = _parse_range(range_header, size) if mirror.honour_range and fault != "norange" else None
        if wanted == "bad":
            return self._status_only(416, method, range_header, {"Content-Range": f"bytes */{size}"})
        status, (start, end) = (200, (0, size - 1)) if wanted is None else (206, wanted)
        mirror._log(method, self.path, range_header, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/x-netcdf")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Accept-Ranges", "bytes" if mirror.honour_range else "none")
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if fault == "cut":
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self._stream(path, start, end + 1 - start, fault)

    def _stream(self, path, start, length, fault):
        """Send `length` bytes of the file from `start` (half of them for a "cut", slowly for "slow")."""
        mirror = self.server.mirror
        to_send = length // 2 if fault == "cut" else length
        piece = mirror.slow_chunk if fault == "slow" else 1 << 16
        try:
            with open(path, "rb") as fh:  # streamed: memory stays small for any file size
                fh.seek(start)
                while to_send > 0:
                    chunk = fh.read(min(piece, to_send))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    to_send -= len(chunk)
                    if fault == "slow":
                        self.wfile.flush()
                        if to_send > 0 and mirror._stopping.wait(mirror.slow_delay):
                            break
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. timed out)
            pass
        if fault in ("cut", "slow") or to_send > 0:
            self.close_connection = True


def port_number(text):
    """argparse `type`: a TCP port 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {port}")
    return port


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve a folder of ASI day files in the Bremen URL "
                                     "layout on a loopback HTTP server (for download.py and the demo).")
    parser.add_argument("--root", required=True, help="folder of asi-AMSR2-*.nc files (flat or per-year)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000,
                        help="TCP port 0..65535; 0 picks a free one (default: 8000)")
    parser.add_argument("--product", default="n3125", choices=PRODUCTS,
                        help="grid served and named in the base URL (default: n3125)")
    parser.add_argument("--no-range", action="store_true",
                        help="ignore Range requests: always 200 with the whole file (default: honour them)")
    args = parser.parse_args(argv)
    try:
        srv = MirrorServer(args.root, args.host, args.port, args.product, honour_range=not args.no_range)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({reason})") from None
    n_files = sum(1 for _, _, files in os.walk(args.root) for f in files if NAME_RE.match(f))
    print(srv.base_url, flush=True)  # stdout holds only the URL, so `URL=$(... | head -1)` works
    print(f"serving {n_files} ASI files from {args.root} at {srv.base_url} (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    run_main(main)
