"""Does the home directory agree with the database? (pure: rows and files in, report out)

Because attachments are written before their rows, a crash can leave an orphan
file but never a row without its file; a row without its file therefore means
lost data (for example a home and a database restored from different moments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hakit.demo.database import RecordRow


def integrity_report(rows: Sequence[RecordRow], files: Mapping[str, str]) -> dict[str, Any]:
    """``files`` maps a path relative to the home to its sha256.

    ``missing_files`` and ``corrupt`` list record ids; ``orphan_files`` lists paths.
    """
    referenced = {row.attachment for row in rows}
    missing = [row.id for row in rows if row.attachment not in files]
    corrupt = [
        row.id for row in rows if row.attachment in files and files[row.attachment] != row.sha256
    ]
    orphans = sorted(path for path in files if path not in referenced)
    return {
        "ok": not (missing or corrupt or orphans),
        "rows": len(rows),
        "files": len(files),
        "missing_files": missing,
        "orphan_files": orphans,
        "corrupt": corrupt,
    }
