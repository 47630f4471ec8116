"""What a request may touch on the server: files it uploaded, runs by name, datasets on an allow-list.

The app is a server and every path in a request is taken as hostile. A request may name:
- a clip only as a file Gradio received from it (its upload folder) or one of the app's examples;
  a bare path to anything else on the server is refused without saying whether it exists;
- a run only by its folder name under $HICO_HOME/runs (no separators, no `..`, no absolute paths);
- a dataset only inside an allowed folder: $HICO_HOME/datasets, and the folders the operator named
  at start (`python app.py --data-dir DIR`, repeatable, or HICO_DATA_DIRS). A bare name means a
  folder of $HICO_HOME/datasets. A CSV manifest's clips must lie inside the allowed folders too.
Paths are compared after resolving symbolic links, so a link cannot lead outside.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradio.utils import get_upload_folder

from hico import runs
from hico.archive import training_path
from hico.data.dataset import manifest_paths
from hico.errors import HiCoError
from hico.paths import expand_path


def data_dirs_from_env() -> list[Path]:
    """The allowed dataset folders listed in HICO_DATA_DIRS (separated like PATH)."""
    return [expand_path(p) for p in os.environ.get("HICO_DATA_DIRS", "").split(os.pathsep) if p.strip()]


class Access:
    """The allow-lists of one app: where its runs, datasets, uploads and examples are."""

    def __init__(self, home: Path, data_dirs=(), examples=()):
        self.home = Path(home)
        self.runs_dir = self.home / "runs"
        self.datasets_dir = self.home / "datasets"
        self.roots = [_resolved(p) for p in (self.datasets_dir, *data_dirs)]
        self.examples = {_resolved(p) for p in examples}

    # ---- runs -----------------------------------------------------------------------------
    def run(self, name: str) -> Path:
        """The folder of the run called `name` under $HICO_HOME/runs (HiCoError for anything else)."""
        return runs.run_folder(self.runs_dir, name)

    # ---- datasets -------------------------------------------------------------------------
    def dataset(self, text: str) -> Path:
        """The dataset folder (or manifest, or clip) a request names, resolved, if it is allowed."""
        text = (text or "").strip()
        if not text:
            raise HiCoError("Give a dataset: a folder of clips or a CSV manifest.")
        plain_name = "/" not in text and os.sep not in text and not text.startswith(("~", "$", "."))
        path = _resolved(self.datasets_dir / text if plain_name else expand_path(text))
        if not self.allowed(path):
            raise HiCoError(f"Dataset {text} is outside the folders this app may read ({self.describe_roots()}); "
                            f"whoever runs the app can add one with --data-dir.")
        if not path.exists():
            raise HiCoError(f"Dataset {text} does not exist.")
        if path.is_file() and path.suffix.lower() == ".csv":
            for clip in manifest_paths(path):
                if not self.allowed(_resolved(clip)):
                    raise HiCoError(f"Manifest {path.name} lists a clip outside the folders this app may read "
                                    f"({clip}); list only clips inside {self.describe_roots()}.")
        return path

    def datasets(self) -> list[tuple[str, str]]:
        """(name, path to train on) for every dataset in $HICO_HOME/datasets, by name."""
        try:
            folders = sorted(p for p in self.datasets_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []
        return [(folder.name, str(training_path(folder))) for folder in folders]

    def allowed(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def describe_roots(self) -> str:
        return ", ".join(str(root) for root in self.roots)

    # ---- uploads --------------------------------------------------------------------------
    def uploaded(self, value, what: str = "a clip (a video, DICOM or image)") -> Path:
        """The path of a file in a request: one Gradio received (in its upload folder) or an
        example of this app. `value` is a path (from a file component) or a FileData dict (API)."""
        raw = value.get("path") if isinstance(value, dict) else getattr(value, "path", value)
        if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
            raise HiCoError(f"Upload {what} first.")
        path = _resolved(Path(raw))
        if path in self.examples:
            return path
        if not path.is_relative_to(_resolved(Path(get_upload_folder()))):
            raise HiCoError("Only a file uploaded to this app is accepted; send the file itself "
                            "(gradio_client: handle_file(path)).")
        if not path.is_file():
            raise HiCoError("The uploaded file is gone from the server; upload it again.")
        return path


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))
