"""Tool use: arithmetic word problems a 135M model gets wrong by heart and right with a calculator."""
