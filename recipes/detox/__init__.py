"""Detoxification: make a policy fine-tuned on rude movie-review sentences continue them politely."""
