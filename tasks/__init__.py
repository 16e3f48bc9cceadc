"""Pipeline stages: one unit of work each, calling rlhf_lib."""
