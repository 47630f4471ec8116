"""What a request may touch on the server: files it uploaded, runs by name, datasets on an allow-list.

The app is a server and every path in a request is taken as hostile. A request may name:
- a clip only as a file Gradio received from it (its upload folder) or one of the app's examples;
  a bare path to anything else on the server is refused without saying whether it exists;
- a run only by its folder name under $HICO_HOME/runs (no separators, no `..`, no absolute paths);
- a dataset only inside an allowed folder: $HICO_HOME/datasets, and the folders the operator named
  at start (`python app.py --data-dir DIR`, repeatable, or HICO_DATA_DIRS). A bare name means a
  folder of $HICO_HOME/datasets. A CSV manifest's clips must lie inside the allowed folders too.
Paths are compared after resolving symbolic links, so a link cannot lead outside: the dataset's
own path, and every clip and frame in it (a link to an image, to a frame folder, to a frame, or a
chain of links, in a folder or a manifest), since the scan that reads it follows links. Links that
stay inside are fine; a dangling link reads nothing and is skipped by the scan like any unreadable
file. Such a dataset is refused, not trained on without the links: its clips would silently differ
from what the folder shows, and the operator can allow the folder the links lead to.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradio.utils import get_upload_folder

from hico import runs
from hico.archive import training_path
from hico.data.dataset import links_outside, within
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
        outside = links_outside(path, self.roots)
        if outside:
            raise HiCoError(self._outside_sentence(text, path, outside))
        return path

    def datasets(self) -> list[tuple[str, str]]:
        """(name, path to train on) for every dataset in $HICO_HOME/datasets, by name."""
        try:
            folders = sorted(p for p in self.datasets_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []
        return [(folder.name, str(training_path(folder))) for folder in folders]

    def allowed(self, path: Path) -> bool:
        return within(path, self.roots)

    def _outside_sentence(self, text: str, path: Path, outside: list[tuple[Path, Path]]) -> str:
        """Why a dataset whose clips lead outside the allowed folders is refused, naming the first
        of them (relative to the dataset) and how many there are."""
        base = path.parent if path.is_file() else path
        first, real = outside[0]
        shown = first.relative_to(base).as_posix() if first.is_relative_to(base) else str(first)
        more = f", and {len(outside) - 1} more" if len(outside) > 1 else ""
        if path.suffix.lower() == ".csv" and not first.is_symlink():  # listed outside, no link involved
            return (f"Manifest {path.name} lists a clip outside the folders this app may read ({shown}{more}); "
                    f"list only clips inside {self.describe_roots()}.")
        return (f"Dataset {text} has {len(outside)} link(s) leading outside the folders this app may read "
                f"({shown} → {real}{more}); remove them, or whoever runs the app can add that folder "
                f"with --data-dir.")

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
