"""The chaos suite: the pipeline under worker kills, database and broker crashes, and hostile
requests, with counts of what was lost, duplicated or reordered (``./run chaos``).

Modules: servers (own Postgres and broker that can crash), stack (the pipeline processes),
traffic (signed webhook deliveries at a rate), outbound (what was published, read back with the
Momento SDK), checks (definitions, counts and targets), scenarios (kill, postgres, broker),
attack (the hostile scenario) with hostile, forgeries and fuzz (schemathesis), __main__ (the CLI).
"""
