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

    /// One subject's verdict from its counters (the checks in the order a single node makes
    /// them: parallel, requests per minute, tokens per minute, day, month); nil when it passes.
    /// `p_day_used` and `p_month_used` include the tokens reserved and not yet settled.
    static let verdict = """
        CREATE FUNCTION corral_quota_verdict(p_in_flight BIGINT, p_requests BIGINT, p_tokens BIGINT, p_day_used BIGINT, p_month_used BIGINT, p_need INT,
          p_rpm INT, p_tpm INT, p_parallel INT, p_day BIGINT, p_month BIGINT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
          SELECT CASE
            WHEN p_parallel IS NOT NULL AND p_in_flight >= p_parallel THEN 'max_parallel'
            WHEN p_rpm IS NOT NULL AND p_requests >= p_rpm THEN 'requests_per_minute'
            WHEN p_tpm IS NOT NULL AND p_tokens + p_need > p_tpm THEN 'tokens_per_minute'
            WHEN p_day IS NOT NULL AND p_day_used + p_need > p_day THEN 'tokens_per_day'
            WHEN p_month IS NOT NULL AND p_month_used + p_need > p_month THEN 'tokens_per_month'
          END $$
        """

    /// Seconds until a refused subject can pass: for a minute limit, when enough of its oldest
    /// seconds have left the window (what the current batch added counts in the current second).
    static let retryAfter = """
        CREATE FUNCTION corral_quota_retry(p_subject TEXT, p_refusal TEXT, p_now DOUBLE PRECISION, p_total BIGINT, p_need BIGINT, p_limit BIGINT,
          p_month_end DOUBLE PRECISION) RETURNS DOUBLE PRECISION LANGUAGE plpgsql STABLE AS $$
        DECLARE
          v_sec BIGINT := floor(p_now); v_freed BIGINT := 0; b RECORD;
        BEGIN
          IF p_refusal = 'max_parallel' THEN RETURN 1; END IF;
          IF p_refusal = 'tokens_per_day' THEN RETURN 86400 - (p_now - floor(p_now / 86400) * 86400); END IF;
          IF p_refusal = 'tokens_per_month' THEN RETURN p_month_end - p_now; END IF;
          FOR b IN SELECT q.second, CASE WHEN p_refusal = 'requests_per_minute' THEN q.requests ELSE q.tokens END AS amount
              FROM quota_bucket q WHERE q.subject = p_subject AND q.second > v_sec - 60 ORDER BY q.second LOOP
            v_freed := v_freed + b.amount;
            IF p_total - v_freed + p_need <= p_limit THEN RETURN b.second + 60 - p_now; END IF;
          END LOOP;
          RETURN CASE WHEN p_need <= p_limit THEN v_sec + 60 - p_now ELSE 60 END;
        END $$
        """

    /// Many admissions in one transaction, in order, with the same checks as one at a time (so
    /// the limits stay exact): every subject of the batch locked first in one sorted statement
    /// (batches from different nodes never wait on each other in a cycle), their counters read
    /// once, each admission checked against them and counted in them, and the sums written once
    /// at the end with one lease per admitted request. One round trip, one lock and one commit
    /// for all the admissions that queued while the previous batch was out.
    static let admitMany = """
        CREATE FUNCTION corral_quota_admit_many(p_batch JSONB, p_node TEXT, p_lease DOUBLE PRECISION)
        RETURNS TABLE (o_index INT, o_refusal TEXT, o_refused_team BOOLEAN, o_retry DOUBLE PRECISION, o_team_requests INT, o_team_tokens BIGINT,
          o_team_reset DOUBLE PRECISION, o_key_requests INT, o_key_tokens BIGINT, o_key_reset DOUBLE PRECISION)
        LANGUAGE plpgsql AS $$
        DECLARE
          v_now DOUBLE PRECISION; v_sec BIGINT; per RECORD; subjects TEXT[]; n INT;
          v_in_flight BIGINT[]; v_reserved BIGINT[]; v_requests BIGINT[]; v_tokens BIGINT[]; v_oldest BIGINT[]; v_day BIGINT[]; v_month BIGINT[];
          v_added BIGINT[]; locked INT; i INT; c_a BIGINT; c_b BIGINT; c_c BIGINT;
          e RECORD; t INT; k INT; t_refusal TEXT; k_refusal TEXT; t_reset DOUBLE PRECISION; k_reset DOUBLE PRECISION;
          l_id TEXT[] := '{}'; l_team TEXT[] := '{}'; l_key TEXT[] := '{}'; l_model TEXT[] := '{}'; l_route TEXT[] := '{}'; l_tokens INT[] := '{}';
        BEGIN
          SELECT array_agg(x ORDER BY x) INTO subjects FROM (
            SELECT b->>'team' AS x FROM jsonb_array_elements(p_batch) b UNION SELECT b->>'key' FROM jsonb_array_elements(p_batch) b) u;
          n := array_length(subjects, 1);
          PERFORM 1 FROM quota_subject q WHERE q.subject = ANY(subjects) ORDER BY q.subject FOR UPDATE;
          GET DIAGNOSTICS locked = ROW_COUNT;
          IF locked < n THEN
            -- A team's or key's first request: its counter row is made, then locked as always.
            INSERT INTO quota_subject (subject) SELECT x FROM unnest(subjects) x ORDER BY x ON CONFLICT DO NOTHING;
            PERFORM 1 FROM quota_subject q WHERE q.subject = ANY(subjects) ORDER BY q.subject FOR UPDATE;
          END IF;
          v_now := extract(epoch FROM clock_timestamp());
          v_sec := floor(v_now);
          SELECT * INTO per FROM corral_quota_periods(v_now);
          -- Each subject's counters, once, in the order of `subjects`: simple lookups by key (a
          -- batch has few subjects; one statement joining them all cost more to plan than these).
          v_in_flight := array_fill(0::BIGINT, ARRAY[n]); v_reserved := v_in_flight; v_requests := v_in_flight; v_tokens := v_in_flight;
          v_day := v_in_flight; v_month := v_in_flight; v_oldest := array_fill(NULL::BIGINT, ARRAY[n]);
          FOR i IN 1 .. n LOOP
            SELECT q.in_flight, q.reserved INTO c_a, c_b FROM quota_subject q WHERE q.subject = subjects[i];
            v_in_flight[i] := coalesce(c_a, 0); v_reserved[i] := coalesce(c_b, 0);
            SELECT coalesce(sum(b.requests), 0), coalesce(sum(b.tokens), 0), min(b.second) INTO c_a, c_b, c_c
              FROM quota_bucket b WHERE b.subject = subjects[i] AND b.second > v_sec - 60;
            v_requests[i] := c_a; v_tokens[i] := c_b; v_oldest[i] := c_c;
            SELECT coalesce(sum(d.used) FILTER (WHERE d.period = per.o_day), 0), coalesce(sum(d.used) FILTER (WHERE d.period = per.o_month), 0)
              INTO c_a, c_b FROM quota_usage d WHERE d.subject = subjects[i] AND d.period IN (per.o_day, per.o_month);
            v_day[i] := c_a; v_month[i] := c_b;
          END LOOP;
          v_added := array_fill(0::BIGINT, ARRAY[n]);
          FOR e IN SELECT (b.ord - 1)::INT AS idx, b.x->>'id' AS id, b.x->>'team' AS team, b.x->>'key' AS key, b.x->>'model' AS model,
                b.x->>'route' AS route, (b.x->>'tokens')::INT AS tokens,
                (b.x->>'t_rpm')::INT AS t_rpm, (b.x->>'t_tpm')::INT AS t_tpm, (b.x->>'t_parallel')::INT AS t_parallel,
                (b.x->>'t_day')::BIGINT AS t_day, (b.x->>'t_month')::BIGINT AS t_month,
                (b.x->>'k_rpm')::INT AS k_rpm, (b.x->>'k_tpm')::INT AS k_tpm, (b.x->>'k_parallel')::INT AS k_parallel,
                (b.x->>'k_day')::BIGINT AS k_day, (b.x->>'k_month')::BIGINT AS k_month,
                k0.prefix IS NOT NULL AS known, k0.revoked_at IS NOT NULL AS revoked, coalesce(t0.disabled, false) AS disabled
              FROM jsonb_array_elements(p_batch) WITH ORDINALITY b(x, ord)
              LEFT JOIN api_key k0 ON k0.prefix = b.x->>'key' AND k0.team_id = b.x->>'team'
              LEFT JOIN team t0 ON t0.id = k0.team_id
              ORDER BY b.ord
          LOOP
            o_index := e.idx; o_refused_team := false; o_retry := 0;
            o_team_requests := 0; o_team_tokens := 0; o_team_reset := 0; o_key_requests := 0; o_key_tokens := 0; o_key_reset := 0;
            o_refusal := CASE WHEN NOT e.known THEN 'key_unknown' WHEN e.revoked THEN 'key_revoked' WHEN e.disabled THEN 'team_disabled' END;
            IF o_refusal IS NOT NULL THEN o_refused_team := o_refusal = 'team_disabled'; RETURN NEXT; CONTINUE; END IF;
            t := array_position(subjects, e.team);
            k := array_position(subjects, e.key);
            t_refusal := corral_quota_verdict(v_in_flight[t], v_requests[t], v_tokens[t], v_day[t] + v_reserved[t], v_month[t] + v_reserved[t], e.tokens,
              e.t_rpm, e.t_tpm, e.t_parallel, e.t_day, e.t_month);
            k_refusal := corral_quota_verdict(v_in_flight[k], v_requests[k], v_tokens[k], v_day[k] + v_reserved[k], v_month[k] + v_reserved[k], e.tokens,
              e.k_rpm, e.k_tpm, e.k_parallel, e.k_day, e.k_month);
            t_reset := CASE WHEN coalesce(v_oldest[t], CASE WHEN v_added[t] > 0 THEN v_sec END) IS NULL THEN 0
              ELSE greatest(0, coalesce(v_oldest[t], v_sec) + 60 - v_now) END;
            k_reset := CASE WHEN coalesce(v_oldest[k], CASE WHEN v_added[k] > 0 THEN v_sec END) IS NULL THEN 0
              ELSE greatest(0, coalesce(v_oldest[k], v_sec) + 60 - v_now) END;
            IF t_refusal IS NOT NULL OR k_refusal IS NOT NULL THEN
              o_refusal := coalesce(t_refusal, k_refusal);
              o_refused_team := t_refusal IS NOT NULL;
              o_retry := CASE WHEN t_refusal IS NOT NULL
                THEN corral_quota_retry(e.team, t_refusal, v_now, CASE WHEN t_refusal = 'requests_per_minute' THEN v_requests[t] ELSE v_tokens[t] END,
                  CASE WHEN t_refusal = 'requests_per_minute' THEN 1 ELSE e.tokens END, CASE WHEN t_refusal = 'requests_per_minute' THEN e.t_rpm ELSE e.t_tpm END, per.o_month_end)
                ELSE corral_quota_retry(e.key, k_refusal, v_now, CASE WHEN k_refusal = 'requests_per_minute' THEN v_requests[k] ELSE v_tokens[k] END,
                  CASE WHEN k_refusal = 'requests_per_minute' THEN 1 ELSE e.tokens END, CASE WHEN k_refusal = 'requests_per_minute' THEN e.k_rpm ELSE e.k_tpm END, per.o_month_end) END;
              o_team_requests := v_requests[t]; o_team_tokens := v_tokens[t]; o_team_reset := t_reset;
              o_key_requests := v_requests[k]; o_key_tokens := v_tokens[k]; o_key_reset := k_reset;
              RETURN NEXT; CONTINUE;
            END IF;
            -- Admitted: counted at once, so the next admission of the batch sees it.
            v_in_flight[t] := v_in_flight[t] + 1; v_in_flight[k] := v_in_flight[k] + 1;
            v_reserved[t] := v_reserved[t] + e.tokens; v_reserved[k] := v_reserved[k] + e.tokens;
            v_requests[t] := v_requests[t] + 1; v_requests[k] := v_requests[k] + 1;
            v_tokens[t] := v_tokens[t] + e.tokens; v_tokens[k] := v_tokens[k] + e.tokens;
            v_added[t] := v_added[t] + 1; v_added[k] := v_added[k] + 1;
            l_id := l_id || e.id; l_team := l_team || e.team; l_key := l_key || e.key; l_model := l_model || e.model; l_route := l_route || e.route;
            l_tokens := l_tokens || e.tokens;
            o_team_requests := v_requests[t]; o_team_tokens := v_tokens[t]; o_team_reset := CASE WHEN t_reset = 0 THEN 60 ELSE t_reset END;
            o_key_requests := v_requests[k]; o_key_tokens := v_tokens[k]; o_key_reset := CASE WHEN k_reset = 0 THEN 60 ELSE k_reset END;
            RETURN NEXT;
          END LOOP;
          IF array_length(l_id, 1) IS NULL THEN RETURN; END IF;
          -- The batch's sums, once per subject.
          INSERT INTO quota_bucket (subject, second, requests, tokens)
            SELECT s.subject, v_sec, sum(s.n), sum(s.tokens) FROM (
              SELECT unnest(l_team) AS subject, 1 AS n, unnest(l_tokens) AS tokens UNION ALL SELECT unnest(l_key), 1, unnest(l_tokens)) s
            GROUP BY s.subject ORDER BY s.subject
            ON CONFLICT (subject, second) DO UPDATE SET requests = quota_bucket.requests + EXCLUDED.requests, tokens = quota_bucket.tokens + EXCLUDED.tokens;
          UPDATE quota_subject q SET in_flight = q.in_flight + s.n, reserved = q.reserved + s.tokens FROM (
              SELECT x.subject, count(*) AS n, sum(x.tokens) AS tokens FROM (
                SELECT unnest(l_team) AS subject, unnest(l_tokens) AS tokens UNION ALL SELECT unnest(l_key), unnest(l_tokens)) x GROUP BY x.subject) s
            WHERE q.subject = s.subject;
          INSERT INTO quota_lease (reservation, node, team, key_prefix, model, route, at, second, tokens, lease_until)
            SELECT u.id, p_node, u.team, u.key, u.model, u.route, v_now, v_sec, u.tokens, v_now + p_lease
            FROM unnest(l_id, l_team, l_key, l_model, l_route, l_tokens) AS u(id, team, key, model, route, tokens);
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

    /// Settlement of many reservations at once, set by set (replaces ``settleMany``): every
    /// subject involved locked first in one sorted statement, the live leases marked settled
    /// with their real use, then each subject's in-flight and reserved counts lowered, its
    /// minute buckets corrected by the difference and its day and month raised by the use, one
    /// statement each. A reservation already settled or released is left alone.
    static let settleManyAtOnce = """
        CREATE OR REPLACE FUNCTION corral_quota_settle_many(p_reservations TEXT[], p_tokens INT[]) RETURNS VOID LANGUAGE plpgsql AS $$
        DECLARE
          r_team TEXT[]; r_key TEXT[]; r_at DOUBLE PRECISION[]; r_second BIGINT[]; r_reserved INT[]; r_used INT[];
        BEGIN
          PERFORM 1 FROM quota_subject WHERE subject IN (
            SELECT team FROM quota_lease WHERE reservation = ANY(p_reservations) AND state = 'live'
            UNION SELECT key_prefix FROM quota_lease WHERE reservation = ANY(p_reservations) AND state = 'live') ORDER BY subject FOR UPDATE;
          -- `before` is the row as it was, so the reserved tokens come back beside the use.
          WITH settled AS (
            UPDATE quota_lease l SET state = 'settled', tokens = u.used
            FROM (SELECT DISTINCT ON (x.reservation) x.reservation, x.used FROM unnest(p_reservations, p_tokens) AS x(reservation, used)) u,
              quota_lease before
            WHERE l.reservation = u.reservation AND before.reservation = l.reservation AND l.state = 'live'
            RETURNING l.team, l.key_prefix, l.at, l.second, before.tokens AS reserved, u.used)
          SELECT array_agg(team), array_agg(key_prefix), array_agg(at), array_agg(second), array_agg(reserved), array_agg(used)
            INTO r_team, r_key, r_at, r_second, r_reserved, r_used FROM settled;
          IF r_team IS NULL THEN RETURN; END IF;
          UPDATE quota_subject q SET in_flight = greatest(0, q.in_flight - s.n), reserved = greatest(0, q.reserved - s.reserved)
            FROM (SELECT x.subject, count(*) AS n, sum(x.reserved) AS reserved FROM (
                SELECT * FROM unnest(r_team, r_reserved) AS a(subject, reserved) UNION ALL SELECT * FROM unnest(r_key, r_reserved)) x
              GROUP BY x.subject) s
            WHERE q.subject = s.subject;
          UPDATE quota_bucket b SET tokens = greatest(0, b.tokens + s.delta)
            FROM (SELECT x.subject, x.second, sum(x.used - x.reserved) AS delta FROM (
                SELECT * FROM unnest(r_team, r_second, r_used, r_reserved) AS a(subject, second, used, reserved)
                UNION ALL SELECT * FROM unnest(r_key, r_second, r_used, r_reserved)) x
              GROUP BY x.subject, x.second) s
            WHERE b.subject = s.subject AND b.second = s.second;
          INSERT INTO quota_usage (subject, period, used)
            SELECT x.subject, p.period, sum(x.used) FROM (
                SELECT * FROM unnest(r_team, r_at, r_used) AS a(subject, at, used) UNION ALL SELECT * FROM unnest(r_key, r_at, r_used)) x,
              LATERAL corral_quota_periods(x.at) per, LATERAL (VALUES (per.o_day), (per.o_month)) p(period)
            WHERE x.used > 0 GROUP BY x.subject, p.period ORDER BY 1, 2
            ON CONFLICT (subject, period) DO UPDATE SET used = quota_usage.used + EXCLUDED.used;
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
