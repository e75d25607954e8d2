"""One helper for every writer: outputs appear under their final name only when complete.

    with atomic_path("outputs/eval/metrics.json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(report, fh)
    # metrics.json now exists, complete; had the block raised, it would be untouched

An interrupted run (an error, Ctrl-C, a crash) never leaves a file that looks finished: at worst a
`<name>.tmp` is left behind, which the next run overwrites.
"""
import contextlib
import os
import shutil


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    path: the final file or folder (a Zarr store is a folder); its parent folder is created.
    On success the temporary file/folder replaces `path` (an old folder is removed first). On any
    exception, KeyboardInterrupt included, the temporary is removed, `path` is left as it was and
    the exception propagates.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + suffix
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if os.path.isdir(tmp) and os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
