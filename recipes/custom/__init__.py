"""Start from your own data: example files in each TRL format and a params file to copy (see the README)."""
