"""PPO: numerics (core), rollouts, KL control, checkpoints and the trainer loop."""
