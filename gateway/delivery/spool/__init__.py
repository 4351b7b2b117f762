"""Durable on-disk queue for one destination: append-only segment files with group commit.

Why segments and not SQLite: see bench/README.md ("Durable queue storage"); in short, at the same
durability (one fsync per group) segments wrote 1.3-3x more MB/s at 50-250 KB records (the same at
1 KB, where the fsync rate is the limit), read back + acked 4-7x more MB/s, at half the CPU, and a
damaged tail costs a truncate, not a database repair; acknowledged data leaves the disk with an
unlink instead of free pages inside a database file.

On disk, in `directory`: `<first id>.seg` segment files of records and their `<first id>.ack`
acknowledgements (the format: `record`); `LOCK`, flock'd while a process has the spool open;
`quarantine/<id>.rec`, records the consumer could not use (a record whose bytes pass the crc but
do not decode, or whose delivery failed unexpectedly), moved out of the queue by
`Spool.quarantine()` so that they never block it, kept for the operator to look at and delete.
A new segment starts when the current one would exceed `segment_bytes` (a larger record gets a
segment of its own); a segment is deleted once every record in it is acknowledged.

Durability: `append()` returns the record id only after the record's bytes and (for a new segment
file) the directory entry are fsync'd; concurrent appends share one fdatasync (`writer`). Acks
are fsync'd lazily (every `ack_sync_interval` seconds and on close).

After a crash every record not acknowledged is pending again, in id order (`recovery`). What can
come back twice: records acknowledged less than `ack_sync_interval` before a power loss (after
kill -9 only those acked in the last few milliseconds, whose ack was not yet written), and
records whose `append()` had not returned yet (the caller did not acknowledge them to its client,
whose retry then duplicates them). A record whose `append()` returned is never lost to a crash;
it can only be lost to media corruption, which recovery reports.

Modules: `record` (the format, pure), `segment` (the in-memory picture of the files),
`recovery` (start-up scan and repair), `writer` (the thread that owns the descriptors),
`spool` (the `Spool` facade on the event loop), `errors`.
"""

from gateway.delivery.spool.errors import (
    RecordTooLarge,
    SpoolClosed,
    SpoolError,
    SpoolFull,
    SpoolUnavailable,
)
from gateway.delivery.spool.record import ACK_MAGIC, HEADER_SIZE, QUARANTINE_DIR, RECORD_MAGIC
from gateway.delivery.spool.recovery import RecoveryReport, count_quarantined
from gateway.delivery.spool.spool import MiB, Spool

__all__ = [
    "ACK_MAGIC",
    "HEADER_SIZE",
    "QUARANTINE_DIR",
    "RECORD_MAGIC",
    "MiB",
    "RecordTooLarge",
    "RecoveryReport",
    "Spool",
    "SpoolClosed",
    "SpoolError",
    "SpoolFull",
    "SpoolUnavailable",
    "count_quarantined",
]
