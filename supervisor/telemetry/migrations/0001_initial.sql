-- Telemetry schema: one row per run, the stage tree, and append-only series.
-- Every row derived from an event carries (run, seq), the daemon's per-run
-- sequence number, as its key: replaying a spool after an outage inserts with
-- ON CONFLICT DO NOTHING and can never duplicate a row.
-- No foreign keys: events of a run may reach the database before its runs row.

CREATE TABLE geod.runs (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    state       text NOT NULL,
    config_path text,
    config      jsonb,
    run_dir     text,
    submitted   timestamptz,
    started     timestamptz,
    finished    timestamptz,
    exit_code   integer,
    error       text,
    retries     integer NOT NULL DEFAULT 0,
    progress    double precision,
    peak_rss    bigint,
    last_seq    bigint,
    host        text,
    "user"      text,
    summary     jsonb NOT NULL,
    -- Writer revision (monotonic ns): an older summary never overwrites a newer one.
    rev         bigint NOT NULL,
    updated     timestamptz NOT NULL
);
CREATE INDEX runs_updated ON geod.runs (updated);

-- Latest state of each node of the stage tree (run → stage → dataset → window group).
CREATE TABLE geod.stages (
    run      text NOT NULL,
    id       text NOT NULL,
    parent   text,
    kind     text NOT NULL,
    name     text NOT NULL,
    status   text NOT NULL,
    done     bigint NOT NULL,
    total    bigint NOT NULL,
    unit     text NOT NULL,
    error    text,
    started  timestamptz,
    finished timestamptz,
    updated  timestamptz NOT NULL,
    -- seq of the event this row reflects; updates only move it forward.
    seq      bigint NOT NULL,
    PRIMARY KEY (run, id)
);
CREATE INDEX stages_run_parent ON geod.stages (run, parent);

-- Time series of every stage event (progress history).
CREATE TABLE geod.progress (
    run    text NOT NULL,
    seq    bigint NOT NULL,
    time   timestamptz NOT NULL,
    stage  text NOT NULL,
    status text NOT NULL,
    done   bigint NOT NULL,
    total  bigint NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE INDEX progress_run_stage_time ON geod.progress (run, stage, time);
CREATE INDEX progress_time ON geod.progress USING brin (time);

CREATE TABLE geod.memory_samples (
    run              text NOT NULL,
    seq              bigint NOT NULL,
    time             timestamptz NOT NULL,
    stage            text,
    operation        text,
    rss              bigint NOT NULL,
    uss              bigint,
    system_available bigint,
    window_size      integer,
    budget           bigint,
    PRIMARY KEY (run, seq)
);
-- "memory of a run over time"
CREATE INDEX memory_samples_run_time ON geod.memory_samples (run, time);
CREATE INDEX memory_samples_time ON geod.memory_samples USING brin (time);

CREATE TABLE geod.log_records (
    run     text NOT NULL,
    seq     bigint NOT NULL,
    time    timestamptz NOT NULL,
    level   text NOT NULL,
    logger  text NOT NULL,
    stage   text,
    dataset text,
    message text NOT NULL,
    extra   jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run, seq)
);
-- "latest N logs of a run by level": WHERE run = $1 AND level = $2 ORDER BY seq DESC LIMIT N
CREATE INDEX log_records_run_level_seq ON geod.log_records (run, level, seq DESC);
CREATE INDEX log_records_time ON geod.log_records USING brin (time);

-- Every event as the worker/daemon emitted it.
CREATE TABLE geod.events (
    run     text NOT NULL,
    seq     bigint NOT NULL,
    time    timestamptz NOT NULL,
    type    text NOT NULL,
    payload jsonb NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE INDEX events_time ON geod.events USING brin (time);

CREATE TABLE geod.checkpoints (
    run     text NOT NULL,
    seq     bigint NOT NULL,
    time    timestamptz NOT NULL,
    stage   text NOT NULL,
    dataset text,
    done    bigint NOT NULL,
    total   bigint NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run, seq)
);
CREATE INDEX checkpoints_time ON geod.checkpoints USING brin (time);

-- Catalog results: header facts of each input raster, or why it was rejected.
CREATE TABLE geod.raster_sources (
    run     text NOT NULL,
    seq     bigint NOT NULL,
    time    timestamptz NOT NULL,
    dataset text NOT NULL,
    path    text NOT NULL,
    status  text NOT NULL,
    crs     text,
    width   integer,
    height  integer,
    dtype   text,
    nodata  double precision,
    error   text,
    PRIMARY KEY (run, seq)
);
CREATE INDEX raster_sources_run_dataset ON geod.raster_sources (run, dataset);

-- Peak/average memory per stage of each run (seeds' v_memory_by_stage, in bytes).
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
       max(time)                  AS last_time
FROM geod.memory_samples
GROUP BY run, stage;

-- Memory over time with seconds since the run's first sample and share of the budget.
CREATE VIEW geod.v_memory_timeline AS
SELECT run,
       seq,
       time,
       extract(epoch FROM time - min(time) OVER (PARTITION BY run))::double precision AS elapsed,
       stage,
       operation,
       rss,
       uss,
       system_available,
       window_size,
       budget,
       rss::double precision / nullif(budget, 0) AS budget_fraction
FROM geod.memory_samples;
