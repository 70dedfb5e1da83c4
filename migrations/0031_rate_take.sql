-- A rate-limited call (or a lease of calls) is counted only if the window has room, decided
-- in one step per principal and class: the advisory lock orders takers of the same key, and
-- in PL/pgSQL each statement reads what committed before it, so a take sees every earlier
-- one, from any process. (Counting first and reading totals after let a burst past: two
-- takes in one process could share one write, read before it committed.)
CREATE FUNCTION rate_take(
    p_key    text,
    p_class  text,
    p_bucket timestamptz,
    -- Buckets after this one are in the window.
    p_from   timestamptz,
    p_want   bigint,
    p_max    bigint
) RETURNS TABLE (granted bigint, used bigint, oldest timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_used   bigint;
    v_oldest timestamptz;
    v_grant  bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('rate:' || p_key || '/' || p_class, 0));
    SELECT coalesce(sum(c.count), 0), min(c.bucket) FILTER (WHERE c.count > 0)
      INTO v_used, v_oldest
      FROM rate_counters c
     WHERE c.principal_key = p_key AND c.class = p_class AND c.bucket > p_from;
    -- Given-back calls never make a window less than empty.
    v_used := greatest(v_used, 0);
    -- No taker holds more than a quarter of what is left, so leases shrink to one call as
    -- the limit nears and the last calls are decided one by one.
    v_grant := least(p_want, greatest(1, (p_max - v_used) / 4), p_max - v_used);
    IF v_grant > 0 THEN
        INSERT INTO rate_counters AS c (principal_key, class, bucket, count)
        VALUES (p_key, p_class, p_bucket, v_grant)
        ON CONFLICT (principal_key, class, bucket) DO UPDATE SET count = c.count + EXCLUDED.count;
        v_used := v_used + v_grant;
        v_oldest := least(coalesce(v_oldest, p_bucket), p_bucket);
    ELSE
        v_grant := 0;
    END IF;
    RETURN QUERY SELECT v_grant, v_used, v_oldest;
END
$$;
