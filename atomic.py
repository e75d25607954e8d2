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
    the exception propagates. config.UserError (one line naming `path`) when the parent folder
    cannot be made (a file in the way, no permission), when writing the temporary fails for want of
    permission or space (an OSError about it), or when `path` is a folder and the output a file or
    the other way round.
    """
    from config import UserError, ensure_folder  # config imports this module
    ensure_folder(os.path.dirname(os.path.abspath(path)), "output folder")
    tmp = path + suffix
    _remove(tmp)
    try:
        yield tmp
    except OSError as exc:
        _remove(tmp)
        if _is_about(exc, tmp):
            raise UserError(f"{path}: cannot write it ({exc.strerror or exc})") from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    if os.path.isdir(tmp) != os.path.isdir(path) and os.path.lexists(path):
        _remove(tmp)
        kind = "a folder" if os.path.isdir(path) else "a file"
        raise UserError(f"{path}: is {kind}, expected {'a file' if kind == 'a folder' else 'a folder'} there")
    if os.path.isdir(tmp) and os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _is_about(exc, tmp):
    """Whether an OSError is about the temporary `tmp` (or a file inside it)."""
    name = os.path.abspath(str(exc.filename)) if exc.filename is not None else ""
    tmp = os.path.abspath(tmp)
    return name == tmp or name.startswith(tmp + os.sep)
