"""The tuning database: one JSON file of measured best settings, keyed by host identity.

    {"format": "restoreprof-tuning", "version": 1,
     "entries": {"<key>": {"host": {...}, "settings": {...}, "restore": {"verify": false},
                           "tuned_s": ..., "default_s": ..., "updated": "...", ...}}}

Path: --db, else $RESTOREPROF_TUNING_DB, else $XDG_CONFIG_HOME/restoreprof/tuning.json.
A file that cannot be read as this format is moved aside (<name>.corrupt-<timestamp>) with a
warning, and an empty database takes its place.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from restoreprof.errors import RestoreprofError
from restoreprof.optimizer import config as optimizer_config
from restoreprof.settings import layers as settings_layers
from restoreprof.tuner.identity import HostIdentity, identify

FORMAT = "restoreprof-tuning"
VERSION = 1
ENV_VAR = "RESTOREPROF_TUNING_DB"
_SETTING_NAMES = {s.name for s in optimizer_config.SETTINGS}
RETIRED_SETTINGS = {"prewarm", "pool_mb"}


def default_path() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "restoreprof" / "tuning.json"


def _warn(message: str) -> None:
    print(f"restoreprof: warning: {message}", file=sys.stderr)


class TuningDatabase:
    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.entries: dict[str, dict] = self._load()

    # -- reading ----------------------------------------------------------------------------

    def _load(self) -> dict[str, dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RestoreprofError(f"cannot read the tuning database {self.path}: {exc}",
                                   hint=f"fix its permissions, or point {ENV_VAR} elsewhere") from exc
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError("not a restoreprof tuning database")
            if data.get("version", 0) > VERSION:
                raise RestoreprofError(f"{self.path} was written by a newer restoreprof",
                                       hint="upgrade restoreprof, or use another --db")
            entries = data["entries"]
            for key, entry in entries.items():
                _check_entry(key, entry)
            return entries
        except (ValueError, AttributeError, TypeError) as exc:
            self._move_aside(exc)
            return {}

    def _move_aside(self, why: Exception) -> None:
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():   # never overwrite an earlier one moved aside the same second
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        os.replace(self.path, aside)
        _warn(f"the tuning database {self.path} is corrupt ({why}); moved it to {aside} and "
              "started a new one: rerun 'restoreprof run' to tune again")
        self.entries = {}
        self.save()

    def lookup(self, host: HostIdentity) -> tuple[str, dict] | None:
        """(key, entry) for host; without an exact match, the newest entry for the same GPU."""
        if host.key in self.entries:
            return host.key, self.entries[host.key]
        same_gpu = [(entry.get("updated", ""), key) for key, entry in self.entries.items()
                    if HostIdentity.from_dict(entry.get("host", {})).same_gpu(host)]
        if not same_gpu:
            return None
        key = max(same_gpu)[1]
        return key, self.entries[key]

    # -- writing ----------------------------------------------------------------------------

    def record(self, host: HostIdentity, settings: dict[str, Any], **facts: Any) -> dict:
        """Store the tuned settings for host (replacing what was there); returns the entry."""
        unknown = set(settings) - _SETTING_NAMES
        if unknown:
            raise ValueError(f"not optimizer settings: {sorted(unknown)}")
        entry = {"host": host.to_dict(), "settings": dict(settings), **facts,
                 "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        self.entries[host.key] = entry
        self.save()
        return entry

    def reset(self, key: str | None = None) -> int:
        """Forget one key (or every key); returns how many entries went."""
        if key is None:
            gone, self.entries = len(self.entries), {}
        else:
            gone = 1 if self.entries.pop(key, None) is not None else 0
        self.save()
        return gone

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "version": VERSION, "entries": self.entries}
        # Write then rename: a crash never leaves half a file for the next restore to trip on.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)


def _check_entry(key: str, entry: Any) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("settings"), dict):
        raise ValueError(f"entry {key!r} has no settings")
    for name in RETIRED_SETTINGS & set(entry["settings"]):
        del entry["settings"][name]  # acted on nothing; older databases still hold them
    unknown = set(entry["settings"]) - _SETTING_NAMES
    if unknown:
        raise ValueError(f"entry {key!r} has unknown settings {sorted(unknown)}")
    try:
        optimizer_config.OptimizerConfig(**entry["settings"])
    except RestoreprofError as exc:
        raise ValueError(f"entry {key!r}: {exc}") from None


def tuned_settings(directory: str | os.PathLike | None = None,
                   db_path: str | os.PathLike | None = None) -> tuple[str, dict, Path] | None:
    """(key, settings, database path) tuned for this host and directory's storage, if any."""
    db = TuningDatabase(db_path)
    found = db.lookup(identify(directory))
    if found is None:
        return None
    key, entry = found
    return key, dict(entry["settings"]), db.path


def install_tuned_defaults(directory: str | os.PathLike | None = None,
                           db_path: str | os.PathLike | None = None, announce: bool = True) -> None:
    """Make OptimizerConfig.resolve() start from the settings tuned for this host.

    directory: the checkpoint folder when the command has one (its storage is part of the
    key); without it, the newest entry for this GPU is used. The database is read once, on
    the first resolve, and a line on stderr says which tuned values apply.
    """
    cache: dict[str, tuple[dict[str, Any], str] | None] = {}

    def tuned() -> tuple[dict[str, Any], str] | None:
        if "found" not in cache:
            cache["found"] = None
            try:
                found = tuned_settings(directory, db_path)
            except (RestoreprofError, OSError) as exc:
                _warn(f"tuned settings not used: {exc}")
                found = None
            if found:
                key, settings, path = found
                cache["found"] = (settings, f"{key} in {path}")
                if announce:
                    shown = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}"
                                     for k, v in sorted(settings.items()))
                    print(f"restoreprof: using tuned settings for {key} from {path}: {shown} "
                          "(flags, environment and config file still win)", file=sys.stderr)
        found = cache["found"]
        return (dict(found[0]), found[1]) if found else None

    settings_layers.tuned_provider = tuned


def uninstall_tuned_defaults() -> None:
    settings_layers.tuned_provider = None


