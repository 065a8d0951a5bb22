-- MemoryEvent carries the governor's warning/critical levels (fractions of the
-- budget) so a chart of a run's memory can draw them from the database alone.

ALTER TABLE geod.memory_samples
    ADD COLUMN warning  double precision,
    ADD COLUMN critical double precision;

-- CREATE OR REPLACE VIEW may only append columns, so the new ones go last.
CREATE OR REPLACE VIEW geod.v_memory_timeline AS
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
       rss::double precision / nullif(budget, 0) AS budget_fraction,
       warning,
       critical
FROM geod.memory_samples;
