"""Dataset sources, formats, tokenisation and collators."""
