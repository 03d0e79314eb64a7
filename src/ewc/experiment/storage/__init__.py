"""What a run leaves on disk: the run directory's layout and the cells' checkpoints."""
