"""Recipes: the code a task needs beside its params file (data builders, reward functions, judges).

Each recipe is a folder with a commented params file and small modules that params.yaml names as
`recipes.<task>.<module>:<callable>`. Recipes depend on `rlhf_lib` only.
"""
