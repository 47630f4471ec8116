"""Who may stop, resume and delete a run, or delete a dataset, when the app has logins
(`python app.py --auth U:P ...`).

A run started through the app records the login that started it (hico.runs.write_owner), and an
uploaded dataset the login that uploaded it (hico.archive.dataset_owner). Every logged-in user sees
every run and dataset; only its owner and the operator's admins (`--admin USER`) may stop, resume
or delete a run, or delete a dataset. One without an owner (the demo, a run from the CLI, one from
before logins were turned on) is anyone's when no admins are named, and the admins' otherwise.
Without --auth there are no users and everything is allowed, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hico.errors import HiCoError
from hico.runs import read_owner


@dataclass(frozen=True)
class Owners:
    """The logins of one app and which of them are admins."""

    users: tuple[str, ...] = ()  # empty: the app has no logins
    admins: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.admins) - set(self.users))
        if unknown:
            raise HiCoError(f"Admin {unknown[0]} is not one of the --auth users ({', '.join(self.users) or 'none'}).")

    @staticmethod
    def user(request) -> str | None:
        """The login of a request (gr.Request), or None without logins."""
        return getattr(request, "username", None) or None

    def check(self, run_dir: Path, user: str | None, action: str) -> None:
        """HiCoError unless `user` may `action` (stop, resume, delete) the run in run_dir."""
        self.check_owned(f"Run {Path(run_dir).name}", read_owner(run_dir), user, action)

    def check_owned(self, what: str, owner: str | None, user: str | None, action: str,
                    made: str = "started") -> None:
        """HiCoError unless `user` may `action` the thing described by `what` (e.g. "Dataset
        lungs"), which `owner` made (None: no user did); `made` says how (started, uploaded)."""
        if not self.users or user in self.admins:
            return
        if owner == user or (owner is None and not self.admins):
            return
        whose = f"was {made} by {owner}" if owner else f"was not {made} by a user"
        allowed = f"{owner} or an admin" if owner else "an admin"
        raise HiCoError(f"{what} {whose}; only {allowed} may {action} it.")
