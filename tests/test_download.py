"""download.py against the loopback mirror (mirror_server.py) with injected faults; no other network."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import netCDF4
import numpy as np
import pytest

from conftest import ROOT
import config
import download
import generate_data
from mirror_server import MirrorServer

PARAMS = os.path.join(ROOT, "params.json")
DAYS = [f"202404{d:02d}" for d in range(1, 7)]  # 20240401..20240406
ABSENT = "20240404"


def name(day, product="n3125"):
    return generate_data.asi_filename(day, product)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The 'archive': six tiny days (56 x 38) 20240401..06, 20240404 absent upstream."""
    folder = tmp_path_factory.mktemp("upstream")
    generate_data.write_asi_days(str(folder), DAYS[0], DAYS[-1], shape=(56, 38), seed=7, absent=[ABSENT])
    return str(folder)


def data_of(folder, day):
    with open(os.path.join(folder, name(day)), "rb") as fh:
        return fh.read()


def run(srv, out, *extra, start=DAYS[0], end=DAYS[-1]):
    """download.main with fast retry settings; returns the exit status."""
    argv = ["--config", PARAMS, "--start_date", start, "--end_date", end, "-o", str(out),
            "--base_url", srv.base_url, "--backoff", "0.01", "--timeout", "5", *extra]
    return download.main(argv)


def summary(capsys):
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("download:")]
    assert len(lines) == 1
    return lines[0]


def gets_for(srv, day):
    """[(range header, status)] of the GETs the server saw for one day's file."""
    return [(r[2], r[3]) for r in srv.requests if r[0] == "GET" and r[1].endswith(name(day))]


def test_normal_run_then_everything_present(upstream, tmp_path, capsys):
    out = tmp_path / "data"
    with MirrorServer(upstream) as srv:
        assert run(srv, out, "--workers", "3") == 0
        line = summary(capsys)
        assert f"5 downloaded, 0 already present, 1 absent upstream ({ABSENT}), 0 failed" in line
        assert sorted(os.listdir(out)) == sorted(name(d) for d in DAYS if d != ABSENT)  # flat, no .part
        for day in DAYS:
            if day != ABSENT:
                assert data_of(out, day) == data_of(upstream, day)
        assert gets_for(srv, ABSENT) == [(None, 404)]  # a 404 is not retried
        assert all(r[1].startswith("/amsr2/asi_daygrid_swath/n3125/netcdf/2024/") for r in srv.requests)
        n_before = len(srv.requests)
        assert run(srv, out) == 0
        assert f"0 downloaded, 5 already present, 1 absent upstream ({ABSENT}), 0 failed" in summary(capsys)
        assert [r[1].rsplit("/", 1)[1] for r in srv.requests[n_before:]] == [name(ABSENT)]


def test_cut_mid_body_is_retried_by_resuming(upstream, tmp_path, capsys):
    day, full = DAYS[0], data_of(upstream, DAYS[0])
    with MirrorServer(upstream) as srv:
        srv.add_fault(name(day), "cut")
        assert run(srv, tmp_path, start=day, end=day) == 0
        assert data_of(tmp_path, day) == full
        assert gets_for(srv, day) == [(None, 200), (f"bytes={len(full) // 2}-", 206)]
    assert "1 downloaded" in summary(capsys)


def test_500_and_dropped_connection_then_success(upstream, tmp_path, capsys):
    with MirrorServer(upstream) as srv:
        srv.add_fault(name(DAYS[1]), "500")
        srv.add_fault(name(DAYS[2]), "drop", "503")
        assert run(srv, tmp_path, start=DAYS[1], end=DAYS[2]) == 0
        assert gets_for(srv, DAYS[1]) == [(None, 500), (None, 200)]
        assert gets_for(srv, DAYS[2]) == [(None, None), (None, 503), (None, 200)]
    for day in DAYS[1:3]:
        assert data_of(tmp_path, day) == data_of(upstream, day)
    assert "2 downloaded" in summary(capsys)


def test_slow_body_times_out_and_is_retried(upstream, tmp_path, capsys):
    day = DAYS[0]
    with MirrorServer(upstream, slow_chunk=1024, slow_delay=1.0) as srv:
        srv.add_fault(name(day), "slow")
        t0 = time.perf_counter()
        assert run(srv, tmp_path, "--timeout", "0.25", start=day, end=day) == 0
        assert time.perf_counter() - t0 < 5
        # the first 1024-byte piece reached the .part before the timeout; the retry resumes after it
        assert gets_for(srv, day) == [(None, 200), ("bytes=1024-", 206)]
    assert data_of(tmp_path, day) == data_of(upstream, day)


def test_slow_body_every_time_fails_clearly(upstream, tmp_path, capsys):
    day = DAYS[0]
    with MirrorServer(upstream, slow_chunk=1024, slow_delay=1.0) as srv:
        srv.add_fault(name(day), "slow", "slow")
        assert run(srv, tmp_path, "--timeout", "0.25", "--retries", "1", start=day, end=day) == 1
    out = capsys.readouterr()
    assert f"0 downloaded, 0 already present, 0 absent upstream, 1 failed ({day})" in out.out
    assert "timed out after 0.25 s (2 attempts)" in out.err
    assert not os.path.exists(tmp_path / name(day))


def test_resume_of_a_part_uses_range(upstream, tmp_path, capsys):
    day, full = DAYS[2], data_of(upstream, DAYS[2])
    (tmp_path / (name(day) + ".part")).write_bytes(full[:10000])
    with MirrorServer(upstream) as srv:
        assert run(srv, tmp_path, start=day, end=day) == 0
        assert gets_for(srv, day) == [("bytes=10000-", 206)]
    assert data_of(tmp_path, day) == full
    assert not os.path.exists(tmp_path / (name(day) + ".part"))


def test_part_restarts_when_server_ignores_range(upstream, tmp_path, capsys):
    day, full = DAYS[2], data_of(upstream, DAYS[2])
    (tmp_path / (name(day) + ".part")).write_bytes(full[:10000])
    with MirrorServer(upstream, honour_range=False) as srv:
        assert run(srv, tmp_path, start=day, end=day) == 0
        assert gets_for(srv, day) == [("bytes=10000-", 200)]  # 200: the body is the whole file again
    assert data_of(tmp_path, day) == full  # written from the start, not appended


def test_part_as_long_as_the_file_starts_over(upstream, tmp_path, capsys):
    day, full = DAYS[2], data_of(upstream, DAYS[2])
    (tmp_path / (name(day) + ".part")).write_bytes(full)
    with MirrorServer(upstream) as srv:
        assert run(srv, tmp_path, "--retries", "0", start=day, end=day) == 0  # restart is not a retry
        assert gets_for(srv, day) == [(f"bytes={len(full)}-", 416), (None, 200)]
    assert data_of(tmp_path, day) == full


def test_corrupt_part_is_discarded_after_check(upstream, tmp_path, capsys):
    """A .part of the right length but wrong bytes fails the NetCDF check: fetched whole again."""
    day, full = DAYS[2], data_of(upstream, DAYS[2])
    (tmp_path / (name(day) + ".part")).write_bytes(b"\0" * 10000)
    with MirrorServer(upstream) as srv:
        assert run(srv, tmp_path, start=day, end=day) == 0
        assert gets_for(srv, day) == [("bytes=10000-", 206), (None, 200)]
    assert data_of(tmp_path, day) == full


def test_existing_valid_file_skipped_unless_force(upstream, tmp_path, capsys):
    day = DAYS[0]
    other = generate_data.write_asi_days(str(tmp_path / "other"), day, day, shape=(56, 38), seed=99)
    local = tmp_path / "data"
    os.makedirs(local)
    with open(other["files"][0], "rb") as fh:
        old = fh.read()
    (local / name(day)).write_bytes(old)
    assert old != data_of(upstream, day)
    with MirrorServer(upstream) as srv:
        assert run(srv, local, start=day, end=day) == 0
        assert gets_for(srv, day) == [] and data_of(local, day) == old
        assert "0 downloaded, 1 already present" in summary(capsys)
        assert run(srv, local, "-f", start=day, end=day) == 0
        assert gets_for(srv, day) == [(None, 200)]
        assert data_of(local, day) == data_of(upstream, day)
        assert "1 downloaded, 0 already present" in summary(capsys)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_existing_file_is_fetched_again(upstream, tmp_path, capsys, damage):
    day, full = DAYS[1], data_of(upstream, DAYS[1])
    bad = b"<html>502 Bad Gateway</html>" if damage == "garbage" else full[:len(full) - 100]
    (tmp_path / name(day)).write_bytes(bad)
    with MirrorServer(upstream) as srv:
        assert run(srv, tmp_path, start=day, end=day) == 0
        assert gets_for(srv, day) == [(None, 200)]
    assert data_of(tmp_path, day) == full
    assert "1 downloaded, 0 already present" in summary(capsys)


def test_truncated_download_never_gets_the_final_name(upstream, tmp_path, capsys):
    day, full = DAYS[0], data_of(upstream, DAYS[0])
    with MirrorServer(upstream) as srv:
        srv.add_fault(name(day), "cut")
        assert run(srv, tmp_path, "--retries", "0", start=day, end=day) == 1
        assert f"1 failed ({day})" in summary(capsys)
        assert not os.path.exists(tmp_path / name(day))
        assert (tmp_path / (name(day) + ".part")).read_bytes() == full[:len(full) // 2]
        assert run(srv, tmp_path, start=day, end=day) == 0  # the next run resumes the .part
        assert gets_for(srv, day)[-1] == (f"bytes={len(full) // 2}-", 206)
    assert data_of(tmp_path, day) == full


def test_interrupted_run_keeps_part_and_next_run_resumes(upstream, tmp_path):
    """Ctrl-C mid-download: exit 130, only .part files; the next run resumes them with Range."""
    day, full = DAYS[0], data_of(upstream, DAYS[0])
    with MirrorServer(upstream, slow_chunk=4096, slow_delay=0.3) as srv:
        srv.add_fault(name(day), "slow")
        # Ctrl-C is restored explicitly: a test run in the background inherits SIGINT ignored
        launcher = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        proc = subprocess.Popen([sys.executable, "-c", launcher, os.path.join(ROOT, "download.py"),
                                 "--config", PARAMS, "--start_date", day, "--end_date", day,
                                 "-o", str(tmp_path), "--base_url", srv.base_url],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        part = tmp_path / (name(day) + ".part")
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and err.rstrip().endswith("interrupted")
        assert os.listdir(tmp_path) == [part.name]
        kept = part.stat().st_size
        assert 0 < kept < len(full) and full.startswith(part.read_bytes())
        assert download.main(["--config", PARAMS, "--start_date", day, "--end_date", day, "-o", str(tmp_path),
                              "--base_url", srv.base_url]) == 0
        assert gets_for(srv, day) == [(None, 200), (f"bytes={kept}-", 206)]
    assert data_of(tmp_path, day) == full


def test_upstream_file_that_is_not_netcdf_fails(upstream, tmp_path, capsys):
    """A 200 answer of complete length that is not NetCDF: a permanent failure (not retried), never
    renamed, no .part left, exit 1."""
    day = DAYS[0]
    archive = tmp_path / "archive"
    os.makedirs(archive)
    (archive / name(day)).write_bytes(b"x" * 5000)
    with MirrorServer(str(archive)) as srv:
        assert run(srv, tmp_path / "data", "--retries", "1", start=day, end=day) == 1
        assert len(gets_for(srv, day)) == 1
    out = capsys.readouterr()
    assert f"1 failed ({day})" in out.out and "answered 200 with a file that is not a NetCDF file" in out.err
    assert os.listdir(tmp_path / "data") == []


def test_day_that_keeps_failing_exits_1_and_is_named(upstream, tmp_path, capsys):
    bad = DAYS[1]
    with MirrorServer(upstream) as srv:
        srv.add_fault(name(bad), "500", "500", "500")
        t0 = time.perf_counter()
        status = download.main(["--config", PARAMS, "--start_date", DAYS[0], "--end_date", DAYS[2],
                                "-o", str(tmp_path), "--base_url", srv.base_url,
                                "--retries", "2", "--backoff", "0.1"])
        elapsed = time.perf_counter() - t0
        assert status == 1
        assert gets_for(srv, bad) == [(None, 500)] * 3
    out = capsys.readouterr()
    assert f"2 downloaded, 0 already present, 0 absent upstream, 1 failed ({bad})" in out.out
    assert "HTTP 500 (3 attempts)" in out.err
    assert elapsed >= 0.1 + 0.2  # exponential backoff: 0.1 s, then 0.2 s
    assert not os.path.exists(tmp_path / name(bad))


def test_defaults_come_from_params(upstream, tmp_path, capsys, params, params_file):
    """No flags: dates, product, base_url ({product} substituted) and folder from params.json."""
    archive = tmp_path / "archive"
    generate_data.write_asi_days(str(archive), 20240402, 20240403, shape=(28, 19), seed=2, product="n6250")
    with MirrorServer(str(archive), product=None) as srv:
        params["sea_ice"].update(product="n6250", start_date=20240402, end_date=20240403,
                                 base_url=srv.base_url + "/amsr2/asi_daygrid_swath/{product}/netcdf")
        params["paths"]["sea_ice_data"] = str(tmp_path / "ice")
        assert download.main(["--config", params_file(params), "--backoff", "0.01"]) == 0
        assert {r[1] for r in srv.requests} == {
            f"/amsr2/asi_daygrid_swath/n6250/netcdf/2024/{name(d, 'n6250')}" for d in (20240402, 20240403)}
    assert sorted(os.listdir(tmp_path / "ice")) == [name(d, "n6250") for d in (20240402, 20240403)]


def test_seed_commands_output_dir_alias_and_force(upstream, tmp_path):
    """The seed's two commands, as subprocesses: --output-dir ./data, then -o ./data -f."""
    with MirrorServer(upstream) as srv:
        common = [sys.executable, os.path.join(ROOT, "download.py"), "--config", PARAMS,
                  "--start_date", DAYS[0], "--end_date", DAYS[1], "--base_url", srv.base_url]
        first = subprocess.run(common + ["--output-dir", "./data"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert "2 downloaded" in first.stdout
        second = subprocess.run(common + ["-o", "./data", "-f"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert "2 downloaded, 0 already present" in second.stdout
        assert len(gets_for(srv, DAYS[0])) == 2
    for day in DAYS[:2]:
        assert data_of(tmp_path / "data", day) == data_of(upstream, day)


def test_bad_date_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "download.py"), "--config", PARAMS,
                           "--start_date", "20241301", "--end_date", "20241302", "-o", str(tmp_path),
                           "--base_url", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --start_date '20241301': expected a calendar day as YYYYMMDD (8 digits)"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, words", [
    (["--start_date", "20240410", "--end_date", "20240401"], ["before start date"]),
    (["--base_url", "ftp://example.org/x"], ["--base_url", "http://"]),
])
def test_user_errors_raise(tmp_path, argv, words):
    base = ["--config", PARAMS, "-o", str(tmp_path), "--base_url", "http://127.0.0.1:9"]
    with pytest.raises(config.UserError) as err:
        download.main(base + argv)
    assert all(w in str(err.value) for w in words)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        download.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--start_date", "--end_date", "-o", "--output-dir", "-f", "--product", "--base_url",
                 "--workers", "--retries", "--timeout", "--backoff", "--config"):
        assert flag in text
    assert text.count("default") >= 10


# --------------------------------------------------------------------------- permanent failures, early stop
TEN_DAYS = ("20240401", "20240410")


def no_dns(monkeypatch):
    """Resolve only loopback names; any other lookup fails as an unknown host would, without a DNS query.
    Returns the list of names that were looked up."""
    real, asked = socket.getaddrinfo, []

    def getaddrinfo(host, *args, **kwargs):
        if host in ("127.0.0.1", "localhost", "::1"):
            return real(host, *args, **kwargs)
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def check_stopped_early(out, n_days, kind):
    """Failed and not-tried days of the summary; the early stop names the shared `kind`."""
    line = [l for l in out.out.splitlines() if l.startswith("download:")][0]
    failed = int(re.search(r"(\d+) failed", line).group(1))
    not_tried = int(re.search(r"(\d+) not done", line).group(1))
    assert "0 downloaded, 0 already present, 0 absent upstream" in line
    # a day starts only while fewer than EARLY_STOP_DAYS have failed alike; up to 3 more were in flight
    assert download.EARLY_STOP_DAYS <= failed <= download.EARLY_STOP_DAYS + 3 and failed + not_tried == n_days
    assert f"stopped early: the first {failed} days all failed the same way ({kind})" in out.err
    return failed


def test_host_that_does_not_resolve_fails_fast_and_stops(tmp_path, capsys, monkeypatch):
    asked = no_dns(monkeypatch)
    t0 = time.perf_counter()
    status = download.main(["--config", PARAMS, "--start_date", TEN_DAYS[0], "--end_date", TEN_DAYS[1],
                            "-o", str(tmp_path), "--base_url", "http://archive.example.invalid/netcdf",
                            "--retries", "5", "--backoff", "1"])
    assert status == 1 and time.perf_counter() - t0 < 5  # no retry, no backoff: a DNS failure is permanent
    failed = check_stopped_early(capsys.readouterr(), 10, "host archive.example.invalid does not resolve")
    assert asked == ["archive.example.invalid"] * failed  # one lookup per day tried, no retry
    assert os.listdir(tmp_path) == []


def test_port_that_refuses_fails_fast_and_stops(tmp_path, capsys, monkeypatch):
    no_dns(monkeypatch)
    with socket.socket() as sock:  # a loopback port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.perf_counter()
    status = download.main(["--config", PARAMS, "--start_date", TEN_DAYS[0], "--end_date", TEN_DAYS[1],
                            "-o", str(tmp_path), "--base_url", f"http://127.0.0.1:{port}/netcdf",
                            "--retries", "5", "--backoff", "1"])
    assert status == 1 and time.perf_counter() - t0 < 5
    check_stopped_early(capsys.readouterr(), 10, f"connection refused by 127.0.0.1:{port}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, kind", [
    (b"<html><body>Welcome</body></html>" * 50, "the server sends files that are not NetCDF"),
    ("no_z", "the server sends files that are not Bremen ASI days"),
])
def test_answers_that_are_not_asi_days_are_permanent(tmp_path, capsys, monkeypatch, content, kind):
    """Every day answers 200 with an HTML page (a wrong --base_url) or a NetCDF file without z: each day
    is fetched once (no retry), the run stops early, nothing gets a final name."""
    no_dns(monkeypatch)
    archive = tmp_path / "archive"
    os.makedirs(archive)
    for day in generate_data.date_range(*TEN_DAYS):
        path = archive / name(day)
        if content == "no_z":
            with netCDF4.Dataset(path, "w") as nc:
                nc.createDimension("y", 4)
                nc.createVariable("sic", "f4", ("y",))[:] = 50.0
        else:
            path.write_bytes(content)
    with MirrorServer(str(archive)) as srv:
        assert run(srv, tmp_path / "data", "--retries", "3", start=TEN_DAYS[0], end=TEN_DAYS[1]) == 1
        failed = check_stopped_early(capsys.readouterr(), 10, kind)
        gets = [r[1] for r in srv.requests if r[0] == "GET"]
        assert len(gets) == len(set(gets)) and failed <= len(gets) <= failed + 3  # once per day; 3 cut short
    assert all(f.endswith(".part") for f in os.listdir(tmp_path / "data"))  # nothing gets a final name


def test_transient_failure_of_every_day_stops_early_too(upstream, tmp_path, capsys):
    with MirrorServer(upstream) as srv:
        for day in DAYS:
            srv.add_fault(name(day), "503", "503")
        assert run(srv, tmp_path, "--retries", "1", "--workers", "1") == 1
        failed = check_stopped_early(capsys.readouterr(), 6, "HTTP 503")
        assert failed == 3 and len(srv.requests) == 3 * 2  # three days, two attempts each, then the stop


def test_no_early_stop_when_a_day_succeeds(upstream, tmp_path, capsys):
    with MirrorServer(upstream) as srv:
        for day in DAYS[1:]:
            srv.add_fault(name(day), "403")
        assert run(srv, tmp_path, "--workers", "1") == 1
    out = capsys.readouterr()
    assert f"1 downloaded, 0 already present, 1 absent upstream ({ABSENT}), 4 failed" in out.out
    assert "stopped early" not in out.err and "not done" not in out.out


@pytest.mark.parametrize("local", ["no_z", "classic", "y_missing"])
def test_local_file_that_is_not_an_asi_day_is_not_present(upstream, tmp_path, capsys, local):
    """A NetCDF file under the day's name that is not a Bremen ASI day (no z; NetCDF-3, whose truncation
    cannot be seen; no y coordinate) is never 'already present': fetched again and replaced."""
    day = DAYS[0]
    path = tmp_path / name(day)
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC" if local == "classic" else "NETCDF4") as nc:
        nc.createDimension("y", 56)
        nc.createDimension("x", 38)
        nc.createVariable("x", "f8", ("x",))[:] = np.arange(38.0)
        if local != "y_missing":
            nc.createVariable("y", "f8", ("y",))[:] = np.arange(56.0)
        if local != "no_z":
            nc.createVariable("z", "f4", ("y", "x"))[:] = 50.0
    with MirrorServer(upstream) as srv:
        assert run(srv, tmp_path, start=day, end=day) == 0
        assert gets_for(srv, day) == [(None, 200)]
    assert data_of(tmp_path, day) == data_of(upstream, day)
    assert "1 downloaded, 0 already present" in summary(capsys)


def test_output_dir_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "download.py"), "--config", PARAMS,
                           "--start_date", "20240401", "--end_date", "20240401", "-o", str(blocker / "data"),
                           "--base_url", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: -o {blocker / 'data'}: {blocker} is a file, expected a folder"
