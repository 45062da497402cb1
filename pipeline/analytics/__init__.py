"""Analytics: the ClickHouse usage ledger (connection, migrations, batched writes, reports).

``clickhouse`` connects to a server (``http(s)://``) or the embedded engine (``chdb://``),
``migrate`` applies ``schemas/clickhouse/NNN_name.sql``, ``ledger`` turns Usage, Alert and
DeadLetter events into idempotent inserts, ``report`` reads them back for the dev report.
"""
