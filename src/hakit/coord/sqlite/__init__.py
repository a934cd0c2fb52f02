"""The embedded coordination store: one SQLite file shared by the processes of one machine.

Why it is safe for several processes (agents, routers, ``hakit status``):

- every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, so the
  write lock is taken *before* the lease is read and two agents can never both
  see it free; the clock is read inside that transaction for the same reason;
- WAL mode lets readers (the router polls every 100 ms) go on while an agent
  writes; a busy timeout makes concurrent writers queue instead of failing;
- ``synchronous=FULL``: a committed epoch survives a power loss, so a fencing
  token is never handed out twice;
- each coordinator object opens its own connection lazily, per process: a
  connection inherited through ``fork`` is never used (nor closed) by the child.

The epoch counter lives apart from the lease row: ``release`` deletes the lease
but the counter keeps the highest epoch ever handed out.

The store cannot be swapped under a running cluster (schema version 3 on):

- the store carries a cluster identity (a uuid4 made once, when the store is
  created) and a lineage (the identities of the stores it replaces, written by
  ``hakit init --reinit``);
- every coordinator remembers the identity and the highest epoch it has seen.
  Before each call it compares the file at the path (``os.stat``: device and
  inode) with the file its connection opened. A deleted, renamed or replaced file
  is noticed at the next call: the connection is closed, and a store is used
  again only if it has the remembered identity (or lists it in its lineage) and a
  last epoch at least the highest seen; otherwise ``StoreReplacedError``. Each
  later call checks again, so once a trusted store is back at the path the
  process reconnects by itself. Every write transaction also checks the identity
  and the epoch counter it runs on, and a write during which the path changed is
  rolled back, so nothing is ever granted in a store this process does not trust;
- a process that has seen an identity never creates a store; one that has not
  creates it only when asked to (``create``), and never beside the -wal/-shm
  files a deleted store left (their content would be mixed into the new file);
- an agent's memory survives its restarts (``memory_path``, see
  ``hakit.coord.memory``); routers and CLI commands keep theirs in the process;
- a re-initialised store grants no lease before ``leases_from`` (one lease TTL
  after it was put in place): a node that held the lease in the replaced store
  has fenced itself by then, so two nodes never act as active at once.

Files are private: the database (and so its -wal and -shm, which SQLite creates
with the database's mode) is created 0600.
"""

from hakit.coord.sqlite.connection import DEFAULT_BUSY_TIMEOUT, DEFAULT_MAX_EVENTS, advice_for
from hakit.coord.sqlite.coordinator import (
    DEFAULT_FILE,
    SqliteCoordinator,
    SqliteSection,
    open_sqlite,
    store_path,
)
from hakit.coord.sqlite.leases import next_lease
from hakit.coord.sqlite.schema import (
    SCHEMA_VERSION,
    SIDE_FILES,
    StoreIdentity,
    create_store,
    file_id,
    main_file_identity,
    read_identity,
)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_FILE",
    "DEFAULT_MAX_EVENTS",
    "SCHEMA_VERSION",
    "SIDE_FILES",
    "SqliteCoordinator",
    "SqliteSection",
    "StoreIdentity",
    "advice_for",
    "create_store",
    "file_id",
    "main_file_identity",
    "next_lease",
    "open_sqlite",
    "read_identity",
    "store_path",
]
