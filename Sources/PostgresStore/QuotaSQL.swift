/// The shared quotas' schema and functions (PostgreSQL's PL/pgSQL). Admission and settlement are
/// each one function call, so each costs one round trip and runs as one transaction.
///
/// Counters, not entries: a subject's row (`quota_subject`: requests in flight and tokens
/// reserved), its last minute in one-second buckets (`quota_bucket`: at most 60 rows to sum),
/// its settled tokens per UTC day and month (`quota_usage`), and one lease per reservation
/// (`quota_lease`). Every function locks the subject rows it touches in one sorted statement, so
/// two transactions never wait on each other in a cycle.
enum QuotaSQL {
    static let tables = [
        "CREATE TABLE quota_subject (subject TEXT PRIMARY KEY, in_flight INT NOT NULL DEFAULT 0, reserved BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE quota_bucket (subject TEXT NOT NULL, second BIGINT NOT NULL, requests INT NOT NULL, tokens BIGINT NOT NULL, PRIMARY KEY (subject, second))",
        "CREATE TABLE quota_usage (subject TEXT NOT NULL, period TEXT NOT NULL, used BIGINT NOT NULL, PRIMARY KEY (subject, period))",
        """
        CREATE TABLE quota_lease (reservation TEXT PRIMARY KEY, node TEXT NOT NULL, team TEXT NOT NULL, key_prefix TEXT NOT NULL,
          model TEXT NOT NULL, route TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, second BIGINT NOT NULL, tokens INT NOT NULL,
          lease_until DOUBLE PRECISION NOT NULL, state TEXT NOT NULL DEFAULT 'live', recovered BOOLEAN NOT NULL DEFAULT false)
        """,
        "CREATE INDEX quota_lease_live ON quota_lease (node) WHERE state = 'live'",
        "CREATE INDEX quota_lease_expiry ON quota_lease (lease_until) WHERE state = 'live'",
        "CREATE INDEX quota_lease_at ON quota_lease (at)",
    ]

    /// The UTC day and month keys of an epoch time, as `quota_usage` periods.
    static let periods = """
        CREATE FUNCTION corral_quota_periods(p_at DOUBLE PRECISION, OUT o_day TEXT, OUT o_month TEXT, OUT o_month_end DOUBLE PRECISION)
        LANGUAGE plpgsql STABLE AS $$
        DECLARE
          month_start TIMESTAMP := date_trunc('month', to_timestamp(p_at) AT TIME ZONE 'UTC');
        BEGIN
          o_day := 'd:' || floor(p_at / 86400)::BIGINT;
          o_month := 'm:' || (extract(year FROM month_start)::INT * 12 + extract(month FROM month_start)::INT);
          o_month_end := extract(epoch FROM ((month_start + interval '1 month') AT TIME ZONE 'UTC'));
        END $$
        """

    /// One subject's checks, in the order a single node makes them (parallel, requests per
    /// minute, tokens per minute, day, month); its row must be locked by the caller.
    static let subjectCheck = """
        CREATE FUNCTION corral_quota_check(p_subject TEXT, p_now DOUBLE PRECISION, p_tokens INT,
          p_rpm INT, p_tpm INT, p_parallel INT, p_day BIGINT, p_month BIGINT,
          OUT o_refusal TEXT, OUT o_retry DOUBLE PRECISION, OUT o_requests INT, OUT o_tokens BIGINT, OUT o_reset DOUBLE PRECISION)
        LANGUAGE plpgsql AS $$
        DECLARE
          sec BIGINT := floor(p_now);
          s_in_flight INT; s_reserved BIGINT;
          oldest BIGINT; freed BIGINT := 0; b RECORD;
          per RECORD; used_day BIGINT := 0; used_month BIGINT := 0;
        BEGIN
          o_refusal := NULL; o_retry := 0;
          SELECT in_flight, reserved INTO s_in_flight, s_reserved FROM quota_subject WHERE subject = p_subject;
          SELECT coalesce(sum(requests), 0), coalesce(sum(tokens), 0), min(second) INTO o_requests, o_tokens, oldest
            FROM quota_bucket WHERE subject = p_subject AND second > sec - 60;
          o_reset := CASE WHEN oldest IS NULL THEN 0 ELSE greatest(0, oldest + 60 - p_now) END;
          IF p_parallel IS NOT NULL AND s_in_flight >= p_parallel THEN
            o_refusal := 'max_parallel'; o_retry := 1; RETURN;
          END IF;
          IF p_rpm IS NOT NULL AND o_requests >= p_rpm THEN
            o_refusal := 'requests_per_minute'; o_retry := 60;
            FOR b IN SELECT second, requests FROM quota_bucket WHERE subject = p_subject AND second > sec - 60 ORDER BY second LOOP
              freed := freed + b.requests;
              IF o_requests - freed < p_rpm THEN o_retry := b.second + 60 - p_now; EXIT; END IF;
            END LOOP;
            RETURN;
          END IF;
          IF p_tpm IS NOT NULL AND o_tokens + p_tokens > p_tpm THEN
            o_refusal := 'tokens_per_minute'; o_retry := 60;
            FOR b IN SELECT second, tokens FROM quota_bucket WHERE subject = p_subject AND second > sec - 60 ORDER BY second LOOP
              freed := freed + b.tokens;
              IF o_tokens - freed + p_tokens <= p_tpm THEN o_retry := b.second + 60 - p_now; EXIT; END IF;
            END LOOP;
            RETURN;
          END IF;
          IF p_day IS NULL AND p_month IS NULL THEN RETURN; END IF;
          SELECT * INTO per FROM corral_quota_periods(p_now);
          SELECT coalesce(sum(used) FILTER (WHERE period = per.o_day), 0), coalesce(sum(used) FILTER (WHERE period = per.o_month), 0)
            INTO used_day, used_month FROM quota_usage WHERE subject = p_subject AND period IN (per.o_day, per.o_month);
          IF p_day IS NOT NULL AND used_day + s_reserved + p_tokens > p_day THEN
            o_refusal := 'tokens_per_day'; o_retry := 86400 - (p_now - floor(p_now / 86400) * 86400); RETURN;
          END IF;
          IF p_month IS NOT NULL AND used_month + s_reserved + p_tokens > p_month THEN
            o_refusal := 'tokens_per_month'; o_retry := per.o_month_end - p_now; RETURN;
          END IF;
        END $$
        """

    /// Admission: key and team checked, both subjects locked and checked, the reservation
    /// counted and leased, all at once.
    static let admit = """
        CREATE FUNCTION corral_quota_admit(p_reservation TEXT, p_team TEXT, p_key TEXT, p_node TEXT, p_model TEXT, p_route TEXT,
          p_tokens INT, p_lease DOUBLE PRECISION,
          t_rpm INT, t_tpm INT, t_parallel INT, t_day BIGINT, t_month BIGINT,
          k_rpm INT, k_tpm INT, k_parallel INT, k_day BIGINT, k_month BIGINT)
        RETURNS TABLE (o_refusal TEXT, o_refused_team BOOLEAN, o_retry DOUBLE PRECISION, o_team_requests INT, o_team_tokens BIGINT,
          o_team_reset DOUBLE PRECISION, o_key_requests INT, o_key_tokens BIGINT, o_key_reset DOUBLE PRECISION)
        LANGUAGE plpgsql AS $$
        DECLARE
          now_s DOUBLE PRECISION; sec BIGINT; is_revoked BOOLEAN; is_disabled BOOLEAN; locked INT; t RECORD; k RECORD;
        BEGIN
          -- The key and its team first, before any lock is held (they need none).
          SELECT k0.revoked_at IS NOT NULL, t0.disabled INTO is_revoked, is_disabled
            FROM api_key k0 JOIN team t0 ON t0.id = k0.team_id WHERE k0.prefix = p_key AND k0.team_id = p_team;
          IF NOT FOUND THEN RETURN QUERY SELECT 'key_unknown'::TEXT, false, 0::FLOAT8, 0, 0::BIGINT, 0::FLOAT8, 0, 0::BIGINT, 0::FLOAT8; RETURN; END IF;
          IF is_revoked THEN RETURN QUERY SELECT 'key_revoked'::TEXT, false, 0::FLOAT8, 0, 0::BIGINT, 0::FLOAT8, 0, 0::BIGINT, 0::FLOAT8; RETURN; END IF;
          IF is_disabled THEN RETURN QUERY SELECT 'team_disabled'::TEXT, true, 0::FLOAT8, 0, 0::BIGINT, 0::FLOAT8, 0, 0::BIGINT, 0::FLOAT8; RETURN; END IF;
          PERFORM 1 FROM quota_subject WHERE subject IN (p_team, p_key) ORDER BY subject FOR UPDATE;
          GET DIAGNOSTICS locked = ROW_COUNT;
          IF locked < 2 THEN
            -- A team's or key's first request: its counter row is made, then locked as always.
            INSERT INTO quota_subject (subject) SELECT x FROM unnest(ARRAY[p_team, p_key]) AS x ORDER BY x ON CONFLICT DO NOTHING;
            PERFORM 1 FROM quota_subject WHERE subject IN (p_team, p_key) ORDER BY subject FOR UPDATE;
          END IF;
          now_s := extract(epoch FROM clock_timestamp());
          sec := floor(now_s);
          SELECT * INTO t FROM corral_quota_check(p_team, now_s, p_tokens, t_rpm, t_tpm, t_parallel, t_day, t_month);
          SELECT * INTO k FROM corral_quota_check(p_key, now_s, p_tokens, k_rpm, k_tpm, k_parallel, k_day, k_month);
          IF t.o_refusal IS NOT NULL OR k.o_refusal IS NOT NULL THEN
            RETURN QUERY SELECT coalesce(t.o_refusal, k.o_refusal), t.o_refusal IS NOT NULL, CASE WHEN t.o_refusal IS NOT NULL THEN t.o_retry ELSE k.o_retry END,
              t.o_requests, t.o_tokens, t.o_reset, k.o_requests, k.o_tokens, k.o_reset;
            RETURN;
          END IF;
          INSERT INTO quota_bucket (subject, second, requests, tokens) VALUES (p_team, sec, 1, p_tokens), (p_key, sec, 1, p_tokens)
            ON CONFLICT (subject, second) DO UPDATE SET requests = quota_bucket.requests + 1, tokens = quota_bucket.tokens + EXCLUDED.tokens;
          UPDATE quota_subject SET in_flight = in_flight + 1, reserved = reserved + p_tokens WHERE subject IN (p_team, p_key);
          INSERT INTO quota_lease (reservation, node, team, key_prefix, model, route, at, second, tokens, lease_until)
            VALUES (p_reservation, p_node, p_team, p_key, p_model, p_route, now_s, sec, p_tokens, now_s + p_lease);
          RETURN QUERY SELECT NULL::TEXT, false, 0::FLOAT8, t.o_requests + 1, t.o_tokens + p_tokens, CASE WHEN t.o_reset = 0 THEN 60::FLOAT8 ELSE t.o_reset END,
            k.o_requests + 1, k.o_tokens + p_tokens, CASE WHEN k.o_reset = 0 THEN 60::FLOAT8 ELSE k.o_reset END;
        END $$
        """

    /// Settlement: the reservation's tokens replaced by the real use in its minute bucket, the
    /// subjects' in-flight and reserved counts lowered, the day and month raised by the use.
    static let settle = """
        CREATE FUNCTION corral_quota_settle(p_reservation TEXT, p_tokens INT) RETURNS VOID LANGUAGE plpgsql AS $$
        DECLARE
          l RECORD; per RECORD;
        BEGIN
          SELECT team, key_prefix INTO l FROM quota_lease WHERE reservation = p_reservation AND state = 'live';
          IF NOT FOUND THEN RETURN; END IF;
          PERFORM 1 FROM quota_subject WHERE subject IN (l.team, l.key_prefix) ORDER BY subject FOR UPDATE;
          UPDATE quota_lease SET state = 'settled' WHERE reservation = p_reservation AND state = 'live'
            RETURNING team, key_prefix, at, second, tokens INTO l;
          IF NOT FOUND THEN RETURN; END IF;
          UPDATE quota_subject SET in_flight = greatest(0, in_flight - 1), reserved = greatest(0, reserved - l.tokens) WHERE subject IN (l.team, l.key_prefix);
          UPDATE quota_bucket SET tokens = greatest(0, tokens + p_tokens - l.tokens) WHERE subject IN (l.team, l.key_prefix) AND second = l.second;
          UPDATE quota_lease SET tokens = p_tokens WHERE reservation = p_reservation;
          IF p_tokens > 0 THEN
            SELECT * INTO per FROM corral_quota_periods(l.at);
            INSERT INTO quota_usage (subject, period, used)
              VALUES (l.key_prefix, per.o_day, p_tokens), (l.key_prefix, per.o_month, p_tokens), (l.team, per.o_day, p_tokens), (l.team, per.o_month, p_tokens)
              ON CONFLICT (subject, period) DO UPDATE SET used = quota_usage.used + EXCLUDED.used;
          END IF;
        END $$
        """

    /// Settles many reservations in one transaction: every subject involved locked first, in one
    /// sorted statement, then each settled as ``settle`` does.
    static let settleMany = """
        CREATE FUNCTION corral_quota_settle_many(p_reservations TEXT[], p_tokens INT[]) RETURNS VOID LANGUAGE plpgsql AS $$
        DECLARE
          i INT;
        BEGIN
          PERFORM 1 FROM quota_subject WHERE subject IN (
            SELECT team FROM quota_lease WHERE reservation = ANY(p_reservations) AND state = 'live'
            UNION SELECT key_prefix FROM quota_lease WHERE reservation = ANY(p_reservations) AND state = 'live') ORDER BY subject FOR UPDATE;
          FOR i IN 1 .. coalesce(array_length(p_reservations, 1), 0) LOOP
            PERFORM corral_quota_settle(p_reservations[i], p_tokens[i]);
          END LOOP;
        END $$
        """

    /// Releases expired leases (their node is gone): their tokens leave the counters; counters and
    /// leases too old to matter are dropped. Returns the leases released.
    static let releaseExpired = """
        CREATE FUNCTION corral_quota_release_expired() RETURNS INT LANGUAGE plpgsql AS $$
        DECLARE
          now_s DOUBLE PRECISION := extract(epoch FROM clock_timestamp()); l RECORD; n INT := 0;
        BEGIN
          PERFORM 1 FROM quota_subject WHERE subject IN (
            SELECT team FROM quota_lease WHERE state = 'live' AND lease_until < now_s
            UNION SELECT key_prefix FROM quota_lease WHERE state = 'live' AND lease_until < now_s) ORDER BY subject FOR UPDATE;
          FOR l IN UPDATE quota_lease SET state = 'released' WHERE state = 'live' AND lease_until < now_s
              RETURNING team, key_prefix, second, tokens LOOP
            UPDATE quota_subject SET in_flight = greatest(0, in_flight - 1), reserved = greatest(0, reserved - l.tokens) WHERE subject IN (l.team, l.key_prefix);
            UPDATE quota_bucket SET tokens = greatest(0, tokens - l.tokens) WHERE subject IN (l.team, l.key_prefix) AND second = l.second;
            n := n + 1;
          END LOOP;
          DELETE FROM quota_bucket WHERE second < floor(now_s) - 120;
          DELETE FROM quota_lease WHERE state <> 'live' AND at < now_s - 3600
            AND (recovered OR node NOT IN (SELECT name FROM cluster_node WHERE heartbeat < now_s - 60));
          RETURN n;
        END $$
        """
}
