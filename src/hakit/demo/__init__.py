"""hakit's sample app: a small, real stand-in for Jira/Bitbucket (``python -m hakit.demo``).

It speaks the /status contract in every state, keeps sessions in memory, stores
records in a database with attachment files in its home directory, offers a
maintenance lock, and injects faults on request (only with ``--enable-faults``).

Modules, one job each: ``options`` (argv + env), ``app`` (process lifecycle),
``server`` (HTTP transport), ``endpoints`` (what each URL does), ``web``
(request/response values), ``state`` (contract state and locks), ``sessions``,
``database``, ``attachments``, ``integrity``, ``log``. ``cluster`` and
``runner`` are ``hakit demo`` (a local cluster of agents running this app).
"""
