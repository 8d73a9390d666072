"""Process starters: run dir (``rundir``, ``prepare``, ``preflight``), one rank's session (``session``), local ranks
(``local``), the submitit job (``job``, ``sigterm``), the torchrun entry (``torchrun``), the launchers behind
``launch/`` (``launcher``, ``shards``, ``evaluate``) and the demo (``demo``)."""
