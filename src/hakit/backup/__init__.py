"""Backups (issue 14): snapshots sent to S3 or a directory, as Jira configures and checks them.

- filestore.py    Jira's filestore-config.xml: parsed, every mistake with its line (pure)
- target.py       where backups go: the S3 filestore associated with ``backups``, else a directory
- stores.py       the repository a target names: ``LocalStore`` or ``S3Store`` and its boto3 client
- healthcheck.py  Jira's health check: write, read, delete under ``backups/Healthcheck/``
- drill.py        restore drills: the newest generation restored into a scratch directory, checked
- drillchecks.py  the drill's checks: database integrity, git fsck, attachments and their hashes

The repository format and the S3 store are hakit.snapshot's (format.py, s3store.py).
Modules import each other directly, never through this package.
"""
