-- A run on a Dask cluster samples every Dask worker's memory as well as its own
-- process tree: such rows name the worker (its address), one series per worker.
-- NULL for the run's own readings and the daemon's process-tree samples.

ALTER TABLE geod.memory_samples ADD COLUMN worker text;

CREATE INDEX memory_samples_run_key_worker ON geod.memory_samples (run_key, worker)
    WHERE worker IS NOT NULL;
