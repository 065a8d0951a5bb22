-- Runs keyed globally, so daemons sharing one database never mix their rows.
--
-- The short id (r0001) is unique only within one daemon's state directory: two
-- users, two hosts or a reinstalled state directory all have an r0001. Every
-- table now carries run_key, a UUID derived from the daemon's instance id (a
-- random UUID kept in its state directory) and the short id, and is keyed by it;
-- geod.runs also records the instance. The short id stays in the `run`/`id`
-- columns as the handle users type.
--
-- Rows written before this migration get a legacy key derived from their short
-- id alone (md5 of 'geod-legacy:' || id) and no instance: kept, not attributed.

ALTER TABLE geod.runs ADD COLUMN run_key uuid, ADD COLUMN instance uuid;
UPDATE geod.runs SET run_key = md5('geod-legacy:' || id)::uuid;
ALTER TABLE geod.runs ALTER COLUMN run_key SET NOT NULL;
ALTER TABLE geod.runs DROP CONSTRAINT runs_pkey;
ALTER TABLE geod.runs ADD PRIMARY KEY (run_key);
CREATE INDEX runs_instance_id ON geod.runs (instance, id);

ALTER TABLE geod.stages ADD COLUMN run_key uuid;
UPDATE geod.stages SET run_key = md5('geod-legacy:' || run)::uuid;
ALTER TABLE geod.stages ALTER COLUMN run_key SET NOT NULL;
ALTER TABLE geod.stages DROP CONSTRAINT stages_pkey;
ALTER TABLE geod.stages ADD PRIMARY KEY (run_key, id);
DROP INDEX geod.stages_run_parent;
CREATE INDEX stages_run_key_parent ON geod.stages (run_key, parent);

-- The append-only series: (run, seq) becomes (run_key, seq).
DO $$
DECLARE
    series text;
BEGIN
    FOREACH series IN ARRAY ARRAY['progress', 'memory_samples', 'log_records', 'events',
                                  'checkpoints', 'raster_sources']
    LOOP
        EXECUTE format('ALTER TABLE geod.%I ADD COLUMN run_key uuid', series);
        EXECUTE format('UPDATE geod.%I SET run_key = md5(''geod-legacy:'' || run)::uuid', series);
        EXECUTE format('ALTER TABLE geod.%I ALTER COLUMN run_key SET NOT NULL', series);
        EXECUTE format('ALTER TABLE geod.%I DROP CONSTRAINT %I', series, series || '_pkey');
        EXECUTE format('ALTER TABLE geod.%I ADD PRIMARY KEY (run_key, seq)', series);
    END LOOP;
END
$$;

DROP INDEX geod.progress_run_stage_time;
CREATE INDEX progress_run_key_stage_time ON geod.progress (run_key, stage, time);
DROP INDEX geod.memory_samples_run_time;
CREATE INDEX memory_samples_run_key_time ON geod.memory_samples (run_key, time);
DROP INDEX geod.log_records_run_level_seq;
CREATE INDEX log_records_run_key_level_seq ON geod.log_records (run_key, level, seq DESC);
DROP INDEX geod.raster_sources_run_dataset;
CREATE INDEX raster_sources_run_key_dataset ON geod.raster_sources (run_key, dataset);

-- Whether a run belongs to the daemon named by the session setting geod.instance
-- (`geod db psql` sets it to its daemon's instance id); every run when it is unset.
CREATE FUNCTION geod.selected(key uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('geod.instance', true), '') = ''
        OR EXISTS (SELECT 1 FROM geod.runs r
                   WHERE r.run_key = key
                     AND r.instance = current_setting('geod.instance', true)::uuid)
$$;

DROP VIEW geod.v_memory_by_stage;
CREATE VIEW geod.v_memory_by_stage AS
SELECT run,
       stage,
       count(*)                   AS samples,
       max(rss)                   AS peak_rss,
       avg(rss)::bigint           AS avg_rss,
       min(rss)                   AS min_rss,
       max(uss)                   AS peak_uss,
       min(system_available)      AS min_system_available,
       max(budget)                AS budget,
       min(time)                  AS first_time,
       max(time)                  AS last_time,
       run_key
FROM geod.memory_samples
WHERE geod.selected(run_key)
GROUP BY run_key, run, stage;

DROP VIEW geod.v_memory_timeline;
CREATE VIEW geod.v_memory_timeline AS
SELECT run,
       seq,
       time,
       extract(epoch FROM time - min(time) OVER (PARTITION BY run_key))::double precision
           AS elapsed,
       stage,
       operation,
       rss,
       uss,
       system_available,
       window_size,
       budget,
       rss::double precision / nullif(budget, 0) AS budget_fraction,
       warning,
       critical,
       run_key
FROM geod.memory_samples
WHERE geod.selected(run_key);
