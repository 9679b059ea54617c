"""Cost-performance models and the replica/variant optimiser: pure code, no I/O, no clock."""
