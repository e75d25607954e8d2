"""mirror_server.py: the loopback server serves and 404s as the real Bremen layout would."""
import http.client
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest

from conftest import ROOT
import generate_data
from mirror_server import MirrorServer

NAME = "asi-AMSR2-n3125-20240402-v5.4.nc"


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Three tiny days 20240401..03, flat; 20240403 absent; one n6250 file as well."""
    folder = tmp_path_factory.mktemp("mirror")
    generate_data.write_asi_days(str(folder), 20240401, 20240403, shape=(56, 38), seed=1, absent=[20240403])
    generate_data.write_asi_days(str(folder), 20240401, 20240401, shape=(28, 19), seed=1, product="n6250")
    return str(folder)


def request(url, method="GET", headers=None):
    """(status, headers dict, body bytes) with a plain http.client connection."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, parts.path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def file_bytes(folder, name=NAME):
    with open(os.path.join(folder, name), "rb") as fh:
        return fh.read()


def test_serves_exact_bytes_in_bremen_layout(days):
    with MirrorServer(days) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert srv.base_url.endswith("/amsr2/asi_daygrid_swath/n3125/netcdf")
        status, headers, body = request(f"{srv.base_url}/2024/{NAME}")
        assert status == 200
        assert body == file_bytes(days)
        assert int(headers["Content-Length"]) == len(body)
        # any prefix before /<YYYY>/ is accepted
        status, _, body = request(f"http://127.0.0.1:{srv.port}/2024/{NAME}")
        assert status == 200 and body == file_bytes(days)
        assert srv.url_for(NAME) == f"{srv.base_url}/2024/{NAME}"


def test_404_for_absent_day_wrong_year_unknown_name_and_other_product(days):
    with MirrorServer(days) as srv:
        base = srv.base_url
        assert request(f"{base}/2024/asi-AMSR2-n3125-20240403-v5.4.nc")[0] == 404  # absent day
        assert request(f"{base}/2023/{NAME}")[0] == 404  # year folder does not match the date
        assert request(f"{base}/{NAME}")[0] == 404  # no year folder
        assert request(f"{base}/2024/asi-AMSR2-n3125-20240402-v5.3.nc")[0] == 404  # unknown version
        assert request(f"{base}/2024/readme.txt")[0] == 404
        assert request(f"{base}/2024/../{NAME}")[0] == 404
        assert request(f"{base}/2024/")[0] == 404
        # product filter: n3125 server does not serve the n6250 file, an any-product server does
        n6250 = "asi-AMSR2-n6250-20240401-v5.4.nc"
        assert request(f"{base}/2024/{n6250}")[0] == 404
    with MirrorServer(days, product=None) as srv:
        status, _, body = request(f"{srv.base_url}/amsr2/asi_daygrid_swath/n6250/netcdf/2024/{n6250}")
        assert status == 200 and body == file_bytes(days, n6250)
        assert srv.requests[-1] == ("GET", f"/amsr2/asi_daygrid_swath/n6250/netcdf/2024/{n6250}", None, 200)


def test_year_folder_layout(days, tmp_path):
    os.makedirs(tmp_path / "2024")
    shutil.copy(os.path.join(days, NAME), tmp_path / "2024" / NAME)
    with MirrorServer(str(tmp_path)) as srv:
        status, _, body = request(f"{srv.base_url}/2024/{NAME}")
        assert status == 200 and body == file_bytes(days)
        assert request(f"{srv.base_url}/2024/asi-AMSR2-n3125-20240401-v5.4.nc")[0] == 404


def test_head_and_range(days):
    data = file_bytes(days)
    size = len(data)
    with MirrorServer(days) as srv:
        url = srv.url_for(NAME)
        status, headers, body = request(url, "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) == size
        status, headers, body = request(url, headers={"Range": "bytes=1000-"})
        assert status == 206
        assert headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
        assert body == data[1000:] and int(headers["Content-Length"]) == size - 1000
        status, headers, body = request(url, headers={"Range": "bytes=10-19"})
        assert status == 206 and body == data[10:20] and headers["Content-Range"] == f"bytes 10-19/{size}"
        status, _, body = request(url, headers={"Range": "bytes=-100"})
        assert status == 206 and body == data[-100:]
        status, headers, _ = request(url, headers={"Range": f"bytes={size}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
        assert [r[2:] for r in srv.requests] == [(None, 200), ("bytes=1000-", 206), ("bytes=10-19", 206),
                                                 ("bytes=-100", 206), (f"bytes={size}-", 416)]


def test_range_can_be_disabled_globally_and_per_request(days):
    data = file_bytes(days)
    with MirrorServer(days, honour_range=False) as srv:
        status, headers, body = request(srv.url_for(NAME), headers={"Range": "bytes=1000-"})
        assert status == 200 and body == data and "Content-Range" not in headers
    with MirrorServer(days) as srv:
        srv.add_fault(NAME, "norange")
        assert request(srv.url_for(NAME), headers={"Range": "bytes=1000-"})[::2] == (200, data)
        assert request(srv.url_for(NAME), headers={"Range": "bytes=1000-"})[::2] == (206, data[1000:])


def test_faults_are_consumed_one_per_request(days):
    data = file_bytes(days)
    with MirrorServer(days) as srv:
        url = srv.url_for(NAME)
        srv.add_fault(NAME, "500", "503", "404", "cut", "drop")
        assert request(url)[0] == 500
        assert request(url)[0] == 503
        assert request(url)[0] == 404
        with pytest.raises(http.client.IncompleteRead) as cut:  # full Content-Length, half the body
            request(url)
        assert cut.value.partial == data[:len(data) // 2]
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            request(url)
        assert request(url)[::2] == (200, data)  # queue empty: normal again
        assert srv.pending_faults(NAME) == []
        assert [r[3] for r in srv.requests] == [500, 503, 404, 200, None, 200]
        with pytest.raises(ValueError):
            srv.add_fault(NAME, "explode")


def test_slow_body_is_paced(days):
    data = file_bytes(days)
    with MirrorServer(days, slow_chunk=len(data) // 3 + 1, slow_delay=0.15) as srv:
        srv.add_fault(NAME, "slow")
        t0 = time.perf_counter()
        status, _, body = request(srv.url_for(NAME))
        elapsed = time.perf_counter() - t0
        assert status == 200 and body == data
        assert elapsed >= 0.3  # three pieces, at least two pauses of 0.15 s between them


def test_cli_prints_base_url_and_serves(days):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "mirror_server.py"), "--root", days,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/n3125/netcdf")
        status, _, body = request(f"{base_url}/2024/{NAME}")
        assert status == 200 and body == file_bytes(days)
        assert request(f"{base_url}/2024/asi-AMSR2-n3125-20240403-v5.4.nc")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_missing_root_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "mirror_server.py"), "--root",
                           str(tmp_path / "nope"), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr


def test_a_client_that_hangs_up_prints_no_traceback(tmp_path, capfd):
    """A connection reset by the client (download.py closing early) is not an error of the server."""
    import socket
    import struct
    with MirrorServer(str(tmp_path)) as srv:
        for _ in range(3):
            client = socket.create_connection((srv.host, srv.port))
            client.sendall(b"GET /")  # half a request line, then a reset (SO_LINGER 0)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        time.sleep(0.3)
        connection = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
        connection.request("GET", "/nothing")
        assert connection.getresponse().status == 404  # still serving
    assert "Traceback" not in capfd.readouterr().err
