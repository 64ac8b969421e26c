"""The content-addressed snapshot store (issue 15): GPU memory snapshots as chunks named by
BLAKE3-256, kept once per host however many checkpoints name them. layout: the folder and its
lock; table: snapshot tables; refs: which checkpoint names which chunks; session: a checkpoint
writing into the store; gc, measure, verify: the `restoreprof store` verbs (export, which also
needs restoreprof.checkpoint, is commands/_export.py)."""
