"""hakit.toml's sections, one module per part (hakit.config.schema puts them together).

- base.py     ``_Section``, the base of every section model (no coercion), and the name patterns
- cluster.py  ``[cluster]`` and ``[[nodes]]``
- app.py      ``[app]`` (with ``[app.health]``), ``[health]`` and ``[failover]``
- router.py   ``[router]`` and ``[[tcp_proxy]]``
- notify.py   ``[notify]``: the webhook and e-mail
- backup.py   ``[backup]``: filestore-config.xml or a directory, credentials, write-only
- replication.py ``[replication]``: replicated storage's interval, max_lag, keep
- snapshot.py ``[snapshot]``: the agent's scheduled captures, and retention

The modules import each other directly, never this package.
"""
