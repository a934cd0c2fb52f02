"""Consistent snapshots of the app's home and database (issue 14, first step).

- format.py     the repository format (blobs, packs, manifests) and the manifest's codec
- store.py      the ``Store`` protocol and ``LocalStore`` (a local directory)
- crypto.py     client-side encryption: ``EncryptedStore`` wraps any store (keyed names, AES-GCM)
- writer.py     blobs hashed and put once; small ones bundled into packs
- hashcache.py  unchanged files (by inode, size, mtime, ctime) not read again
- reading.py    one file read at one moment: the stability check and its retries
- gitrepo.py    git repositories: found, refs before objects, objects pinned by hard link
- scan.py       a directory's listing: its children lstat'ed, cut into parts, each digested
                (standard library only: it is also the helper process's script)
- scanahead.py  the listings made ahead of the walk by that helper, on the second core
- walk.py       the home walk in capture order
- database.py   the database copied at one transaction point: which kind, dispatch;
                SQLite's backup API
- postgres.py   PostgreSQL: pg_dump of one exported snapshot, its LSN; client programs
- pgrestore.py  PostgreSQL: a dump into a new database, checked, swapped in by renames
- basebackup.py PostgreSQL: a physical base backup (pg_basebackup), its start and stop LSN
- pgdatadir.py  a data directory as one archive, and back into a new, checked data directory
- scratch.py    scratch directories that a killed process leaves only until the next one
- hooks.py      the freeze and thaw commands
- capture.py    a generation: freeze, database, home, thaw, manifest last
- tree.py       what changed between two generations
- reader.py     objects read back, each checked against its hash
- verify.py     every object of a generation re-read and re-hashed
- restore.py    a generation into a new directory; the swap into place (files, databases)
- peerstore.py  a peer node's repository over its admin API; pulling what a store lacks
- apply.py      a standby applies a generation: beside its home, swapped in by one rename
- ledger.py     a restored generation's files as left: the next apply links the unchanged
- retention.py  which generations a policy keeps (restic's keep-last/daily/weekly), pure
- prune.py      the dropped manifests deleted, then the unreferenced objects (a grace period)

Modules import each other directly, never through this package.
"""
