"""Chat Q&A, stack-llama style: SFT on questions and answers, a reward model from answer preferences, then PPO."""
