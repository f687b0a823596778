"""Where uploaded files live and when they go. Gradio stores every upload in its upload folder and serves any file
there to whoever has its path; the app gives Gradio a private folder of its own (0700, made at start, removed at
exit), refuses to serve anything in it, and deletes each upload once it has been read or rejected."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

PREFIX = "hmt-uploads-"
FILE_ROUTES = ("/file=", "/file/")  # Gradio's two routes that serve files by path


def _alive(pid: int) -> bool:
    """Whether a process with this id is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_upload_folder(parent: str | Path | None = None) -> Path:
    """A new private (0700) folder for this server's uploads, in `parent` (default: the system temp folder),
    removed when the process exits; folders that servers which are no longer running left behind are deleted
    first."""
    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f"{PREFIX}*"):
        pid = old.name[len(PREFIX):].split("-", 1)[0]
        try:
            if pid.isdigit() and not _alive(int(pid)) and old.stat().st_uid == os.getuid():
                shutil.rmtree(old, ignore_errors=True)
                logger.info("removed the upload folder %s of a server that is no longer running", old)
        except OSError:
            continue
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)).resolve()  # mkdtemp: 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether path is in folder (or is it), after resolving links and '..'."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def discard(paths: Iterable[str | Path], folder: str | Path) -> None:
    """Delete the files among paths that are in the uploads folder (never anything else, such as the bundled
    example), with the folder Gradio made for each when it is left empty."""
    root = os.path.realpath(folder)
    for path in map(Path, paths):
        if not inside(path, root) or os.path.realpath(path) == root:
            continue
        try:
            path.unlink(missing_ok=True)
            if os.path.realpath(path.parent) != root and not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError as err:
            logger.warning("could not delete the upload %s: %s", path, err)


class UploadsNotServed:
    """ASGI middleware: 404 for a request of Gradio's file routes that names a file in the uploads folder, so an
    upload is never handed back to anyone, even while it is still being read."""

    def __init__(self, app: ASGIApp, folder: str | Path) -> None:
        self.app = app
        self.folder = folder

    def _names_an_upload(self, path: str) -> bool:
        for route in FILE_ROUTES:
            _, found, target = path.partition(route)
            if found and target and inside(target, self.folder):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._names_an_upload(scope.get("path", "")):
            await PlainTextResponse("Not found.", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)
