"""Experiment launching: sweep expansion and executors (local, SLURM), result collection, sbatch."""
