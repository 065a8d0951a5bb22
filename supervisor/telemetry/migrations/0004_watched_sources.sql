-- Watched folders record the rasters that arrive in them in raster_sources too,
-- each rule in a stream of its own (run = 'watch:RULE', keyed like a run by
-- run_key and seq): what happened to the file (new, replaced, gone), its size
-- and its mtime. A deleted file is a row with status 'gone'.

ALTER TABLE geod.raster_sources
    ADD COLUMN change text,
    ADD COLUMN size   bigint,
    ADD COLUMN mtime  timestamptz;

-- The latest row per watched file: what `geod sources` shows, from the database.
CREATE VIEW geod.v_watched_sources AS
SELECT DISTINCT ON (run_key, path)
       substr(run, 7) AS rule,
       path,
       dataset,
       status,
       change,
       size,
       mtime,
       crs,
       width,
       height,
       dtype,
       error,
       time,
       run_key
FROM geod.raster_sources
WHERE run LIKE 'watch:%'
ORDER BY run_key, path, seq DESC;
